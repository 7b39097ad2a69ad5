"""A mixture of preference sources (dataset=mixture): shipped dataset names, hub ids or local files, each with a
weight or a row count. Each source is loaded, filtered and held out by prompt on its own (as a single dataset would
be); the training pairs are drawn from each source's training pool in the given proportions, and any training pair
whose prompt is held out in another source is dropped (no prompt on both sides). The held-out pairs and prompts are
interleaved source by source, so an evaluation of the first N prompts sees every source; `eval_sources` maps each
held-out prompt to its source for the per-source metrics (eval/<source>/...). The composition is recorded in
summary.json (data.composition); the sources are part of cfg.dataset, hence of every cache key made from it."""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import zip_longest
from typing import Any

from omegaconf import OmegaConf, open_dict

from ..errors import UserError
from .conversation import prompt_key
from .schema import PreferenceData
from .splits import seeded_subset

ORIGINS = ("path", "name", "hub_id")  # where a source's rows come from: one of these per source
SOURCE_KEYS = {*ORIGINS, "weight", "rows", "columns", "split", "eval_split", "subset", "data_dir", "label"}
# a source's own keys for the single-dataset settings they set (named so in that source's error messages)
SOURCE_SETTINGS = {
    "hub_config": "subset",
    "hub_data_dir": "data_dir",
    "train_split": "split",
    "eval_split": "eval_split",
}


def source_label(spec: Any) -> str:
    """A source's name in metric keys: its `label`, else the shipped dataset's name, the file's stem or the hub id's
    last part (letters, digits, _ . - only)."""
    from pathlib import Path

    raw = spec.get("label") or spec.get("name") or (Path(str(spec.path)).stem if spec.get("path") else None)
    raw = raw or str(spec.hub_id).split("/")[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(raw))


def check_sources(ds_cfg: Any) -> list[Any]:
    """The mixture's sources, each with one origin and a positive weight or row count; one error line otherwise."""
    sources = ds_cfg.get("sources")
    if not sources or isinstance(sources, str):
        raise UserError(
            "dataset=mixture needs dataset.sources, e.g. 'dataset.sources=[{path: A.jsonl, weight: 3}, "
            "{path: B.jsonl, weight: 1}]'"
        )
    kinds = set()
    labels: list[str] = []
    for i, spec in enumerate(sources):
        if not hasattr(spec, "keys"):
            raise UserError(f"dataset.sources[{i}] must be a mapping like {{path: FILE, weight: 1}}, got {spec!r}")
        unknown = sorted(set(spec.keys()) - SOURCE_KEYS)
        if unknown:
            raise UserError(f"dataset.sources[{i}]: unknown key(s) {unknown} (use {sorted(SOURCE_KEYS)})")
        origins = [k for k in ORIGINS if spec.get(k)]
        if len(origins) != 1:
            raise UserError(f"dataset.sources[{i}] needs exactly one of path / name / hub_id, got {origins or 'none'}")
        amount = [k for k in ("weight", "rows") if spec.get(k) is not None]
        if len(amount) != 1:
            raise UserError(f"dataset.sources[{i}] needs a weight or a rows count (one of them)")
        value = spec.get(amount[0])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise UserError(f"dataset.sources[{i}].{amount[0]}={value!r} must be a number > 0")
        kinds.add(amount[0])
        labels.append(source_label(spec))
    if len(kinds) > 1:
        raise UserError("dataset.sources: give every source a weight, or every source a rows count, not a mix")
    if len(set(labels)) != len(labels):
        raise UserError(f"dataset.sources: two sources share a name {labels}; give one a `label`")
    return list(sources)


def source_config(ds_cfg: Any, spec: Any, index: int = 0) -> Any:
    """The single-dataset config source `index` loads with: a shipped dataset's own (conf/dataset/NAME.yaml) or the
    mixture's file settings, with the source's path / hub id / columns / split / subset (the hub config name) /
    data_dir (a folder of the hub repository); all its pairs (data_size is applied to the mixture) and the mixture's
    held-out settings."""
    from .. import CONF_DIR

    if spec.get("name"):
        path = CONF_DIR / "dataset" / f"{spec.name}.yaml"
        base = OmegaConf.load(path) if path.is_file() else None
        if base is None or not base.get("loader") or base.get("loader") == "mixture":
            shipped = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
            raise UserError(f"dataset.sources: name={spec.name} is not a shipped preference dataset ({shipped})")
    else:
        base = OmegaConf.create({k: v for k, v in OmegaConf.to_container(ds_cfg).items() if k != "sources"})
        with open_dict(base):
            base.loader, base.path, base.hub_id = "files", spec.get("path"), spec.get("hub_id")
            base.eval_split = None
    with open_dict(base):
        base.name = source_label(spec)
        base.data_size = None
        base.eval_size = ds_cfg.eval_size
        base.eval_fraction = ds_cfg.eval_fraction
        base.hub_config = spec.get("subset", base.get("hub_config"))
        base.hub_data_dir = spec.get("data_dir", base.get("hub_data_dir"))
        base.setting_names = {key: f"dataset.sources[{index}].{own}" for key, own in SOURCE_SETTINGS.items()}
        base.train_split = spec.get("split") or base.get("train_split") or "train"
        if spec.get("eval_split") is not None:
            base.eval_split = spec.eval_split
        if spec.get("columns"):
            base.columns = OmegaConf.merge(base.columns, spec.columns)
    return base


def shares(sources: list[Any], available: list[int], size: int | None, labels: list[str]) -> list[int]:
    """Training pairs drawn from each source: its `rows`, or its weight's share of `size` (None: the largest total
    every source can supply in those proportions)."""
    if sources[0].get("rows") is not None:
        wanted = [int(s.rows) for s in sources]
    else:
        weights = [float(s.weight) for s in sources]
        total = sum(weights)
        if size is None:
            size = int(min(n * total / w for n, w in zip(available, weights)))
        wanted = [int(size * w / total) for w in weights]
        wanted[-1] += int(size) - sum(wanted)  # rounding: the total is exactly data_size
    for label, want, have in zip(labels, wanted, available):
        if want > have:
            raise UserError(f"dataset.sources: {label} must give {want} training pairs but has {have} after filtering")
    return wanted


def interleave(groups: list[list[Any]]) -> list[Any]:
    """One from each group in turn (so any prefix holds every group)."""
    return [item for batch in zip_longest(*groups) for item in batch if item is not None]


def load_mixture_data(
    ds_cfg: Any,
    seed: int,
    load: Callable[..., PreferenceData],
    size: int | None,
) -> PreferenceData:
    """Load each source with `load(source_cfg)` (the single-dataset loader), then mix (see the module docstring)."""
    sources = check_sources(ds_cfg)
    labels = [source_label(s) for s in sources]
    parts = [load(source_config(ds_cfg, spec, i)) for i, spec in enumerate(sources)]
    heldout = {prompt_key(p) for part in parts for p in part.eval_prompts} | {
        prompt_key(r["prompt"]) for part in parts for r in part.eval
    }
    pools = [[r for r in part.train if prompt_key(r["prompt"]) not in heldout] for part in parts]
    wanted = shares(sources, [len(p) for p in pools], size, labels)
    train = seeded_subset([r for pool, n in zip(pools, wanted) for r in pool[:n]], None, seed)
    counts: dict[str, int] = {"train_pairs": len(train)}
    composition, eval_sources = [], {}
    for spec, label, part, pool, n in zip(sources, labels, parts, pools, wanted):
        for key, value in part.counts.items():
            counts[f"{label}/{key}"] = value
        counts[f"{label}/train_pairs"] = n
        counts[f"{label}/train_unused_pairs"] = len(pool) - n
        counts[f"{label}/train_dropped_heldout_elsewhere"] = len(part.train) - len(pool)
        for prompt in [*part.eval_prompts, *(r["prompt"] for r in part.eval)]:
            eval_sources.setdefault(prompt_key(prompt), label)
        composition.append(
            {
                "source": label,
                "from": part.source,
                **({"weight": float(spec.weight)} if spec.get("weight") is not None else {"rows": int(spec.rows)}),
                "train_pairs": n,
                "share": round(n / max(1, len(train)), 4),
                "eval_pairs": len(part.eval),
                "eval_prompts": len(part.eval_prompts),
            }
        )
    eval_pairs = interleave([part.eval for part in parts])
    counts["eval_pairs"] = len(eval_pairs)
    references: dict[str, Any] = {}
    for part in parts:
        references.update(part.eval_references)
    return PreferenceData(
        train=train,
        eval=eval_pairs,
        counts=counts,
        source="mixture:" + ",".join(f"{c['source']}={c['train_pairs']}" for c in composition),
        eval_prompts=interleave([part.eval_prompts for part in parts]),
        eval_references=references,
        judge=[row for part in parts for row in part.judge],  # a trained judge's share of each source
        eval_sources=eval_sources,
        composition=composition,
    )
