"""The training stage: DPO (or any TRL trainer: `run_trainer`) with checkpoints, resume and a graceful stop;
returns what the pipeline records."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..data.schema import PreferenceData
from ..errors import RunInterrupted
from ..infra.distributed import is_main_process
from ..infra.storage import disk_full_error, read_jsonl, says_disk_full, write_jsonl
from ..infra.tracking import Tracker
from ..schema import CHECKPOINT_DIR
from .callbacks import GracefulStop, ResumedTokenCount

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    """The trained trainer (its model is the policy; it knows the reference) and what the summary records."""

    trainer: Any
    final: dict[str, float] = field(default_factory=dict)  # last train/eval metrics under TRL's names
    skipped_steps: int = 0  # steps skipped by on_nonfinite=skip
    saved_model: dict[str, str] = field(default_factory=dict)  # what run_dir/model holds (dpo_exp.training.export)
    ref_logps: dict[str, Any] = field(default_factory=dict)  # reference log-probs cache: built | reused | disabled
    resumed_from: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)  # the method's own sections for summary.json (e.g. rounds)


def train_policy(
    cfg: Any,
    model,
    tokenizer,
    data: PreferenceData,
    run_dir: Path,
    tracker: Tracker,
    env: Any,
    reference_path: Path | None = None,
    callbacks: list[TrainerCallback] | None = None,
    reference_model: Any = None,
) -> TrainResult:
    """Train (or resume) DPO on the pairs, save the model into run_dir/model; raise RunInterrupted on a signal.

    `env` gives device and precision; `callbacks` with a `bind(trainer)` method get the trainer once it exists;
    `reference_model`: DPO's frozen reference (None: the policy's starting weights, as TRL builds it)."""
    from .ref_logps import RefLogpsCache
    from .trainer import build_trainer  # TRL's DPOTrainer loads here, not when a method is validated

    stopper = GracefulStop()
    ref_cache = RefLogpsCache.from_config(cfg)  # shares TRL's precomputed reference log-probs across jobs
    trainer = build_trainer(
        cfg,
        model,
        tokenizer,
        ref_cache.dataset(data.train),
        ref_cache.dataset(data.eval) if data.eval else None,
        run_dir,
        tracker,
        env.precision,
        env.device,
        extra_callbacks=[stopper, *(callbacks or [])],
        reference_model=reference_model,
    )
    return run_trainer(trainer, cfg, tokenizer, run_dir, stopper, reference_path, callbacks, ref_cache.status(trainer))


def run_trainer(
    trainer,
    cfg: Any,
    tokenizer,
    run_dir: Path,
    stopper: GracefulStop,
    reference_path: Path | None = None,
    callbacks: list[TrainerCallback] | None = None,
    ref_logps: dict[str, Any] | None = None,
) -> TrainResult:
    """Any TRL trainer, built with `stopper` among its callbacks: train (resuming from the run's last checkpoint),
    stop gracefully on a signal (RunInterrupted), record the final metrics and save the policy into run_dir/model."""
    from .checkpoints import save_checkpoints_whole
    from .export import save_run_model
    from .model_card import write_model_cards
    from .schedule import check_schedule, total_steps

    metrics_path = run_dir / METRICS_FILE
    for callback in callbacks or []:
        if hasattr(callback, "bind"):
            callback.bind(trainer)
    check_schedule(trainer.args, total_steps(trainer))  # a schedule under which no step trains: refused
    save_checkpoints_whole(trainer)  # checkpoint-N appears whole or not at all (a full disk, a kill)
    result = TrainResult(trainer, ref_logps=ref_logps or {"cache": "disabled"})
    resume_from = resume_point(cfg, run_dir)
    result.resumed_from = str(resume_from) if resume_from else None
    if resume_from is not None:
        trainer.add_callback(ResumedTokenCount(trainer))
    stopper.install()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        stopper.uninstall()
    if stopper.signal_name is not None:
        raise RunInterrupted(
            f"stopped by {stopper.signal_name}; checkpoint saved in {run_dir / CHECKPOINT_DIR}", stopper.forward
        )
    result.final = final_metrics(trainer.state.log_history)
    if resume_from is not None and "train_loss" in result.final:
        loss = whole_run_train_loss(trainer.state.log_history, result.final["train_loss"], checkpoint_step(resume_from))
        result.final["train_loss"] = loss
        if is_main_process():
            _patch_final_row(metrics_path, train_loss=loss)
    try:
        result.saved_model = save_run_model(trainer, tokenizer, run_dir / "model", cfg.model, reference_path)
    except Exception as exc:
        if says_disk_full(exc):
            size = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
            raise disk_full_error(run_dir, size, "the trained model") from None
        raise
    if result.saved_model:  # the process that saved the model writes its card beside it (RUN/model/README.md)
        write_model_cards(run_dir, cfg)
    result.skipped_steps = int(getattr(trainer, "skipped_steps", 0))
    return result


def resume_point(cfg: Any, run_dir: Path) -> Path | None:
    """The checkpoint to resume from (`resume=PATH`'s run folder, else this one's), with metrics.jsonl cut back to
    it; a fresh start removes the rows of an earlier, checkpoint-less attempt."""
    from .rerun import resume_folder

    resume_from = last_checkpoint(resume_folder(cfg, run_dir))
    metrics_path = run_dir / METRICS_FILE
    if is_main_process():
        if resume_from is None and metrics_path.exists():
            metrics_path.unlink()
        elif resume_from is not None:
            log.info("resuming from %s", resume_from)
            _truncate_metrics(metrics_path, checkpoint_step(resume_from))
    return resume_from


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder of a run (one with trainer_state.json), if any."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def final_metrics(log_history: list[dict]) -> dict[str, float]:
    """Last train metrics (TRL names) and last eval metrics (eval_ names) from the Trainer's history."""
    out: dict[str, float] = {}
    for row in log_history:
        if "loss" in row and "train_runtime" not in row:
            out.update({k: v for k, v in row.items() if k not in ("step", "epoch")})
        elif any(k.startswith("eval_") for k in row):
            out.update({k: v for k, v in row.items() if k.startswith("eval_")})
        elif "train_runtime" in row:
            out.update({k: v for k, v in row.items() if k.startswith("train_")})
    return {k: v for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def whole_run_train_loss(log_history: list[dict], resumed_train_loss: float, start: int) -> float:
    """The mean training loss over every step of a run resumed at step `start`, as an uninterrupted run reports it.

    transformers' final `train_loss` only averages the steps run since the resume. The history restored from the
    checkpoint holds the earlier steps' logged losses (each the mean since the previous log row); they are weighted
    by the steps they cover and combined with the resumed part's mean.
    """
    final = next((r for r in reversed(log_history) if "train_runtime" in r), None)
    if final is None or int(final["step"]) <= start:
        return resumed_train_loss
    end = int(final["step"])
    total, covered, previous = 0.0, 0, 0
    for row in log_history:
        if "loss" not in row or "train_runtime" in row or "step" not in row:
            continue
        if row["step"] > start:
            break
        total += float(row["loss"]) * (row["step"] - previous)
        covered += row["step"] - previous
        previous = row["step"]
    return (total + resumed_train_loss * (end - start)) / (covered + end - start)


def _patch_final_row(path: Path, **values: Any) -> None:
    """Replace values in metrics.jsonl's `final` row (the resumed run's whole-run train_loss)."""
    if not path.exists():
        return

    write_jsonl(path, [{**r, **values} if r.get("split") == "final" else r for r in read_jsonl(path)])


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only rows up to the checkpoint's step, so a resumed run does not log steps twice."""
    if not path.exists():
        return

    write_jsonl(path, [r for r in read_jsonl(path) if r.get("step", 0) <= step and r.get("split") != "final"])
