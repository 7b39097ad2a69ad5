"""`RUN/human/ratings.jsonl`: one JSON line per vote, appended atomically, read back tolerantly.

Appends hold a `filelock.FileLock` (one writer at a time, across threads, app tabs and processes) and write the whole
line with one `os.write` on an O_APPEND descriptor, then fsync: a second writer never interleaves, and a crash can
at worst leave a torn last line. Under the same lock the store skips a record whose `pair_id` is already in the file
(a double click or a resent request records one vote), and ends a torn last line before appending, so the next
record starts on a fresh line. The file is read by `judges.human_votes` (the one reader, re-exported here), which
skips lines that are not JSON objects (only a crash leaves them) and reads the votes as a pairwise judge.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..infra.storage import clean_floats
from ..judges.human_votes import (
    CHOICES,
    RATINGS_FILE,
    REFERENCE,
    numbered_records,
    parse_lines,
    ratings_path,
    read_many,
    read_ratings,
)

__all__ = [  # the vote file's one reader lives with the human judge (judges/human_votes.py); re-exported here
    "CHOICES",
    "RATINGS_FILE",
    "REFERENCE",
    "RatingStore",
    "numbered_records",
    "parse_lines",
    "ratings_path",
    "read_many",
    "read_ratings",
]


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
