"""Evaluation artifacts: side-by-side samples (samples.md, W&B table) and the reward-KL plot."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..infra.storage import atomic_write_text, is_finite
from ..models.chat import prompt_text
from .metrics import SampleEval

SIDE_BY_SIDE_COLUMNS = ["prompt", "reference", "reference_score", "policy", "policy_score"]


def side_by_side_rows(result: SampleEval, count: int) -> list[dict[str, Any]]:
    """The first sample of reference and policy for the first `count` prompts (same seed: a paired comparison)."""
    rows = []
    for i, prompt in enumerate(result.policy.prompts[:count]):
        rows.append(
            {
                "prompt": prompt,
                "reference": result.reference.texts[i][0] if result.reference is not None else None,
                "reference_score": _score(result.rewards_reference, i),
                "policy": result.policy.texts[i][0],
                "policy_score": _score(result.rewards_policy, i),
            }
        )
    return rows


def _score(rewards, i: int) -> float | None:
    return None if rewards is None else float(rewards[i, 0])


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # control characters but tab and newline


def visible(text: str) -> str:
    r"""Control characters (a NUL byte in a prompt, a carriage return) written as escapes (\x00): raw, a NUL makes
    samples.md a binary file to grep and git, and a carriage return overwrites the line on a terminal."""
    return CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _block(text: str | None) -> str:
    text = "(not sampled)" if text is None else (visible(text).replace("```", "'''") or "(empty)")
    return f"```text\n{text}\n```"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def write_samples_md(path: Path, rows: list[dict[str, Any]], metrics: dict[str, Any], scorer_name: str | None) -> Path:
    """samples.md: the headline numbers, then reference vs policy completion per prompt with both scores."""
    lines = ["# Reference vs policy: side-by-side samples", ""]
    lines.append(f"Scorer: {scorer_name or 'none (reward metrics skipped)'}. Same prompt, same seed for both models.")
    lines.append("")
    keys = ("reward_reference", "reward_policy", "reward_delta", "win_rate", "win_rate_coupled", "kl_rb", "kl")
    for key in keys:  # kl_rb (never negative, lower variance) first; kl, the Monte-Carlo one, a diagnostic
        if is_finite(metrics.get(key)):
            low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
            ci = f" [95% CI {low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
            lines.append(f"- {key}: {metrics[key]:.4f}{ci}")
    for n, row in enumerate(rows, start=1):
        lines += [
            "",
            f"## Prompt {n}",
            "",
            _block(prompt_text(row["prompt"])),  # a conversation: every turn
            "",
            f"**Reference** (score {_fmt(row['reference_score'])})",
            "",
            _block(row["reference"]),
            "",
            f"**Policy** (score {_fmt(row['policy_score'])})",
            "",
            _block(row["policy"]),
        ]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def plot_reward_kl(path: Path, trace: list[dict[str, Any]], final: dict[str, Any]) -> Path | None:
    """The run on the reward-KL plane: its traced path (if any) and the final evaluation with its 95% intervals.

    y is the reward gain over the reference on the same prompts and seeds (reward_delta), so the trace (a small
    prompt set) and the final evaluation (more prompts) share one axis; the reference sits at (0, 0).
    Returns None (no plot) when there is no reward to plot.
    """
    if "reward_delta" not in final:
        return None
    from ..infra.plots import plt, save_figure  # headless (Agg) pyplot

    fig, ax = plt.subplots(figsize=(6, 4.5))
    points = [r for r in trace if is_finite(r.get("kl")) and is_finite(r.get("reward_delta"))]
    if points:
        xs, ys = [r["kl"] for r in points], [r["reward_delta"] for r in points]
        ax.plot(
            xs,
            ys,
            "o-",
            color="tab:blue",
            markersize=4,
            label=f"during training ({points[0].get('prompts')} prompts; labels = step)",
        )
        for r in points:
            ax.annotate(
                str(r["step"]), (r["kl"], r["reward_delta"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    _plot_final(ax, final)
    curve = best_of_n_curve(final)
    if curve:
        ax.plot(
            [kl for _, kl, _ in curve],
            [gain for _, _, gain in curve],
            "s--",
            color="tab:green",
            markersize=4,
            label=f"best-of-N from the reference ({final.get('bon_prompts')} prompts; labels = N)",
        )
        for n, kl, gain in curve:
            ax.annotate(str(n), (kl, gain), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.axhline(0.0, color="gray", linestyle="--", linewidth=1, label="reference")
    ax.set_xlabel("KL(policy || reference), nats per sequence (Monte-Carlo, sampled distributions)")
    ax.set_ylabel("reward gain over the reference")
    kl_note = "" if is_finite(final.get("kl")) else ", KL infinite (supports differ)"
    ax.set_title(
        f"reference reward {final['reward_reference']:.3f}, policy {final['reward_policy']:.3f}{kl_note}", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _plot_final(ax, final: dict[str, Any]) -> None:
    """The final evaluation's point with its 95% intervals; none when its KL is infinite (top-k / top-p supports
    differ: the plot's title says so)."""
    if not is_finite(final.get("kl")):
        return
    ax.errorbar(
        [final["kl"]],
        [final["reward_delta"]],
        xerr=[[final["kl"] - final["kl_ci_low"]], [final["kl_ci_high"] - final["kl"]]],
        yerr=[
            [final["reward_delta"] - final["reward_delta_ci_low"]],
            [final["reward_delta_ci_high"] - final["reward_delta"]],
        ],
        fmt="*",
        color="tab:red",
        markersize=12,
        capsize=3,
        label=f"final policy ({final.get('num_prompts')} prompts, 95% CI)",
    )


def best_of_n_curve(metrics: dict[str, Any], prefix: str = "") -> list[tuple[int, float, float]]:
    """(N, analytic KL, reward gain over the reference) of every best-of-N in `metrics` (keys [prefix]bon_*_N)."""
    head = f"{prefix}bon_delta_"
    ns = sorted(int(k[len(head) :]) for k in metrics if k.startswith(head) and k[len(head) :].isdigit())
    return [
        (n, float(metrics[f"{prefix}bon_kl_{n}"]), float(metrics[f"{head}{n}"]))
        for n in ns
        if is_finite(metrics.get(f"{prefix}bon_kl_{n}")) and is_finite(metrics.get(f"{head}{n}"))
    ]


def kl_lines(s: dict[str, Any]) -> list[str]:
    """The headline's KL line: the Rao-Blackwellised estimate (kl_rb: exact per-token KLs along the samples, never
    negative, lower variance) with its CI, the Monte-Carlo one (log-ratio of the samples, can come out negative)
    as a diagnostic; the Monte-Carlo one heads only for runs without kl_rb; or why the KL is infinite."""
    head = "kl_rb" if is_finite(s.get("eval/kl_rb")) else "kl"
    if is_finite(s.get(f"eval/{head}")):
        line = (
            f"KL(policy || reference) {s[f'eval/{head}']:.3f} nats [95% CI {s[f'eval/{head}_ci_low']:.3f}, "
            f"{s[f'eval/{head}_ci_high']:.3f}] (between the sampled, warped distributions"
        )
        if head == "kl_rb" and is_finite(s.get("eval/kl")):
            line += f"; Monte-Carlo diagnostic {s['eval/kl']:.3f} [95% CI {s['eval/kl_ci_low']:.3f}, {s['eval/kl_ci_high']:.3f}]"
        return [line + ")"]
    if is_finite(s.get("eval/kl_infinite")) and s["eval/kl_infinite"] > 0:
        return [
            f"KL(policy || reference) infinite: {s['eval/kl_infinite']:.0%} of policy samples hold a token the "
            "reference cannot draw under the same top-k / top-p"
        ]
    return []


def headline(summary: dict[str, Any]) -> list[str]:
    """The run's result in a few console lines: reward ref -> policy, delta with CI, win rate with CI, KL, stages."""
    lines = []
    s = summary
    lines += chance_lines(s)
    if isinstance(s.get("eval/reward_delta"), (int, float)):
        verdict = "significant" if s.get("eval/significant") else "NOT significant (95% CI includes 0)"
        lines.append(
            f"reward ({s.get('eval/reward_scorer', 'scorer')}) {s['eval/reward_reference']:.4f} -> "
            f"{s['eval/reward_policy']:.4f}: delta {s['eval/reward_delta']:+.4f} "
            f"[95% CI {s['eval/reward_delta_ci_low']:+.4f}, {s['eval/reward_delta_ci_high']:+.4f}], {verdict}"
        )
        if isinstance(s.get("eval/win_rate"), (int, float)):
            lines.append(
                f"win rate {s['eval/win_rate']:.3f} [95% CI {s['eval/win_rate_ci_low']:.3f}, "
                f"{s['eval/win_rate_ci_high']:.3f}] (ties {s.get('eval/tie_rate', 0.0):.2f}) on "
                f"{s.get('eval/num_prompts')} held-out prompts x {s.get('eval/num_samples')} samples "
                "(P(policy beats reference), independent draws, ties 1/2)"
            )
        if isinstance(s.get("eval/win_rate_coupled"), (int, float)):
            per_prompt = s.get("eval/win_rate_prompt_coupled")
            lines.append(
                f"same-seed diagnostics (depend on the sampler's coupling): per sample {s['eval/win_rate_coupled']:.3f}"
                + (f", per prompt (mean reward of its samples) {per_prompt:.3f}" if is_finite(per_prompt) else "")
            )
    lines += kl_lines(s)
    bon = sorted(int(k.split("_")[-1]) for k in s if k.startswith("eval/bon_delta_"))
    if bon:
        lines.append(
            "best-of-N from the reference (delta @ KL): "
            + ", ".join(f"N={n} {s[f'eval/bon_delta_{n}']:+.4f} @ {s[f'eval/bon_kl_{n}']:.2f}" for n in bon)
        )
    lines += judge_lines(s) + llm_judge_lines(s) + harness_lines(s)
    stages = [(k[len("timing/") : -2], v) for k, v in s.items() if k.startswith("timing/")]
    if stages:
        lines.append("stage times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages))
    return lines


def chance_lines(s: dict[str, Any]) -> list[str]:
    """A warning first when the judge is not shown to beat chance (its accuracy interval includes 0.5)."""
    if s.get("eval/judge_beats_chance") is not False:
        return []
    return [
        f"WARNING: the judge ({s.get('eval/reward_scorer', 'scorer')}) is not better than chance: held-out accuracy "
        f"{s['eval/judge_accuracy']:.3f} [95% CI {s['eval/judge_accuracy_ci_low']:.3f}, "
        f"{s['eval/judge_accuracy_ci_high']:.3f}] on {s.get('eval/judge_heldout')} held out includes 0.5: the reward "
        "numbers below (reward, win rates, best-of-N) are NOT meaningful"
    ]


def judge_lines(s: dict[str, Any]) -> list[str]:
    """The judge's held-out accuracy and the policy's win rate against the dataset's chosen responses."""
    lines = []
    if isinstance(s.get("eval/judge_accuracy"), (int, float)):
        n = s.get("eval/judge_heldout")
        lines.append(
            f"judge ({s.get('eval/reward_scorer', 'scorer')}) held-out accuracy {s['eval/judge_accuracy']:.3f}"
            + (
                f" [95% CI {s['eval/judge_accuracy_ci_low']:.3f}, {s['eval/judge_accuracy_ci_high']:.3f}]"
                if is_finite(s.get("eval/judge_accuracy_ci_low"))
                else ""
            )
            + (f" (n = {n} held out)" if n else "")
            + " (0.5 = chance: how far to trust its rewards)"
        )
    if isinstance(s.get("eval/win_rate_vs_chosen"), (int, float)):
        lines.append(
            f"win rate vs the dataset's chosen response {s['eval/win_rate_vs_chosen']:.3f} [95% CI "
            f"{s['eval/win_rate_vs_chosen_ci_low']:.3f}, {s['eval/win_rate_vs_chosen_ci_high']:.3f}] on "
            f"{s.get('eval/win_rate_vs_chosen_prompts')} held-out prompts (under the judge; ties 1/2)"
        )
    return lines


def llm_judge_lines(s: dict[str, Any]) -> list[str]:
    """The pairwise LLM judge's win rates (vs the reference, vs the chosen response) with CI, LC and diagnostics."""
    lines = []
    for part, against in (("", "reference"), ("vs_chosen/", "dataset's chosen response")):
        key = f"eval/llm_judge/{part}"
        if isinstance(s.get(f"{key}win_rate"), (int, float)):
            lines.append(
                f"LLM judge: policy vs {against} {s[f'{key}win_rate']:.3f} [95% CI {s[f'{key}win_rate_ci_low']:.3f}, "
                f"{s[f'{key}win_rate_ci_high']:.3f}], length-controlled {s[f'{key}win_rate_lc']:.3f}; "
                f"{s[f'{key}pairs']} pairs in both orders: consistent {s[f'{key}position_consistency']:.2f}, "
                f"ties {s[f'{key}tie_rate']:.2f}, unparsed answers {s[f'{key}parse_failure_rate']:.2f}"
            )
    return lines


def harness_lines(s: dict[str, Any]) -> list[str]:
    """The capability tax: each harness metric, reference -> policy, with the delta's standard error."""
    deltas = sorted(k[: -len("_delta")] for k in s if k.startswith("harness/") and k.endswith("_delta"))
    return [
        f"{key}: {s[f'{key}_reference']:.4f} -> {s[f'{key}_policy']:.4f} (delta {s[f'{key}_delta']:+.4f}"
        + (f" +- {s[f'{key}_delta_stderr']:.4f})" if is_finite(s.get(f"{key}_delta_stderr")) else ")")
        for key in deltas
    ]
