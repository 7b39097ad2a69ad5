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
from trl import DPOTrainer

from .errors import RunFailure
from .models import lora_config
from .ref_logps import SharedRefLogpsMixin
from .schema import CHECKPOINT_DIR, dpo_config
from .storage import append_jsonl
from .throughput import LengthGroupedPairSampler, compact_lm_head, pair_lengths
from .tracking import Tracker

log = logging.getLogger(__name__)


class NonFiniteError(RunFailure):
    """Raised when the loss or gradients stop being finite and the run is configured to stop."""


class MetricsRecorder(TrainerCallback):
    """Every Trainer log row -> metrics.jsonl (split, step, epoch, TRL's metric names) and the tracker."""

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
        append_jsonl(self.path, row)
        prefix = {"train": "train/", "eval": "eval/", "final": "train/"}[split]
        self.tracker.log(
            {prefix + k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            | {"train/global_step": state.global_step}
        )


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


def _prompt_fits(example: dict, max_length: int) -> bool:
    return len(example["prompt_ids"]) < max_length


class SkippableStep:
    """Mixed into the prepared (accelerate) optimizer by `make_skippable`.

    `skip()`, called just before `optimizer.step()`, drops every gradient: a torch optimizer leaves a parameter
    without a gradient alone (no update, no momentum, no weight decay, no step count), so the step changes nothing.
    The step is then reported through accelerate's `step_was_skipped`, as an fp16-overflow skip is, so the Trainer does
    not advance the LR scheduler either. `clear()` ends it before the next step. (The step itself is not overridden:
    torch's LR scheduler wraps `optimizer.step` on the instance.)
    """

    _skipping = False

    def skip(self) -> None:
        if self.scaler is not None:  # fp16: the grad scaler's step needs an inf check recorded on the gradients
            try:
                self.scaler.unscale_(self.optimizer)
            except RuntimeError:  # gradient clipping has unscaled them already
                pass
        self.optimizer.zero_grad(set_to_none=True)
        self._skipping = True

    def clear(self) -> None:
        self._skipping = False

    @property
    def step_was_skipped(self) -> bool:
        return self._skipping or super().step_was_skipped


def make_skippable(optimizer):
    """The accelerate optimizer, its class extended with `SkippableStep` (idempotent)."""
    if not isinstance(optimizer, SkippableStep):
        optimizer.__class__ = type(f"Skippable{type(optimizer).__name__}", (SkippableStep, type(optimizer)), {})
    return optimizer


class ExperimentDPOTrainer(SharedRefLogpsMixin, DPOTrainer):
    """DPOTrainer that trains on pre-tokenised pairs as they are, and refuses (`stop`) or skips (`skip`) non-finite
    losses and gradients, naming the step; on CPU its fused LM head scores only completion tokens, and
    `group_by_length` batches pairs of similar length (dpo_exp.throughput).

    skip: a micro-batch whose loss is not finite is dropped before its backward pass (it adds a zero gradient and
    none of its metrics are logged), and the step's gradient is the mean over the step's finite micro-batches. When
    no micro-batch of a step is finite, or its gradients are not, the optimizer step is skipped the way accelerate
    skips an fp16 overflow: weights, optimizer state and LR schedule stay as they were. `global_step` still counts
    the step (its data was consumed), `skipped_steps` counts the skipped ones (summary.json: skipped_steps), and its
    logged loss repeats the last logged one.
    """

    def __init__(self, *args, on_nonfinite: str = "stop", group_by_length: bool = False, **kwargs):
        self.group_by_length = group_by_length
        super().__init__(*args, **kwargs)
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0
        self._micro_batches = 0  # in the current optimizer step
        self._bad_micro_batches = 0
        self._good_loss = None  # sum of the finite micro-batch losses of the current step
        self.skip_pending = False  # the coming optimizer step is to be skipped (GradientGuard applies it)

    def _trl_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """TRL's loss and metrics; on CPU its fused LM head scores only completion tokens (dpo_exp.throughput)."""
        with compact_lm_head():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return self._trl_loss(model, inputs, return_outputs, num_items_in_batch)
        metrics = self._metrics["train"]
        logged = {key: list(values) for key, values in metrics.items()}  # a few floats per logging window
        tokens = getattr(self, "_total_train_tokens", None)
        result = self._trl_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if torch.isfinite(loss).all():
            return result
        step = self.state.global_step + 1
        if self.on_nonfinite != "skip":
            raise NonFiniteError(f"non-finite loss at step {step}; the last good checkpoint is kept")
        metrics.clear()  # forget what TRL recorded for this micro-batch
        metrics.update(logged)
        if tokens is not None:
            self._total_train_tokens = tokens
        self._bad_micro_batches += 1
        log.warning("non-finite loss at step %d: micro-batch dropped", step)
        # A zero that reaches every trainable parameter: zero gradients (never NaN), and DDP sees all its hooks fire
        zero = sum((p * 0).sum() for p in model.parameters() if p.requires_grad)
        zero = torch.nan_to_num(zero, nan=0.0, posinf=0.0, neginf=0.0)
        return (zero, result[1]) if return_outputs else zero

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Pairs that already carry `prompt_ids`/`chosen_ids`/`rejected_ids` (sampled pairs: the exact tokens the
        reference generated, EOS only where it ended) skip TRL's decode-free text tokenisation, which would move
        tokens across the prompt/completion boundary and append an EOS that was never sampled. TRL's own rule for
        `keep_start` (drop pairs whose prompt fills max_length) still applies."""
        from .data import PAIR_ID_COLUMNS

        if not set(PAIR_ID_COLUMNS) <= set(dataset.column_names):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if args.max_length is not None and args.truncation_mode == "keep_start":
            dataset = dataset.filter(
                _prompt_fits,
                fn_kwargs={"max_length": args.max_length},
                desc=f"Dropping fully truncated examples from {dataset_name} dataset",
            )
        return dataset

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_length or dataset is None or "prompt_ids" not in getattr(dataset, "column_names", ()):
            return super()._get_train_sampler(train_dataset)
        batch = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedPairSampler(pair_lengths(dataset), batch, seed=self.args.data_seed or self.args.seed)

    def compute_ref_log_probs(self, *args, **kwargs):
        with compact_lm_head():
            return super().compute_ref_log_probs(*args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        if self._micro_batches == 0 and isinstance(self.optimizer, SkippableStep):
            self.optimizer.clear()  # a new optimizer step
        bad_before = self._bad_micro_batches
        loss = super().training_step(model, inputs, *args, **kwargs)
        self._micro_batches += 1
        if self._bad_micro_batches == bad_before:
            self._good_loss = loss if self._good_loss is None else self._good_loss + loss
        else:
            loss = torch.zeros_like(loss)
        if not self.accelerator.sync_gradients:
            return loss
        return self._end_of_step(model, loss)

    def _end_of_step(self, model, loss: torch.Tensor) -> torch.Tensor:
        """After the step's last backward pass: rescale to the finite micro-batches, or skip a step without any."""
        counts = torch.tensor([self._micro_batches, self._bad_micro_batches], device=loss.device)
        good_loss = self._good_loss
        self._micro_batches = self._bad_micro_batches = 0
        self._good_loss = None
        seen, bad = (int(x) for x in self.accelerator.reduce(counts, "sum").tolist())
        if bad == 0:
            return loss
        if bad == seen:
            self.skip_optimizer_step("non-finite loss in every micro-batch")
            # The Trainer logs a loss for every step: a skipped one stands in with the last logged loss (NaN if none
            # yet, which the Trainer's logging_nan_inf_filter replaces)
            previous = next((row["loss"] for row in reversed(self.state.log_history) if "loss" in row), math.nan)
            return torch.full_like(loss, float(previous))
        scale = seen / (seen - bad)
        for param in model.parameters():
            if param.grad is not None:
                param.grad.mul_(scale)
        # logged loss: the mean over the finite micro-batches, as for a step without a bad one
        return loss + (good_loss if good_loss is not None else torch.zeros_like(loss)) * (scale - 1)

    def skip_optimizer_step(self, reason: str) -> None:
        """Make the coming optimizer step a no-op (weights, optimizer state, LR schedule) and count it."""
        self.skip_pending = True
        self.skipped_steps += 1
        log.warning(
            "%s at step %d: step skipped, weights, optimizer state and LR schedule unchanged (%d so far)",
            reason,
            self.state.global_step + 1,
            self.skipped_steps,
        )


class GradientGuard(TrainerCallback):
    """Checks the gradients before each optimiser step (after clipping): `stop` raises, `skip` skips the step.

    With fp16's grad scaler, non-finite gradients are the scaler's business (it skips the step and lowers its scale).
    """

    def __init__(self, policy: str):
        self.policy = policy
        self.trainer: ExperimentDPOTrainer | None = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer is None:
            return
        if not trainer.skip_pending and trainer.accelerator.scaler is None:
            grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
            if grads and not all(torch.isfinite(g).all() for g in grads):
                if self.policy != "skip":
                    raise NonFiniteError(
                        f"non-finite gradients at step {state.global_step + 1}; the last good checkpoint is kept"
                    )
                trainer.skip_optimizer_step("non-finite gradients")
        if trainer.skip_pending:  # after clipping, just before optimizer.step()
            trainer.skip_pending = False
            make_skippable(trainer.optimizer).skip()


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder of a run (one with trainer_state.json), if any."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def frozen_reference(model, precision: str):
    """A frozen copy of the starting policy for full fine-tuning (TRL cannot reload an in-memory model by id), in
    the run's compute dtype: it is never updated, so half precision loses nothing under autocast."""
    from .models import torch_dtype

    dtype = torch_dtype(precision if precision in ("bf16", "fp16") else "fp32")
    reference = copy.deepcopy(model).to(dtype).eval()
    reference.requires_grad_(False)
    return reference


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
        ref_model = frozen_reference(model, precision)
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
        group_by_length=bool(cfg.train.group_by_length),
    )
    guard.trainer = trainer
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
