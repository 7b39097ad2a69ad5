"""TRL's DPOTrainer wired to the config: trl.DPOConfig from the `trainer` group, LoRA or a frozen reference, and a
trainer subclass that keeps sampled token ids and refuses (or skips) non-finite losses and gradients."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..infra.sharding import enable_cpu_fsdp, strategy
from ..infra.tracking import Tracker
from ..lora import lora_config
from ..schema import dpo_config
from ..throughput import LengthGroupedPairSampler, compact_lm_head, pair_lengths
from ..trl_compat import CompatDPOTrainer
from .callbacks import MetricsRecorder
from .nonfinite import GradientGuard, NonFiniteError, SkippableStep
from .ref_logps import SharedRefLogpsMixin

log = logging.getLogger(__name__)


def _prompt_fits(example: dict, max_length: int) -> bool:
    return len(example["prompt_ids"]) < max_length


class ExperimentDPOTrainer(SharedRefLogpsMixin, CompatDPOTrainer):
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

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        if enable_cpu_fsdp(self.accelerator, self.args.fsdp_plugin_args):  # distributed=fsdp on CPU processes
            self.is_fsdp_enabled = True

    def _trl_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """TRL's loss and metrics; on CPU its fused LM head scores only completion tokens (dpo_exp.throughput)."""
        with compact_lm_head():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return self._trl_loss(model, inputs, return_outputs, num_items_in_batch)
        metrics = self.train_metrics
        logged = {key: list(values) for key, values in metrics.items()}  # a few floats per logging window
        tokens = self.total_train_tokens
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
            self.total_train_tokens = tokens
        self._bad_micro_batches += 1
        log.warning("non-finite loss at step %d: micro-batch dropped", step)
        # A zero that reaches every trainable parameter: zero gradients (never NaN), and DDP sees all its hooks fire
        zero = sum((p * 0).sum() for p in model.parameters() if p.requires_grad)
        zero = torch.nan_to_num(zero, nan=0.0, posinf=0.0, neginf=0.0)
        return (zero, result[1]) if return_outputs else zero

    def prepare_pairs(self, dataset, processing_class, args, dataset_name):
        """Pairs that already carry `prompt_ids`/`chosen_ids`/`rejected_ids` (sampled pairs: the exact tokens the
        reference generated, EOS only where it ended) skip TRL's decode-free text tokenisation, which would move
        tokens across the prompt/completion boundary and append an EOS that was never sampled. TRL's own rule for
        `keep_start` (drop pairs whose prompt fills max_length) still applies."""
        from ..data.schema import PAIR_ID_COLUMNS

        if not set(PAIR_ID_COLUMNS) <= set(dataset.column_names):
            return super().prepare_pairs(dataset, processing_class, args, dataset_name)
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


def frozen_reference(model, precision: str):
    """A frozen copy of the starting policy for full fine-tuning (TRL cannot reload an in-memory model by id), in
    the run's compute dtype: it is never updated, so half precision loses nothing under autocast."""
    from ..models import torch_dtype

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
    reference_model: Any = None,
) -> ExperimentDPOTrainer:
    """A DPOTrainer for the configured run: LoRA (reference = adapter disabled) or full FT (frozen copy), or the
    given `reference_model` (iterative DPO's starting model in a later round)."""
    args = dpo_config(cfg, run_dir, precision, device)
    peft_config = lora_config(cfg.lora, model) if cfg.lora.enabled else None
    ref_model = reference_model
    sharded = strategy(cfg).sharded
    # sharded full fine-tuning: TRL precomputes the reference log-probs with a sharded reference model, which it
    # would otherwise load from the model's hub id (a tiny or warm-started model has none)
    if ref_model is None and peft_config is None and (sharded or not args.precompute_ref_log_probs):
        # sharded: an fp32 copy, so its log-probs are the ones an unsharded run computes with the policy itself
        ref_model = frozen_reference(model, "fp32" if sharded else precision)
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
    if sharded and args.precompute_ref_log_probs and reference_model is None:
        trainer.ref_model = None  # the log-probs are in the datasets: free the sharded reference for training
    return trainer
