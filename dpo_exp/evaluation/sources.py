"""Per-source metrics of a mixture (dataset=mixture): the pooled evaluation's samples and held-out pair rewards,
sliced by the source each held-out prompt came from. Keys are `<source>/<metric>` (eval/<source>/... in
summary.json); the pooled metrics stay as they are."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.conversation import prompt_key


def sample_metrics_by_source(result, sources: dict[str, str], resamples: int, seed: int) -> dict[str, Any]:
    """reward / win rate / KL metrics of each source's held-out prompts (those the evaluation sampled)."""
    from .metrics import SampleEval, reward_kl_metrics

    labels = [sources.get(prompt_key(p)) for p in result.policy.prompts]
    n_prompts = result.kl.shape[0]
    out: dict[str, Any] = {}

    for label in sorted({lab for lab in labels if lab is not None}):
        idx = np.array([i for i, lab in enumerate(labels) if lab == label])
        if len(idx) < 2:  # one prompt gives no interval
            continue
        part = SampleEval(
            policy=result.policy,
            reference=None,
            rewards_policy=None if result.rewards_policy is None else result.rewards_policy[idx],
            rewards_reference=None if result.rewards_reference is None else result.rewards_reference[idx],
            kl=result.kl[idx],
            kl_rb=None if result.kl_rb is None else result.kl_rb.reshape(n_prompts, -1)[idx],
            rewards_reference_independent=(
                None if result.rewards_reference_independent is None else result.rewards_reference_independent[idx]
            ),
        )
        metrics = reward_kl_metrics(part, resamples, seed)
        out.update({f"{label}/{k}": v for k, v in metrics.items()})
        out[f"{label}/num_prompts"] = int(len(idx))
    return out


def pair_metrics_by_source(pairs: list[dict], chosen, rejected, sources: dict[str, str]) -> dict[str, Any]:
    """The implicit reward's accuracy / AUC / margins on each source's held-out pairs."""
    from .metrics import implicit_reward_metrics

    labels = [sources.get(prompt_key(p["prompt"])) for p in pairs]
    out: dict[str, Any] = {}
    for label in sorted({lab for lab in labels if lab is not None}):
        mask = np.array([lab == label for lab in labels])
        metrics = implicit_reward_metrics(np.asarray(chosen)[mask], np.asarray(rejected)[mask])
        out.update({f"{label}/{k}": v for k, v in metrics.items()})
    return out
