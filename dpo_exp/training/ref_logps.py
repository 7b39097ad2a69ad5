"""Reference log-probabilities computed once per (model, pairs, tokenisation) and reused across sweep jobs.

TRL's `precompute_ref_log_probs=True` already caches the reference log-probs as a `datasets` cache file next to
the train/eval dataset, named by `Hasher.hash((tokenised dataset fingerprint, sha256 of the reference weights))`
(`DPOTrainer._precompute_ref_logps`, reached through dpo_exp.trl_compat). A dataset built in memory has no folder, so that cache dies with the
process. `shared_dataset` writes the pairs once to an Arrow folder under `cache_dir/pair_datasets/<content hash>`
and loads it back memory-mapped: TRL's tokenisation `map`s and its reference log-probs then land in that folder,
model weights via the model hash), and a later job with the same inputs reads them instead of recomputing.

One catch: TRL's tokenisation ends with `dataset.filter(lambda ex: ... < args.max_length)`, and `datasets` hashes
that lambda together with the whole DPOConfig it closes over (beta, learning rate, output_dir), so every sweep job
would get a new fingerprint and recompute. `SharedRefLogpsMixin` keys TRL's cache file on the tokenised pairs
themselves (token ids + the collator's truncation settings) instead; TRL still adds the reference-weights hash.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COLUMNS = ("prompt", "chosen", "rejected")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def pair_columns(rows: list[dict]) -> tuple[str, ...]:
    """The text columns, plus the token-id columns when the pairs carry them (pairs built from samples)."""
    from ..data.schema import PAIR_ID_COLUMNS

    return COLUMNS + PAIR_ID_COLUMNS if rows and all(k in rows[0] for k in PAIR_ID_COLUMNS) else COLUMNS


def pairs_dataset(rows: list[dict]):
    """The pairs as an in-memory `datasets.Dataset` of `pair_columns`."""
    from datasets import Dataset

    columns = pair_columns(rows)
    return Dataset.from_list([{k: r[k] for k in columns} for r in rows])


def _row_digests(rows: list[dict]) -> list[str]:
    columns = pair_columns(rows)
    return [
        hashlib.sha256(json.dumps([r[k] for k in columns], ensure_ascii=False).encode("utf-8")).hexdigest()
        for r in rows
    ]


def pair_set_key(rows: list[dict]) -> str:
    """sha256 (16 hex) of the SET of pairs (text, and token ids when present): the same pairs in another order (a
    seed sweep shuffles them) share one folder, and so one reference log-probs cache."""
    return hashlib.sha256("".join(sorted(_row_digests(rows))).encode()).hexdigest()[:16]


ADDED_FILES = "cache-*.arrow"  # what `datasets` adds to the entry: TRL's tokenised pairs, reference log-probs


def arrow_readable(path: Path) -> bool:
    """Whether `path` is a whole Arrow stream (the format of `datasets` cache files): a cut file fails to read."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            pa.ipc.open_stream(source).read_all()
    except (OSError, pa.ArrowException):
        return False
    return True


def shared_dataset(rows: list[dict], cache_dir: str | Path):
    """The pairs as a memory-mapped `datasets.Dataset` stored (in a canonical order) in the cache entry
    `cache_dir/pair_datasets/<content hash>`, returned in the order of `rows`. A damaged entry is rebuilt, and a
    damaged file that TRL added to it is removed (TRL then recomputes it): infra.cache."""
    from datasets import load_from_disk

    from ..infra.cache import cached, verify_added

    digests = _row_digests(rows)
    canonical = sorted(range(len(rows)), key=digests.__getitem__)

    def build(folder: Path) -> dict[str, Any]:
        pairs_dataset([rows[i] for i in canonical]).save_to_disk(str(folder))
        return {"rows": len(rows)}

    entry = cached(cache_dir, "pair_datasets", pair_set_key(rows), build)  # locked: parallel jobs write it once
    verify_added(entry.path, ADDED_FILES, arrow_readable)
    position = {row: place for place, row in enumerate(canonical)}
    return load_from_disk(str(entry.path)).select([position[row] for row in range(len(rows))])


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

    cache_dir: Path | None  # None: reference log-probs are not precomputed (nothing to cache)
    folders: list[Path] = field(default_factory=list)
    before: set[str] = field(default_factory=set)

    @classmethod
    def from_config(cls, cfg: Any) -> RefLogpsCache:
        enabled = bool(cfg.trainer.get("precompute_ref_log_probs"))
        return cls(Path(str(cfg.cache_dir)) if enabled else None)

    def dataset(self, rows: list[dict]):
        """A Dataset of the pairs: in memory when not precomputing, else the shared memory-mapped copy."""
        if self.cache_dir is None:
            return pairs_dataset(rows)
        ds = shared_dataset(rows, self.cache_dir)
        folder = Path(ds.cache_files[0]["filename"]).parent
        self.folders.append(folder)
        self.before |= _arrow_files(folder)
        return ds

    def status(self, trainer: Any) -> dict[str, Any]:
        """{"cache": "built"|"reused"|"disabled", per split, folder} after the trainer has precomputed them."""
        if self.cache_dir is None:
            return {"cache": "disabled"}
        from ..infra.cache import verify_added

        for folder in self.folders:  # seal what TRL added while it tokenised and precomputed
            verify_added(folder, ADDED_FILES, arrow_readable, recheck=False)  # checked in full at the next use
        splits: dict[str, str] = {}
        for split, files in getattr(trainer, "ref_logps_files", {}).items():
            splits[split] = "reused" if files and all(f in self.before for f in files) else "built"
        overall = "reused" if splits and all(v == "reused" for v in splits.values()) else "built"
        out = {"cache": overall, **splits, "dir": str(self.folders[0]) if self.folders else None}
        log.info("reference log-probs: %s (%s)", overall, ", ".join(f"{k} {v}" for k, v in splits.items()))
        return out


# The DPOConfig fields TRL's reference log-probs read besides the weights and precision (`reference_hash`): the
# collator's cut and padding (DataCollatorForPreference(max_length, truncation_mode, pad_to_multiple_of);
# padding_free) and `compute_ref_log_probs`'s LD-DPO weighting (ld_alpha). tests/test_trl_compat.py checks that
# compute_ref_log_probs reads no other field.
REF_LOGPS_ARGS = ("max_length", "truncation_mode", "pad_to_multiple_of", "padding_free", "ld_alpha")


def tokenised_fingerprint(dataset: Any, args: Any) -> str:
    """Hash of what the reference log-probs depend on besides the weights: the token ids of every pair and the
    DPOConfig fields in `REF_LOGPS_ARGS`. Independent of beta, learning rate and output folder."""
    from datasets.fingerprint import Hasher

    h = hashlib.sha256()
    columns = [c for c in ("prompt_ids", "chosen_ids", "rejected_ids") if c in dataset.column_names]
    settings = {name: getattr(args, name, None) for name in REF_LOGPS_ARGS}
    h.update(json.dumps([columns, settings], sort_keys=True, default=str).encode())
    for batch in dataset.select_columns(columns).with_format("arrow").iter(batch_size=4096):
        for column in columns:
            h.update(json.dumps(batch.column(column).to_pylist()).encode())
    return Hasher.hash(h.hexdigest())


ADAPTER_KEYS = ("lora_", "modules_to_save")
WRAPPER_PARTS = ("base_model.model.", ".base_layer", ".original_module")
CONFIG_NOISE = ("_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash")


def reference_hash(model: Any, bf16: bool, fp16: bool) -> str:
    """sha256 of what the reference log-probs depend on besides the tokens: the weights the reference SEES (a
    frozen copy, or a PEFT policy's base weights: adapters are disabled for the reference, so their random init
    and the seed do not count), the architecture config, the compute precision, and the device type and CPU thread
    count (`infra.cache.arithmetic`)."""
    import torch

    from ..infra.cache import arithmetic

    h = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in CONFIG_NOISE}
    device = next(model.parameters()).device.type
    h.update(json.dumps([config, bool(bf16), bool(fp16), arithmetic(device)], sort_keys=True, default=str).encode())
    for key, tensor in sorted(model.state_dict().items()):
        if any(part in key for part in ADAPTER_KEYS):
            continue
        for part in WRAPPER_PARTS:
            key = key.replace(part, "")
        tensor = tensor.detach().cpu()
        h.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update((tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy().tobytes())
    return h.hexdigest()


def canonical_order(dataset: Any) -> list[int]:
    """Row indices sorted by each pair's token ids: the same pairs in any order (a seed sweep shuffles them)
    give the same canonical dataset, hence the same reference log-probs cache entry."""
    columns = [c for c in ("prompt_ids", "chosen_ids", "rejected_ids") if c in dataset.column_names]
    digests = []
    for batch in dataset.select_columns(columns).with_format("arrow").iter(batch_size=4096):
        rows = zip(*(batch.column(c).to_pylist() for c in columns))
        digests.extend(hashlib.sha256(json.dumps(list(row)).encode()).hexdigest() for row in rows)
    return sorted(range(len(digests)), key=digests.__getitem__)


class SharedRefLogpsMixin:
    """Mix into a `trl_compat.CompatDPOTrainer`: its precomputed reference log-probs are cached per (canonically ordered tokenised
    pairs, `reference_hash`). TRL's own key hashes the dataset's fingerprint (which changes with the DPOConfig and
    the row order) and the whole policy, LoRA adapter included, so every job of a beta or seed sweep recomputed
    identical reference log-probs."""

    ref_logps_files: dict[str, list[str]]

    def precompute_reference(self, dataset: Any, name: str, batch_size: int):
        from datasets import Dataset, concatenate_datasets

        from ..trl_compat import set_fingerprint

        if not getattr(self, "_reference_hash_set", False):
            from ..infra.sharding import is_sharded

            model = self.accelerator.unwrap_model(self.ref_model or self.model)
            if is_sharded(model):  # a sharded fp32 copy of the (not yet sharded) policy: hash the policy, as
                model = self.model  # an unsharded run does, so both share one cache entry
            self.set_reference_hash(reference_hash(model, self.args.bf16, self.args.fp16))
            self._reference_hash_set = True
        order = canonical_order(dataset)
        canonical = dataset.select(order)
        set_fingerprint(canonical, tokenised_fingerprint(canonical, self.args))
        computed = super().precompute_reference(canonical, name, batch_size)
        if not hasattr(self, "ref_logps_files"):
            self.ref_logps_files = {}
        self.ref_logps_files[name] = _ref_files(computed)
        position = {row: i for i, row in enumerate(order)}  # dataset row -> its place in the canonical order
        back = [position[row] for row in range(len(order))]
        ref = computed.select_columns(list(REF_COLUMNS)).with_format("numpy")
        values = {column: ref[column][back] for column in REF_COLUMNS}
        return concatenate_datasets([dataset, Dataset.from_dict(values)], axis=1)


def frozen_reference(model, precision: str):
    """A frozen copy of the starting policy for full fine-tuning (TRL cannot reload an in-memory model by id), in
    the run's compute dtype: it is never updated, so half precision loses nothing under autocast."""
    from ..models import torch_dtype

    dtype = torch_dtype(precision if precision in ("bf16", "fp16") else "fp32")
    reference = copy.deepcopy(model).to(dtype).eval()
    reference.requires_grad_(False)
    return reference
