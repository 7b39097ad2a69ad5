"""Preference pairs from scored samples: pair up each prompt's completions, save and read the pair files.

Per prompt, `best_vs_worst` keeps the highest- against the lowest-scored completion, `all_pairs` every pair whose
scores differ by more than `min_margin` (4 samples -> up to 6 pairs).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from ..errors import UserError

PAIR_STRATEGIES = ("best_vs_worst", "all_pairs")
PAIR_FORMATS = ("jsonl", "parquet")


def make_pairs(
    prompt: str, completions: list[str], scores: list[float], strategy: str, min_margin: float
) -> tuple[list[dict], dict[str, int]]:
    """Pairs for one prompt, plus how many candidate pairs were dropped as ties or below the margin.

    Each pair also names the sample indices it was made of (`chosen_index`, `rejected_index`)."""
    if strategy not in PAIR_STRATEGIES:
        raise UserError(f"dataset.pairs.strategy={strategy!r} is not one of {list(PAIR_STRATEGIES)}")
    dropped = {"ties": 0, "below_margin": 0}
    if strategy == "best_vs_worst":
        best = max(range(len(scores)), key=lambda i: scores[i])
        worst = min(range(len(scores)), key=lambda i: scores[i])
        candidates = [(best, worst)] if len(scores) > 1 else []
    else:
        candidates = [
            (i, j) if scores[i] >= scores[j] else (j, i) for i, j in itertools.combinations(range(len(scores)), 2)
        ]
    pairs = []
    for hi, lo in candidates:
        gap = scores[hi] - scores[lo]
        if gap == 0:
            dropped["ties"] += 1
        elif gap <= min_margin:
            dropped["below_margin"] += 1
        else:
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": completions[hi],
                    "rejected": completions[lo],
                    "score_chosen": float(scores[hi]),
                    "score_rejected": float(scores[lo]),
                    "chosen_index": hi,
                    "rejected_index": lo,
                }
            )
    return pairs, dropped


def build_pairs(
    samples,
    scores: list[list[float]],
    strategy: str,
    min_margin: float,
    sequences: list[tuple[list[int], list[int]]] | None = None,
    first_id: int = 0,
) -> tuple[list[dict], dict]:
    """Pairs over all prompts and the drop counts. Each row keeps its prompt index (`prompt_id`, from `first_id`)
    and, given the samples' token `sequences` (generation.sample_sequences), the exact ids that were sampled:
    `prompt_ids`, `chosen_ids`, `rejected_ids` (EOS only where the sample ended with it) — what DPO trains on."""
    rows, counts = [], {"ties": 0, "below_margin": 0}
    n = len(samples.texts[0]) if samples.texts else 0
    for index, (prompt, texts, row_scores) in enumerate(zip(samples.prompts, samples.texts, scores)):
        pairs, dropped = make_pairs(prompt, texts, row_scores, strategy, min_margin)
        for pair in pairs:
            row = {**pair, "prompt_id": first_id + index}
            if sequences is not None:
                context, chosen = sequences[index * n + pair["chosen_index"]]
                row.update(
                    prompt_ids=list(context),
                    chosen_ids=list(chosen),
                    rejected_ids=list(sequences[index * n + pair["rejected_index"]][1]),
                )
            rows.append(row)
        for k, v in dropped.items():
            counts[k] += v
    return rows, counts


def write_pairs(rows: list[dict], path: Path) -> None:
    if path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path, index=False)
    else:
        from ..infra.storage import write_jsonl

        write_jsonl(path, rows)


def read_pairs(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    from ..infra.storage import read_jsonl

    return read_jsonl(path)


def plot_pair_scores(rows: list[dict], path: Path) -> Path:
    """Histogram of chosen vs rejected scores."""
    from ..infra.plots import plt, save_figure  # headless (Agg) pyplot

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    chosen = [r["score_chosen"] for r in rows]
    rejected = [r["score_rejected"] for r in rows]
    if rows:
        low, high = min(rejected + chosen), max(rejected + chosen)
        bins = [low + (high - low) * i / 30 for i in range(31)] if high > low else 10
        ax.hist(chosen, bins=bins, alpha=0.6, label=f"chosen (mean {sum(chosen) / len(chosen):.3f})")
        ax.hist(rejected, bins=bins, alpha=0.6, label=f"rejected (mean {sum(rejected) / len(rejected):.3f})")
    ax.set_xlabel("sentiment score")
    ax.set_ylabel("pairs")
    ax.set_title(f"{len(rows)} preference pairs")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
