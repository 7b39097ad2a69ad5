"""What a judge adds to an evaluation: its identity and held-out accuracy, and the policy's completions against
the dataset's chosen responses (the DPO paper's HH win rate, with the judge in place of GPT-4)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.conversation import prompt_key
from ..models.chat import completion_text
from .metrics import SampleEval
from .stats import bootstrap_indices, mean_ci, paired_wins, wilson_interval


def judge_metrics(scorer: Any) -> dict[str, Any]:
    """judge_identity (it changes whenever the scores could), and judge_accuracy / judge_heldout when the judge
    measured itself on held-out data (a trained reward model on held-out pairs, tfidf_logreg on held-out reviews),
    with its Wilson 95% interval and `judge_beats_chance`: False when that interval includes 0.5, i.e. the judge
    is not shown to be better than a coin, so reward numbers under it are not meaningful."""
    info = getattr(scorer, "info", {}) or {}
    out: dict[str, Any] = {
        "judge_identity": scorer.identity(),
        "judge": {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool)) or v is None},
    }
    if isinstance(info.get("heldout_accuracy"), (int, float)):
        out["judge_accuracy"] = float(info["heldout_accuracy"])
        n = info.get("heldout_pairs", info.get("n_heldout"))
        if isinstance(n, int):
            out["judge_heldout"] = n
            low, high = wilson_interval(out["judge_accuracy"], n)
            out["judge_accuracy_ci_low"], out["judge_accuracy_ci_high"] = low, high
            out["judge_beats_chance"] = bool(low > 0.5)
    return out


def win_rate_vs_chosen(
    scorer: Any, result: SampleEval, references: dict[str, Any], with_prompt: bool, resamples: int, seed: int
) -> dict[str, Any]:
    """Share of the policy's samples the judge scores above the dataset's chosen response to the same prompt (ties
    count half), averaged per prompt, with a bootstrap 95% CI over prompts. Only prompts with a chosen response
    count (`win_rate_vs_chosen_prompts`); none -> {}. `references` is keyed by `prompt_key` (a conversation's is
    its canonical JSON); conversations reach the judge as messages (it formats them as it was trained)."""
    from ..judges import score_completions

    if result.rewards_policy is None:
        return {}
    keys = [prompt_key(prompt) for prompt in result.policy.prompts]
    rows = [i for i, key in enumerate(keys) if references.get(key) is not None]
    if not rows:
        return {}
    prompts = [result.policy.prompts[i] for i in rows]
    answers = [completion_text(references[keys[i]]) for i in rows]
    chosen = np.asarray(score_completions(scorer, prompts, answers, with_prompt), dtype=np.float64)
    policy = result.rewards_policy[rows]
    wins = paired_wins(policy, np.repeat(chosen[:, None], policy.shape[1], axis=1)).mean(axis=1)
    idx = bootstrap_indices(len(rows), resamples, seed)
    out: dict[str, Any] = {"win_rate_vs_chosen_prompts": len(rows), "reward_chosen": float(chosen.mean())}
    out["win_rate_vs_chosen"], out["win_rate_vs_chosen_ci_low"], out["win_rate_vs_chosen_ci_high"] = mean_ci(wins, idx)
    return out
