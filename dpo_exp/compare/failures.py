"""The end of a multirun: a table of the jobs that did not complete, with their one-line reasons, and exit status 1.

Each job records its outcome in its run folder (summary.json `status`, `error`), whichever launcher ran it (in
process, joblib, submitit on this machine or on Slurm), so the table is read from there when the sweep ends.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from ..errors import UserError
from ..infra.runrecord import refusal
from .runs import Run, find_run_dirs, load_run

REASON_BY_STATUS = {
    "interrupted": "interrupted: run the same command again to resume",
    "running": "ended while running (killed?): see its log",
    "no summary": "no summary.json: see its log",
}


def unfinished_jobs(sweep_dir: Path) -> tuple[int, list[Run]]:
    """(number of jobs, the jobs whose summary is not `completed`, or whose command this sweep refused: a finished
    run of another command keeps its record) in the sweep folder."""
    try:
        runs = [load_run(path) for path in find_run_dirs([sweep_dir])]
    except UserError:  # no sweep folder: no job ran
        return 0, []
    return len(runs), [run for run in runs if run.status != "completed" or refusal(run.path)]


def _status(run: Run) -> str:
    return "refused" if run.status == "completed" and refusal(run.path) else run.status


def _reason(run: Run) -> str:
    if _status(run) == "refused":
        return str(refusal(run.path))
    error = run.problem or run.summary.get("error")
    return str(error) if error else REASON_BY_STATUS.get(run.status, run.status)


def failure_table(sweep_dir: Path, total: int, failed: list[Run]) -> str:
    """`N of M jobs failed in SWEEP:` and one aligned row per job: folder, swept values, status, reason."""
    root = sweep_dir.resolve()
    rows = [("job", "overrides", "status", "reason")]
    for run in failed:
        name = str(run.path.relative_to(root)) if run.path.is_relative_to(root) else str(run.path)
        swept = run.summary.get("sweep") or run.overrides
        rows.append((name, ",".join(f"{k}={v}" for k, v in swept.items()) or "-", _status(run), _reason(run)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths)), row[3]]).rstrip() for row in rows]
    return "\n".join([f"error: {len(failed)} of {total} jobs failed in {sweep_dir}:", *lines])


class FailedJobsCallback(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): when a multirun ends with failed jobs, print their table
    to stderr and exit with status 1. Listed first, so Hydra (which runs end hooks in reverse) runs it last."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        total, failed = unfinished_jobs(sweep_dir)
        if failed:
            print(failure_table(sweep_dir, total, failed), file=sys.stderr)
            sys.exit(1)
