"""Decided votes as training rows (ties and skips dropped): prompt / chosen / rejected pairs for
`dataset=preference_files dataset.path=FILE` (format `pairs`), or binary feedback, prompt / completion / label (the
winner desirable, the loser undesirable), for `method=kto dataset=feedback dataset.path=FILE` (format `kto`)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..infra.storage import atomic_write_text, folder_problem, write_jsonl
from .store import RATINGS_FILE, numbered_records, ratings_path, read_many

SUFFIXES = (".jsonl", ".csv", ".parquet")
FORMATS = ("pairs", "kto")  # --format: preference pairs | binary feedback


@dataclass
class Exported:
    rows: int
    votes: int
    ties: int
    skips: int
    identical: int  # left and right texts equal: nothing to prefer, dropped


def rating_dirs(paths: list[Path]) -> list[Path]:
    """Run folders holding human/ratings.jsonl: each PATH itself, or every one below it (a sweep folder)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path} is not a folder (give run folders or a sweep folder)")
        below = [p.parent.parent for p in sorted(path.glob(f"**/{RATINGS_FILE}"))]
        if not below:
            raise UserError(f"{path} holds no {RATINGS_FILE} (rate in the app's Rate tab first)")
        found += below
    return list(dict.fromkeys(p.resolve() for p in found))


def record_problem(record: dict[str, Any]) -> str | None:
    """What a decided vote lacks to become a training row (None when it has it all, or is a tie / skip)."""
    if record.get("choice") not in ("left", "right"):
        return None
    if record.get("prompt") is None:
        return f"a {record['choice']!r} vote without a 'prompt'"
    for side in ("left", "right"):
        value = record.get(side)
        if not isinstance(value, dict):
            return f"a {record['choice']!r} vote without a '{side}' object"
        missing = [key for key in ("model", "text") if value.get(key) is None]
        if missing:
            return f"a {record['choice']!r} vote whose '{side}' has no {' and no '.join(repr(k) for k in missing)}"
    return None


def check_records(run_dirs: list[Path]) -> None:
    """UserError naming the file and line of the first decided vote that cannot become a row (valid JSON, yet
    incomplete: written by hand or by another tool)."""
    for run_dir in run_dirs:
        path = ratings_path(run_dir)
        for number, record in numbered_records(path.read_bytes()):
            problem = record_problem(record)
            if problem:
                raise UserError(f"{path} line {number}: {problem}; fix or delete that line")


def out_problem(out: Path) -> str | None:
    """Why `out` cannot be written (None when it can), checked before anything is read or written."""
    if out.is_dir():
        return f"--out {out} is a folder (give a file name)"
    problem = folder_problem(out.parent)
    return f"--out {out} cannot be written: {problem}" if problem else None


def write_rows(rows: list[dict], out: Path) -> None:
    """Write the rows atomically (a temporary file renamed into place): `out` is whole or absent."""
    if out.suffix == ".jsonl":
        write_jsonl(out, rows)
        return
    import pandas as pd

    frame = pd.DataFrame(rows)
    if out.suffix == ".csv":
        atomic_write_text(out, frame.to_csv(index=False))
        return
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def preference_rows(records: list[dict]) -> tuple[list[dict], Exported]:
    """prompt/chosen/rejected rows of the left/right votes, plus who voted and which models wrote them."""
    rows, identical = [], 0
    decided = [r for r in records if r.get("choice") in ("left", "right")]
    for record in decided:
        won, lost = (
            (record["left"], record["right"]) if record["choice"] == "left" else (record["right"], record["left"])
        )
        if won["text"] == lost["text"]:
            identical += 1
            continue
        rows.append(
            {
                "prompt": record["prompt"],
                "chosen": won["text"],
                "rejected": lost["text"],
                "chosen_model": won["model"],
                "rejected_model": lost["model"],
                "rater": record.get("rater"),
                "vote_id": record.get("vote_id"),
            }
        )
    counts = Exported(
        len(rows),
        len(records),
        sum(r.get("choice") == "tie" for r in records),
        sum(r.get("choice") == "skip" for r in records),
        identical,
    )
    return rows, counts


def feedback_rows(pairs: list[dict]) -> list[dict]:
    """Binary feedback (TRL's unpaired format) of exported pairs: each winner a desirable row (label true), each
    loser an undesirable one (label false), with the model that wrote it."""
    rows = []
    for pair in pairs:
        for side, label in (("chosen", True), ("rejected", False)):
            rows.append(
                {
                    "prompt": pair["prompt"],
                    "completion": pair[side],
                    "label": label,
                    "model": pair[f"{side}_model"],
                    "rater": pair["rater"],
                    "vote_id": pair["vote_id"],
                }
            )
    return rows


def export(paths: list[Path], out: Path, fmt: str = "pairs") -> Exported:
    """Write the decided votes of the runs under `paths` to `out` (.jsonl, .csv or .parquet) as preference pairs
    (`fmt="pairs"`) or binary feedback (`fmt="kto"`; Exported.rows counts the rows written)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise UserError(f"--out {out}: use one of {', '.join(SUFFIXES)}")
    problem = out_problem(out)
    if problem:
        raise UserError(problem)
    run_dirs = rating_dirs(paths)
    check_records(run_dirs)
    rows, counts = preference_rows(read_many(run_dirs))
    if not rows:
        raise UserError(
            f"no decided votes to export ({counts.votes} ratings: {counts.ties} ties, {counts.skips} skips)"
        )
    try:
        if fmt == "kto":
            rows = feedback_rows(rows)
            counts.rows = len(rows)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_rows(rows, out)
    except OSError as exc:  # e.g. a full disk: nothing half-written is left (write_rows)
        raise UserError(f"--out {out} cannot be written: {exc.strerror or exc}") from None
    return counts
