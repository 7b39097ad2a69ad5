"""The measurements: reward and win rate of fresh samples, Monte-Carlo KL, implicit-reward classification.

Everything here takes in-memory models (a `PolicyReference`) and plain inputs, so it is testable without a run.

Estimands (each means one thing, whatever the sampler or eval.num_samples):
- win_rate: P(the policy's completion outscores the reference's), ties 1/2, averaged over prompts, for INDEPENDENT
  draws of the two: every policy sample of a prompt against every reference sample drawn on an independent seed.
- kl / kl_rb: KL between the distributions sampled (the same temperature / top-k / top-p on both models).
The coupled comparisons (sample i against the reference's sample i under the same seed) are kept as diagnostics,
`win_rate_coupled`, `tie_rate_coupled` and `win_rate_prompt_coupled`: their values depend on how the sampler couples
the two draws (the race and the inverse CDF give different numbers for the same two models) and, for the per-prompt
one, on num_samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..generation import Samples, generate_samples, sample_sequences, stream_seed
from ..models import context_length
from ..sampler import warpers
from .logprobs import pair_sequences, sequence_kl, sequence_logprobs
from .policy_ref import PolicyReference
from .stats import all_pairs_wins, bootstrap_indices, describe, mean_ci, paired_wins

INDEPENDENT_STREAM = "independent_reference"  # stream_seed name of the reference samples behind eval/win_rate


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
    reference_independent: Samples | None = None


def score_samples(scorer, samples: Samples, with_prompt: bool) -> np.ndarray:
    """Scores as a (prompts, samples) array."""
    from ..judges import score_completions

    flat = list(samples.flat())
    prompts, completions = [samples.prompts[i] for i, _ in flat], [text for _, text in flat]  # judges format them
    scores = np.asarray(score_completions(scorer, prompts, completions, with_prompt), dtype=np.float64)
    return scores.reshape(len(samples.prompts), -1)


def kl_estimates(pair: PolicyReference, tokenizer, samples: Samples, settings: SampleSettings):
    """KL(policy || reference) per policy sample, as (mc, rb) arrays of shape (prompts, samples).

    mc: log pi(y|x) - log pi_ref(y|x) over the generated tokens; its mean over the policy's samples estimates the
    sequence-level KL. rb: the same expectation with the exact per-token KL at each sampled prefix (much lower
    variance; see logprobs.sequence_kl). Both are taken between the WARPED distributions (generation's
    temperature / top-k / top-p applied to both models), the ones sampled: +inf where their supports differ.
    """
    gen = settings.gen_cfg
    warp = warpers(float(gen.temperature), int(gen.get("top_k") or 0), float(gen.get("top_p") or 1.0))
    sequences = sample_sequences(tokenizer, samples, settings.max_new_tokens, context_length(pair.policy))
    mc, rb = sequence_kl(
        pair.policy,
        pair.reference,
        sequences,
        tokenizer.pad_token_id,
        settings.logprob_batch_size,
        desc="eval: KL(policy || reference)" if settings.progress else None,
        warp=warp,
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
    independent_samples: Samples | None = None,
) -> SampleEval:
    """Sample from the policy and the reference with the same seed; score both; KL of the policy's samples.

    `reference_samples` / `independent_samples` reuse earlier reference samples (the reference does not change
    during training); with_reference=False skips the same-seed reference samples when there is no scorer (the KL
    only needs the policy's). independent=True (with a scorer) also scores reference samples drawn on an
    independent seed (`stream_seed(seed, INDEPENDENT_STREAM)`): the headline win rate compares against those.
    """

    def draw(model, desc: str, seed: int, paired: bool = True) -> Samples:
        return generate_samples(
            model,
            tokenizer,
            list(prompts),
            settings.gen_cfg,
            seed,
            num_samples=settings.num_samples,
            max_new_tokens=settings.max_new_tokens,
            desc=desc,
            progress=settings.progress,
            paired=paired,  # the same-seed draws are compared sample by sample (diagnostics): keep them alike
        )

    policy_samples = draw(pair.policy, "eval: policy samples", settings.seed)
    if reference_samples is None and (with_reference or scorer is not None):
        with pair.reference() as reference:
            reference_samples = draw(reference, "eval: reference samples", settings.seed)
    kl, kl_rb = kl_estimates(pair, tokenizer, policy_samples, settings)
    rewards_policy = rewards_reference = rewards_independent = None
    if scorer is not None:
        rewards_policy = score_samples(scorer, policy_samples, settings.score_with_prompt)
        rewards_reference = score_samples(scorer, reference_samples, settings.score_with_prompt)
        if independent:
            if independent_samples is None:
                seed = stream_seed(settings.seed, INDEPENDENT_STREAM)
                with pair.reference() as reference:  # no coupling needed: the faster draw
                    independent_samples = draw(reference, "eval: reference samples (independent)", seed, False)
            rewards_independent = score_samples(scorer, independent_samples, settings.score_with_prompt)
    return SampleEval(
        policy_samples,
        reference_samples,
        rewards_policy,
        rewards_reference,
        kl,
        kl_rb,
        rewards_independent,
        independent_samples if independent else None,
    )


def reward_kl_metrics(result: SampleEval, resamples: int, seed: int) -> dict[str, Any]:
    """Reward (policy, reference, delta), win rates and KL, with bootstrap intervals over prompts.

    win_rate (the headline, with a scorer and independent reference samples): per prompt, the share of (policy
    sample, independent reference sample) pairs the policy wins, ties 1/2 (`stats.all_pairs_wins`), averaged over
    prompts: an unbiased estimate of P(policy beats reference) whatever the sampler and num_samples; tie_rate its
    share of ties. Diagnostics of the same-seed (coupled) draws: win_rate_coupled / tie_rate_coupled (sample i
    against sample i) and win_rate_prompt_coupled (share of prompts whose mean reward over their num_samples samples
    beats the reference's; ../shared/CALIBRATION.md's per-prompt rate), whose values depend on the sampler's
    coupling and, for the per-prompt one, on num_samples.

    kl / kl_rb: +inf (None in JSON) when some policy sample has a token the warped reference cannot draw;
    kl_infinite is that share of samples. `_std` is the spread of single-sample values; the intervals resample
    prompts (per-prompt means), with the same resampled prompt sets for every metric (paired intervals).
    """
    n_prompts = result.kl.shape[0]
    idx = bootstrap_indices(n_prompts, resamples, seed)
    out: dict[str, Any] = _kl_metrics("kl", result.kl, idx)
    if result.kl_rb is not None:
        out.update(_kl_metrics("kl_rb", result.kl_rb.reshape(n_prompts, -1), idx))
    if result.rewards_policy is None:
        return out
    for name, rewards in (("reward_policy", result.rewards_policy), ("reward_reference", result.rewards_reference)):
        out[name] = float(rewards.mean())
        out[f"{name}_std"] = float(rewards.std())
        _, out[f"{name}_ci_low"], out[f"{name}_ci_high"] = mean_ci(rewards.mean(axis=1), idx)
    delta = (result.rewards_policy - result.rewards_reference).mean(axis=1)
    out["reward_delta"], out["reward_delta_ci_low"], out["reward_delta_ci_high"] = mean_ci(delta, idx)
    out["significant"] = significant(out["reward_delta_ci_low"], out["reward_delta_ci_high"])
    if result.rewards_reference_independent is not None:
        wins, ties = all_pairs_wins(result.rewards_policy, result.rewards_reference_independent)
        out["win_rate"], out["win_rate_ci_low"], out["win_rate_ci_high"] = mean_ci(wins, idx)
        out["tie_rate"] = float(ties.mean())
    coupled = paired_wins(result.rewards_policy, result.rewards_reference)
    out["win_rate_coupled"], out["win_rate_coupled_ci_low"], out["win_rate_coupled_ci_high"] = mean_ci(
        coupled.mean(axis=1), idx
    )
    out["tie_rate_coupled"] = float((coupled == 0.5).mean())
    prompt_wins = paired_wins(result.rewards_policy.mean(axis=1), result.rewards_reference.mean(axis=1))
    key = "win_rate_prompt_coupled"
    out[key], out[f"{key}_ci_low"], out[f"{key}_ci_high"] = mean_ci(prompt_wins, idx)
    return out


def _kl_metrics(name: str, values: np.ndarray, idx: np.ndarray) -> dict[str, Any]:
    """name (mean), name_std, the bootstrap CI and name_infinite (share of samples whose KL is +inf)."""
    infinite = float(np.isposinf(values).mean())
    out: dict[str, Any] = {f"{name}_infinite": infinite}
    if infinite:
        inf = float("inf")
        return out | {name: inf, f"{name}_std": inf, f"{name}_ci_low": inf, f"{name}_ci_high": inf}
    out[name], out[f"{name}_std"] = float(values.mean()), float(values.std())
    _, out[f"{name}_ci_low"], out[f"{name}_ci_high"] = mean_ci(values.mean(axis=1), idx)
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
    ld_alpha: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """DPO's implicit reward beta * log(pi/pi_ref) of every pair's chosen and rejected response, on the token ids
    and truncation (`trainer.max_length`, `trainer.truncation_mode`) the trainer used, with TRL's `ld_alpha`
    weighting when set (the tokens past the shorter response's length count ld_alpha times)."""
    limit = context_length(pair.policy)
    max_length = min(int(max_length), limit) if max_length else limit
    chosen, rejected = pair_sequences(tokenizer, pairs, max_length, truncation_mode)
    sequences = chosen + rejected
    pad = tokenizer.pad_token_id
    weighting: dict[str, Any] = {}
    if ld_alpha is not None:
        shared = [min(len(c[1]), len(r[1])) for c, r in zip(chosen, rejected)]
        weighting = {"shared_lengths": shared + shared, "tail_weight": float(ld_alpha)}
    policy_logp = sequence_logprobs(
        pair.policy,
        sequences,
        pad,
        batch_size,
        desc="eval: policy log-probs of held-out pairs" if progress else None,
        **weighting,
    )
    with pair.reference() as reference:
        reference_logp = sequence_logprobs(
            reference,
            sequences,
            pad,
            batch_size,
            desc="eval: reference log-probs of held-out pairs" if progress else None,
            **weighting,
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
