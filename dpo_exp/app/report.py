"""What the evaluation tab shows for a run, read from its files: eval/* metrics, plots, samples.md and the human
ratings' numbers (computed from human/ratings.jsonl when shown)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..evaluation.inputs import PLOT_FILE, SAMPLES_FILE
from ..evaluation.llm_judge import RECORDS_FILE as JUDGE_FILE
from ..human.bradley_terry import leaderboard
from ..human.store import read_many, read_ratings
from ..human.summary import human_metrics
from ..infra.storage import read_jsonl
from ..models.chat import prompt_text
from .runs import RunInfo

FRONTIER = "plots/reward_kl_frontier.png"  # written into a sweep folder by `python -m dpo_exp.compare`


# The headline first, in this order (each with its interval): what the policy gained, how often it wins, how far it
# moved, and who judged it; then every other eval/* key by name, the best-of-N curve (eval/bon_*) last.
HEADLINE = (
    "eval/reward_delta",
    "eval/win_rate",
    "eval/llm_judge/win_rate",
    "eval/llm_judge/win_rate_lc",
    "eval/kl_rb",
    "eval/kl",
    "eval/reward_scorer",
    "eval/judge_accuracy",
)


def _row(key: str, value) -> list | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return [key, round(float(value), 6) if math.isfinite(value) else str(value)]
    return [key, value] if isinstance(value, str) and key in HEADLINE else None  # the judge's name


def metrics_rows(run: RunInfo) -> list[list]:
    """[metric, value] for the eval/* entries of summary.json: the HEADLINE keys (and their CIs) first, then every
    other numeric one by name, eval/bon_* last."""
    summary = run.summary
    first = [k for key in HEADLINE for k in (key, f"{key}_ci_low", f"{key}_ci_high") if k in summary]
    rest = sorted(
        (k for k in summary if k.startswith("eval/") and k not in first),
        key=lambda k: (k.startswith("eval/bon_"), k),
    )
    rows = [_row(key, summary[key]) for key in first + rest]
    return [row for row in rows if row is not None]


def reward_kl_plot(run: RunInfo) -> str | None:
    """The sweep's reward-KL frontier when the run came from a compared sweep, else the run's own reward-KL plot."""
    candidates = ([run.sweep_dir / FRONTIER] if run.sweep_dir else []) + [run.path / PLOT_FILE]
    return next((str(p) for p in candidates if p.is_file()), None)


def curve_plots(run: RunInfo) -> list[tuple[str, str]]:
    """(path, caption) of the run's training-curve PNGs (plots/, the reward-KL plot shown separately)."""
    plots = sorted((run.path / "plots").glob("*.png"))
    return [(str(p), p.stem.replace("_", " ")) for p in plots if p.name != Path(PLOT_FILE).name]


def sample_sections(run: RunInfo) -> list[tuple[str, str]]:
    """(title, markdown) per prompt of samples.md; its header (scorer and headline numbers) as the first."""
    path = run.path / SAMPLES_FILE
    if not path.is_file():
        return [("no samples", f"{path} does not exist (the run was not evaluated)")]
    parts = re.split(r"^## ", path.read_text(), flags=re.MULTILINE)
    sections = [("overview", parts[0])]
    for part in parts[1:]:
        title, _, body = part.partition("\n")
        sections.append((title.strip(), body))
    return sections


def _verdict(verdict: str | None) -> str:
    return {"a": "the policy", "b": "the other"}.get(verdict or "", "no verdict (could not be parsed)")


def judge_sections(run: RunInfo) -> list[tuple[str, str]]:
    """(title, markdown) per pair the LLM judge compared (llm_judge.jsonl): the prompt, both completions, and the
    judge's two answers (its reasoning) with their parsed verdicts. [] when the run has no judged pairs."""
    path = run.path / JUDGE_FILE
    if not path.is_file():
        return []
    sections = []
    for i, row in enumerate(read_jsonl(path)):
        score = {1.0: "policy wins", 0.0: "policy loses"}.get(row.get("score"), "tie (1/2)")
        title = f"{i + 1}. policy vs {row.get('comparison')}: {score}"
        body = (
            f"**Prompt**\n\n{prompt_text(row.get('prompt'))}\n\n**Policy**\n\n{row.get('policy')}\n\n"
            f"**{str(row.get('comparison')).capitalize()}**\n\n{row.get('other')}\n\n"
            f"**Judge, policy shown first** (verdict: {_verdict(row.get('verdict_ab'))})\n\n"
            f"```\n{row.get('raw_ab')}\n```\n\n"
            f"**Judge, policy shown second** (verdict: {_verdict(row.get('verdict_ba'))})\n\n"
            f"```\n{row.get('raw_ba')}\n```\n"
        )
        sections.append((title, body))
    return sections


HUMAN_HEADERS = ["human/* (from human/ratings.jsonl)", "value"]
LEADERBOARD_HEADERS = ["model", "Bradley-Terry strength", "95% CI", "P(beats reference)", "votes"]


def human_rows(run: RunInfo) -> list[list]:
    """The run's human/* numbers, computed from its ratings file as it is now."""
    metrics = human_metrics(read_ratings(run.path))
    return [[key, round(value, 4) if isinstance(value, float) else value] for key, value in metrics.items()]


def leaderboard_rows(runs: list[RunInfo]) -> list[list]:
    """The Bradley–Terry leaderboard over every vote of the runs (meaningful with two policies or more)."""
    rows = leaderboard(read_many(run.path for run in runs))
    return [
        [s.model, round(s.strength, 3), f"[{s.low:.3f}, {s.high:.3f}]", round(s.p_beats_anchor, 3), s.votes]
        for s in rows
    ]
