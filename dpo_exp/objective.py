"""The number a job returns to a sweeper (Optuna, Hydra multirun): `objective` in the config, `auto` by default."""

from __future__ import annotations

from omegaconf import DictConfig

AUTO_OBJECTIVE_WITH_REWARD = "eval/reward_delta"  # sampled reward gain over the reference (maximise)
AUTO_OBJECTIVE_WITHOUT_REWARD = "eval_rewards/accuracies"  # TRL's held-out implicit-reward accuracy (maximise)


def objective_key(cfg: DictConfig) -> str:
    """The summary key a job returns to a sweeper. `objective: auto` picks one comparable across beta, lr and data
    size (unlike eval_loss, whose scale depends on beta): eval/reward_delta when the evaluation has a reward scorer
    (the run's `reward` or `eval.reward`), else eval_rewards/accuracies. Both are maximised."""
    key = str(cfg.objective)
    if key != "auto":
        return key
    ev = cfg.get("eval") or {}
    run_reward = str((cfg.get("reward") or {}).get("kind", "none"))
    has_scorer = bool(ev.get("enabled", False)) and (bool(ev.get("reward")) or run_reward != "none")
    return AUTO_OBJECTIVE_WITH_REWARD if has_scorer else AUTO_OBJECTIVE_WITHOUT_REWARD


def objective_value(summary: dict, key: str) -> float | None:
    value = summary.get(key)
    return float(value) if isinstance(value, (int, float)) else None
