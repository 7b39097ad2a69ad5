"""Summary statistics with bootstrap confidence intervals over prompts (numpy only)."""

from __future__ import annotations

import numpy as np


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) indices drawn with replacement; a fixed seed makes every interval reproducible."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(int(resamples), n))


def mean_ci(per_prompt: np.ndarray, indices: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-prompt values and its percentile bootstrap interval (resampling prompts)."""
    per_prompt = np.asarray(per_prompt, dtype=np.float64)
    means = per_prompt[indices].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(per_prompt.mean()), float(low), float(high)


def wilson_interval(share: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score 95% interval of a share measured on n trials (e.g. a judge's held-out pair accuracy).
    Written out because scipy's binomtest needs a whole count, and a tie counts half a success here."""
    if n <= 0:
        return 0.0, 1.0
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * float(np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_wins(policy: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """1 where the policy's sample scores higher than the reference's sample with the same prompt and index,
    0 where lower, 0.5 on ties. Inputs and output: (prompts, samples)."""
    policy, reference = np.asarray(policy, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return np.where(policy > reference, 1.0, np.where(policy < reference, 0.0, 0.5))


def all_pairs_wins(policy: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt, the share of (policy sample, reference sample) pairs, every one with every one, that the policy
    wins (ties 1/2), and the share of ties. With independent draws of the two, each pair is an independent draw of
    both, so the share is an unbiased estimate of the prompt's P(win) + P(tie)/2 for any number of samples.
    Inputs: (prompts, samples) each; outputs: (prompts,)."""
    policy, reference = np.asarray(policy, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    diff = policy[:, :, None] - reference[:, None, :]
    wins = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
    return wins.mean(axis=(1, 2)), (diff == 0).mean(axis=(1, 2))


def describe(values: np.ndarray) -> dict[str, float]:
    """Mean, std, min, quartiles and max of a distribution (e.g. implicit-reward margins)."""
    values = np.asarray(values, dtype=np.float64)
    q = np.percentile(values, [0, 25, 50, 75, 100])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(q[0]),
        "q25": float(q[1]),
        "median": float(q[2]),
        "q75": float(q[3]),
        "max": float(q[4]),
    }
