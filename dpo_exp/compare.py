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
- a console table;
- with --wandb: a `sweep-summary` W&B run in the sweep's group and a saved W&B workspace (dpo_exp.sweep_summary).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UserError
from .storage import atomic_write_text, read_json, read_jsonl

# (column as W&B shows it, summary.json key as TRL names it)
FINAL_METRICS = [
    ("train/loss", "loss"),
    ("eval/loss", "eval_loss"),
    ("train/rewards/accuracies", "rewards/accuracies"),
    ("eval/rewards/accuracies", "eval_rewards/accuracies"),
    ("train/rewards/margins", "rewards/margins"),
    ("eval/rewards/margins", "eval_rewards/margins"),
]
# Sampling-based evaluation (dpo_exp.evaluate writes them as eval/* keys): shown in the markdown/console table.
EVAL_SHOWN = [
    "eval/reward_policy",
    "eval/reward_reference",
    "eval/reward_delta",
    "eval/win_rate",
    "eval/win_rate_prompt",
    "eval/kl",
]
CURVES = [("loss", "loss"), ("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin")]
SKIP_DIRS = {"wandb", "checkpoints", "model", "plots", "__pycache__"}
IGNORED_KEYS = ("hydra.", "hydra/", "resume", "cache_dir", "logger")  # never treated as swept parameters
REWARD, REFERENCE = "eval/reward_policy", "eval/reward_reference"
# KL estimators for the frontier's x axis, preferred first: (summary key, what it is)
KL_ESTIMATORS = [
    ("eval/kl_rb", "Rao-Blackwellised: exact per-token KL summed along policy samples"),
    ("eval/kl", "Monte-Carlo: log-ratio of policy samples"),
]
TRAIN_SUFFIX = " (last-epoch mean)"  # train/* columns: mean over the last epoch's logged steps, not the last step


@dataclass
class Run:
    """One run directory's files."""

    path: Path
    overrides: dict[str, str]
    summary: dict[str, Any]
    metrics: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.summary.get("status") or ("unknown" if self.summary else "no summary"))


# ---------------------------------------------------------------- reading


def is_run_dir(path: Path) -> bool:
    return (path / "summary.json").is_file() or (path / ".hydra" / "overrides.yaml").is_file()


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories in `paths` (each a run dir or a folder searched recursively), in a stable order."""
    found: list[Path] = []
    for root in paths:
        if not root.exists():
            raise UserError(f"{root} does not exist")
        if is_run_dir(root):
            found.append(root)
            continue
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            if here != root and is_run_dir(here):
                found.append(here)
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
    unique = list(dict.fromkeys(p.resolve() for p in found))

    def order(p: Path) -> tuple:
        return (str(p.parent), int(p.name) if p.name.isdigit() else math.inf, p.name)

    return sorted(unique, key=order)


def _read_overrides(path: Path) -> dict[str, str]:
    file = path / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return {}
    from omegaconf import OmegaConf

    items = OmegaConf.to_container(OmegaConf.load(file)) or []
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def load_run(path: Path) -> Run:
    metrics_file = path / "metrics.jsonl"
    metrics = read_jsonl(metrics_file) if metrics_file.is_file() else []
    return Run(path, _read_overrides(path), read_json(path / "summary.json") or {}, metrics)


def swept_params(runs: list[Run]) -> list[str]:
    """Keys the runs were swept over: the runs' recorded sweep keys, then any override whose value differs."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in (run.summary.get("sweep") or {}) if k not in keys]
    all_keys = sorted({k for run in runs for k in run.overrides})
    for key in all_keys:
        if key in keys or key.startswith(IGNORED_KEYS):
            continue
        if len({run.overrides.get(key) for run in runs}) > 1:
            keys.append(key)
    return keys


def _number(value: Any) -> Any:
    """'0.1' -> 0.1, '8' -> 8, anything else unchanged (so numeric parameters sort and plot as numbers)."""
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                continue
    return value


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def last_epoch_means(metrics: list[dict]) -> dict[str, float]:
    """Each train metric averaged over the logged steps of the last (possibly partial) epoch of metrics.jsonl."""
    rows = [r for r in metrics if r.get("split") == "train" and _finite(r.get("epoch"))]
    if not rows:
        return {}
    last = math.ceil(round(max(r["epoch"] for r in rows), 6)) - 1  # the epoch that was running at the end
    rows = [r for r in rows if r["epoch"] > last + 1e-9]
    keys = dict.fromkeys(k for r in rows for k in r if k not in ("split", "step", "epoch"))
    out = {}
    for key in keys:
        values = [r[key] for r in rows if _finite(r.get(key))]
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
            row[key] = _number(run.overrides.get(key, (s.get("sweep") or {}).get(key)))
        row["status"] = run.status
        train = last_epoch_means(run.metrics)
        for column, key in FINAL_METRICS:
            if column.startswith("train/"):
                row[column + TRAIN_SUFFIX] = train.get(key)
            else:
                row[column] = s.get(key) if _finite(s.get(key)) else None
        for key in sorted(k for k, v in s.items() if k.startswith("eval/") and _finite(v)):
            row[key] = s[key]
        row["wall_time_s"] = s.get("wall_time_s")
        row["ref_logps_cache"] = (s.get("ref_logps") or {}).get("cache")
        row["pairs_cache"] = (s.get("pairs") or {}).get("cache") if isinstance(s.get("pairs"), dict) else None
        row["name"] = s.get("name")
        row["error"] = s.get("error")
        row["path"] = str(run.path)
        rows.append(row)
    df = pd.DataFrame(rows)
    if params:
        df = df.sort_values(by=params, key=lambda col: col.map(lambda v: (isinstance(v, str), v)), kind="stable")
    return df.reset_index(drop=True)


def metric_columns() -> list[str]:
    """The table's columns for FINAL_METRICS (train/* ones carry TRAIN_SUFFIX)."""
    return [c + TRAIN_SUFFIX if c.startswith("train/") else c for c, _ in FINAL_METRICS]


def shown_columns(df: pd.DataFrame, params: list[str]) -> list[str]:
    """The columns of the markdown/console table (the csv has them all)."""
    metric_cols = metric_columns() + EVAL_SHOWN
    present = [c for c in metric_cols if c in df.columns and df[c].notna().any()]
    return ["run", *params, "status", *present]


# ---------------------------------------------------------------- writing


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_markdown(
    df: pd.DataFrame, params: list[str], out: Path, plots: list[Path], notes: list[str], sources: list[Path]
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
        table.add_row(*(_fmt(row.get(c)) for c in columns), style=style)
    Console(width=max(120, 14 * len(columns))).print(table)


# ---------------------------------------------------------------- plots


def _label(row: pd.Series, params: list[str]) -> str:
    return ",".join(f"{k}={_fmt(row[k])}" for k in params) if params else str(row["run"])


def plot_learning_curves(runs: list[Run], labels: dict[Path, str], out: Path) -> Path | None:
    """Train curves (solid) and eval points (dashed) of every run, one panel per metric."""
    from .plots import plt, save_figure  # headless (Agg) pyplot

    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 4))
    drawn = False
    for i, run in enumerate(r for r in runs if r.metrics):
        color = f"C{i % 10}"
        for ax, (key, _) in zip(axes, CURVES):
            for split, style in (("train", "-"), ("eval", "o--")):
                pts = [(r["step"], r[key]) for r in run.metrics if r.get("split") == split and _finite(r.get(key))]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, style, color=color, markersize=4, label=f"{labels[run.path]} ({split})")
                    drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for ax, (_, title) in zip(axes, CURVES):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save_figure(fig, out / "learning_curves.png", bbox_inches="tight")


def plot_metrics_vs_params(df: pd.DataFrame, params: list[str], out: Path) -> list[Path]:
    """Final metrics against each swept parameter; one line per combination of the other swept parameters."""
    from .plots import plt, save_figure  # headless (Agg) pyplot

    done = df[df["status"] == "completed"]
    metrics = [c for c in metric_columns() + EVAL_SHOWN if c in done.columns and done[c].notna().any()]
    written = []
    for param in params:
        if not metrics or done[param].isna().all():
            continue
        numeric = all(_finite(v) for v in done[param])
        others = [p for p in params if p != param]
        ncols = min(3, len(metrics))
        nrows = math.ceil(len(metrics) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.5 * nrows), squeeze=False)
        groups = done.groupby(others, dropna=False, sort=True) if others else [((), done)]
        for ax, metric in zip(axes.flat, metrics):
            for key, group in groups:
                group = group[group[metric].notna()]
                if group.empty:
                    continue
                if numeric:
                    group = group.sort_values(param)
                xs = group[param] if numeric else group[param].astype(str)
                key = key if isinstance(key, tuple) else (key,)
                label = ",".join(f"{p}={_fmt(v)}" for p, v in zip(others, key)) or None
                ax.plot(xs, group[metric], "o-", label=label)
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel(param)
            ax.grid(alpha=0.3)
            values = [v for v in done[param] if _finite(v)]
            if numeric and values and min(values) > 0 and max(values) / min(values) >= 20:
                ax.set_xscale("log")
        for ax in list(axes.flat)[len(metrics) :]:
            ax.set_visible(False)
        if others:
            axes.flat[0].legend(fontsize=7)
        written.append(save_figure(fig, out / f"metrics_vs_{param.replace('/', '_').replace('.', '_')}.png"))
    return written


def frontier_x(df: pd.DataFrame) -> str | None:
    """The KL column for the frontier: the first of KL_ESTIMATORS that every run with a policy reward has."""
    if REWARD not in df.columns:
        return None
    scored = df[df[REWARD].notna()]
    for key, _ in KL_ESTIMATORS:
        if key in df.columns and not scored.empty and scored[key].notna().all():
            return key
    return None


def frontier_lines(df: pd.DataFrame, params: list[str], kl: str) -> tuple[str | None, list[tuple[str, pd.DataFrame]]]:
    """(the key a frontier runs along, [(label, points sorted by KL)]): one line per combination of the other swept
    keys, so a frontier never joins runs that differ in anything but the key it runs along (beta, if swept)."""
    points = df[df[kl].notna() & df[REWARD].notna()]
    along = "beta" if "beta" in params else (params[0] if params else None)
    others = [p for p in params if p != along]
    if not others:
        return along, [("policy", points.sort_values(kl))] if not points.empty else []
    lines = []
    for key, group in points.groupby(others, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        lines.append((",".join(f"{p}={_fmt(v)}" for p, v in zip(others, key)), group.sort_values(kl)))
    return along, lines


def frontier_xlabel(kl: str) -> str:
    """The x-axis label, naming the estimator shown."""
    return f"KL(policy || reference) [nats], {kl}: {dict(KL_ESTIMATORS)[kl].split(':')[0]} estimator"


def plot_frontier(df: pd.DataFrame, params: list[str], out: Path) -> tuple[Path | None, str | None]:
    """The DPO paper's reward-KL frontier with 95% CIs; each line's reference model sits at KL 0 in its colour."""
    kl = frontier_x(df)
    if kl is None:
        return None, (
            "reward-KL frontier skipped: no run has eval/kl_rb or eval/kl with eval/reward_policy "
            "(enable the evaluation with a reward, e.g. eval.enabled=true eval/reward=vader)"
        )
    along, lines = frontier_lines(df, params, kl)
    if not lines:
        return None, f"reward-KL frontier skipped: no run has both {kl} and {REWARD}"
    from .plots import plt, save_figure  # headless (Agg) pyplot

    fig, ax = plt.subplots(figsize=(6.5, 4.5))

    def err(points: pd.DataFrame, key: str) -> Any:
        low, high = f"{key}_ci_low", f"{key}_ci_high"
        if low in points.columns and high in points.columns and points[low].notna().all():
            return [(points[key] - points[low]).clip(lower=0), (points[high] - points[key]).clip(lower=0)]
        return None

    for i, (label, points) in enumerate(lines):
        color = f"C{i % 10}"
        ax.errorbar(
            points[kl],
            points[REWARD],
            xerr=err(points, kl),
            yerr=err(points, REWARD),
            fmt="o-",
            capsize=3,
            color=color,
            label=label,
        )
        for _, row in points.iterrows():
            text = f"{along}={_fmt(row[along])}" if along else str(row["run"])
            ax.annotate(text, (row[kl], row[REWARD]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        if REFERENCE in points.columns and points[REFERENCE].notna().any():
            refs = points[points[REFERENCE].notna()]
            ax.errorbar(
                [0.0] * len(refs),
                refs[REFERENCE],
                yerr=err(refs, REFERENCE),
                fmt="x",
                capsize=3,
                color=color,
                label="reference (KL 0)" if i == 0 else None,
            )
    plot_best_of_n(ax, pd.concat([points for _, points in lines]))
    ax.set_xlabel(frontier_xlabel(kl), fontsize=8)
    ax.set_ylabel("reward of policy samples")
    ax.set_title(f"reward-KL frontier along {along}" if along else "reward-KL frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    note = (
        f"reward-KL frontier: x = {kl} ({dict(KL_ESTIMATORS)[kl]}), one line along {along or 'runs'} per "
        f"combination of the other swept keys ({len(lines)} line(s))"
    )
    return save_figure(fig, out / "reward_kl_frontier.png"), note


def plot_best_of_n(ax: Any, points: pd.DataFrame) -> bool:
    """Best-of-N from the reference on the frontier: (analytic KL, reference reward + best-of-N gain), averaged
    over the runs that report it (a sweep's runs share reference and prompts). Returns whether it drew anything."""
    from .evaluation.report import best_of_n_curve

    if "eval/reward_reference" not in points.columns:
        return False
    curves = [
        (row["eval/reward_reference"], best_of_n_curve(row.to_dict(), "eval/"))
        for _, row in points.iterrows()
        if _finite(row["eval/reward_reference"])
    ]
    curves = [(ref, curve) for ref, curve in curves if curve]
    if not curves:
        return False
    by_n: dict[int, list[tuple[float, float]]] = {}
    for ref, curve in curves:
        for n, kl, gain in curve:
            by_n.setdefault(n, []).append((kl, ref + gain))
    ns = sorted(by_n)
    xs = [sum(kl for kl, _ in by_n[n]) / len(by_n[n]) for n in ns]
    ys = [sum(y for _, y in by_n[n]) / len(by_n[n]) for n in ns]
    ax.plot(xs, ys, "s--", color="tab:green", markersize=4, label="best-of-N from the reference (labels = N)")
    for n, x, y in zip(ns, xs, ys):
        ax.annotate(f"N={n}", (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points", color="tab:green")
    return True


# ---------------------------------------------------------------- entry point


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
    notes: list[str] = []
    if plots:
        plot_dir = out / "plots"
        plot_dir.mkdir(exist_ok=True)
        by_path = {str(run.path): run for run in runs}
        labels = {by_path[row["path"]].path: _label(row, params) for _, row in df.iterrows()}
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
    write_markdown(df, params, out, written, notes, paths)
    if console:
        print_console(df, params)
        for note in notes:
            print(f"note: {note}")
        print(f"wrote {out / 'comparison.md'}, {out / 'comparison.csv'} and {len(written)} plots in {out / 'plots'}")
    return df


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_exp.compare", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="a multirun folder and/or run directories")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the first PATH)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log a sweep-summary W&B run in the sweep's group and build its W&B workspace",
    )
    args = parser.parse_args(argv)
    try:
        compare(args.paths, args.out, console=True, plots=not args.no_plots)
        if args.wandb:
            from .sweep_summary import log_sweep_summary

            log_sweep_summary(args.out or args.paths[0], args.paths)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
