"""The human numbers, as pure functions of vote records: win rates with bootstrap CIs over prompts, agreement with
the automatic judge (percent and Cohen's kappa) and a Bradley–Terry leaderboard (scikit-learn's logistic regression).

A vote between model a (left) and model b (right) scores 1 for the left one when it was preferred, 0 when the right
one was, 1/2 on a tie; skips count nowhere. Intervals resample PROMPTS (all votes on a prompt together), as the
automatic evaluation's do. The win rate reads the votes through the pairwise-judge interface
(`judges.human_votes.HumanVotes`) and estimates it with the LLM judge's estimator: sample -> judge -> estimate.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.conversation import prompt_key
from ..evaluation.llm_judge import pairwise_win_rate
from ..judges.human_votes import REFERENCE, HumanVotes

SCORE = {"left": 1.0, "right": 0.0, "tie": 0.5}  # the left model's score per decided choice
RESAMPLES = 1000  # bootstrap resamples of the win-rate intervals
BT_RESAMPLES = 200  # refits of the Bradley–Terry interval (each is one logistic regression)
BT_C = 100.0  # inverse L2 strength: near the plain maximum-likelihood fit, yet finite when one model won every vote


def models_of(record: dict) -> tuple[str, str]:
    return str(record["left"]["model"]), str(record["right"]["model"])


def decided(records: list[dict]) -> list[dict]:
    """Votes with a preference or a tie (skips dropped)."""
    return [r for r in records if r.get("choice") in SCORE]


@dataclass
class WinRate:
    """The share of votes a policy won against the reference (ties 1/2): mean over prompts of the per-prompt
    share, with its percentile bootstrap interval over prompts."""

    rate: float
    low: float
    high: float
    votes: int
    prompts: int


def against_reference(records: list[dict]) -> list[dict]:
    """Decided votes between a policy and the reference (two policies, or the reference against itself, are not)."""
    out = []
    for record in decided(records):
        left, right = models_of(record)
        if (left == REFERENCE) != (right == REFERENCE):
            out.append(record)
    return out


def win_rate(records: list[dict], resamples: int = RESAMPLES, seed: int = 0, level: float = 0.95) -> WinRate | None:
    """The policy's win rate against the reference over `records`; None without a decided vote between them.

    Read the way every pairwise judge is: the votes as a judge (`judges.human_votes.HumanVotes`) asked about each
    (prompt, policy text, reference text) they were cast on, its verdicts estimated by the LLM judge's estimator
    (`evaluation.llm_judge.pairwise_win_rate`: each prompt's mean over its votes, then over prompts)."""
    votes = against_reference(records)
    if not votes:
        return None
    pairs: dict[tuple[str, Any, Any], Any] = {}  # (prompt key, policy text, reference text) -> prompt
    for record in votes:
        policy, reference = ("left", "right") if record["right"]["model"] == REFERENCE else ("right", "left")
        pairs.setdefault(
            (prompt_key(record["prompt"]), record[policy].get("text"), record[reference].get("text")), record["prompt"]
        )
    keys, policy_texts, reference_texts = (list(column) for column in zip(*pairs))
    verdicts = HumanVotes(votes, b_model=REFERENCE).compare(list(pairs.values()), policy_texts, reference_texts)
    ids = {key: i for i, key in enumerate(dict.fromkeys(keys))}  # prompts in first-voted order
    rate, low, high, n = pairwise_win_rate(verdicts, [ids[k] for k in keys], resamples, seed, level)
    return WinRate(rate, low, high, sum(len(v.votes) for v in verdicts), n)


def per_rater(records: list[dict], resamples: int = RESAMPLES, seed: int = 0) -> dict[str, WinRate]:
    """Each rater's own win rate (raters without a vote against the reference are left out)."""
    raters = sorted({str(r.get("rater") or "anonymous") for r in records})
    out = {}
    for rater in raters:
        mine = [r for r in records if str(r.get("rater") or "anonymous") == rater]
        result = win_rate(mine, resamples, seed)
        if result is not None:
            out[rater] = result
    return out


def judge_choice(record: dict) -> str | None:
    """What the automatic judge would have voted on the pair: the higher-scored side, a tie on equal scores."""
    left, right = record["left"].get("judge_score"), record["right"].get("judge_score")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (left, right)):
        return None
    return "left" if left > right else "right" if right > left else "tie"


@dataclass
class Agreement:
    """How often people and the automatic judge chose the same side (ties included as a third answer)."""

    judge: str | None
    percent: float
    kappa: float | None  # None when undefined (a single answer throughout)
    votes: int


def judge_agreement(records: list[dict]) -> Agreement | None:
    """Agreement with the judge's scores stored in the records; None when no decided vote has them."""
    from sklearn.metrics import cohen_kappa_score

    pairs = [(r["choice"], judge_choice(r)) for r in decided(records)]
    pairs = [(human, judge) for human, judge in pairs if judge is not None]
    if not pairs:
        return None
    human, judge = zip(*pairs)
    percent = 100.0 * float(np.mean([h == j for h, j in pairs]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a single answer throughout: kappa is 0/0, reported as None
        kappa = float(cohen_kappa_score(human, judge, labels=["left", "right", "tie"]))
    names = [r.get("judge") for r in decided(records) if r.get("judge")]
    return Agreement(names[0] if names else None, percent, kappa if math.isfinite(kappa) else None, len(pairs))
