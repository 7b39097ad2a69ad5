"""Hydra callbacks (conf/config.yaml `hydra.callbacks`): checks that must run before Hydra itself touches the disk."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


def writable_folder_problem(path: Path) -> str | None:
    """Why `path` cannot be created/written (None when it can): the first ancestor that exists must be writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not os.access(path, os.W_OK | os.X_OK):
        return "Permission denied"
    return None


class OutputDirCheck(Callback):
    """An unwritable `hydra.run.dir` / `hydra.sweep.dir` -> one `error:` line and exit code 2, instead of the
    traceback of Hydra's own mkdir."""

    @staticmethod
    def _check(key: str, value: Any) -> None:
        problem = writable_folder_problem(Path(str(value)))
        if problem:
            print(f"error: {key}={value} cannot be used as the output folder: {problem}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)
