"""People as judges: vote records (store.py), their statistics (stats.py, bradley_terry.py), the human/* summary
keys (summary.py) and the export of decided votes as DPO training pairs (export.py, `python -m dpo_exp.human`)."""
