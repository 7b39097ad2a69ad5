"""The number a job returns to a sweeper (Optuna, Hydra multirun): `objective` in the config, `auto` by default."""

from __future__ import annotations

from omegaconf import DictConfig

AUTO_OBJECTIVE_WITH_REWARD = "eval/reward_delta"  # sampled reward gain over the reference (maximise)
AUTO_OBJECTIVE_WITHOUT_REWARD, AUTO_OBJECTIVE_WITHOUT_EVAL = "eval/implicit_accuracy", "eval_rewards/accuracies"


def objective_key(cfg: DictConfig) -> str:
    """The summary key a job returns to a sweeper. `objective: auto` picks one comparable across beta, lr and data
    size (unlike eval_loss, whose scale depends on beta): eval/reward_delta when the evaluation has a reward scorer
    (the run's `reward` or `eval.reward`), else the exact per-pair eval/implicit_accuracy (TRL's per-batch mean
    eval_rewards/accuracies over-weights a short last batch: only when evaluation is off). All are maximised."""
    key = str(cfg.objective)
    if key != "auto":
        return key
    ev = cfg.get("eval") or {}
    run_reward = str((cfg.get("reward") or {}).get("kind", "none"))
    has_scorer = bool(ev.get("enabled", False)) and (bool(ev.get("reward")) or run_reward != "none")
    if has_scorer:
        return AUTO_OBJECTIVE_WITH_REWARD
    pairs = bool(ev.get("enabled", False)) and int(ev.get("num_pairs") or 0) > 0
    return AUTO_OBJECTIVE_WITHOUT_REWARD if pairs else AUTO_OBJECTIVE_WITHOUT_EVAL


def objective_value(summary: dict, key: str) -> float | None:
    value = summary.get(key)
    return float(value) if isinstance(value, (int, float)) else None
