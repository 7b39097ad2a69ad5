"""TRL's DPOTrainer wired to the config: trl.DPOConfig from the `trainer` group, LoRA or a frozen reference, and a
trainer subclass that keeps sampled token ids and refuses (or skips) non-finite losses and gradients."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..infra.sharding import enable_cpu_fsdp, strategy
from ..infra.tracking import Tracker
from ..lora import lora_config
from ..memory import fused_gelu_on
from ..schema import dpo_config
from ..throughput import (
    FusedTanhGelu,
    LengthGroupedPairSampler,
    causal_without_mask,
    compact_lm_head,
    pair_lengths,
)
from ..trl_compat import CompatDPOTrainer
from .batching import ROW_LENGTHS, RowLengthsCollator, TokenBudgetBatchSampler, row_groups
from .callbacks import MetricsRecorder
from .nonfinite import GradientGuard, SkippableStep
from .ref_logps import SharedRefLogpsMixin, frozen_reference
from .step import DeviceMetrics, dpo_loss, host_to_device, sync_free_loss_applies

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

    def __init__(
        self,
        *args,
        on_nonfinite: str = "stop",
        group_by_length: bool = False,
        max_tokens_per_batch: int | None = None,
        row_groups: int = 1,
        **kwargs,
    ):
        self.group_by_length = group_by_length
        self.max_tokens_per_batch = max_tokens_per_batch
        self.max_row_groups = max(1, int(row_groups))
        super().__init__(*args, **kwargs)
        self.data_collator = RowLengthsCollator(self.data_collator)  # each row's length, known on the host
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0
        self._micro_batches = 0  # in the current optimizer step
        self._bad_micro_batches = 0
        self._good_loss = None  # sum of the finite micro-batch losses of the current step
        self.skip_pending = False  # the coming optimizer step is to be skipped (GradientGuard applies it)
        self.sync_free = sync_free_loss_applies(self)  # dpo_exp.training.step: TRL's loss, metrics kept on device
        self.device_metrics = DeviceMetrics()
        self.loss_finite: torch.Tensor | None = None  # `stop`: the step's losses all finite, read by GradientGuard
        self.step_grad_norm = None  # the step's gradient norm (set by the Trainer's clipping, read by GradientGuard)

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        if enable_cpu_fsdp(self.accelerator, self.args.fsdp_plugin_args):  # distributed=fsdp on CPU processes
            self.is_fsdp_enabled = True

    def _trl_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """TRL's loss and metrics; on CPU its fused LM head scores only completion tokens (dpo_exp.throughput)."""
        with compact_lm_head():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _train_loss(self, model, inputs, return_outputs, num_items_in_batch, row_lengths=None):
        """The training loss: without host syncs (dpo_exp.training.step) where it reproduces TRL's, else TRL's.

        A right-padded batch (its `row_lengths` known on the host) runs without an attention mask (SDPA's causal
        kernel, no mask checks on the host: dpo_exp.throughput.causal_without_mask) and, in a single process, in up to `row_groups` forward passes of rows
        of similar length (less padding; several forwards before one backward would trip DDP's reducer)."""
        if not self.sync_free or return_outputs:
            return self._trl_loss(model, inputs, return_outputs, num_items_in_batch)
        groups = None
        mask = contextlib.nullcontext()
        if row_lengths is not None:  # right-padded (dpo_exp.training.batching.RowLengthsCollator)
            mask = causal_without_mask()
            num_tokens = host_to_device(sum(row_lengths), inputs["input_ids"].device)
            if self.max_row_groups > 1 and self.accelerator.num_processes == 1:
                groups = row_groups(row_lengths, self.args.pad_to_multiple_of, self.max_row_groups)
        else:
            num_tokens = inputs["attention_mask"].sum()
        with compact_lm_head(), mask:
            loss, stats, tokens = dpo_loss(self, model, inputs, num_tokens, groups)
        self.device_metrics.rows.append(stats)
        self.device_metrics.tokens.append(tokens)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        row_lengths = inputs.pop(ROW_LENGTHS, None)
        if not model.training:
            return self._trl_loss(model, inputs, return_outputs, num_items_in_batch)
        metrics = self.train_metrics
        logged = {key: list(values) for key, values in metrics.items()}  # a few floats per logging window
        tokens = self.total_train_tokens
        mark = self.device_metrics.mark()
        result = self._train_loss(model, inputs, return_outputs, num_items_in_batch, row_lengths)
        loss = result[0] if return_outputs else result
        if self.on_nonfinite != "skip":
            # `stop`: recorded on the device and read once per step with the gradient norm (GradientGuard), which
            # stops the run before this step's optimizer step
            finite = torch.isfinite(loss.detach()).all()
            self.loss_finite = finite if self.loss_finite is None else self.loss_finite & finite
            return result
        if torch.isfinite(loss).all():  # `skip` must know before the backward pass: one host read per micro-batch
            return result
        step = self.state.global_step + 1
        metrics.clear()  # forget what TRL recorded for this micro-batch
        metrics.update(logged)
        self.device_metrics.rollback(mark)
        if tokens is not None:
            self.total_train_tokens = tokens
        self._bad_micro_batches += 1
        log.warning("non-finite loss at step %d: micro-batch dropped", step)
        # A zero that reaches every trainable parameter: zero gradients (never NaN), and DDP sees all its hooks fire
        zero = sum((p * 0).sum() for p in model.parameters() if p.requires_grad)
        zero = torch.nan_to_num(zero, nan=0.0, posinf=0.0, neginf=0.0)
        return (zero, result[1]) if return_outputs else zero

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, after reading the device-side metrics of the logging window back in one transfer."""
        if self.model.training:
            values, tokens = self.device_metrics.flush()
            for name, per_micro_batch in values.items():
                self.train_metrics[name].extend(per_micro_batch)
            if values or tokens:
                self.total_train_tokens = (self.total_train_tokens or 0) + tokens
                self.train_metrics["num_tokens"] = [self.total_train_tokens]
        super().log(logs, start_time)

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
        if self.max_tokens_per_batch and dataset is not None and "prompt_ids" in dataset.column_names:
            cap = self.args.max_length or 10**9  # TRL truncates prompt + completion to max_length
            return TokenBudgetBatchSampler(
                [min(n, cap) for n in pair_lengths(dataset)],
                self.max_tokens_per_batch,
                self.args.pad_to_multiple_of,
                seed=self.args.data_seed or self.args.seed,
                world_size=self.args.world_size,
                rank=self.args.process_index,
            )
        if not self.group_by_length or dataset is None or "prompt_ids" not in getattr(dataset, "column_names", ()):
            return super()._get_train_sampler(train_dataset)
        batch = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedPairSampler(pair_lengths(dataset), batch, seed=self.args.data_seed or self.args.seed)

    def compute_ref_log_probs(self, model, inputs):
        inputs = {k: v for k, v in inputs.items() if k != ROW_LENGTHS}
        with compact_lm_head():
            return super().compute_ref_log_probs(model, inputs)

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
        good_loss = self._good_loss
        seen, bad = self._micro_batches, self._bad_micro_batches
        self._micro_batches = self._bad_micro_batches = 0
        self._good_loss = None
        if self.on_nonfinite == "skip" and self.accelerator.num_processes > 1:  # every process must agree: one read
            counts = torch.tensor([seen, bad], device=loss.device)
            seen, bad = (int(x) for x in self.accelerator.reduce(counts, "sum").tolist())
        if bad == 0:
            return loss
        if bad == seen:
            self.skip_optimizer_step("non-finite loss in every micro-batch")
            # The Trainer logs a loss for every step: a skipped one stands in with the last logged loss
            previous = next((row["loss"] for row in reversed(self.state.log_history) if "loss" in row), None)
            if previous is None:  # none logged yet: the window's mean so far, as transformers' NaN filter stands in
                steps = 1 + self.state.global_step - getattr(self, "_globalstep_last_logged", 0)
                return getattr(self, "_tr_loss", torch.zeros_like(loss)).detach() / steps
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
    if fused_gelu_on(cfg.train.get("fused_gelu", "auto"), device):
        callbacks.append(FusedTanhGelu(model))
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
        max_tokens_per_batch=cfg.train.get("max_tokens_per_batch"),
        row_groups=int(cfg.train.get("row_groups") or (3 if str(device).startswith("cuda") else 1)),
    )
    guard.trainer = trainer
    if sharded and args.precompute_ref_log_probs and reference_model is None:
        trainer.ref_model = None  # the log-probs are in the datasets: free the sharded reference for training
    return trainer
