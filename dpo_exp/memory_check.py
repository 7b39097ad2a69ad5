"""The run's memory check, part of config validation (dpo_exp.config): the estimate of dpo_exp.memory for the
composed config, logged; a GPU run that cannot fit refused with one line naming what would; `train.auto_batch`'s
token budget chosen."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from .errors import UserError
from .infra.distributed import world_size
from .infra.sharding import strategy as run_strategy
from .lora import model_config
from .memory import (
    STRATEGIES,
    Batch,
    device_memory_bytes,
    estimate,
    fits,
    fused_gelu_on,
    largest_budget,
    what_would_fit,
)

log = logging.getLogger(__name__)


def check_memory(cfg: DictConfig, precision: str, device: str):
    """Estimate the run's memory per device from the model config (dpo_exp.memory; no weights load), log it, and
    refuse a GPU run that cannot fit with one line naming what would (on CPU a warning); `train.auto_batch=true` sets
    `train.max_tokens_per_batch` to the largest budget that fits instead. None when the config cannot be read."""
    config = model_config(cfg.model)
    if config is None:
        return None
    t, train = cfg.trainer, cfg.train
    max_length = int(t.max_length or 1024)
    slots = train.get("max_tokens_per_batch") or 2 * int(t.per_device_train_batch_size) * max_length
    lora = bool(cfg.lora.enabled)
    batch = Batch(
        token_slots=int(slots),
        precision=precision,
        device="cpu" if device == "cpu" else "cuda",
        lora_r=int(cfg.lora.r) if lora else None,
        lora_targets=tuple(cfg.lora.target_modules) if lora else (),
        reference="precomputed" if t.precompute_ref_log_probs else ("adapter" if lora else "copy"),
        gradient_checkpointing=bool(t.get("gradient_checkpointing")),
        fused_gelu=fused_gelu_on(train.get("fused_gelu"), device),
    )
    strategy, world = run_strategy(cfg).name, world_size()  # the `distributed` group and this launch
    strategy = strategy if strategy in STRATEGIES else "ddp"
    memory = estimate(config, strategy, world, batch)
    available = device_memory_bytes(device)
    if train.get("auto_batch"):
        budget = largest_budget(memory, available)
        if budget < 2 * max_length:
            raise UserError(
                f"train.auto_batch: not even one pair of trainer.max_length={max_length} tokens fits the device's "
                f"{available / 2**30:.1f} GiB ({memory.line()})"
            )
        train.max_tokens_per_batch = budget
        memory = estimate(config, strategy, world, Batch(**{**batch.__dict__, "token_slots": budget}))
    log.info("%s; the device has %.1f GiB", memory.line(), available / 2**30)
    if not fits(memory, available):
        if not str(device).startswith("cuda"):  # CPU memory is the machine's, shared and swappable: a warning only
            log.warning("the estimate exceeds this machine's memory")
            return memory
        ways = what_would_fit(config, strategy, world, batch, available, 2 * max_length)
        fix = ", ".join(ways) if ways else "none of a smaller batch, gradient checkpointing, LoRA or sharding here"
        raise UserError(
            f"memory estimate {memory.total / 2**30:.1f} GiB per device exceeds the device's "
            f"{available / 2**30:.1f} GiB (activations {memory.activations / 2**30:.1f} GiB for "
            f"{memory.token_slots} token slots); would fit: {fix}"
        )
    return memory
