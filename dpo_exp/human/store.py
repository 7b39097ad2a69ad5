"""`RUN/human/ratings.jsonl`: one JSON line per vote, appended atomically, read back tolerantly.

Appends hold a `filelock.FileLock` (one writer at a time, across threads, app tabs and processes) and write the whole
line with one `os.write` on an O_APPEND descriptor, then fsync: a second writer never interleaves, and a crash can
at worst leave a torn last line. Under the same lock the store skips a record whose `pair_id` is already in the file
(a double click or a resent request records one vote), and ends a torn last line before appending, so the next
record starts on a fresh line. Readers skip lines that are not JSON objects (only a crash leaves them).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..infra.storage import clean_floats

log = logging.getLogger(__name__)

RATINGS_FILE = "human/ratings.jsonl"
REFERENCE = "reference"
CHOICES = ("left", "right", "tie", "skip")


def ratings_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RATINGS_FILE


def numbered_records(raw: bytes) -> list[tuple[int, dict]]:
    """(line number, record) of the JSON-object lines of `raw`; torn or garbled lines (a crash mid-write) are
    skipped with a warning."""
    records, bad = [], 0
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            bad += 1
            continue
        if isinstance(record, dict):
            records.append((number, record))
        else:
            bad += 1
    if bad:
        log.warning("skipped %d unreadable line(s) of ratings (a write interrupted by a crash)", bad)
    return records


def parse_lines(raw: bytes) -> list[dict]:
    """The JSON-object lines of `raw` (numbered_records without the numbers)."""
    return [record for _, record in numbered_records(raw)]


def read_ratings(run_dir: str | Path) -> list[dict]:
    """Every readable vote record of the run (an empty list when nobody has rated it yet)."""
    path = ratings_path(run_dir)
    return parse_lines(path.read_bytes()) if path.is_file() else []


def read_many(paths: Iterable[str | Path]) -> list[dict]:
    """The records of several runs, each vote once (a vote between two policies is in both runs' files)."""
    seen: set[str] = set()
    out = []
    for run_dir in paths:
        for record in read_ratings(run_dir):
            key = str(record.get("vote_id") or record.get("pair_id"))
            if key not in seen:
                seen.add(key)
                out.append(record)
    return out


class RatingStore:
    """Appends to one run's ratings file; every method is safe to call from several threads and processes."""

    def __init__(self, run_dir: str | Path):
        self.path = ratings_path(run_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.path) + ".lock")
        self._offset = 0  # bytes of the file already scanned for pair ids
        self._pair_ids: set[str] = set()

    def _scan_new_lines(self, fd: int) -> bool:
        """Add the pair ids of lines written since the last scan (by anyone); True when the file ends mid-line."""
        size = os.fstat(fd).st_size
        if size < self._offset:  # replaced by a shorter file: rescan
            self._offset, self._pair_ids = 0, set()
        raw = os.pread(fd, size - self._offset, self._offset) if size > self._offset else b""
        complete = raw[: raw.rfind(b"\n") + 1]
        self._pair_ids |= {str(r.get("pair_id")) for r in parse_lines(complete)}
        self._offset += len(complete)
        return len(complete) < len(raw)

    def append(self, record: dict[str, Any]) -> bool:
        """Append `record` as one line; False (nothing written) when its pair_id was already recorded."""
        line = json.dumps(clean_floats(record), ensure_ascii=False, default=str).encode("utf-8") + b"\n"
        with self.lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                torn = self._scan_new_lines(fd)
                if str(record.get("pair_id")) in self._pair_ids:
                    return False
                data = (b"\n" if torn else b"") + line  # a torn last line ends here; this record stays whole
                written = os.write(fd, data)
                if written != len(data):  # a full disk: say so rather than leave half a record
                    raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
                os.fsync(fd)
                self._offset = os.fstat(fd).st_size
                self._pair_ids.add(str(record.get("pair_id")))
                return True
            finally:
                os.close(fd)

    def records(self) -> list[dict]:
        with self.lock:
            return read_ratings(self.path.parent.parent)
