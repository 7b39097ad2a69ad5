"""Preference data: load (hub or local files), normalise to prompt/chosen/rejected, filter, subset, split.

Every loader returns plain rows `{prompt, chosen, rejected[, score_chosen, score_rejected]}`; filtering and
splitting are shared. Problems in the user's data raise `UserError` naming the file, line or column.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import UserError

FILE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class PreferenceData:
    """Training and evaluation pairs plus the counts of what was dropped and why."""

    train: list[dict]
    eval: list[dict]
    counts: dict[str, int] = field(default_factory=dict)
    source: str = ""
    eval_prompts: list[str] = field(default_factory=list)  # held-out prompts for sampling-based evaluation

    def __post_init__(self) -> None:
        if not self.eval_prompts:
            self.eval_prompts = list(dict.fromkeys(r["prompt"] for r in self.eval))


# ---------------------------------------------------------------- local files


def data_files(path: str | Path) -> dict[str, Path]:
    """Map split -> file for a file (all 'train') or a folder with train.* / test.* (or eval.*) inside."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"dataset.path={path} does not exist")
    if path.is_file():
        if path.suffix not in FILE_SUFFIXES:
            raise UserError(f"dataset.path={path}: unsupported file type {path.suffix!r} (use {sorted(FILE_SUFFIXES)})")
        return {"train": path}
    found: dict[str, Path] = {}
    for split, stems in {"train": ("train",), "test": ("test", "eval", "validation")}.items():
        for stem in stems:
            for suffix in FILE_SUFFIXES:
                if (path / f"{stem}{suffix}").is_file() and split not in found:
                    found[split] = path / f"{stem}{suffix}"
    if "train" not in found:
        files = sorted(p for p in path.iterdir() if p.suffix in FILE_SUFFIXES)
        if len(files) == 1:
            found["train"] = files[0]
        else:
            raise UserError(f"dataset.path={path}: expected train.jsonl|csv|parquet (and optionally test.*) inside")
    return found


def read_records(path: Path) -> list[dict]:
    """Read a jsonl/json/csv/parquet file into dict rows, with line-precise errors for JSON Lines."""
    kind = FILE_SUFFIXES.get(path.suffix)
    if kind is None:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}")
    if path.suffix == ".jsonl":
        return _read_jsonl_strict(path)
    try:
        from datasets import load_dataset

        dataset = load_dataset(kind, data_files=str(path), split="train")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for unreadable files
        raise UserError(f"{path}: cannot read as {kind}: {str(exc).splitlines()[0][:200]}") from None
    return dataset.to_list()


def _read_jsonl_strict(path: Path) -> list[dict]:
    raw = path.read_bytes()
    rows: list[dict] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: line {number} is not valid UTF-8 (byte {exc.start})") from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {number} is a {type(row).__name__}, expected a JSON object")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def load_hub_splits(ds_cfg: Any) -> dict[str, list[dict]]:
    """Train (and eval, when configured) splits of a hub dataset, as dict rows."""
    from datasets import load_dataset

    kwargs = {"data_dir": ds_cfg.hub_config} if ds_cfg.get("hub_config") else {}
    splits = {"train": ds_cfg.train_split}
    if ds_cfg.get("eval_split"):
        splits["test"] = ds_cfg.eval_split
    return {name: load_dataset(ds_cfg.hub_id, split=split, **kwargs).to_list() for name, split in splits.items()}


def load_raw_splits(ds_cfg: Any) -> tuple[dict[str, list[dict]], str]:
    """Rows per split ('train', optional 'test') and a description of the source."""
    if ds_cfg.get("path"):
        files = data_files(ds_cfg.path)
        return {split: read_records(f) for split, f in files.items()}, f"files:{','.join(map(str, files.values()))}"
    if not ds_cfg.get("hub_id"):
        raise UserError(f"dataset={ds_cfg.name}: set dataset.path to a local file or folder")
    return load_hub_splits(ds_cfg), f"hub:{ds_cfg.hub_id}"


# ---------------------------------------------------------------- normalisation per source


def _message_text(value: Any, role: str | None = None) -> Any:
    """Flatten a chat-message list to the content of its last message (of `role`, when given)."""
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        chosen = [m for m in value if role is None or m.get("role") == role] or value
        return chosen[-1]["content"]
    return value


def _score(row: dict, key: str) -> float | None:
    if key in row and row[key] is not None:
        return float(row[key])
    meta = row.get("metadata")
    if isinstance(meta, dict) and meta.get(key) is not None:
        return float(meta[key])
    return None


def normalize_ultrafeedback(row: dict, columns: Any) -> dict:
    """UltraFeedback: flat strings (trl-lib flattened) or chat-message lists (hub); scores top-level or nested."""
    prompt = row.get(columns.prompt)
    if prompt is None and isinstance(row.get(columns.chosen), list):  # H4 format: the prompt is the first user turn
        users = [m for m in row[columns.chosen] if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[0]["content"] if users else None
    prompt = _message_text(prompt, role="user")
    out = {
        "prompt": prompt,
        "chosen": _message_text(row.get(columns.chosen), role="assistant"),
        "rejected": _message_text(row.get(columns.rejected), role="assistant"),
    }
    for key in ("score_chosen", "score_rejected"):
        value = _score(row, key)
        if value is not None:
            out[key] = value
    return out


ASSISTANT_TAG = "\n\nAssistant:"


def split_hh_dialogue(chosen: str, rejected: str) -> dict:
    """Split two HH-RLHF dialogues into a shared prompt and the two responses.

    The prompt ends at the last "\\n\\nAssistant:" of the common prefix; when the dialogues diverge before the
    final assistant turn (a few rows in the source do), that earlier split point is used, so both responses keep
    everything after it.
    """
    common = 0
    limit = min(len(chosen), len(rejected))
    while common < limit and chosen[common] == rejected[common]:
        common += 1
    cut = chosen.rfind(ASSISTANT_TAG, 0, common)  # last tag lying wholly inside the shared prefix
    if cut < 0:  # no assistant turn in the shared part: no prompt can be separated
        return {"prompt": "", "chosen": chosen, "rejected": rejected}
    end = cut + len(ASSISTANT_TAG)
    return {"prompt": chosen[:end], "chosen": chosen[end:], "rejected": rejected[end:]}


def normalize_hh(row: dict, columns: Any) -> dict:
    chosen, rejected = row.get(columns.chosen), row.get(columns.rejected)
    if columns.prompt in row and row[columns.prompt] is not None:  # already split (e.g. trl-lib/hh-rlhf-helpful-base)
        return {"prompt": row[columns.prompt], "chosen": chosen, "rejected": rejected}
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return {"prompt": None, "chosen": chosen, "rejected": rejected}
    return split_hh_dialogue(chosen, rejected)


def normalize_files(row: dict, columns: Any) -> dict:
    out = {"prompt": row.get(columns.prompt), "chosen": row.get(columns.chosen), "rejected": row.get(columns.rejected)}
    for key in ("score_chosen", "score_rejected"):
        value = _score(row, key)
        if value is not None:
            out[key] = value
    return out


NORMALIZERS: dict[str, Callable[[dict, Any], dict]] = {
    "ultrafeedback": normalize_ultrafeedback,
    "hh_rlhf": normalize_hh,
    "files": normalize_files,
}


def required_columns(ds_cfg: Any) -> list[str]:
    if ds_cfg.loader == "hh_rlhf":
        return [ds_cfg.columns.chosen, ds_cfg.columns.rejected]
    if ds_cfg.loader == "ultrafeedback":
        return [ds_cfg.columns.chosen, ds_cfg.columns.rejected]
    return [ds_cfg.columns.prompt, ds_cfg.columns.chosen, ds_cfg.columns.rejected]


def check_columns(rows: list[dict], needed: Iterable[str], where: str) -> None:
    present = set().union(*(r.keys() for r in rows[:100])) if rows else set()
    missing = [c for c in needed if c not in present]
    if missing:
        raise UserError(f"{where}: missing column(s) {missing}; found {sorted(present)} (set dataset.columns.*)")


# ---------------------------------------------------------------- filtering, subsetting, splitting


def filter_pairs(rows: list[dict], drop_ties: bool, where: str) -> tuple[list[dict], dict[str, int]]:
    """Drop empty, identical and (optionally) tied pairs; reject wrong types with the row number."""
    counts = {"empty": 0, "identical": 0, "ties": 0}
    kept: list[dict] = []
    for index, row in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(key), str):
                kind = type(row.get(key)).__name__
                raise UserError(f"{where}: row {index + 1}: column '{key}' must be text, got {kind}")
        if not row["chosen"].strip() or not row["rejected"].strip():
            counts["empty"] += 1
        elif row["chosen"].strip() == row["rejected"].strip():
            counts["identical"] += 1
        elif drop_ties and row.get("score_chosen") is not None and row.get("score_chosen") == row.get("score_rejected"):
            counts["ties"] += 1
        else:
            kept.append(row)
    return kept, counts


def seeded_subset(rows: list[dict], size: int | None, seed: int) -> list[dict]:
    """A deterministic random subset (the whole list, shuffled, when size is None)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    if size is not None:
        order = order[:size]
    return [rows[i] for i in order]


def apply_template(rows: list[dict], ds_cfg: Any) -> list[dict]:
    """Wrap prompts/responses in the dataset's text template (e.g. Human/Assistant turns for flat strings)."""
    template = ds_cfg.get("prompt_template")
    prefix = ds_cfg.get("response_prefix") or ""
    if not template and not prefix:
        return rows
    out = []
    for row in rows:
        row = dict(row)
        if template:
            row["prompt"] = template.format(prompt=row["prompt"])
        row["chosen"], row["rejected"] = prefix + row["chosen"].lstrip(), prefix + row["rejected"].lstrip()
        out.append(row)
    return out


def drop_long_prompts(
    rows: list[dict], prompt_fits: Callable[[str], bool] | None, where: str, max_length: Any
) -> tuple[list[dict], int]:
    """Drop pairs whose prompt leaves no room for a response within max_length; error when none is left."""
    if prompt_fits is None:
        return rows, 0
    kept = [r for r in rows if prompt_fits(r["prompt"])]
    if rows and not kept:
        raise UserError(
            f"{where}: trainer.max_length={max_length} is too small: every prompt leaves no room for a response "
            f"(raise trainer.max_length or shorten the prompts)"
        )
    return kept, len(rows) - len(kept)


def load_preference_data(
    ds_cfg: Any, seed: int, prompt_fits: Callable[[str], bool] | None = None, max_length: Any = None
) -> PreferenceData:
    """Load, normalise, filter, split and subset a preference dataset according to its config.

    `prompt_fits(prompt)` (optional) says whether a prompt leaves room for a response within max_length.
    """
    splits, source = load_raw_splits(ds_cfg)
    normalize = NORMALIZERS[ds_cfg.loader]
    counts: dict[str, int] = {}
    cleaned: dict[str, list[dict]] = {}
    for split, rows in splits.items():
        where = f"{source} [{split}]"
        check_columns(rows, required_columns(ds_cfg), where)
        normalized = [normalize(r, ds_cfg.columns) for r in rows]
        kept, dropped = filter_pairs(normalized, bool(ds_cfg.drop_ties), where)
        counts[f"{split}_raw"] = len(rows)
        counts.update({f"{split}_dropped_{k}": v for k, v in dropped.items()})
        if not kept:
            raise UserError(f"{where}: 0 pairs left after filtering ({len(rows)} rows; dropped {dropped})")
        kept = apply_template(kept, ds_cfg)
        kept, counts[f"{split}_dropped_too_long"] = drop_long_prompts(kept, prompt_fits, where, max_length)
        cleaned[split] = kept

    pool = seeded_subset(cleaned["train"], None, seed)
    if "test" in cleaned:
        eval_pool = seeded_subset(cleaned["test"], None, seed)
    else:  # hold out a fraction of the training pool, before the training subset is drawn
        n_eval = max(1, int(round(len(pool) * float(ds_cfg.eval_fraction)))) if len(pool) > 1 else 0
        eval_pool, pool = pool[:n_eval], pool[n_eval:]
    if ds_cfg.get("eval_size"):
        eval_pool = eval_pool[: int(ds_cfg.eval_size)]

    size = ds_cfg.get("data_size")
    if size is not None and int(size) > len(pool):
        raise UserError(f"data_size={size} but only {len(pool)} training pairs are available after filtering")
    train = pool[: int(size)] if size is not None else pool
    counts.update({"train_pairs": len(train), "eval_pairs": len(eval_pool)})
    return PreferenceData(train=train, eval=eval_pool, counts=counts, source=source)
