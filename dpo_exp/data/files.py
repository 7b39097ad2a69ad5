"""Where rows come from: local jsonl / json / csv / parquet files (line-precise errors; train/test files in a
folder) or hub splits."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

FILE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


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
        if "test" in found:  # never train on the held-out file (it would also be the evaluation data: a leak)
            raise UserError(
                f"dataset.path={path}: no train file (train.jsonl|csv|parquet) next to {found['test'].name}; "
                f"add one, or point dataset.path at a single file to split it"
            )
        if len(files) == 1:
            found["train"] = files[0]
        else:
            raise UserError(f"dataset.path={path}: expected train.jsonl|csv|parquet (and optionally test.*) inside")
    return found


def read_records(path: Path) -> list[dict]:
    """Read a jsonl/json/csv/parquet file into dict rows, with line-precise errors for JSON Lines."""
    return read_located_records(path)[0]


def read_located_records(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a jsonl/json/csv/parquet file plus where each row sits ("line 7" / "row 7"), for error messages.

    Errors (bad bytes, bad JSON, unreadable tables, no rows) are `UserError`s naming the file and line.
    """
    path = Path(path)
    if path.suffix not in FILE_SUFFIXES:
        raise UserError(f"{path}: unsupported file type {path.suffix!r} (use {sorted(FILE_SUFFIXES)})")
    if path.suffix in (".jsonl", ".json"):
        rows, where = _read_json(path)
    elif path.suffix == ".csv":
        rows, where = _read_csv(path)
    else:
        rows, where = _read_parquet(path)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows, where


def _decode_lines(path: Path) -> list[str]:
    """The file's lines, decoded as UTF-8; the first undecodable line is reported by number."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (some Windows tools write one): not data
        raw = raw[3:]
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: line {number} is not valid UTF-8 (byte {exc.start} of the line)") from None
    return [line.decode("utf-8") for line in lines]


def _json_kind(value: Any) -> str:
    """'an array', 'a number', ... for messages about JSON values."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool) or value is None:
        return f"{json.dumps(value)}"
    return "a number" if isinstance(value, (int, float)) else "a string"


def _read_json(path: Path) -> tuple[list[dict], list[str]]:
    """JSON Lines (one object per line); a `.json` file may instead hold one array of objects."""
    lines = _decode_lines(path)
    text = "\n".join(lines)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {exc.lineno} is not valid JSON ({exc.msg})") from None
        for index, row in enumerate(data, start=1):
            if not isinstance(row, dict):
                raise UserError(f"{path}: item {index} is {_json_kind(row)}, expected a JSON object")
        return data, [f"item {i}" for i in range(1, len(data) + 1)]
    rows: list[dict] = []
    where: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg}, column {exc.colno})") from None
        except RecursionError:
            raise UserError(f"{path}: line {number} is nested too deeply to read") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {number} is {_json_kind(row)}, expected a JSON object")
        rows.append(row)
        where.append(f"line {number}")
    return rows, where


def _read_csv(path: Path) -> tuple[list[dict], list[str]]:
    """CSV with a header row. Cells keep pandas' per-column type inference (an all-numeric column stays numeric,
    so a mis-mapped score column is caught as "not text"); empty cells are empty strings, not NaN."""
    import pandas as pd

    _decode_lines(path)  # line-precise UTF-8 errors, before pandas' less specific ones
    try:
        frame = pd.read_csv(path, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        return [], []
    except (pd.errors.ParserError, ValueError) as exc:
        raise UserError(f"{path}: cannot read as CSV: {str(exc).strip().splitlines()[0][:200]}") from None
    rows = frame.to_dict(orient="records")
    return rows, [f"row {i}" for i in range(1, len(rows) + 1)]


def _read_parquet(path: Path) -> tuple[list[dict], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: cannot read as parquet: {str(exc).strip().splitlines()[0][:200]}") from None
    return rows, [f"row {i}" for i in range(1, len(rows) + 1)]


@dataclass
class RawSplit:
    """One split's rows as read, where they came from (a file or hub split) and each row's position in it."""

    rows: list[dict]
    origin: str
    where: list[str] = field(default_factory=list)

    def locate(self, index: int) -> str:
        """'FILE line 7' (or 'hub:ID [train] row 7') for the row at `index`."""
        position = self.where[index] if index < len(self.where) else f"row {index + 1}"
        return f"{self.origin} {position}"


def check_columns(rows: list[dict], needed: Iterable[str], where: str) -> None:
    """Raise naming the missing columns (and the ones found) when no row among the first 100 has them."""
    present = set().union(*(r.keys() for r in rows[:100])) if rows else set()
    missing = [c for c in needed if c not in present]
    if missing:
        raise UserError(f"{where}: missing column(s) {missing}; found {sorted(present)} (set dataset.columns.*)")


def load_hub_splits(ds_cfg: Any) -> dict[str, list[dict]]:
    """Train (and eval, when configured) splits of a hub dataset, as dict rows."""
    from datasets import load_dataset

    kwargs = {"data_dir": ds_cfg.hub_config} if ds_cfg.get("hub_config") else {}
    splits = {"train": ds_cfg.train_split}
    if ds_cfg.get("eval_split"):
        splits["test"] = ds_cfg.eval_split
    from ..infra.hub import hub_access

    with hub_access("dataset", str(ds_cfg.hub_id), "dataset.path"):
        return {name: load_dataset(ds_cfg.hub_id, split=split, **kwargs).to_list() for name, split in splits.items()}


def load_located_splits(ds_cfg: Any) -> tuple[dict[str, RawSplit], str]:
    """Rows per split ('train', optional 'test') with their locations, and a description of the source."""
    if ds_cfg.get("path"):
        files = data_files(ds_cfg.path)
        splits = {}
        for split, file in files.items():
            rows, where = read_located_records(file)
            splits[split] = RawSplit(rows, str(file), where)
        return splits, f"files:{','.join(map(str, files.values()))}"
    if not ds_cfg.get("hub_id"):
        raise UserError(f"dataset={ds_cfg.name}: set dataset.path to a local file or folder")
    hub = load_hub_splits(ds_cfg)
    return {k: RawSplit(v, f"hub:{ds_cfg.hub_id} [{k}]") for k, v in hub.items()}, f"hub:{ds_cfg.hub_id}"
