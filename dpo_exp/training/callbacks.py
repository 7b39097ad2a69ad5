"""Trainer callbacks: every log row to metrics.jsonl and the tracker; a graceful stop on SIGTERM/SIGINT/SIGUSR2."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..infra.storage import append_jsonl, fsync_file, read_jsonl
from ..infra.tracking import Tracker

log = logging.getLogger(__name__)


class MetricsRecorder(TrainerCallback):
    """Every Trainer log row -> metrics.jsonl (split, step, epoch, TRL's metric names) and the tracker.

    Each row is handed to the OS as it is logged (a killed process loses none); the file is fsynced when a checkpoint
    is saved and when training ends, not every step (an fsync per step stalls the training loop on the disk)."""

    def __init__(self, path: Path, tracker: Tracker):
        self.path = path
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:  # multi-process runs: one row per step, from process 0
            return
        logs = dict(logs)
        if any(key.startswith("eval_") for key in logs):
            split = "eval"
            metrics = {key.removeprefix("eval_"): value for key, value in logs.items()}
        elif "train_runtime" in logs:
            split = "final"
            metrics = logs
        else:
            split = "train"
            metrics = logs
        row = {"split": split, "step": state.global_step, "epoch": state.epoch, **metrics}
        append_jsonl(self.path, row, fsync=split != "train")
        self._track(split, state.global_step, metrics)

    def on_train_begin(self, args, state, control, **kwargs):
        """A resumed run hands the tracker the rows up to its checkpoint again: the tracker drops the steps its W&B
        run already holds (`Tracker.skip_replayed_steps`) and logs the rest, e.g. the steps of a SIGKILLed offline
        attempt whose W&B service died with its buffered records (metrics.jsonl kept them)."""
        if state.global_step == 0 or not state.is_world_process_zero or not self.path.exists():
            return
        for row in read_jsonl(self.path):
            if row.get("split") in ("train", "eval") and int(row.get("step") or 0) <= state.global_step:
                self._track(row["split"], row["step"], {k: v for k, v in row.items() if k not in ("split", "step")})

    def _track(self, split: str, step: int, metrics: dict[str, Any]) -> None:
        prefix = {"train": "train/", "eval": "eval/", "final": "train/"}[split]
        self.tracker.log(
            {prefix + k: v for k, v in metrics.items() if isinstance(v, (int, float))} | {"train/global_step": step}
        )

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            fsync_file(self.path)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            fsync_file(self.path)


class GracefulStop(TrainerCallback):
    """On SIGTERM/SIGINT (and SLURM's pre-emption SIGUSR2): finish the current step, save a checkpoint, stop.

    The stop is bounded by one optimiser step; a second signal stops at once. Handlers that were installed before
    (submitit's checkpoint-and-requeue handler on SIGUSR2) are kept and can be called afterwards with `forward()`.
    """

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR2") if hasattr(signal, name))

    def __init__(self):
        self.signal_name: str | None = None
        self._signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self._signum = signum
        log.warning("%s received: saving a checkpoint after this step, then stopping.", self.signal_name)

    def forward(self) -> None:
        """Hand the signal to the handler that was there before ours (e.g. submitit requeues the job)."""
        previous = self._previous.get(self._signum) if self._signum is not None else None
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self._signum, None)

    def on_step_end(self, args, state, control, **kwargs):
        if self.signal_name is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


class ResumedTokenCount(TrainerCallback):
    """Carries TRL's running `num_tokens` count across a resume. TRL keeps it in the trainer (`_total_train_tokens`),
    which a checkpoint does not restore, so a resumed run's count would restart at 0; the Trainer's state, which the
    checkpoint does restore before `on_train_begin`, holds the last logged count (GRPO and RLOO count in the state
    itself and need nothing)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        counts = [row["num_tokens"] for row in state.log_history if "num_tokens" in row]
        if counts and not getattr(self.trainer, "_total_train_tokens", None):
            self.trainer._total_train_tokens = counts[-1]
