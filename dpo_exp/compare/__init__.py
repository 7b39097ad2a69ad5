"""Compare finished runs: `python -m dpo_exp.compare PATH ...` (table, plots, a W&B sweep summary)."""
