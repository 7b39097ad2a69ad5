"""One extra W&B run per sweep (`job_type="sweep-summary"`, in the sweep's group) that shows the sweep at once.

It carries a `wandb.Table` with one row per job (comparison.csv as written: swept keys, status, final metrics,
human/* win rates and agreement), the human Bradley–Terry leaderboard when people rated two policies or more,
the reward-KL frontier as a W&B scatter chart, the jobs' learning curves overlaid (`wandb.plot.line_series`) and
comparison.md/.csv (+ plots) as an artifact. It starts through `tracking.start_tracker`, so it follows the jobs'
rules: online with an API key, offline beside the sweep (PATH/wandb/) otherwise, never prompting, never fatal.
Then the saved workspace (`dpo_exp.compare.workspace`) is created online, or its definition written to PATH.

`python -m dpo_exp.compare PATH --wandb` runs it; `SweepSummaryCallback` (conf/config.yaml, hydra.callbacks)
runs it when a multirun with `logger=wandb` finishes.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from ..infra.tracking import Tracker, WandbTracker, resolve_mode, start_tracker
from .plots import CURVES, REWARD, frontier_x
from .runs import find_run_dirs, load_run, swept_params

log = logging.getLogger(__name__)

JOB_TYPE = "sweep-summary"
TABLE_KEY = "sweep/jobs"
HUMAN_BOARD = "human_leaderboard.csv"  # written by compare when two policies or more were rated


def _cell(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def sweep_identity(runs: list) -> tuple[str, dict[str, Any]]:
    """(W&B group, the jobs' logger block): the group the jobs logged under and their project/entity/mode.

    Project and entity are those the jobs actually logged to (summary.json's wandb_project/wandb_entity, recorded
    at tracker start); the rest of the logger block comes from a job's .hydra/config.yaml, resolved here (its
    `${oc.env:...}` defaults read this process's environment), or left out where it cannot be resolved."""
    groups = [str(r.summary["group"]) for r in runs if r.summary.get("group")]
    group = groups[0] if groups else runs[0].path.parent.name
    logger: dict[str, Any] = {}
    for run in runs:
        config = run.path / ".hydra" / "config.yaml"
        if config.is_file():
            logger = _resolved_logger(config)
            break
    for key in ("project", "entity"):
        logged = next((r.summary[f"wandb_{key}"] for r in runs if r.summary.get(f"wandb_{key}")), None)
        if logged is not None:
            logger[key] = logged
    return group, logger


def _resolved_logger(config: Path) -> dict[str, Any]:
    """A job config's logger block, each value resolved; one that does not resolve here is left out."""
    cfg = OmegaConf.load(config)
    out: dict[str, Any] = {}
    for key in cfg.get("logger") or {}:
        try:
            value = cfg.logger[key]  # resolves `${oc.env:...}` (and references into the whole config)
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except Exception:  # noqa: BLE001 - e.g. a resolver only Hydra registers: the default applies
            continue
    return out


def curve_series(runs: list, labels: dict[Path, str], key: str) -> tuple[list, list, list]:
    """(xs, ys, keys) of the train rows of metric `key`, one series per run that has them."""
    xs, ys, keys = [], [], []
    for run in runs:
        pts = [
            (r["step"], r[key])
            for r in run.metrics
            if r.get("split") == "train" and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
        ]
        if pts:
            xs.append([p[0] for p in pts])
            ys.append([p[1] for p in pts])
            keys.append(labels.get(run.path, run.path.name))
    return xs, ys, keys


def _log_views(
    tracker: WandbTracker, out: Path, table: pd.DataFrame, runs: list, labels: dict[Path, str], group: str
) -> None:
    import wandb

    run = tracker.run
    rows = [[_cell(v) for v in row] for row in table.itertuples(index=False)]
    jobs = wandb.Table(columns=list(table.columns), data=rows, allow_mixed_types=True)
    logged: dict[str, Any] = {TABLE_KEY: jobs}
    kl = frontier_x(table)  # the same KL estimator as comparison's frontier plot (kl_rb where every run has it)
    if kl is not None:
        logged["sweep/reward_kl_frontier"] = wandb.plot.scatter(jobs, kl, REWARD, title=f"reward-KL frontier ({kl})")
    for key, title in CURVES:
        xs, ys, keys = curve_series(runs, labels, key)
        if xs:
            logged[f"sweep/curves/{key}"] = wandb.plot.line_series(
                xs, ys, keys=keys, title=f"train {title}", xname="step"
            )
    board = out / HUMAN_BOARD
    if board.is_file():  # people's votes: the Bradley-Terry leaderboard (the human/* columns are in the jobs table)
        logged["sweep/human_leaderboard"] = wandb.Table(dataframe=pd.read_csv(board))
    run.log(logged)
    run.summary.update({"jobs": len(table), "completed": int((table["status"] == "completed").sum())})
    if "human/votes" in table.columns:
        run.summary["human/votes"] = int(table["human/votes"].fillna(0).sum())
    artifact = wandb.Artifact(re.sub(r"[^\w.-]", "_", f"{group}-comparison")[:120], type="sweep-comparison")
    for name in ("comparison.md", "comparison.csv", HUMAN_BOARD):
        if (out / name).is_file():
            artifact.add_file(str(out / name))
    if (out / "plots").is_dir():
        artifact.add_dir(str(out / "plots"), name="plots")
    run.log_artifact(artifact)


def log_sweep_summary(out: Path, paths: list[Path] | None = None, workspace: bool = True) -> Tracker:
    """Log the summary run for the sweep whose comparison.csv is in `out` (runs read from `paths`, default out).

    Returns the finished tracker (inactive when W&B could not start). Prints where the run and workspace are.
    """
    out = Path(out)
    runs = [load_run(p) for p in find_run_dirs([Path(p) for p in (paths or [out])])]
    table = pd.read_csv(out / "comparison.csv")  # the very numbers of comparison.csv
    params = swept_params(runs)
    group, logger = sweep_identity(runs)
    labels = {
        Path(row["path"]): ",".join(f"{k}={row[k]}" for k in params) or str(row["run"]) for _, row in table.iterrows()
    }
    logger_cfg = OmegaConf.create({**logger, "enabled": True, "job_type": JOB_TYPE})
    tracker = start_tracker(
        logger_cfg,
        out,
        f"{group}/summary",
        group,
        [JOB_TYPE],
        {"sweep_dir": str(out), "swept": params, "jobs": len(table)},
    )
    if isinstance(tracker, WandbTracker):
        tracker._guard("sweep summary", _log_views, tracker, out, table, runs, labels, group)
        where = (
            f"offline in {tracker.run_dir} (upload: wandb sync {tracker.run_dir})"
            if tracker.mode == "offline"
            else f"online, group {group}"
        )
        tracker.finish(exit_code=0)
        print(f"W&B sweep summary run logged {where}")
    else:
        print("W&B sweep summary run not logged (W&B disabled or unavailable)")
    if workspace:
        from .workspace import create_or_write

        online = resolve_mode(str(logger_cfg.get("mode", "auto"))) == "online"
        print(
            create_or_write(out, logger.get("entity"), str(logger.get("project") or "dpo_exp"), group, params, online)
        )
    return tracker


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra-core is a dependency
    Callback = object  # type: ignore[assignment,misc]


class SweepSummaryCallback(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): when a multirun with `logger=wandb` ends, write the
    comparison (comparison.md/.csv, plots) into the sweep folder and log the summary run. Never fails the sweep."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not (config.get("logger") or {}).get("enabled"):
            return
        try:
            from .table import compare

            sweep_dir = Path(str(config.hydra.sweep.dir))
            compare([sweep_dir], console=False)
            log_sweep_summary(sweep_dir)
        except Exception as exc:  # noqa: BLE001 - the jobs are done; a summary problem must not fail the sweep
            log.warning("sweep summary skipped (%s); run `python -m dpo_exp.compare SWEEP_DIR --wandb`", exc)
