"""Reference log-probabilities computed once per (model, pairs, tokenisation) and reused across sweep jobs.

TRL's `precompute_ref_log_probs=True` already caches the reference log-probs as a `datasets` cache file next to
the train/eval dataset, named by `Hasher.hash((tokenised dataset fingerprint, sha256 of the reference weights))`
(`DPOTrainer._precompute_ref_logps`). A dataset built in memory has no folder, so that cache dies with the
process. `shared_dataset` writes the pairs once to an Arrow folder under `cache_dir/pair_datasets/<content hash>`
and loads it back memory-mapped: TRL's tokenisation `map`s and its reference log-probs then land in that folder,
model weights via the model hash), and a later job with the same inputs reads them instead of recomputing.

One catch: TRL's tokenisation ends with `dataset.filter(lambda ex: ... < args.max_length)`, and `datasets` hashes
that lambda together with the whole DPOConfig it closes over (beta, learning rate, output_dir), so every sweep job
would get a new fingerprint and recompute. `SharedRefLogpsMixin` keys TRL's cache file on the tokenised pairs
themselves (token ids + the collator's truncation settings) instead; TRL still adds the reference-weights hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COLUMNS = ("prompt", "chosen", "rejected")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def content_key(rows: list[dict]) -> str:
    """sha256 (16 hex) of the pairs' prompt/chosen/rejected text, in order."""
    payload = json.dumps([[r[k] for k in COLUMNS] for r in rows], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def shared_dataset(rows: list[dict], cache_dir: str | Path):
    """The pairs as a memory-mapped `datasets.Dataset` stored under `cache_dir/pair_datasets/<content hash>`."""
    from datasets import Dataset, load_from_disk
    from filelock import FileLock

    folder = Path(cache_dir) / "pair_datasets" / content_key(rows)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # parallel jobs (joblib, submitit) write it once
        if not (folder / "state.json").is_file():
            Dataset.from_list([{k: r[k] for k in COLUMNS} for r in rows]).save_to_disk(str(folder))
    return load_from_disk(str(folder))


def _arrow_files(folder: Path) -> set[str]:
    return {str(p) for p in folder.glob("*.arrow")} if folder.is_dir() else set()


def _ref_files(dataset: Any) -> list[str]:
    """Cache files of a (concatenated) dataset that hold the reference log-prob columns."""
    from datasets import Dataset

    found = []
    for entry in getattr(dataset, "cache_files", None) or []:
        try:
            if tuple(Dataset.from_file(entry["filename"]).column_names) == REF_COLUMNS:
                found.append(entry["filename"])
        except Exception:  # noqa: BLE001 - an unreadable file is simply not ours
            continue
    return found


@dataclass
class RefLogpsCache:
    """Builds the train/eval datasets so TRL's reference log-probs cache is shared, and reports build vs reuse."""

    cache_dir: Path | None            # None: reference log-probs are not precomputed (nothing to cache)
    folders: list[Path] = field(default_factory=list)
    before: set[str] = field(default_factory=set)

    @classmethod
    def from_config(cls, cfg: Any) -> "RefLogpsCache":
        enabled = bool(cfg.trainer.get("precompute_ref_log_probs"))
        return cls(Path(str(cfg.cache_dir)) if enabled else None)

    def dataset(self, rows: list[dict]):
        """A Dataset of the pairs: in memory when not precomputing, else the shared memory-mapped copy."""
        if self.cache_dir is None:
            from datasets import Dataset

            return Dataset.from_list([{k: r[k] for k in COLUMNS} for r in rows])
        ds = shared_dataset(rows, self.cache_dir)
        folder = Path(ds.cache_files[0]["filename"]).parent
        self.folders.append(folder)
        self.before |= _arrow_files(folder)
        return ds

    def status(self, trainer: Any) -> dict[str, Any]:
        """{"cache": "built"|"reused"|"disabled", per split, folder} after the trainer has precomputed them."""
        if self.cache_dir is None:
            return {"cache": "disabled"}
        splits: dict[str, str] = {}
        datasets = {"train": trainer.train_dataset, "eval": trainer.eval_dataset}
        for split, ds in datasets.items():
            if ds is None or isinstance(ds, dict):
                continue
            files = _ref_files(ds)
            splits[split] = "reused" if files and all(f in self.before for f in files) else "built"
        overall = "reused" if splits and all(v == "reused" for v in splits.values()) else "built"
        out = {"cache": overall, **splits, "dir": str(self.folders[0]) if self.folders else None}
        log.info("reference log-probs: %s (%s)", overall, ", ".join(f"{k} {v}" for k, v in splits.items()))
        return out


def tokenised_fingerprint(dataset: Any, args: Any) -> str:
    """Hash of what the reference log-probs depend on besides the weights: the token ids of every pair and the
    collator's truncation settings. Independent of beta, learning rate and output folder."""
    from datasets.fingerprint import Hasher

    h = hashlib.sha256()
    columns = [c for c in ("prompt_ids", "chosen_ids", "rejected_ids") if c in dataset.column_names]
    h.update(json.dumps([columns, args.max_length, args.truncation_mode, args.padding_free]).encode())
    for batch in dataset.select_columns(columns).with_format("arrow").iter(batch_size=4096):
        for column in columns:
            h.update(json.dumps(batch.column(column).to_pylist()).encode())
    return Hasher.hash(h.hexdigest())


class SharedRefLogpsMixin:
    """Mix into a DPOTrainer: its precomputed reference log-probs cache is keyed by `tokenised_fingerprint`."""

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int):
        original = dataset._fingerprint
        dataset._fingerprint = tokenised_fingerprint(dataset, self.args)
        try:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        finally:
            dataset._fingerprint = original
