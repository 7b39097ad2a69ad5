"""Sentiment-guided preference pairs: sample from the reference, score with a sentiment classifier, pair up.

Per prompt, `generation.num_samples` completions are drawn and each full text (prompt + completion) is scored;
`best_vs_worst` keeps the highest- against the lowest-scored completion, `all_pairs` every pair whose scores
differ by more than `min_margin` (4 samples -> up to 6 pairs). The pair dataset is cached by a content key
(model incl. SFT warm start, prompts, generation settings, scorer, pairing, seed), so a sweep over beta or the
learning rate builds it once; `summary.json["pairs"]["cache"]` says `built` or `reused`.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ..data.preference import PreferenceData, filter_pairs
from ..errors import UserError
from ..infra.cache import cached, content_key

log = logging.getLogger(__name__)

STRATEGIES = ("best_vs_worst", "all_pairs")
EVAL_PAIRS_SEED_OFFSET = 100_003  # the held-out pair prompts' own sampling stream (seed + this)
PAIR_FORMATS = ("jsonl", "parquet")


def make_pairs(
    prompt: str, completions: list[str], scores: list[float], strategy: str, min_margin: float
) -> tuple[list[dict], dict[str, int]]:
    """Pairs for one prompt, plus how many candidate pairs were dropped as ties or below the margin.

    Each pair also names the sample indices it was made of (`chosen_index`, `rejected_index`)."""
    if strategy not in STRATEGIES:
        raise UserError(f"dataset.pairs.strategy={strategy!r} is not one of {list(STRATEGIES)}")
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


def _write_pairs(rows: list[dict], path: Path) -> None:
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


def pair_key(
    cfg: Any,
    model_identity: dict,
    prompts: list[str],
    scorer_identity: str,
    batch_size: int,
    device: str,
    precision: str,
    n_train: int | None = None,
) -> tuple[str, dict]:
    """Content key of a pair dataset and everything it is computed from: the reference's weights, the prompts
    (and where training prompts end), sampling settings, the scorer (incl. its dtype), pairing and file format."""
    gen = cfg.generation
    ds = cfg.dataset
    description = {
        "model": model_identity,
        "prompts": content_key(prompts, 64),
        "n_prompts": len(prompts),
        "n_train": n_train,
        "generation": {
            "num_samples": int(gen.num_samples),
            "max_new_tokens": int(gen.max_new_tokens),
            "temperature": float(gen.temperature),
            "top_k": int(gen.top_k or 0),
            "top_p": float(gen.top_p),
            "batch_size": batch_size,  # sampling is seeded per batch: the batching changes samples
            "max_batch_tokens": int(gen.get("max_batch_tokens") or 0),
            "batching": "length_sorted",
        },
        "scorer": scorer_identity,
        "pairs": {
            "strategy": str(ds.pairs.strategy),
            "min_margin": float(ds.pairs.min_margin),
            "format": str(ds.pairs.get("format") or "jsonl"),
        },
        "seed": int(cfg.seed),
        "device": device,
        "precision": precision,
        "v": 3,
    }
    return content_key(description), description


def _sample_pairs(
    model, tokenizer, prompts: list[str], cfg: Any, seed: int, scorer, first_id: int, desc: str
) -> tuple[list[dict], dict[str, Any]]:
    """Sample `generation.num_samples` completions per prompt, score prompt + completion, pair them up."""
    from ..generation import generate_samples, sample_sequences

    if not prompts:
        return [], {"samples": 0, "score_sum": 0.0, "ties": 0, "below_margin": 0}
    gen = cfg.generation
    samples = generate_samples(model, tokenizer, prompts, gen, seed, desc=desc)
    context = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    sequences = sample_sequences(tokenizer, samples, int(gen.max_new_tokens), int(context))
    flat = [prompt + text for prompt, texts in zip(samples.prompts, samples.texts) for text in texts]
    scored = scorer.score(flat)
    n = int(gen.num_samples)
    scores = [scored[i * n : (i + 1) * n] for i in range(len(prompts))]
    rows, dropped = build_pairs(
        samples, scores, str(cfg.dataset.pairs.strategy), float(cfg.dataset.pairs.min_margin), sequences, first_id
    )
    return rows, {"samples": len(flat), "score_sum": float(sum(scored)), **dropped}


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


def build_sentiment_pairs(ctx, model, tokenizer, prompt_sets) -> tuple[PreferenceData, Any]:
    """SFT warm start (optional) -> sampling -> scoring -> pairs (cached) -> PreferenceData and the reference."""
    from ..generation import default_batch_size
    from ..models import model_identity
    from ..rewards import build_scorer

    cfg = ctx.cfg
    ds = cfg.dataset
    strategy, fmt = str(ds.pairs.strategy), str(ds.pairs.get("format") or "jsonl")
    if strategy not in STRATEGIES:
        raise UserError(f"dataset.pairs.strategy={strategy!r} is not one of {list(STRATEGIES)}")
    if fmt not in PAIR_FORMATS:
        raise UserError(f"dataset.pairs.format={fmt!r} is not one of {list(PAIR_FORMATS)}")
    scorer = build_scorer(cfg.reward, cfg)
    if scorer is None:
        raise UserError(
            "dataset=imdb_sentiment needs a sentiment scorer: set reward=sst2|siebert|distilbert_imdb|"
            "tfidf_logreg|vader"
        )
    ctx.summary["reward"] = {"kind": scorer.name, "identity": scorer.identity(), **scorer.info}
    ctx.tracker.summary({f"reward/{k}": v for k, v in scorer.info.items() if isinstance(v, (int, float))})

    identity: dict[str, Any] = {"source": model_identity(cfg.model), "seed": int(cfg.seed)}
    if cfg.sft.enabled:
        from ..sft import warm_start

        started = time.time()
        model, entry = warm_start(cfg, model, tokenizer, prompt_sets.train.texts, ctx.device, ctx.precision)
        ctx.summary["timing/sft_s"] = round(time.time() - started, 2)  # ~0 when the warm start came from the cache
        ctx.tracker.summary({"timing/sft_s": ctx.summary["timing/sft_s"]})
        identity["sft"] = entry.key
        ctx.summary["reference_path"] = str(entry.path)
        ctx.summary["sft"] = {"cache": entry.status, "key": entry.key, "path": str(entry.path), **entry.info}
    ctx.save_summary()

    prompts = list(prompt_sets.train_prompts) + list(prompt_sets.pair_eval_prompts)
    batch_size = int(cfg.generation.batch_size or default_batch_size(ctx.device))
    n_train = len(prompt_sets.train_prompts)
    key, description = pair_key(
        cfg, identity, prompts, scorer.identity(), batch_size, ctx.device, ctx.precision, n_train
    )
    filename = f"pairs.{fmt}"

    def build(folder: Path) -> dict[str, Any]:
        # The held-out prompts are sampled on their own seed stream, so their pairs do not depend on data_size.
        parts = [
            (prompt_sets.train_prompts, int(cfg.seed), 0, "sampling training pairs"),
            (prompt_sets.pair_eval_prompts, int(cfg.seed) + EVAL_PAIRS_SEED_OFFSET, n_train, "sampling held-out pairs"),
        ]
        rows, stats = [], {"samples": 0, "score_sum": 0.0, "ties": 0, "below_margin": 0}
        for part_prompts, seed, first_id, desc in parts:
            part_rows, part_stats = _sample_pairs(model, tokenizer, part_prompts, cfg, seed, scorer, first_id, desc)
            rows.extend(part_rows)
            stats = {k: stats[k] + part_stats[k] for k in stats}
        _write_pairs(rows, folder / filename)
        return {
            "rows": len(rows),
            "prompts": len(prompts),
            "samples": stats["samples"],
            "mean_sample_score": stats["score_sum"] / max(1, stats["samples"]),
            "dropped_ties": stats["ties"],
            "dropped_below_margin": stats["below_margin"],
        }

    entry = cached(cfg.cache_dir, "pairs", key, build, description)
    rows = read_pairs(entry.path / filename)
    if len(rows) != entry.info.get("rows"):
        raise RuntimeError(f"pair cache {entry.path}: {len(rows)} rows, manifest says {entry.info.get('rows')}")
    log.info(
        "pairs %s: %d pairs from %d prompts (cache %s, key %s)", entry.status, len(rows), len(prompts), entry.path, key
    )

    from ..infra.distributed import is_main_process

    run_pairs = ctx.run_dir / filename
    if is_main_process():  # several processes: only process 0 writes the run folder
        shutil.copyfile(entry.path / filename, run_pairs)
        png = plot_pair_scores(rows, ctx.run_dir / "plots" / "pair_scores.png")
        ctx.tracker.image("plots/pair_scores", png)

    kept, dropped = filter_pairs(rows, drop_ties=True, where=str(entry.path / filename))
    train = [r for r in kept if r["prompt_id"] < n_train]
    evals = [r for r in kept if r["prompt_id"] >= n_train]
    if not train:
        raise UserError(
            f"no training pairs: all {len(rows)} candidate pairs were ties, below dataset.pairs.min_margin="
            f"{ds.pairs.min_margin} or empty (more generation.num_samples or a smaller margin)"
        )
    gaps = [r["score_chosen"] - r["score_rejected"] for r in train]
    counts = {
        **prompt_sets.counts,
        "samples": entry.info.get("samples", 0),
        "pairs_built": len(rows),
        "pairs_dropped_ties": entry.info.get("dropped_ties", 0) + dropped["ties"],
        "pairs_dropped_below_margin": entry.info.get("dropped_below_margin", 0),
        "pairs_dropped_empty": dropped["empty"],
        "pairs_dropped_identical": dropped["identical"],
        "train_pairs": len(train),
        "eval_pairs": len(evals),
    }
    ctx.summary["pairs"] = {
        "cache": entry.status,
        "key": key,
        "path": str(entry.path / filename),
        "run_copy": str(run_pairs),
        "strategy": strategy,
        "min_margin": float(ds.pairs.min_margin),
        "mean_score_gap": sum(gaps) / len(gaps),
        "mean_sample_score": entry.info.get("mean_sample_score"),
        **{k: v for k, v in counts.items() if k.startswith(("pairs_", "train_pairs", "eval_pairs", "samples"))},
    }
    ctx.tracker.summary(
        {
            "pairs/cache_reused": int(entry.status == "reused"),
            "pairs/mean_score_gap": ctx.summary["pairs"]["mean_score_gap"],
            "pairs/train": len(train),
            "pairs/eval": len(evals),
        }
    )
    ctx.save_summary()
    data = PreferenceData(
        train=train,
        eval=evals,
        counts=counts,
        source=f"{prompt_sets.source} -> {scorer.name} pairs",
        eval_prompts=list(prompt_sets.eval_prompts),
    )
    return data, model
