"""What fits a device: whether an estimate fits, the largest token budget that does, the settings that would make
a run fit, and the device's memory."""

from __future__ import annotations

from typing import Any

from .estimate import Batch, MemoryEstimate, estimate

HEADROOM = 0.9  # a run fits when its estimate is at most this share of the device's memory (allocator, CUDA context)


def largest_budget(memory: MemoryEstimate, device_bytes: int, multiple: int = 256) -> int:
    """The largest micro-batch token budget (a multiple of `multiple`) whose estimate fits `device_bytes`; 0 if
    not even the fixed part fits."""
    room = HEADROOM * device_bytes - memory.fixed
    if room <= 0 or memory.activations_per_token <= 0:
        return 0
    return int(room // memory.activations_per_token) // multiple * multiple


def fits(memory: MemoryEstimate, device_bytes: int) -> bool:
    return memory.total <= HEADROOM * device_bytes


def what_would_fit(
    config: Any, strategy: str, world_size: int, batch: Batch, device_bytes: int, min_slots: int
) -> list[str]:
    """Settings that would make the run fit, each as an override: a smaller token budget (at least `min_slots`, one
    pair at the longest length), gradient checkpointing, LoRA, or sharding."""
    out: list[str] = []
    memory = estimate(config, strategy, world_size, batch)
    budget = largest_budget(memory, device_bytes)
    if budget >= min_slots:
        out.append(f"train.max_tokens_per_batch={budget}")
    if not batch.gradient_checkpointing:
        checkpointed = Batch(**{**batch.__dict__, "gradient_checkpointing": True})
        if fits(estimate(config, strategy, world_size, checkpointed), device_bytes):
            out.append("trainer.gradient_checkpointing=true")
    if batch.lora_r is None:
        lora = Batch(**{**batch.__dict__, "lora_r": 16, "lora_targets": ("all-linear",), "reference": "adapter"})
        if fits(estimate(config, strategy, world_size, lora), device_bytes):
            out.append("lora=auto")
    for sharded in ("fsdp", "zero3", "fsdp_offload"):
        if strategy != sharded and world_size > 1 and fits(estimate(config, sharded, world_size, batch), device_bytes):
            out.append(f"distributed={sharded}")
            break
    return out


def device_memory_bytes(device: str) -> int:
    """Memory of the device a run trains on: the GPU's total memory, or the machine's physical memory on CPU."""
    import os

    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
