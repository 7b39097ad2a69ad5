"""Policy against reference: `orchestrator` runs the measurements (the pipeline calls it after training).

- `inputs`: settings, the scorer and the held-out prompts/pairs (eval_inputs.json, for re-evaluation).
- `metrics`: reward and win rate of fresh samples, Monte-Carlo KL, implicit-reward classification.
- `best_of_n`: the best-of-N baseline from reference samples.
- `logprobs`: sequence log-probabilities and per-token KL.
- `policy_ref`: the policy and its reference (adapter disabled, frozen copy, or rebuilt starting model).
- `report`: samples.md, the reward-KL plot, W&B tables, the console headline.
- `stats`: bootstrap confidence intervals and paired win rates (numpy).
- `trace`: a TrainerCallback that traces reward and KL during training.
"""
