"""Hydra callbacks (conf/config.yaml `hydra.callbacks`): what must happen before Hydra itself touches the disk."""

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


class KeepRunRecord(Callback):
    """A single run into a folder whose run predates its own record (RUN/.dpo_exp): copy Hydra's files there before
    Hydra rewrites them, so that a skipped or refused command can put them back (dpo_exp.infra.runrecord). Runs
    recorded since keep their copy themselves, sweep jobs included."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from .runrecord import backup_legacy_hydra_files

        try:
            backup_legacy_hydra_files(Path(str(config.hydra.run.dir)), config.hydra.output_subdir)
        except OSError as exc:  # the run itself reports an unusable folder
            print(f"warning: could not keep a copy of {config.hydra.run.dir}'s .hydra files: {exc}", file=sys.stderr)
