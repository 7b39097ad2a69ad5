"""How a multirun job ended, for the launcher that runs it in the same process.

`python -m dpo_exp -m` records a failed job (summary.json, W&B) and returns None to the sweeper, so that the sweep
goes on. It also notes the failure here, so that dpo_exp's submitit launchers (hydra_plugins/dpo_exp_launcher) can
fail the job's submitit task: Hydra's `run_job` hands a launcher only the job's return value.
"""

from __future__ import annotations

_failure: str | None = None


def note_failure(reason: str | None) -> None:
    """The job in this process failed for `reason` (None: forget an earlier job's failure)."""
    global _failure
    _failure = reason


def failure() -> str | None:
    """Why the job in this process failed, or None."""
    return _failure
