"""Compare runs side by side: `python -m dpo_exp.compare PATH [PATH ...] [--out DIR]`.

PATH is a multirun folder (every run directory below it is read) or a run directory. Each run's summary.json,
metrics.jsonl and .hydra/overrides.yaml are read (no W&B needed) and, into the first PATH (or --out):
- comparison.csv / comparison.md: one row per run, the swept parameters as columns, then status and the metrics
  under the names W&B shows them: train/* as the MEAN over the logged steps of the last epoch (metrics.jsonl; one
  logging step is too noisy to compare), eval/* from the final evaluation (eval/loss, ..., eval/win_rate, eval/kl);
  failed runs are listed with their error;
- plots/: learning_curves.png (every run overlaid: loss, reward accuracy, margins), metrics_vs_<param>.png for
  each swept parameter, reward_kl_frontier.png (KL against eval/reward_policy: one line along beta, or the first
  swept key, per combination of the other swept keys; x is eval/kl_rb where every point has it, else eval/kl);
- human_leaderboard.csv and a section of comparison.md: the Bradley–Terry leaderboard of the people's votes
  (human/ratings.jsonl of the runs, dpo_exp.human) when two policies or more were rated; their human/* summary
  keys are columns like eval/*;
- a console table;
- with --wandb: a `sweep-summary` W&B run in the sweep's group and a saved W&B workspace (dpo_exp.compare.wandb_summary).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from ..infra.storage import atomic_write_text, is_finite
from .plots import label, plot_frontier, plot_learning_curves, plot_metrics_vs_params
from .provenance import completed_values, computed_with, provenance_notes
from .runs import (
    EVAL_SHOWN,
    FINAL_METRICS,
    HUMAN_SHOWN,
    LLM_JUDGE_SHOWN,
    TRAIN_SUFFIX,
    Run,
    find_run_dirs,
    fmt,
    ignored_settings,
    load_run,
    metric_columns,
    param_order,
    param_value,
    swept_params,
)


def last_epoch_means(metrics: list[dict]) -> dict[str, float]:
    """Each train metric averaged over the logged steps of the last (possibly partial) epoch of metrics.jsonl."""
    rows = [r for r in metrics if r.get("split") == "train" and is_finite(r.get("epoch"))]
    if not rows:
        return {}
    last = math.ceil(round(max(r["epoch"] for r in rows), 6)) - 1  # the epoch that was running at the end
    rows = [r for r in rows if r["epoch"] > last + 1e-9]
    keys = dict.fromkeys(k for r in rows for k in r if k not in ("split", "step", "epoch"))
    out = {}
    for key in keys:
        values = [r[key] for r in rows if is_finite(r.get(key))]
        if values:
            out[key] = sum(values) / len(values)
    return out


def build_table(runs: list[Run], params: list[str], base: Path) -> pd.DataFrame:
    """One row per run: run, swept params, status, W&B-named final metrics, eval/* metrics, caches, error."""
    rows = []
    for run in runs:
        s = run.summary
        try:
            label = str(run.path.relative_to(base))
        except ValueError:
            label = str(run.path)
        row: dict[str, Any] = {"run": label if label != "." else run.path.name}
        for key in params:
            row[key] = param_value(run, key)
        row["status"] = run.status
        train = last_epoch_means(run.metrics)
        for column, key in FINAL_METRICS:
            if column.startswith("train/"):
                row[column + TRAIN_SUFFIX] = train.get(key)
            else:
                row[column] = s.get(key) if is_finite(s.get(key)) else None
        for key in sorted(k for k, v in s.items() if k.startswith(("eval/", "human/", "harness/")) and is_finite(v)):
            row[key] = s[key]
        row.update(evaluated_on(s))
        row.update(computed_with(s))
        row["wall_time_s"] = s.get("wall_time_s")
        row["ref_logps_cache"] = (s.get("ref_logps") or {}).get("cache")
        row["pairs_cache"] = (s.get("pairs") or {}).get("cache") if isinstance(s.get("pairs"), dict) else None
        row["name"] = s.get("name")
        row["error"] = run.problem or s.get("error")  # a corrupt file first: the summary may be someone else's
        row["path"] = str(run.path)
        rows.append(row)
    df = pd.DataFrame(rows)
    if params:
        df = df.sort_values(by=params, key=lambda col: col.map(param_order), kind="stable")
    return df.reset_index(drop=True)


def evaluated_on(summary: dict[str, Any]) -> dict[str, Any]:
    """What a run was judged on: `heldout` (hashes of its held-out prompts / pairs) and `judge` (the scorer's name
    and a hash of its identity; `judge_identity` in full), so runs measured differently are visible as such, and
    `judge_beats_chance` (False: the judge's held-out accuracy interval includes 0.5, its rewards mean nothing)."""
    from ..infra.cache import content_key

    held = summary.get("heldout") or {}
    heldout = f"{str(held.get('eval_prompts'))[:8]}/{str(held.get('eval_pairs'))[:8]}" if held else None
    identity = summary.get("eval/judge_identity")
    judge = f"{summary.get('eval/reward_scorer') or 'judge'}:{content_key(identity, 8)}" if identity else None
    chance = summary.get("eval/judge_beats_chance")
    return {
        "heldout": heldout,
        "judge": judge,
        "judge_identity": identity,
        "judge_beats_chance": chance if isinstance(chance, bool) else None,
    }


def consistency_notes(df: pd.DataFrame) -> list[str]:
    """A note for each of `heldout` / `judge` on which the completed runs differ: their eval/* are not comparable."""
    done = df[df["status"] == "completed"] if "status" in df.columns else df
    notes = []
    for column, what in (("heldout", "held-out sets"), ("judge", "judges")):
        values = completed_values(df, column)
        if len(values) > 1:
            notes.append(
                f"WARNING: these runs were evaluated on {len(values)} different {what} (column `{column}`: "
                f"{', '.join(map(str, values))}); their eval/* numbers do not compare like for like"
            )
    if "judge_beats_chance" in done.columns:
        chance = [str(r["run"]) for _, r in done.iterrows() if _is_false(r["judge_beats_chance"])]
        if chance:
            notes.append(
                f"WARNING: the judge of {len(chance)} run(s) ({', '.join(chance)}) is not better than chance (column "
                "`judge_beats_chance`: its held-out accuracy interval includes 0.5); their reward numbers are not "
                "meaningful"
            )
    return notes


def _is_false(value: Any) -> bool:
    """False (a Python or numpy bool), not a missing value."""
    return value is not None and not pd.isna(value) and not bool(value)


def shown_columns(df: pd.DataFrame, params: list[str]) -> list[str]:
    """The columns of the markdown/console table (the csv has them all). The accuracy shown is the exact per-pair
    eval/implicit_accuracy when runs have it (TRL's eval/rewards/accuracies is a per-batch mean)."""
    metric_cols = (
        metric_columns() + EVAL_SHOWN + LLM_JUDGE_SHOWN + HUMAN_SHOWN + ["heldout", "judge", "judge_beats_chance"]
    )
    if "eval/implicit_accuracy" in df.columns and df["eval/implicit_accuracy"].notna().any():
        metric_cols = [c for c in metric_cols if c != "eval/rewards/accuracies"]
    metric_cols += [c for c in df.columns if c.startswith("harness/") and c.endswith("_delta")]  # capability tax
    present = [c for c in metric_cols if c in df.columns and df[c].notna().any()]
    return ["run", *params, "status", *present]


# ---------------------------------------------------------------- writing


def markdown_table(df: pd.DataFrame, columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_markdown(
    df: pd.DataFrame,
    params: list[str],
    out: Path,
    plots: list[Path],
    notes: list[str],
    sources: list[Path],
    leaderboard: pd.DataFrame | None = None,
) -> Path:
    failed = df[df["status"] != "completed"]
    parts = [
        "# Run comparison",
        "",
        f"Source: {', '.join(str(p) for p in sources)}  ",
        f"Runs: {len(df)} ({int((df['status'] == 'completed').sum())} completed, {len(failed)} not completed)  ",
        f"Swept parameters: {', '.join(params) if params else '(none found)'}",
        "",
        markdown_table(df, shown_columns(df, params)),
        "",
    ]
    if len(failed):
        parts += ["## Failed / unfinished runs", ""]
        parts += [f"- `{r['run']}` ({r['status']}): {r['error'] or 'no error recorded'}" for _, r in failed.iterrows()]
        parts.append("")
    if leaderboard is not None:
        parts += ["## Human leaderboard (Bradley-Terry fit to every vote, reference = 0)", ""]
        parts += [markdown_table(leaderboard, list(leaderboard.columns)), ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots] + [""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    parts.append("All columns (eval/* confidence intervals, caches, wall time) are in comparison.csv.")
    path = out / "comparison.md"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def print_console(df: pd.DataFrame, params: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = shown_columns(df, params)
    table = Table(title=f"{len(df)} runs")
    for column in columns:
        table.add_column(column, justify="left" if column in ("run", "status") else "right", overflow="fold")
    for _, row in df.iterrows():
        style = None if row["status"] == "completed" else "red"
        table.add_row(*(fmt(row.get(c)) for c in columns), style=style)
    Console(width=max(120, 14 * len(columns))).print(table)


def human_leaderboard(run_dirs: list[Path], out: Path) -> pd.DataFrame | None:
    """The Bradley–Terry leaderboard over every vote of the runs (dpo_exp.human) into human_leaderboard.csv; None
    when fewer than two policies were rated."""
    from ..human.bradley_terry import leaderboard
    from ..human.store import REFERENCE, read_many

    records = read_many(run_dirs)
    if len({side["model"] for r in records for side in (r["left"], r["right"])} - {REFERENCE}) < 2:
        return None
    rows = [
        {
            "model": s.model,
            "bt_strength": s.strength,
            "ci_low": s.low,
            "ci_high": s.high,
            "p_beats_reference": s.p_beats_anchor,
            "votes": s.votes,
        }
        for s in leaderboard(records)
    ]
    board = pd.DataFrame(rows)
    atomic_write_text(out / "human_leaderboard.csv", board.to_csv(index=False))
    return board


def compare(paths: list[Path], out: Path | None = None, console: bool = True, plots: bool = True) -> pd.DataFrame:
    """Read the runs under `paths`, write comparison.csv/.md and plots into `out` (default: the first path)."""
    paths = [Path(p) for p in paths]
    run_dirs = find_run_dirs(paths)
    if not run_dirs:
        where = ", ".join(map(str, paths))
        raise UserError(f"no run directories (summary.json or .hydra/overrides.yaml) under {where}")
    out = Path(out) if out else paths[0]
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(p) for p in run_dirs]
    params = swept_params(runs)
    base = paths[0].resolve() if len(paths) == 1 else Path(os.path.commonpath([str(p) for p in run_dirs]))
    df = build_table(runs, params, base)
    atomic_write_text(out / "comparison.csv", df.to_csv(index=False))

    written: list[Path] = []
    notes: list[str] = consistency_notes(df) + provenance_notes(df) + ignored_settings(runs, params)
    if plots:
        plot_dir = out / "plots"
        plot_dir.mkdir(exist_ok=True)
        by_path = {str(run.path): run for run in runs}
        labels = {by_path[row["path"]].path: label(row, params) for _, row in df.iterrows()}
        ordered = [by_path[row["path"]] for _, row in df.iterrows()]  # the table's order: same colours, same legend
        curves = plot_learning_curves(ordered, labels, plot_dir)
        written += [curves] if curves else []
        if curves is None:
            notes.append("learning curves skipped: no run has metrics.jsonl rows")
        written += plot_metrics_vs_params(df, params, plot_dir)
        frontier, note = plot_frontier(df, params, plot_dir)
        written += [frontier] if frontier else []
        notes += [note] if note else []
    notes.append(
        f"train/* columns{TRAIN_SUFFIX}: the mean over the logged steps of each run's last epoch "
        "(metrics.jsonl); eval/* come from the final evaluation"
    )
    board = human_leaderboard(run_dirs, out)
    write_markdown(df, params, out, written, notes, paths, board)
    if console:
        print_console(df, params)
        for note in notes:
            print(f"note: {note}")
        print(f"wrote {out / 'comparison.md'}, {out / 'comparison.csv'} and {len(written)} plots in {out / 'plots'}")
    return df
