"""An arena-style leaderboard: Bradley–Terry strengths fitted to all the votes, with bootstrap CIs over prompts.

P(i beats j) = sigmoid(s_i - s_j). The fit is scikit-learn's `LogisticRegression` without intercept on rows with +1
for the left model and -1 for the right one (Chatbot Arena's recipe); the anchor (the reference) has no column, so
its strength is 0 and every other strength is a log-odds of beating it. A tie is half a win each way, and every
row is mirrored (sides swapped, outcome flipped, half weight each) so the fit never depends on the sides nor
fails when one side won every vote. Votes are summed per prompt into win matrices first, so a fit (and each
bootstrap refit, a resample of prompts) has one row per ordered pair of models rather than one per vote.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluation.stats import bootstrap_indices
from .stats import BT_C, BT_RESAMPLES, SCORE, decided, models_of
from .store import REFERENCE


@dataclass
class Strength:
    """One leaderboard row: the model's strength (log-odds against the anchor), its CI, P(beats the anchor)."""

    model: str
    strength: float
    low: float
    high: float
    p_beats_anchor: float
    votes: int


def win_matrix(votes: list[tuple[str, str, float, str]], models: list[str], prompts: list[str]) -> np.ndarray:
    """(prompts, models, models): W[p, i, j] = how much model i won against model j on prompt p (a tie: 1/2 each)."""
    index, rows = {m: i for i, m in enumerate(models)}, {p: i for i, p in enumerate(prompts)}
    wins = np.zeros((len(prompts), len(models), len(models)))
    for left, right, score, prompt in votes:
        wins[rows[prompt], index[left], index[right]] += score
        wins[rows[prompt], index[right], index[left]] += 1.0 - score
    return wins


def fit_strengths(wins: np.ndarray, anchor: int) -> np.ndarray:
    """Maximum-likelihood strengths (lightly L2-regularised, BT_C) from a (models, models) win matrix, the anchor's
    fixed at 0. One weighted row per ordered pair of models and its mirror: the likelihood of the individual votes."""
    from sklearn.linear_model import LogisticRegression

    n = len(wins)
    winners, losers = np.nonzero(wins)
    x = np.zeros((len(winners), n))
    x[np.arange(len(winners)), winners] = 1.0
    x[np.arange(len(winners)), losers] = -1.0
    x = np.delete(x, anchor, axis=1)
    X = np.concatenate([x, -x])
    y = np.concatenate([np.ones(len(x)), np.zeros(len(x))])
    weight = np.tile(wins[winners, losers] / 2.0, 2)
    fitted = LogisticRegression(fit_intercept=False, C=BT_C, solver="newton-cholesky", tol=1e-8, max_iter=200).fit(
        X, y, sample_weight=weight
    )
    return np.insert(fitted.coef_[0], anchor, 0.0)


def leaderboard(
    records: list[dict], anchor: str = REFERENCE, resamples: int = BT_RESAMPLES, seed: int = 0, level: float = 0.95
) -> list[Strength]:
    """Strongest first; empty without a decided vote between two different models."""
    votes = [(*models_of(r), SCORE[r["choice"]], str(r["prompt"])) for r in decided(records)]
    votes = [v for v in votes if v[0] != v[1]]
    if not votes:
        return []
    models = sorted({m for v in votes for m in v[:2]})
    prompts = sorted({v[3] for v in votes})
    anchor_at = models.index(anchor) if anchor in models else 0
    per_prompt = win_matrix(votes, models, prompts)
    point = fit_strengths(per_prompt.sum(axis=0), anchor_at)
    draws = np.array(
        [
            fit_strengths(np.tensordot(np.bincount(sample, minlength=len(prompts)), per_prompt, axes=1), anchor_at)
            for sample in bootstrap_indices(len(prompts), resamples, seed)
        ]
    )
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(draws, [tail, 100.0 - tail], axis=0)
    counts = {m: sum(m in v[:2] for v in votes) for m in models}
    rows = [
        Strength(m, float(point[j]), float(low[j]), float(high[j]), float(1.0 / (1.0 + np.exp(-point[j]))), counts[m])
        for j, m in enumerate(models)
    ]
    return sorted(rows, key=lambda row: -row.strength)
