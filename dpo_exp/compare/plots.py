"""The comparison's plots: learning curves, metrics against each swept parameter, the reward-KL frontier."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..infra.storage import is_finite, read_json
from .runs import EVAL_SHOWN, Run, fmt, metric_columns

CURVES = [("loss", "loss"), ("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin")]
REWARD, REFERENCE = "eval/reward_policy", "eval/reward_reference"
# KL estimators for the frontier's x axis, preferred first: (summary key, what it is)
KL_ESTIMATORS = [
    ("eval/kl_rb", "Rao-Blackwellised: exact per-token KL summed along policy samples"),
    ("eval/kl", "Monte-Carlo: log-ratio of policy samples"),
]


def label(row: pd.Series, params: list[str]) -> str:
    return ",".join(f"{k}={fmt(row[k])}" for k in params) if params else str(row["run"])


def plot_learning_curves(runs: list[Run], labels: dict[Path, str], out: Path) -> Path | None:
    """Train curves (solid) and eval points (dashed) of every run, one panel per metric."""
    from ..infra.plots import plt, save_figure  # headless (Agg) pyplot

    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 4))
    drawn = False
    for i, run in enumerate(r for r in runs if r.metrics):
        color = f"C{i % 10}"
        for ax, (key, _) in zip(axes, CURVES):
            for split, style in (("train", "-"), ("eval", "o--")):
                pts = [(r["step"], r[key]) for r in run.metrics if r.get("split") == split and is_finite(r.get(key))]
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
    from ..infra.plots import plt, save_figure  # headless (Agg) pyplot

    done = df[df["status"] == "completed"]
    metrics = [c for c in metric_columns() + EVAL_SHOWN if c in done.columns and done[c].notna().any()]
    written = []
    for param in params:
        placed = done[done[param].notna()]  # a run with no value for the parameter (no saved config) has no x
        if not metrics or placed.empty:
            continue
        numeric = all(is_finite(v) for v in placed[param])
        others = [p for p in params if p != param]
        ncols = min(3, len(metrics))
        nrows = math.ceil(len(metrics) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.5 * nrows), squeeze=False)
        groups = placed.groupby(others, dropna=False, sort=True) if others else [((), placed)]
        for ax, metric in zip(axes.flat, metrics):
            for key, group in groups:
                group = group[group[metric].notna()]
                if group.empty:
                    continue
                if numeric:
                    group = group.sort_values(param)
                xs = group[param] if numeric else group[param].astype(str)
                key = key if isinstance(key, tuple) else (key,)
                label = ",".join(f"{p}={fmt(v)}" for p, v in zip(others, key)) or None
                ax.plot(xs, group[metric], "o-", label=label)
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel(param)
            ax.grid(alpha=0.3)
            values = [v for v in placed[param] if is_finite(v)]
            if numeric and values and min(values) > 0 and max(values) / min(values) >= 20:
                ax.set_xscale("log")
        for ax in list(axes.flat)[len(metrics) :]:
            ax.set_visible(False)
        if others:
            axes.flat[0].legend(fontsize=7)
        written.append(save_figure(fig, out / f"metrics_vs_{param.replace('/', '_').replace('.', '_')}.png"))
    return written


LINE_PER_VALUE = ("method",)  # swept keys that always get a line per value (methods are never joined into one line)


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
    keys, so a frontier never joins runs that differ in anything but the key it runs along (beta, if swept); a swept
    `method` is always a line per method (with one point per job when nothing else is swept)."""
    points = df[df[kl].notna() & df[REWARD].notna()]
    runs_along = [p for p in params if p not in LINE_PER_VALUE]
    along = "beta" if "beta" in params else (runs_along[0] if runs_along else None)
    others = [p for p in params if p != along]
    if not others:
        return along, [("policy", points.sort_values(kl))] if not points.empty else []
    lines = []
    for key, group in points.groupby(others, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        lines.append((",".join(f"{p}={fmt(v)}" for p, v in zip(others, key)), group.sort_values(kl)))
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
    from ..infra.plots import plt, save_figure  # headless (Agg) pyplot

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
            text = f"{along}={fmt(row[along])}" if along else str(row["run"])
            ax.annotate(text, (row[kl], row[REWARD]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        plot_rounds(ax, points, kl, color)
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
    plot_best_of_n_lines(ax, lines, [p for p in params if p != along])
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


def round_points(run_dir: str | Path, kl: str) -> list[tuple[float, float]]:
    """(KL, reward) of each earlier round of an iterative-DPO run (summary.json "rounds"), in order: the last round
    is the run's own point."""
    rounds = (read_json(Path(run_dir) / "summary.json") or {}).get("rounds") or []
    return [(r[kl], r[REWARD]) for r in rounds if isinstance(r.get(kl), (int, float)) and r.get(REWARD) is not None]


def plot_rounds(ax: Any, points: pd.DataFrame, kl: str, color: str) -> None:
    """Each iterative-DPO run's rounds on the frontier: a dotted path from round 1 to the run's (last round's) point."""
    for _, row in points.iterrows():
        earlier = round_points(row["path"], kl) if "path" in row and isinstance(row["path"], str) else []
        if not earlier:
            continue
        xs, ys = zip(*earlier, (row[kl], row[REWARD]))
        ax.plot(xs, ys, ":", marker=".", color=color, alpha=0.7)
        for i, (x, y) in enumerate(earlier, start=1):
            ax.annotate(f"round {i}", (x, y), fontsize=6, xytext=(4, -8), textcoords="offset points")


REFERENCE_KEYS = ("model", "sft", "seed")  # swept keys that change the reference a best-of-N samples from


def changes_reference(param: str) -> bool:
    """Whether a swept key changes the reference model (model, model.*, sft.*, seed)."""
    return param.split(".")[0].split("/")[0] in REFERENCE_KEYS


def plot_best_of_n_lines(ax: Any, lines: list[tuple[str, pd.DataFrame]], others: list[str]) -> None:
    """One best-of-N curve per frontier line, in its colour, when the other swept keys change the reference
    (model, sft.*, seed); else one curve over all runs (they share the reference)."""
    if any(changes_reference(p) for p in others):
        for i, (name, points) in enumerate(lines):
            plot_best_of_n(ax, points, color=f"C{i % 10}", label=f"best-of-N, {name}")
    else:
        plot_best_of_n(ax, pd.concat([points for _, points in lines]))


def plot_best_of_n(
    ax: Any, points: pd.DataFrame, color: str = "tab:green", label: str = "best-of-N from the reference"
) -> bool:
    """Best-of-N from the reference on the frontier: (analytic KL, reference reward + best-of-N gain), averaged
    over the runs given, which must share their reference (the caller draws one curve per reference). Returns
    whether it drew anything."""
    from ..evaluation.report import best_of_n_curve

    if "eval/reward_reference" not in points.columns:
        return False
    curves = [
        (row["eval/reward_reference"], best_of_n_curve(row.to_dict(), "eval/"))
        for _, row in points.iterrows()
        if is_finite(row["eval/reward_reference"])
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
    ax.plot(xs, ys, "s--", color=color, markersize=4, alpha=0.7, label=f"{label} (labels = N)")
    for n, x, y in zip(ns, xs, ys):
        ax.annotate(f"N={n}", (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points", color=color)
    return True


# ---------------------------------------------------------------- entry point
