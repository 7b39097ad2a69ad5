"""The pairwise LLM judge's estimates: win rate (prompt-bootstrap CI), length-controlled win rate, position
consistency, ties and parse failures; and which pairs are judged (policy vs reference, policy vs chosen).

Estimands (pairs asked in both orders, `judges.pairwise.PairVerdict`):
- win_rate: P(the judge prefers the policy's completion in BOTH orders), a disagreement or an unparsed answer
  counting 1/2, averaged within each prompt and then over prompts; the 95% CI resamples prompts.
- win_rate_lc: AlpacaEval 2's length-controlled win rate: a logistic regression of the pair's outcome on
  tanh(length difference / its std), read at zero length difference (sigmoid of the intercept).
- position_consistency: share of pairs whose two answers parsed and agreed; tie_rate: share scored 1/2;
  parse_failure_rate: share of answers (two a pair) without a verdict.
The same estimator reads people's votes (`judges.human_votes`, `human.stats.win_rate`): the pairwise verdicts of any
`PairwiseJudge` go through `pairwise_win_rate`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.conversation import prompt_key
from ..models.chat import completion_text
from .stats import bootstrap_indices, mean_ci

log = logging.getLogger(__name__)
RECORDS_FILE = "llm_judge.jsonl"  # every judged pair: prompt, both completions, both raw answers and verdicts


@dataclass
class JudgedPairs:
    """Pairs (prompt index, policy completion, other completion) to judge."""

    prompt_ids: list[int]
    policy: list[str]
    other: list[str]


def sample_pairs(prompts: Sequence[Any], policy: list[list[str]], other: list[list[str]], cap: int) -> JudgedPairs:
    """Policy sample j of each prompt against the other side's sample j, round by round (every prompt's sample 0
    first), so that `cap` pairs cover as many prompts as they can."""
    out = JudgedPairs([], [], [])
    rounds = max((min(len(p), len(o)) for p, o in zip(policy, other)), default=0)
    for j in range(rounds):
        for i in range(len(prompts)):
            if len(out.policy) >= cap:
                return out
            if j < min(len(policy[i]), len(other[i])):
                out.prompt_ids.append(i)
                out.policy.append(policy[i][j])
                out.other.append(other[i][j])
    return out


def length_controlled(scores: np.ndarray, length_diff: np.ndarray) -> float:
    """AlpacaEval 2's length-controlled win rate: P(win) of a logistic model of the outcome on
    tanh(length difference / std), at zero difference. A tie enters as half a win and half a loss (sample
    weights); scikit-learn fits it (C large: the intercept is not shrunk towards 1/2)."""
    from sklearn.linear_model import LogisticRegression

    scores, length_diff = np.asarray(scores, dtype=np.float64), np.asarray(length_diff, dtype=np.float64)
    if len(scores) < 2 or np.all(scores == scores[0]):
        return float(scores.mean()) if len(scores) else float("nan")
    std = length_diff.std()
    if std == 0:  # no length difference to control for: the fit's intercept is the logit of the raw rate
        return float(scores.mean())
    x = np.tanh(length_diff / std)
    features = np.concatenate([x, x])[:, None]
    labels = np.concatenate([np.ones_like(scores), np.zeros_like(scores)])
    weights = np.concatenate([scores, 1.0 - scores])
    keep = weights > 0
    if len(np.unique(labels[keep])) < 2:
        return float(scores.mean())
    model = LogisticRegression(C=1e6, max_iter=1000).fit(features[keep], labels[keep], sample_weight=weights[keep])
    return float(1.0 / (1.0 + np.exp(-model.intercept_[0])))


def pairwise_win_rate(
    verdicts: Sequence[Any], prompt_ids: Sequence[int], resamples: int, seed: int, level: float = 0.95
) -> tuple[float, float, float, int]:
    """(win rate, CI low, CI high, prompts) of a's side over `PairVerdict`s: each prompt's mean of its verdicts'
    outcomes (`scores`: one a pair for the LLM judge, one a vote for people), averaged over prompts (in the order
    of their ids); percentile bootstrap over prompts. The LLM judge and the human summary both estimate with it."""
    outcomes: dict[int, list[float]] = {}
    for verdict, prompt in zip(verdicts, prompt_ids):
        outcomes.setdefault(int(prompt), []).extend(verdict.scores)
    groups = sorted(outcomes)
    per_prompt = np.asarray([np.mean(outcomes[g]) for g in groups])
    rate, low, high = mean_ci(per_prompt, bootstrap_indices(len(groups), resamples, seed), level)
    return rate, low, high, len(groups)


def estimate(
    verdicts: Sequence[Any], prompt_ids: Sequence[int], length_diff: Sequence[float], resamples: int, seed: int
) -> dict[str, Any]:
    """The estimates of the module docstring for judged pairs (`PairVerdict`s), grouped by prompt id."""
    if not verdicts:
        return {"pairs": 0}
    scores = np.asarray([v.score for v in verdicts], dtype=np.float64)
    failures = sum(v.failures for v in verdicts)
    rate, low, high, prompts = pairwise_win_rate(verdicts, prompt_ids, resamples, seed)
    out: dict[str, Any] = {"pairs": len(verdicts), "prompts": prompts}
    out["win_rate"], out["win_rate_ci_low"], out["win_rate_ci_high"] = rate, low, high
    out["win_rate_lc"] = length_controlled(scores, np.asarray(length_diff, dtype=np.float64))
    out["position_consistency"] = float(np.mean([v.consistent for v in verdicts]))
    out["tie_rate"] = float(np.mean(scores == 0.5))
    out["parse_failures"] = int(failures)
    out["parse_failure_rate"] = failures / (2 * len(verdicts))
    return out


def judge_pairs(
    judge: Any, prompts: Sequence[Any], pairs: JudgedPairs, resamples: int, seed: int, name: str, progress: bool
) -> tuple[dict[str, Any], list[dict]]:
    """Ask the judge about `pairs` (both orders, a progress bar with an ETA) -> (estimates, one record a pair)."""
    from tqdm.auto import tqdm

    if not pairs.policy:
        return {"pairs": 0}, []
    with tqdm(
        total=2 * len(pairs.policy), desc=f"eval: LLM judge ({name})", unit="answer", disable=not progress
    ) as bar:
        verdicts = judge.compare([prompts[i] for i in pairs.prompt_ids], pairs.policy, pairs.other, bar.update)
    length_diff = [len(completion_text(a)) - len(completion_text(b)) for a, b in zip(pairs.policy, pairs.other)]
    metrics = estimate(verdicts, pairs.prompt_ids, length_diff, resamples, seed)
    records = [
        {
            "comparison": name,
            "prompt": prompts[i],
            "policy": completion_text(a),
            "other": completion_text(b),
            "score": v.score,
            **v.to_dict(),
        }
        for i, a, b, v in zip(pairs.prompt_ids, pairs.policy, pairs.other, verdicts)
    ]
    return metrics, records


def llm_judge_metrics(
    judge: Any,
    result: Any,
    references: dict[str, Any],
    max_pairs: int,
    vs_chosen: bool,
    resamples: int,
    seed: int,
    progress: bool = False,
) -> tuple[dict[str, Any], list[dict]]:
    """`llm_judge/*` (policy vs the reference's samples, the independent draws when there are any) and
    `llm_judge/vs_chosen/*` (policy vs the dataset's chosen response) metrics, and the judged pairs' records.
    New and cached judge calls are counted (`llm_judge/calls`, `llm_judge/cached_calls`)."""
    prompts = result.policy.prompts
    other = result.reference_independent or result.reference
    metrics: dict[str, Any] = {"llm_judge/judge": judge.identity()}
    records: list[dict] = []
    if other is not None:
        pairs = sample_pairs(prompts, result.policy.texts, other.texts, max_pairs)
        found, rows = judge_pairs(judge, prompts, pairs, resamples, seed, "reference", progress)
        metrics.update({f"llm_judge/{k}": v for k, v in found.items()})
        records += rows
    chosen = [references.get(prompt_key(p)) for p in prompts]
    if vs_chosen and any(c is not None for c in chosen):
        # one chosen response per prompt: the policy's first sample against it
        texts = [[completion_text(c)] if c is not None else [] for c in chosen]
        pairs = sample_pairs(prompts, [t[:1] for t in result.policy.texts], texts, max_pairs)
        found, rows = judge_pairs(judge, prompts, pairs, resamples, seed, "chosen", progress)
        metrics.update({f"llm_judge/vs_chosen/{k}": v for k, v in found.items()})
        records += rows
    metrics["llm_judge/calls"], metrics["llm_judge/cached_calls"] = judge.calls, judge.cached
    log.info("LLM judge: %d new calls, %d answered from the cache", judge.calls, judge.cached)
    return metrics, records
