"""A small content-addressed disk cache shared by concurrent jobs (pairs, warm-started models, reward models).

An entry is a folder `cache_dir/<namespace>/<key>/` written in three steps, so readers never see half of it:
1. the builder writes its files into a private temporary folder next to the entry;
2. a `manifest.json` (size + sha256 of every file, the builder's own facts such as a row count) is written LAST;
3. the temporary folder is renamed onto the entry path (`os.replace`, atomic on one file system).
Builds hold a `filelock.FileLock` per key: a second job that wants the same entry waits, then reuses it.
An entry whose manifest is missing or does not match its files (a crash, a disk error, a hand edit) is
removed with a warning and built again: every read of an entry checks the size and sha256 of each of its files.

Files that a library adds to an entry AFTER it was built (the `datasets` cache files TRL writes next to a saved
dataset: tokenised pairs, reference log-probs) are outside the manifest; `verify_added` seals them (size + sha256 in
`added.json`, updated under the entry's lock) and removes, with a warning, one that no longer matches its seal or,
not yet sealed, cannot be read, so the library builds it again.

A new cache kind gets all of this by building through `cached(cache_dir, "<namespace>", key, build)` (the builder
writes into the folder it is given; nothing else may write there) and reading only from `entry.path`; if a library
later writes into the entry, call `verify_added(entry.path, pattern, readable)` before and after that library runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from .storage import atomic_write_json, current_umask, read_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ADDED = "added.json"  # seals of the files added to a complete entry (verify_added)


def content_key(obj: Any, length: int = 16) -> str:
    """A stable hex digest of a JSON-serialisable description (dict keys sorted)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def arithmetic(device: str) -> dict[str, Any]:
    """What decides a computation's rounding besides its inputs and the library versions, for the keys of computed
    entries (warm start, sampled pairs, reference log-probs, trained reward model): the device type and, on CPU,
    torch's intra-op thread count. A reduction split over another number of threads rounds differently, and training
    amplifies it into other weights, other samples and another KL (docs/concepts.md#caches-their-keys-and-
    reproducibility). GPU kernels do not depend on the host's threads: there the device type alone."""
    kind = str(device).split(":")[0]
    if kind != "cpu":
        return {"device": kind}
    import torch

    return {"device": kind, "threads": torch.get_num_threads()}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_DIGESTS: dict[tuple, str] = {}


def folder_digest(folder: Path, patterns: tuple[str, ...]) -> str:
    """sha256 (16 hex) over the names and contents of the files in `folder` matching `patterns` (top level).

    Memoised per process on (path, size, mtime) of every file, so a sweep hashes a large checkpoint once."""
    files = sorted({f for pattern in patterns for f in Path(folder).glob(pattern) if f.is_file()})
    stamp = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp not in _DIGESTS:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode() + b"\0" + file_sha256(f).encode())
        _DIGESTS[stamp] = digest.hexdigest()[:16]
    return _DIGESTS[stamp]


@dataclass
class CacheEntry:
    """A complete cache entry: where it lies, its key, and whether this call built or reused it."""

    path: Path
    key: str
    status: str  # "built" | "reused" | "rebuilt" (a corrupt entry was replaced)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> dict[str, Any]:
        """What the builder recorded (e.g. row counts) when it made the entry."""
        return dict(self.manifest.get("info", {}))


def _listing(folder: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in (MANIFEST, ADDED):
            files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    return files


def _share(folder: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) paths; cache entries are read by other users' jobs too."""
    umask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def check_entry(folder: Path, key: str) -> tuple[dict | None, str]:
    """(manifest, "") for a complete entry; (None, reason) when it is missing or corrupt."""
    if not folder.exists():
        return None, "missing"
    manifest = read_json(folder / MANIFEST)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None, "no readable manifest"
    if manifest.get("key") != key:
        return None, f"manifest key {manifest.get('key')!r} != {key!r}"
    for name, meta in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return None, f"{name} is missing"
        if path.stat().st_size != meta.get("size"):
            return None, f"{name} has {path.stat().st_size} bytes, manifest says {meta.get('size')}"
        if file_sha256(path) != meta.get("sha256"):
            return None, f"{name} does not match its sha256"
    return manifest, ""


def cached(
    cache_dir: str | Path,
    namespace: str,
    key: str,
    build: Callable[[Path], dict[str, Any] | None],
    description: Any = None,
) -> CacheEntry:
    """Return the entry `namespace/key`, calling `build(tmp_folder)` to make it when absent or corrupt.

    `build` writes its files into the folder it is given and may return facts (JSON-serialisable) to keep in
    the manifest. `description` (what the key was computed from) is stored too, for humans.
    """
    root = Path(cache_dir) / namespace
    root.mkdir(parents=True, exist_ok=True)
    folder = root / key
    manifest, _ = check_entry(folder, key)
    if manifest is not None:
        return CacheEntry(folder, key, "reused", manifest)
    with FileLock(str(root / f"{key}.lock")):
        manifest, reason = check_entry(folder, key)  # another job may have built it while we waited
        if manifest is not None:
            return CacheEntry(folder, key, "reused", manifest)
        status = "built"
        if folder.exists():
            log.warning("cache entry %s is corrupt (%s): rebuilding it", folder, reason)
            shutil.rmtree(folder, ignore_errors=True)
            status = "rebuilt"
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.", suffix=".tmp"))
        try:
            info = build(tmp) or {}
            manifest = {
                "key": key,
                "namespace": namespace,
                "info": info,
                "description": description,
                "files": _listing(tmp),
            }
            atomic_write_json(tmp / MANIFEST, manifest)  # written last: its presence marks a finished build
            _share(tmp)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("cache %s/%s: %s", namespace, key, status)
    return CacheEntry(folder, key, status, manifest)


def _seal(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def verify_added(folder: Path, pattern: str, readable: Callable[[Path], bool], recheck: bool = True) -> list[str]:
    """Check the files matching `pattern` that were added to the complete entry `folder` after its build.

    A sealed file must still match its seal (its size only with recheck=False: just sealing what was added); a
    file not yet sealed (added since the last call) must pass `readable`, and is then sealed. A file failing either
    is removed with a warning (its writer makes it again). Returns the names removed. Call it before a library
    reads the folder's added files and after it wrote them."""
    folder = Path(folder)
    removed: list[str] = []
    with FileLock(str(folder.parent / f"{folder.name}.lock")):
        seals = read_json(folder / ADDED) or {}
        kept: dict[str, Any] = {}
        for path in sorted(folder.glob(pattern)):
            seal = seals.get(path.name)
            same = seal is not None and path.stat().st_size == seal.get("size")
            if same and (not recheck or file_sha256(path) == seal["sha256"]):
                kept[path.name] = seal
                continue
            if seal is None and readable(path):
                kept[path.name] = _seal(path)
                continue
            why = "does not match its seal" if seal is not None else "cannot be read"
            log.warning("cache file %s is corrupt (%s): removing it, it is rebuilt", path, why)
            path.unlink(missing_ok=True)
            removed.append(path.name)
        if kept != seals:
            atomic_write_json(folder / ADDED, kept)
    return removed
