"""Crash-safe file helpers: atomic writes (write, fsync, rename), tolerant JSON Lines reading, a full disk named."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import RunFailure


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def is_finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def clean_floats(obj: Any) -> Any:
    """Replace NaN/inf by None so the file stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_floats(v) for v in obj]
    return obj


def current_umask() -> int:
    """The process's umask (reading it means setting it: set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` so that readers see either the old or the new file, never a truncated one. The file
    gets the mode `open()` would give it (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(clean_floats(obj), indent=2, default=_json_default) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Atomically write rows as JSON Lines."""
    text = "".join(json.dumps(clean_floats(r), default=_json_default) + "\n" for r in rows)
    atomic_write_text(path, text)


def append_jsonl(path: str | Path, row: dict, fsync: bool = True) -> None:
    """Append one row and flush it to disk (a crash can at worst leave a partial last line, which readers skip).
    `fsync=False` hands it to the OS only (it survives the process being killed, not the machine going down)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(clean_floats(row), default=_json_default) + "\n")
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())


def fsync_file(path: str | Path) -> None:
    """Force what was written to `path` onto the disk (no-op when it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict]:
    """Read JSON Lines, skipping a truncated final line left by a crash."""
    rows: list[dict] = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise
    return rows


def folder_problem(path: str | Path) -> str | None:
    """Why files cannot be written under the folder `path` (None when they can), without creating it: every part
    of it that exists must be a folder, and the deepest one that exists must take a new file (a probe, removed)."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user"
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".dpo_exp_probe.")
    except OSError as exc:
        return f"{existing} is not writable: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(probe)
    return None


def read_json(path: str | Path) -> dict | None:
    """Read a JSON file; None if it is missing or unreadable (e.g. a torn write from an older tool)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def update_json(path: str | Path, updates: dict[str, Any], drop_prefix: str | None = None) -> dict:
    """Merge `updates` into the JSON object at `path` (keys starting with `drop_prefix` removed first), under a
    `filelock.FileLock`, then replace the file atomically. Returns the new object. Concurrent updaters of
    different keys lose nothing; readers see the old or the new file."""
    from filelock import FileLock

    path = Path(path)
    with FileLock(str(path) + ".lock"):
        current = read_json(path) or {}
        if drop_prefix:
            current = {k: v for k, v in current.items() if not k.startswith(drop_prefix)}
        current.update(updates)
        atomic_write_json(path, current)
    return current


# ---------------------------------------------------------------- a full disk

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how the writers that do not raise OSError word it (safetensors' Rust I/O error, a C library's strerror)
NO_SPACE_TEXTS = ("No space left on device", "Disk quota exceeded", "StorageFull")


class DiskFull(RunFailure):
    """A write failed for want of space: one line naming the folder and the space needed."""


def megabytes(size: float) -> str:
    return f"{size / 2**20:.1f} MB"


def free_space(path: str | Path) -> int:
    """Bytes free for this user on the filesystem of `path` (its deepest existing ancestor)."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    return shutil.disk_usage(existing).free


def says_disk_full(exc: BaseException) -> bool:
    """The exception, or one it was raised from or during, reports a full disk or quota."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return True
        if any(text in str(exc) for text in NO_SPACE_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(folder: str | Path, needed: int | None = None, what: str = "") -> DiskFull:
    """`no space left in FOLDER to write WHAT: it needs about N MB, M MB are free; ...`."""
    free = free_space(folder)
    need = f"it needs about {megabytes(needed)}, {megabytes(free)} free" if needed else f"{megabytes(free)} free"
    return DiskFull(
        f"no space left in {Path(folder).absolute()}{' to write ' + what if what else ''} ({need}): free space there "
        "or choose another folder (hydra.run.dir); the same command then resumes from the last whole checkpoint"
    )
