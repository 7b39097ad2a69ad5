"""Checkpoints that are whole or absent: each `checkpoint-N` is saved under a staging folder and renamed into place
once complete; a save that fails for want of space leaves nothing behind and says how much a checkpoint needs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..infra.storage import disk_full_error, free_space, says_disk_full

STAGING = ".partial"  # checkpoints/.partial/checkpoint-N while it is written


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def checkpoint_size(trainer: Any, parent: Path) -> int:
    """Bytes one checkpoint of this run takes: the newest whole one's size, else its weights and optimizer state."""
    whole = [p for p in parent.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if whole:
        return folder_size(max(whole, key=lambda p: p.stat().st_mtime))
    tensors = list(trainer.model.parameters())
    if trainer.optimizer is not None:
        state = trainer.optimizer.state.values()
        tensors += [t for entry in state for t in entry.values() if hasattr(t, "element_size")]
    return sum(t.numel() * t.element_size() for t in tensors)


def _publish(staged: Path, final: Path) -> None:
    """Rename the whole checkpoint into place (an older one of the same step is moved aside first, then removed)."""
    old = staged.with_name(staged.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(staged, final)
    shutil.rmtree(old, ignore_errors=True)
    fd = os.open(final.parent, os.O_RDONLY)  # the rename itself durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoints_whole(trainer: Any) -> None:
    """Make `trainer` write every checkpoint-N into checkpoints/.partial/ and rename it into checkpoints/ once whole.

    transformers' Trainer writes checkpoint-N in place, one file after another (weights, optimizer, scheduler, RNG,
    trainer_state.json), and has no staged save (4.36 had one and dropped it), so a save cut short (a full disk, a
    kill) leaves a torn folder. Its private `_save_checkpoint` is wrapped: for the save, the Trainer's output folder
    is the staging folder; then the checkpoint is renamed into place and the Trainer's rotation runs where it lives.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

    save = trainer._save_checkpoint

    def staged_save(model: Any, trial: Any) -> None:
        parent = Path(trainer._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        staging = parent / STAGING
        staged, main = staging / name, trainer.args.should_save
        if main:
            shutil.rmtree(staged, ignore_errors=True)  # left by a save that was killed
        trainer.accelerator.wait_for_everyone()
        trainer._get_output_dir = lambda trial=None: str(staging)  # instance attribute: this save only
        try:
            save(model, trial)
            trainer.accelerator.wait_for_everyone()  # every process wrote its part (its RNG state)
            if main:
                _publish(staged, parent / name)
                best = trainer.state.best_model_checkpoint
                if best and Path(best).parent == staging:
                    trainer.state.best_model_checkpoint = str(parent / Path(best).name)
                rotate_checkpoints(
                    output_dir=str(parent),
                    save_total_limit=trainer.args.save_total_limit,
                    best_model_checkpoint=trainer.state.best_model_checkpoint,
                    use_mtime=True,
                )
        except BaseException as exc:
            tight = free_space(parent) < checkpoint_size(trainer, parent)
            if main:
                shutil.rmtree(staged, ignore_errors=True)  # never a torn checkpoint; and its space back
            # torch.save on a full disk says only "unexpected pos ..." or "file write failed": judged by the space
            if isinstance(exc, Exception) and (says_disk_full(exc) or tight):
                raise disk_full_error(parent, checkpoint_size(trainer, parent), name) from None
            raise
        finally:
            trainer.__dict__.pop("_get_output_dir", None)
            if main and staging.is_dir() and not any(staging.iterdir()):
                staging.rmdir()

    trainer._save_checkpoint = staged_save
