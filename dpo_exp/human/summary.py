"""The `human/*` keys of a run's summary.json: computed from the run's ratings, merged in under a lock.

The pipeline writes summary.json while a run is alive; once it is completed, the app is the one adding human
ratings, so the `human/*` keys are merged into the finished file with `infra.storage.update_json` (a FileLock plus
an atomic replace: the run's own keys are kept, stale `human/*` keys are dropped, a reader never sees half a file).
`python -m dpo_exp.evaluate` keeps them: it only replaces the `eval/*` keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..infra.storage import update_json
from .bradley_terry import Strength
from .stats import WinRate, judge_agreement, per_rater, win_rate
from .store import read_ratings

PREFIX = "human/"


def rater_key(rater: str) -> str:
    """A rater's name as a metric-key segment (W&B and CSV friendly)."""
    return re.sub(r"[^\w.-]+", "_", rater.strip())[:40] or "anonymous"


def _win_rate_keys(prefix: str, result: WinRate) -> dict[str, Any]:
    return {
        f"{prefix}win_rate": result.rate,
        f"{prefix}win_rate_ci_low": result.low,
        f"{prefix}win_rate_ci_high": result.high,
        f"{prefix}votes": result.votes,
    }


def human_metrics(records: list[dict], strength: Strength | None = None) -> dict[str, Any]:
    """human/* keys: the pooled and per-rater win rate against the reference (bootstrap CI over prompts), the
    number of votes and prompts, agreement with the automatic judge, and the run's Bradley–Terry strength."""
    out: dict[str, Any] = {f"{PREFIX}ratings": len(records)}
    out[f"{PREFIX}skips"] = sum(r.get("choice") == "skip" for r in records)
    pooled = win_rate(records)
    if pooled is not None:
        out.update(_win_rate_keys(PREFIX, pooled))
        out[f"{PREFIX}prompts"] = pooled.prompts
    raters = per_rater(records)
    out[f"{PREFIX}raters"] = len(raters)
    for rater, result in raters.items():
        out.update(_win_rate_keys(f"{PREFIX}rater/{rater_key(rater)}/", result))
    agreement = judge_agreement(records)
    if agreement is not None:
        out[f"{PREFIX}judge"] = agreement.judge
        out[f"{PREFIX}judge_agreement"] = agreement.percent
        out[f"{PREFIX}judge_kappa"] = agreement.kappa
        out[f"{PREFIX}judge_votes"] = agreement.votes
    if strength is not None:
        out[f"{PREFIX}bt_strength"] = strength.strength
        out[f"{PREFIX}bt_strength_ci_low"] = strength.low
        out[f"{PREFIX}bt_strength_ci_high"] = strength.high
    return out


def publish(run_dir: str | Path, strength: Strength | None = None) -> dict[str, Any]:
    """Recompute the run's human/* keys from its ratings file and merge them into its summary.json."""
    metrics = human_metrics(read_ratings(run_dir), strength)
    update_json(Path(run_dir) / "summary.json", metrics, drop_prefix=PREFIX)
    return metrics
