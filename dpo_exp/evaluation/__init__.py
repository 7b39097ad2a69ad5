"""Building blocks of policy evaluation (dpo_exp.evaluate orchestrates them).

- `stats`: bootstrap confidence intervals and paired win rates (numpy).
- `logprobs`: sequence log-probabilities, the Monte-Carlo KL and DPO's implicit reward.
- `models`: the policy and its reference (adapter disabled, frozen copy, or rebuilt starting model).
- `report`: samples.md, the reward-KL plot, W&B tables.
- `trace`: a TrainerCallback that traces reward and KL during training.
"""
