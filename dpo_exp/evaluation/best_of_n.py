"""Best-of-N sampling from the reference: the cheapest baseline on the DPO paper's reward-KL plane.

For each held-out prompt, draw N completions from the reference, score them with the evaluation's scorer and keep
the best. Its reward is estimated without bias from K >= N scored samples per prompt (the expected maximum of N
draws without replacement from the K, so best-of-1 is exactly the mean reward of the K samples), and its KL to
the reference is the analytic log N - (N-1)/N nats (Stiennon et al. 2020; Beirami et al. 2024 show it is an
upper bound). The reference here is the distribution sampled (generation's temperature / top-k / top-p applied),
the same basis as the policy's eval/kl. The reference's evaluation samples are reused: only the samples beyond them
are drawn, on their own random stream (`stream_seed(seed, SEED_STREAM)`), independent of every other draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..generation import Samples, generate_samples, stream_seed
from .stats import bootstrap_indices, mean_ci

SEED_STREAM = "best_of_n"  # stream_seed name of the extra samples (apart from the evaluation's and its unpaired ones)


def analytic_kl(n: int) -> float:
    """KL(best-of-n || reference) = log n - (n-1)/n nats."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def expected_best(scores: np.ndarray, n: int) -> np.ndarray:
    """Per row, the expected maximum of n of its K scores drawn without replacement (unbiased for best-of-n).

    With the row sorted ascending, the i-th smallest (1-based) is the maximum of C(i-1, n-1) of the C(K, n) subsets.
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64), axis=1)
    k = scores.shape[1]
    if not 1 <= n <= k:
        raise ValueError(f"best-of-{n} needs at least {n} samples per prompt, got {k}")
    weights = np.array([math.comb(i - 1, n - 1) for i in range(1, k + 1)], dtype=np.float64) / math.comb(k, n)
    return scores @ weights


def best_of_n_metrics(scores: np.ndarray, ns: Sequence[int], resamples: int, seed: int) -> dict[str, Any]:
    """bon_reward_N (with a bootstrap 95% CI over prompts), bon_delta_N (gain over best-of-1) and bon_kl_N."""
    idx = bootstrap_indices(scores.shape[0], resamples, seed)
    base = scores.mean(axis=1)
    out: dict[str, Any] = {"bon_prompts": int(scores.shape[0]), "bon_samples": int(scores.shape[1])}
    for n in sorted({int(n) for n in ns if int(n) <= scores.shape[1]}):
        best = expected_best(scores, n)
        out[f"bon_reward_{n}"], out[f"bon_reward_{n}_ci_low"], out[f"bon_reward_{n}_ci_high"] = mean_ci(best, idx)
        out[f"bon_delta_{n}"] = float((best - base).mean())
        out[f"bon_kl_{n}"] = analytic_kl(n)
    return out


def reference_samples(
    reference, tokenizer, prompts: list[str], settings: Any, total: int, reuse: Samples | None = None
) -> Samples:
    """`total` reference samples per prompt: the first ones from `reuse` (same prompts, in order), the rest drawn."""
    have = 0 if reuse is None else min(len(t) for t in reuse.texts[: len(prompts)]) if prompts else 0
    texts = [list(reuse.texts[i][:have]) if have else [] for i in range(len(prompts))]
    ids = [list(reuse.token_ids[i][:have]) if have else [] for i in range(len(prompts))]
    extra = total - have
    if extra > 0:
        drawn = generate_samples(
            reference,
            tokenizer,
            prompts,
            settings.gen_cfg,
            stream_seed(settings.seed, SEED_STREAM),
            num_samples=extra,
            max_new_tokens=settings.max_new_tokens,
            desc="eval: best-of-n reference samples",
            progress=settings.progress,
        )
        for i in range(len(prompts)):
            texts[i] += drawn.texts[i]
            ids[i] += drawn.token_ids[i]
    return Samples(prompts=list(prompts), texts=texts, token_ids=ids)


def evaluate_best_of_n(
    pair,
    tokenizer,
    prompts: list[str],
    settings: Any,
    scorer,
    ns: Sequence[int],
    resamples: int,
    reuse: Samples | None = None,
    reuse_scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """Best-of-N from the reference on `prompts` for every N in `ns`: reward with CI, gain, analytic KL.

    `reuse`/`reuse_scores`: the evaluation's reference samples and scores on these prompts (first rows), reused.
    """
    from .metrics import score_samples

    total = max(int(n) for n in ns)
    have = 0 if reuse is None else min(len(t) for t in reuse.texts[: len(prompts)])
    with pair.reference() as reference:
        samples = reference_samples(reference, tokenizer, prompts, settings, total, reuse)
    if have and reuse_scores is not None:
        fresh = Samples(prompts, [t[have:] for t in samples.texts], [t[have:] for t in samples.token_ids])
        extra = score_samples(scorer, fresh, settings.score_with_prompt) if total > have else None
        old = np.asarray(reuse_scores, dtype=np.float64)[: len(prompts), :have]
        scores = old if extra is None else np.concatenate([old, extra], axis=1)
    else:
        scores = score_samples(scorer, samples, settings.score_with_prompt)
    return best_of_n_metrics(scores, ns, resamples, settings.seed)
