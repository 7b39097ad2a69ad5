"""Where rows come from: local jsonl / json / csv / parquet files (line-precise errors; train/test files in a
folder) or a hub dataset's splits (of one of its configs, or a folder of its repository)."""

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


def setting(ds_cfg: Any, key: str) -> str:
    """How the user names a dataset setting in a message: `dataset.KEY`, or a mixture source's own key
    (`setting_names`, set by dpo_exp.data.mixture)."""
    return str((ds_cfg.get("setting_names") or {}).get(key) or f"dataset.{key}")


def config_error(ds_cfg: Any, exc: Exception) -> UserError | None:
    """One line for what `load_dataset_builder` refused (None: not about the config or the folder, e.g. an unreachable
    hub, left to dpo_exp.infra.hub): an unknown config, a missing one, a folder or dataset without data files."""
    from datasets import get_dataset_config_names

    from ..infra.hub import is_unreachable

    if is_unreachable(exc):
        return None
    hub_id, name, folder = str(ds_cfg.hub_id), ds_cfg.get("hub_config") or None, ds_cfg.get("hub_data_dir")
    if isinstance(exc, FileNotFoundError):  # datasets' DatasetNotFoundError / EmptyDatasetError (no data files)
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if folder:
            return UserError(f"{setting(ds_cfg, 'hub_data_dir')}={folder}: no data files there in {hub_id} ({said})")
        return UserError(f"{setting(ds_cfg, 'hub_id')}={hub_id}: cannot read this hub dataset ({said})")
    configs = get_dataset_config_names(hub_id)
    if name is not None and name not in configs:
        return UserError(
            f"{setting(ds_cfg, 'hub_config')}={name}: hub dataset {hub_id} has no config {name!r} (its configs: "
            f"{', '.join(configs)}); a folder of its repository is {setting(ds_cfg, 'hub_data_dir')}={name}"
        )
    if name is None and len(configs) > 1:
        return UserError(
            f"hub dataset {hub_id} has several configs and no default: choose one with "
            f"{setting(ds_cfg, 'hub_config')}=NAME ({', '.join(configs)})"
        )
    return None


def hub_builder(ds_cfg: Any, splits: dict[str, str]) -> Any:
    """The `datasets` builder of the hub dataset's config (`hub_config`: its name, `load_dataset(name=)`) and folder
    (`hub_data_dir`: `data_dir=`), with the asked splits checked against the ones it declares, before any download.

    datasets' own errors for an unknown config or split are several lines (and the split one comes only after the
    whole download); here each is one line listing what there is."""
    from datasets import load_dataset_builder

    hub_id, name = str(ds_cfg.hub_id), ds_cfg.get("hub_config") or None
    try:
        builder = load_dataset_builder(hub_id, name=name, data_dir=ds_cfg.get("hub_data_dir") or None)
    except (ValueError, FileNotFoundError) as exc:
        error = config_error(ds_cfg, exc)
        if error is None:
            raise
        raise error from None
    declared = [str(s) for s in (builder.config.data_files or builder.info.splits or {})]
    for key, split in splits.items():
        wanted = [part.split("[")[0].strip() for part in str(split).split("+")]  # "train[:10%]+test": its splits
        unknown = [s for s in wanted if s not in declared]
        if declared and unknown:
            config = f" (config {builder.config.name})" if name else ""
            raise UserError(
                f"{setting(ds_cfg, key)}={split}: hub dataset {hub_id}{config} has no split {unknown[0]!r} "
                f"(its splits: {', '.join(declared)})"
            )
    return builder


def load_hub_splits(ds_cfg: Any) -> dict[str, list[dict]]:
    """Train (and eval, when configured) splits of a hub dataset (its config and folder: `hub_builder`), as rows."""
    from ..infra.hub import hub_access

    splits = {"train_split": ds_cfg.train_split}
    if ds_cfg.get("eval_split"):
        splits["eval_split"] = ds_cfg.eval_split
    with hub_access("dataset", str(ds_cfg.hub_id), "dataset.path"):
        builder = hub_builder(ds_cfg, splits)
        builder.download_and_prepare()  # what load_dataset does with the builder (non-streaming)
        names = {"train_split": "train", "eval_split": "test"}
        return {names[key]: builder.as_dataset(split=split).to_list() for key, split in splits.items()}


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
