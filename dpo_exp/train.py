"""DPO training: TRL's DPOTrainer wired to the config, metrics.jsonl, checkpoints, graceful stops."""

from __future__ import annotations

import copy
import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from .errors import RunFailure
from .models import lora_config
from .ref_logps import SharedRefLogpsMixin
from .storage import append_jsonl
from .throughput import LengthGroupedPairSampler, compact_lm_head, pair_lengths
from .tracking import Tracker

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


class NonFiniteError(RunFailure):
    """Raised when the loss or gradients stop being finite and the run is configured to stop."""


class MetricsRecorder(TrainerCallback):
    """Every Trainer log row -> metrics.jsonl (split, step, epoch, TRL's metric names) and the tracker."""

    def __init__(self, path: Path, tracker: Tracker):
        self.path = path
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
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
        append_jsonl(self.path, row)
        prefix = {"train": "train/", "eval": "eval/", "final": "train/"}[split]
        self.tracker.log({prefix + k: v for k, v in metrics.items() if isinstance(v, (int, float))} | {
            "train/global_step": state.global_step
        })


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


class ExperimentDPOTrainer(SharedRefLogpsMixin, DPOTrainer):
    """DPOTrainer that refuses (or skips) non-finite losses and gradients, naming the step; on CPU its fused LM
    head scores only completion tokens, and `group_by_length` batches pairs of similar length (dpo_exp.throughput)."""

    def __init__(self, *args, on_nonfinite: str = "stop", group_by_length: bool = False, **kwargs):
        self.group_by_length = group_by_length
        super().__init__(*args, **kwargs)
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_length or dataset is None or "prompt_ids" not in getattr(dataset, "column_names", ()):
            return super()._get_train_sampler(train_dataset)
        batch = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedPairSampler(pair_lengths(dataset), batch, seed=self.args.data_seed or self.args.seed)

    def compute_loss(self, *args, **kwargs):
        with compact_lm_head():
            return super().compute_loss(*args, **kwargs)

    def compute_ref_log_probs(self, *args, **kwargs):
        with compact_lm_head():
            return super().compute_ref_log_probs(*args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        if torch.isfinite(loss).all():
            return loss
        step = self.state.global_step + 1
        if self.on_nonfinite == "skip":
            self.skipped_steps += 1
            model.zero_grad(set_to_none=True)
            log.warning("non-finite loss at step %d: step skipped (%d so far)", step, self.skipped_steps)
            return torch.zeros_like(loss)
        raise NonFiniteError(f"non-finite loss at step {step}; the last good checkpoint is kept")


class GradientGuard(TrainerCallback):
    """Checks gradients before each optimiser step."""

    def __init__(self, policy: str):
        self.policy = policy
        self.model = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        model = model or self.model
        if model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads or all(torch.isfinite(g).all() for g in grads):
            return
        step = state.global_step + 1
        if self.policy == "skip":
            model.zero_grad(set_to_none=False)
            log.warning("non-finite gradients at step %d: update zeroed", step)
            return
        raise NonFiniteError(f"non-finite gradients at step {step}; the last good checkpoint is kept")


def dpo_config(cfg: Any, run_dir: Path, precision: str, device: str) -> DPOConfig:
    """trl.DPOConfig from the `trainer` group, with every default that matters set explicitly."""
    t = cfg.trainer
    return DPOConfig(
        output_dir=str(run_dir / CHECKPOINT_DIR),
        beta=float(t.beta),
        loss_type=[str(t.loss_type)],
        learning_rate=float(t.learning_rate),
        num_train_epochs=float(t.num_train_epochs),
        max_steps=int(t.max_steps),
        per_device_train_batch_size=int(t.per_device_train_batch_size),
        per_device_eval_batch_size=int(t.per_device_eval_batch_size),
        gradient_accumulation_steps=int(t.gradient_accumulation_steps),
        max_length=int(t.max_length) if t.max_length else None,
        truncation_mode=str(t.truncation_mode),
        warmup_steps=float(t.warmup_ratio),  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=str(t.lr_scheduler_type),
        weight_decay=float(t.weight_decay),
        max_grad_norm=float(t.max_grad_norm),
        optim=str(t.optim),
        eval_strategy=str(t.eval_strategy),
        eval_steps=t.eval_steps,
        logging_strategy="steps",
        logging_steps=int(t.logging_steps),
        logging_first_step=True,
        save_strategy=str(t.save_strategy),
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        precompute_ref_log_probs=bool(t.precompute_ref_log_probs),
        gradient_checkpointing=bool(t.gradient_checkpointing),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        report_to="none",
        dataloader_num_workers=int(t.dataloader_num_workers),
        disable_dropout=True,
        save_only_model=False,
    )


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder of a run (one with trainer_state.json), if any."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def build_trainer(
    cfg: Any,
    model,
    tokenizer,
    train_dataset,
    eval_dataset,
    run_dir: Path,
    tracker: Tracker,
    precision: str,
    device: str,
    extra_callbacks: list[TrainerCallback] | None = None,
) -> ExperimentDPOTrainer:
    """A DPOTrainer for the configured run: LoRA (reference = adapter disabled) or full FT (frozen copy)."""
    args = dpo_config(cfg, run_dir, precision, device)
    peft_config = lora_config(cfg.lora, model) if cfg.lora.enabled else None
    ref_model = None
    if peft_config is None and not args.precompute_ref_log_probs:
        ref_model = copy.deepcopy(model).eval()  # TRL cannot reload an in-memory model by id
        ref_model.requires_grad_(False)
    guard = GradientGuard(str(cfg.on_nonfinite))
    callbacks = [MetricsRecorder(run_dir / "metrics.jsonl", tracker), guard, *(extra_callbacks or [])]
    trainer = ExperimentDPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        on_nonfinite=str(cfg.on_nonfinite),
        group_by_length=bool(cfg.trainer.get("group_by_length", False)),
    )
    guard.model = trainer.model
    return trainer


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


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
