"""The estimate itself: `estimate(config, strategy, world_size, batch) -> MemoryEstimate`, bytes per device by part
(params, grads, optimizer, reference, activations per token slot); the accounting is described in dpo_exp.memory's
module doc."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .shapes import count_parameters, dims, mlp_kind

STRATEGIES = ("ddp", "fsdp", "fsdp_offload", "zero2", "zero3")
GIB = 2**30
AUTOCAST_BYTES = 3.0  # average bytes per saved activation element under bf16/fp16 autocast (see the module doc)
HIDDEN_ELEMENTS = 10  # saved elements per token slot and layer, per unit of hidden size (measured, all families)
MLP_ELEMENTS = {"gelu_new": 5, "gated": 4, "fused": 2}  # ... per unit of intermediate size, by MLP kind (measured)


def fused_gelu_on(setting: Any, device: str) -> bool:
    """Whether `train.fused_gelu` (true | false | auto) swaps GPT-2's GELU on `device`: auto means on CUDA. One rule
    for the trainer that swaps it and for the estimate that counts its activations."""
    return setting is True or (setting == "auto" and str(device).startswith("cuda"))


@dataclass(frozen=True)
class Batch:
    """What the estimate needs to know about a run besides the model and the strategy."""

    token_slots: int  # padded token slots of one micro-batch: 2 rows x pairs x padded width
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast over fp32 master weights)
    device: str = "cuda"  # cuda | cpu (the LM head's memory differs)
    lora_r: int | None = None  # LoRA rank (None: full fine-tuning)
    lora_targets: tuple[str, ...] = ()  # LoRA target module names ("all-linear" allowed)
    reference: str = "precomputed"  # precomputed | copy (a frozen full copy on the device) | adapter (LoRA)
    gradient_checkpointing: bool = False
    fused_gelu: bool = False  # GPT-2's gelu_new runs as torch's one-op tanh GELU (train.fused_gelu)


@dataclass
class MemoryEstimate:
    """Bytes per device, by part; `activations` = `activations_per_token` x the micro-batch's token slots."""

    strategy: str
    world_size: int
    params: int
    grads: int
    optimizer: int
    reference: int
    activations_per_token: int
    token_slots: int
    parameters: int = 0  # the model's parameter count
    trainable: int = 0  # trainable parameters
    notes: list[str] = field(default_factory=list)

    @property
    def activations(self) -> int:
        return self.activations_per_token * self.token_slots

    @property
    def fixed(self) -> int:
        """Everything but the activations (what a token budget cannot change)."""
        return self.params + self.grads + self.optimizer + self.reference

    @property
    def total(self) -> int:
        return self.fixed + self.activations

    def parts(self) -> dict[str, int]:
        return {
            "params": self.params,
            "grads": self.grads,
            "optimizer": self.optimizer,
            "reference": self.reference,
            "activations": self.activations,
            "activations_per_token": self.activations_per_token,
            "total": self.total,
        }

    def line(self) -> str:
        gib = {k: v / GIB for k, v in self.parts().items()}
        return (
            f"memory estimate per device ({self.strategy}, {self.world_size} process(es)): "
            f"params {gib['params']:.2f} + grads {gib['grads']:.2f} + optimizer {gib['optimizer']:.2f} + reference "
            f"{gib['reference']:.2f} + activations {gib['activations']:.2f} ({self.activations_per_token / 2**20:.2f} "
            f"MiB x {self.token_slots} token slots) = {gib['total']:.2f} GiB"
        )


def activation_bytes_per_token(config: Any, batch: Batch) -> int:
    """Saved-for-backward bytes per token slot (see the module doc)."""
    layers, hidden, inner, vocab = dims(config)
    kind = mlp_kind(config)
    kind = "fused" if kind == "gelu_new" and batch.fused_gelu else kind
    per_layer = HIDDEN_ELEMENTS * hidden + MLP_ELEMENTS[kind] * inner
    elements = hidden + (layers * hidden + per_layer if batch.gradient_checkpointing else layers * per_layer)
    size = 4.0 if batch.precision == "fp32" else AUTOCAST_BYTES
    head = 4 * vocab if batch.device == "cpu" else 0
    return int(elements * size + head)


def estimate(config: Any, strategy: str, world_size: int, batch: Batch) -> MemoryEstimate:
    """The run's memory per device by part (bytes), from the model config, the strategy, the world size and the
    batch; nothing is loaded."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {STRATEGIES}")
    world = max(1, int(world_size))
    total, trainable, layer = count_parameters(config, batch.lora_r, batch.lora_targets)
    compute = 4 if batch.precision == "fp32" else 2
    shard_params = strategy in ("fsdp", "zero3")
    shard_state = strategy in ("fsdp", "zero2", "zero3")
    notes: list[str] = []
    if strategy == "fsdp_offload":  # parameters, gradients and optimiser state live on the host
        params = grads = optimizer = 0
        in_flight = 2 * layer * compute  # the gathered layer and the prefetched next one
        notes.append("fsdp_offload: parameters, gradients and optimizer state on the host")
    else:
        params = math.ceil(4 * total / world) if shard_params else 4 * total
        in_flight = 2 * layer * compute if shard_params else 0
        grads = math.ceil(4 * trainable / world) if shard_state else 4 * trainable
        optimizer = math.ceil(8 * trainable / world) if shard_state else 8 * trainable
    params += in_flight
    reference = 0
    if batch.reference == "copy":
        reference = math.ceil(total * compute / world) if shard_params else total * compute
    return MemoryEstimate(
        strategy=strategy,
        world_size=world,
        params=params,
        grads=grads,
        optimizer=optimizer,
        reference=reference,
        activations_per_token=activation_bytes_per_token(config, batch),
        token_slots=int(batch.token_slots),
        parameters=total,
        trainable=trainable,
        notes=notes,
    )
