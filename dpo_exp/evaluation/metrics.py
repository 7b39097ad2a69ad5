"""The measurements: reward and win rate of fresh samples, Monte-Carlo KL, implicit-reward classification.

Everything here takes in-memory models (a `PolicyReference`) and plain inputs, so it is testable without a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..generation import Samples, generate_samples, sample_sequences
from ..models import context_length
from ..models.chat import prompt_text
from .logprobs import pair_sequences, sequence_kl, sequence_logprobs
from .policy_ref import PolicyReference
from .stats import bootstrap_indices, describe, mean_ci, paired_wins

INDEPENDENT_SEED_OFFSET = 7_919  # seed offset of the independent reference samples (eval/win_rate_independent)


@dataclass
class SampleSettings:
    """How evaluation samples are drawn and scored (resolved from the `eval` and `generation` config blocks)."""

    gen_cfg: Any  # the `generation` block: temperature, top_k, top_p, batch_size
    num_samples: int
    max_new_tokens: int
    seed: int
    logprob_batch_size: int = 8
    score_with_prompt: bool = False  # score prompt + completion (reviews) instead of the completion alone
    progress: bool = False


@dataclass
class SampleEval:
    """Samples from policy and reference on the same prompts, their scores (prompts x samples) and the KL."""

    policy: Samples
    reference: Samples | None
    rewards_policy: np.ndarray | None
    rewards_reference: np.ndarray | None
    kl: np.ndarray  # per policy sample: sum of log pi - log pi_ref over its tokens (Monte-Carlo)
    kl_rb: np.ndarray | None = None  # per policy sample: sum of exact per-token KLs along it (low variance)
    rewards_reference_independent: np.ndarray | None = None  # reference samples from an independent seed


def score_samples(scorer, samples: Samples, with_prompt: bool) -> np.ndarray:
    """Scores as a (prompts, samples) array."""
    from ..judges import score_completions

    flat = list(samples.flat())
    prompts, completions = [prompt_text(samples.prompts[i]) for i, _ in flat], [text for _, text in flat]
    scores = np.asarray(score_completions(scorer, prompts, completions, with_prompt), dtype=np.float64)
    return scores.reshape(len(samples.prompts), -1)


def kl_estimates(pair: PolicyReference, tokenizer, samples: Samples, settings: SampleSettings):
    """KL(policy || reference) per policy sample, as (mc, rb) arrays of shape (prompts, samples).

    mc: log pi(y|x) - log pi_ref(y|x) over the generated tokens; its mean over the policy's samples estimates the
    sequence-level KL (exactly so when sampling is pure: temperature 1, no top-k / top-p). rb: the same
    expectation with the exact per-token KL at each sampled prefix (much lower variance; see logprobs.sequence_kl).
    """
    sequences = sample_sequences(tokenizer, samples, settings.max_new_tokens, context_length(pair.policy))
    mc, rb = sequence_kl(
        pair.policy,
        pair.reference,
        sequences,
        tokenizer.pad_token_id,
        settings.logprob_batch_size,
        desc="eval: KL(policy || reference)" if settings.progress else None,
    )
    shape = (len(samples.prompts), -1)
    return mc.reshape(shape), rb.reshape(shape)


def sample_and_score(
    pair: PolicyReference,
    tokenizer,
    prompts: Sequence[str],
    settings: SampleSettings,
    scorer=None,
    reference_samples: Samples | None = None,
    with_reference: bool = True,
    independent: bool = True,
) -> SampleEval:
    """Sample from the policy and the reference with the same seed; score both; KL of the policy's samples.

    `reference_samples` reuses earlier reference samples (the reference does not change during training);
    with_reference=False skips the reference samples when there is no scorer (the KL only needs the policy's).
    independent=True (with a scorer) also scores reference samples drawn with another seed, for the unpaired
    win rate.
    """

    def draw(model, desc: str, seed_offset: int = 0) -> Samples:
        return generate_samples(
            model,
            tokenizer,
            list(prompts),
            settings.gen_cfg,
            settings.seed + seed_offset,
            num_samples=settings.num_samples,
            max_new_tokens=settings.max_new_tokens,
            desc=desc,
            progress=settings.progress,
            paired=True,  # compared sample by sample with the other model's, same seed
        )

    policy_samples = draw(pair.policy, "eval: policy samples")
    if reference_samples is None and (with_reference or scorer is not None):
        with pair.reference() as reference:
            reference_samples = draw(reference, "eval: reference samples")
    kl, kl_rb = kl_estimates(pair, tokenizer, policy_samples, settings)
    rewards_policy = rewards_reference = rewards_independent = None
    if scorer is not None:
        rewards_policy = score_samples(scorer, policy_samples, settings.score_with_prompt)
        rewards_reference = score_samples(scorer, reference_samples, settings.score_with_prompt)
        if independent:
            with pair.reference() as reference:
                other = draw(reference, "eval: reference samples (independent seed)", INDEPENDENT_SEED_OFFSET)
            rewards_independent = score_samples(scorer, other, settings.score_with_prompt)
    return SampleEval(
        policy_samples, reference_samples, rewards_policy, rewards_reference, kl, kl_rb, rewards_independent
    )


def reward_kl_metrics(result: SampleEval, resamples: int, seed: int) -> dict[str, Any]:
    """Reward (policy, reference, delta), win rates and KL, with bootstrap intervals over prompts.

    win_rate: share of (prompt, sample index) pairs where the policy's sample outscores the reference's (ties 1/2);
    win_rate_prompt: share of prompts where the policy's MEAN reward over its samples beats the reference's (ties
    1/2), the per-prompt comparison of ../shared/CALIBRATION.md; averaging samples first makes it the larger of the
    two when the policy is better on average.

    `_std` is the spread of single-sample values; the intervals resample prompts (per-prompt means), with the same
    resampled prompt sets for every metric, so reward_delta's interval is a paired one.
    """
    kl = result.kl
    n_prompts = kl.shape[0]
    idx = bootstrap_indices(n_prompts, resamples, seed)
    out: dict[str, Any] = {"kl": float(kl.mean()), "kl_std": float(kl.std())}
    _, out["kl_ci_low"], out["kl_ci_high"] = mean_ci(kl.mean(axis=1), idx)
    if result.kl_rb is not None:
        out["kl_rb"], out["kl_rb_std"] = float(result.kl_rb.mean()), float(result.kl_rb.std())
        _, out["kl_rb_ci_low"], out["kl_rb_ci_high"] = mean_ci(result.kl_rb.reshape(n_prompts, -1).mean(axis=1), idx)
    if result.rewards_policy is None:
        return out
    for name, rewards in (("reward_policy", result.rewards_policy), ("reward_reference", result.rewards_reference)):
        out[name] = float(rewards.mean())
        out[f"{name}_std"] = float(rewards.std())
        _, out[f"{name}_ci_low"], out[f"{name}_ci_high"] = mean_ci(rewards.mean(axis=1), idx)
    delta = (result.rewards_policy - result.rewards_reference).mean(axis=1)
    out["reward_delta"], out["reward_delta_ci_low"], out["reward_delta_ci_high"] = mean_ci(delta, idx)
    out["significant"] = significant(out["reward_delta_ci_low"], out["reward_delta_ci_high"])
    wins = paired_wins(result.rewards_policy, result.rewards_reference)
    out["win_rate"], out["win_rate_ci_low"], out["win_rate_ci_high"] = mean_ci(wins.mean(axis=1), idx)
    out["tie_rate"] = float((wins == 0.5).mean())
    prompt_wins = paired_wins(result.rewards_policy.mean(axis=1), result.rewards_reference.mean(axis=1))
    out["win_rate_prompt"], out["win_rate_prompt_ci_low"], out["win_rate_prompt_ci_high"] = mean_ci(prompt_wins, idx)
    if result.rewards_reference_independent is not None:
        wins = paired_wins(result.rewards_policy, result.rewards_reference_independent)
        out["win_rate_independent"], out["win_rate_independent_ci_low"], out["win_rate_independent_ci_high"] = mean_ci(
            wins.mean(axis=1), idx
        )
        out["tie_rate_independent"] = float((wins == 0.5).mean())
    return out


def significant(ci_low: float, ci_high: float) -> bool:
    """True when a 95% interval of a difference excludes 0 (the reward gain is not a coin flip)."""
    return bool(ci_low > 0.0 or ci_high < 0.0)


def implicit_rewards(
    pair: PolicyReference,
    tokenizer,
    pairs: Sequence[dict],
    beta: float,
    max_length: int | None,
    batch_size: int = 8,
    truncation_mode: str = "keep_start",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """DPO's implicit reward beta * log(pi/pi_ref) of every pair's chosen and rejected response, on the token ids
    and truncation (`trainer.max_length`, `trainer.truncation_mode`) the trainer used."""
    limit = context_length(pair.policy)
    max_length = min(int(max_length), limit) if max_length else limit
    chosen, rejected = pair_sequences(tokenizer, pairs, max_length, truncation_mode)
    sequences = chosen + rejected
    pad = tokenizer.pad_token_id
    policy_logp = sequence_logprobs(
        pair.policy, sequences, pad, batch_size, desc="eval: policy log-probs of held-out pairs" if progress else None
    )
    with pair.reference() as reference:
        reference_logp = sequence_logprobs(
            reference,
            sequences,
            pad,
            batch_size,
            desc="eval: reference log-probs of held-out pairs" if progress else None,
        )
    rewards = beta * (policy_logp - reference_logp)
    return rewards[: len(pairs)], rewards[len(pairs) :]


def implicit_reward_metrics(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, float]:
    """The implicit reward as a chosen-vs-rejected classifier.

    accuracy: share of pairs with reward(chosen) > reward(rejected) (strict, as TRL's rewards/accuracies);
    auc: ROC-AUC of the reward separating chosen (label 1) from rejected (label 0) responses over all pairs;
    margin_*: the distribution of reward(chosen) - reward(rejected).
    """
    from sklearn.metrics import roc_auc_score

    margins = chosen - rejected
    labels = np.concatenate([np.ones(len(chosen)), np.zeros(len(rejected))])
    out = {
        "implicit_accuracy": float((margins > 0).mean()),
        "implicit_auc": float(roc_auc_score(labels, np.concatenate([chosen, rejected]))),
        "implicit_pairs": int(len(margins)),
    }
    out.update({f"implicit_margin_{k}": v for k, v in describe(margins).items()})
    return out
