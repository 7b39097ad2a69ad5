"""Sentiment-guided pairs (the DPO paper's IMDb task): prompts -> samples -> sentiment scores -> pairs.

Stages, in `SentimentTask.prepare`: an optional supervised warm start of the reference (`sft`), sampling
`generation.num_samples` completions per prompt and scoring prompt + completion (`pairs`, cached by content: the
reference's weights incl. the warm start, prompts, sampling settings, scorer, pairing, seed, so a sweep over beta
or the learning rate builds them once; `summary.json["pairs"]["cache"]` says `built` or `reused`), and the split
into training and held-out pairs. Pairing itself is `dpo_exp.data.pairs`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.imdb import PromptSets, load_prompt_sets
from ..data.pairs import PAIR_FORMATS, PAIR_STRATEGIES, build_pairs, plot_pair_scores, read_pairs, write_pairs
from ..data.preference import filter_pairs
from ..data.schema import PreferenceData
from ..errors import UserError
from ..infra.cache import CacheEntry, arithmetic, cached, content_key
from ..infra.distributed import broadcast
from .base import Artifact, HeldOut, StageEnv, Task, TaskResult

log = logging.getLogger(__name__)

EVAL_PAIRS_SEED_OFFSET = 100_003  # the held-out pair prompts' own sampling stream (seed + this)


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
    (and where training prompts end), sampling settings, the scorer (incl. its dtype), pairing, file format, and
    the device type and CPU thread count (`infra.cache.arithmetic`)."""
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
            "sampler": "inverse_cdf",  # dpo_exp.sampler's draw (not torch.multinomial's): other samples
            "prompt_cut": "keep_end",  # an over-long prompt keeps its end; the model's own generation config is unused
        },
        "scorer": scorer_identity,
        "pairs": {
            "strategy": str(ds.pairs.strategy),
            "min_margin": float(ds.pairs.min_margin),
            "format": str(ds.pairs.get("format") or "jsonl"),
        },
        "seed": int(cfg.seed),
        **arithmetic(device),
        "precision": precision,
        "v": 3,
    }
    return content_key(description), description


def _sample_pairs(
    model, tokenizer, prompts: list[str], cfg: Any, seed: int, scorer, first_id: int, desc: str
) -> tuple[list[dict], dict[str, Any]]:
    """Sample `generation.num_samples` completions per prompt, score prompt + completion, pair them up."""
    from ..generation import generate_samples, sample_sequences
    from ..models import context_length

    if not prompts:
        return [], {"samples": 0, "score_sum": 0.0, "ties": 0, "below_margin": 0}
    gen = cfg.generation
    samples = generate_samples(model, tokenizer, prompts, gen, seed, desc=desc)
    sequences = sample_sequences(tokenizer, samples, int(gen.max_new_tokens), context_length(model))
    from ..judges import score_completions

    flat_prompts = [prompt for prompt, texts in zip(samples.prompts, samples.texts) for _ in texts]
    scored = score_completions(scorer, flat_prompts, [text for texts in samples.texts for text in texts], True)
    n = int(gen.num_samples)
    scores = [scored[i * n : (i + 1) * n] for i in range(len(prompts))]
    rows, dropped = build_pairs(
        samples, scores, str(cfg.dataset.pairs.strategy), float(cfg.dataset.pairs.min_margin), sequences, first_id
    )
    return rows, {"samples": len(scored), "score_sum": float(sum(scored)), **dropped}


class SentimentTask(Task):
    """IMDb review prefixes as prompts; pairs from the reference's scored samples (no human labels)."""

    uses_reward = True

    def check(self, cfg: Any) -> None:
        n = cfg.generation.num_samples
        if isinstance(n, int) and n < 2:
            raise UserError(
                f"generation.num_samples={n}: dataset={self.name} needs >= 2 samples per prompt "
                "(a pair is the best and the worst of them)"
            )
        pairs = cfg.dataset.pairs
        if pairs.strategy not in PAIR_STRATEGIES:
            raise UserError(f"dataset.pairs.strategy={pairs.strategy!r} is not one of {list(PAIR_STRATEGIES)}")
        if (pairs.get("format") or "jsonl") not in PAIR_FORMATS:
            raise UserError(f"dataset.pairs.format={pairs.format!r} is not one of {list(PAIR_FORMATS)}")
        if str((cfg.get("reward") or {}).get("kind", "none")) == "none":
            raise UserError(
                f"dataset={self.name} needs a sentiment scorer: set reward=sst2|siebert|distilbert_imdb|"
                "tfidf_logreg|vader"
            )

    def load(self, cfg: Any, tokenizer) -> PromptSets:
        return load_prompt_sets(cfg, tokenizer)

    def prepare(self, cfg: Any, env: StageEnv, model, tokenizer, loaded: PromptSets) -> TaskResult:
        """Warm start (optional) -> sampled, scored pairs (cached) -> training and held-out pairs."""
        from ..judges import build_scorer

        scorer = build_scorer(cfg.reward, cfg)
        started = time.time()
        model, warm = warm_start_stage(cfg, env, model, tokenizer, loaded)
        sft_seconds = time.time() - started
        started = time.time()
        pairs = sample_pairs_stage(cfg, env, model, tokenizer, loaded, scorer, warm)
        data, section = split_pairs(cfg, pairs, loaded, scorer.name)
        result = TaskResult(data=data, model=model, reference_path=warm.path if warm else None)
        result.summary["reward"] = {"kind": scorer.name, "identity": scorer.identity(), **scorer.info}
        result.metrics.update({f"reward/{k}": v for k, v in scorer.info.items() if isinstance(v, (int, float))})
        if warm is not None:
            result.summary["sft"] = {"cache": warm.status, "key": warm.key, "path": str(warm.path), **warm.info}
            result.timings["sft"] = sft_seconds  # ~0 when the warm start came from the cache
        result.timings["pairs"] = time.time() - started
        if env.run_dir is not None:
            section["run_copy"] = str(env.run_dir / pairs.path.name)  # the pipeline copies the pair file there
        result.summary["pairs"] = section
        result.metrics.update(
            {
                "pairs/cache_reused": int(pairs.entry.status == "reused"),
                "pairs/mean_score_gap": section["mean_score_gap"],
                "pairs/train": len(data.train),
                "pairs/eval": len(data.eval),
            }
        )
        rows, source = pairs.rows, pairs.path
        result.artifacts += [
            Artifact(source.name, lambda path: Path(shutil.copyfile(source, path))),
            Artifact("plots/pair_scores.png", lambda path: plot_pair_scores(rows, path), image=True),
        ]
        return result

    def heldout(self, cfg: Any, tokenizer) -> HeldOut:
        """Held-out prompts minus every prompt used for pairs; the pairs were sampled in the run (saved ones only)."""
        sets = load_prompt_sets(cfg, tokenizer)
        used = set(sets.train_prompts) | set(sets.pair_eval_prompts)
        prompts = list(dict.fromkeys(sets.eval_prompts))
        kept = [p for p in prompts if p not in used]
        return HeldOut(kept, None, len(prompts) - len(kept))


def warm_start_stage(cfg: Any, env: StageEnv, model, tokenizer, sets: PromptSets) -> tuple[Any, CacheEntry | None]:
    """The reference the pairs are sampled from: `sft.enabled` warm-starts it on the training reviews (cached)."""
    if not cfg.sft.enabled:
        return model, None
    from ..sft import warm_start

    return warm_start(cfg, model, tokenizer, sets.train.texts, env.device, env.precision)


@dataclass
class SampledPairs:
    """The candidate pairs of every prompt (training prompts first), their cache entry and key."""

    rows: list[dict]
    entry: CacheEntry
    key: str
    n_train_prompts: int

    @property
    def path(self) -> Path:
        return next(self.entry.path.glob("pairs.*"))


def reference_identity(cfg: Any, tokenizer, warm: CacheEntry | None) -> dict[str, Any]:
    """What the sampling model is, for the pair cache key: its weights' identity, the seed, the warm start, and the
    tokenizer's chat template when it has one (the template decides how a conversation becomes tokens)."""
    from ..models import model_identity
    from ..models.chat import template_identity

    identity: dict[str, Any] = {"source": model_identity(cfg.model), "seed": int(cfg.seed)}
    template = template_identity(tokenizer)
    if template is not None:  # absent for plain-text tokenizers: their keys stay as they were
        identity["chat_template"] = template
    if warm is not None:
        identity["sft"] = warm.key
    return identity


def sample_pairs_stage(
    cfg: Any, env: StageEnv, model, tokenizer, sets: PromptSets, scorer, warm: CacheEntry | None
) -> SampledPairs:
    """Sample and score every training and held-out pair prompt, pair them up; cached by content."""
    from ..generation import default_batch_size

    identity = reference_identity(cfg, tokenizer, warm)
    prompts = list(sets.train_prompts) + list(sets.pair_eval_prompts)
    n_train = len(sets.train_prompts)
    batch_size = int(cfg.generation.batch_size or default_batch_size(env.device))
    key, description = pair_key(
        cfg, identity, prompts, scorer.identity(), batch_size, env.device, env.precision, n_train
    )
    key, description = broadcast((key, description))  # every process trains on process 0's pairs, whatever its threads
    filename = f"pairs.{cfg.dataset.pairs.get('format') or 'jsonl'}"

    def build(folder: Path) -> dict[str, Any]:
        # The held-out prompts are sampled on their own seed stream, so their pairs do not depend on data_size.
        parts = [
            (sets.train_prompts, int(cfg.seed), 0, "sampling training pairs"),
            (sets.pair_eval_prompts, int(cfg.seed) + EVAL_PAIRS_SEED_OFFSET, n_train, "sampling held-out pairs"),
        ]
        rows, stats = [], {"samples": 0, "score_sum": 0.0, "ties": 0, "below_margin": 0}
        for part_prompts, seed, first_id, desc in parts:
            part_rows, part_stats = _sample_pairs(model, tokenizer, part_prompts, cfg, seed, scorer, first_id, desc)
            rows.extend(part_rows)
            stats = {k: stats[k] + part_stats[k] for k in stats}
        write_pairs(rows, folder / filename)
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
    return SampledPairs(rows, entry, key, n_train)


def split_pairs(cfg: Any, pairs: SampledPairs, sets: PromptSets, scorer_name: str) -> tuple[PreferenceData, dict]:
    """Training pairs (from training prompts) and held-out pairs, after dropping ties, empty and identical ones;
    and the summary's `pairs` section."""
    info = pairs.entry.info
    kept, dropped = filter_pairs(pairs.rows, drop_ties=True, where=str(pairs.path))
    train = [r for r in kept if r["prompt_id"] < pairs.n_train_prompts]
    evals = [r for r in kept if r["prompt_id"] >= pairs.n_train_prompts]
    if not train:
        raise UserError(
            f"no training pairs: all {len(pairs.rows)} candidate pairs were ties, below dataset.pairs.min_margin="
            f"{cfg.dataset.pairs.min_margin} or empty (more generation.num_samples or a smaller margin)"
        )
    counts = {
        **sets.counts,
        "samples": info.get("samples", 0),
        "pairs_built": len(pairs.rows),
        "pairs_dropped_ties": info.get("dropped_ties", 0) + dropped["ties"],
        "pairs_dropped_below_margin": info.get("dropped_below_margin", 0),
        "pairs_dropped_empty": dropped["empty"],
        "pairs_dropped_identical": dropped["identical"],
        "train_pairs": len(train),
        "eval_pairs": len(evals),
    }
    gaps = [r["score_chosen"] - r["score_rejected"] for r in train]
    section = {
        "cache": pairs.entry.status,
        "key": pairs.key,
        "path": str(pairs.path),
        "strategy": str(cfg.dataset.pairs.strategy),
        "min_margin": float(cfg.dataset.pairs.min_margin),
        "mean_score_gap": sum(gaps) / len(gaps),
        "mean_sample_score": info.get("mean_sample_score"),
        **{k: v for k, v in counts.items() if k.startswith(("pairs_", "train_pairs", "eval_pairs", "samples"))},
    }
    source = f"{sets.source} -> {scorer_name} pairs"
    return PreferenceData(train, evals, counts, source, list(sets.eval_prompts)), section
