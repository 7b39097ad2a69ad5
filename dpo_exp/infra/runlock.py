"""One process per run folder: a pid lock file created with O_EXCL, taken over when its holder is dead."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from ..errors import UserError

LOCK_NAME = ".dpo_exp.lock"


class RunFolderBusy(UserError):
    """Another live process holds the run folder."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """`with RunLock(run_dir):` holds `run_dir/.dpo_exp.lock` ({pid, host, since}) for the duration.

    A lock left by a dead process on this host is stale and taken over; a live holder -> RunFolderBusy naming its pid.
    A lock from another host cannot be checked, so it counts as held (the message names the file to delete).
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}, handle
            )
        return True

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self.held = True
                return
            holder = self._holder()
            pid, host = holder.get("pid"), holder.get("host")
            if not holder:  # being written right now, or garbage: give the writer a moment, then treat as stale
                time.sleep(0.2)
                if self._holder():
                    continue
            elif host != socket.gethostname():
                raise RunFolderBusy(
                    f"run folder {self.path.parent} is held by pid {pid} on host {host} (since {holder.get('since')});"
                    f" if that process is gone, delete {self.path}"
                )
            elif isinstance(pid, int) and pid_alive(pid) and pid != os.getpid():
                raise RunFolderBusy(
                    f"run folder {self.path.parent} is in use by pid {pid} (since {holder.get('since')}); wait for it"
                    " to finish or choose another hydra.run.dir"
                )
            self.path.unlink(missing_ok=True)  # stale: its holder is dead
        raise RunFolderBusy(f"could not take the lock {self.path}; another process keeps taking it")

    def release(self) -> None:
        if self.held and self._holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
