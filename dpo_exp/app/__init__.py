"""`python -m dpo_exp.app PATH [PATH ...]`: a Gradio app comparing the reference with DPO-tuned policies.

runs.py finds and checks the runs (no models), models.py loads them, generate.py samples/scores/log-ratios one
prompt, pairs.py makes the Rate tab's blind pairs, rate.py records the votes (through dpo_exp.human), report.py
reads a run's evaluation files and ratings, ui.py lays out the Blocks, __main__.py is the CLI.
"""
