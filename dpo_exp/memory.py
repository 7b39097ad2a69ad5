"""Memory of a training run per device, estimated from the model's config alone (no weights are loaded), so a run
that cannot fit is refused before anything loads, and `train.auto_batch` can pick the largest token budget that fits.

`estimate(config, strategy, world_size, batch) -> MemoryEstimate`, in bytes per device:

- params: fp32 master weights (4 bytes per parameter; sharded by fsdp/zero3, on the host with fsdp_offload, where
  the device holds the gathered layers in flight instead);
- grads: 4 bytes per trainable parameter (sharded by zero2/fsdp/zero3);
- optimizer: AdamW's two fp32 moments, 8 bytes per trainable parameter (sharded by zero2/fsdp/zero3);
- reference: a frozen copy in the compute dtype for full fine-tuning without precomputed reference log-probs (none
  with precomputed log-probs or LoRA, whose reference is the adapter switched off);
- activations: saved-for-backward bytes per token slot x the token slots of a micro-batch. Per slot and layer the
  saved elements are 10 x hidden + k x intermediate, with k = 5 for GPT-2's eager `gelu_new` (its tanh formula saves
  its intermediates), 4 for gated (SwiGLU) MLPs and 2 for a fused GELU; plus one hidden for the embeddings. Measured
  with saved-tensor hooks on tiny GPT-2, Llama and Qwen2 models on CPU (`saved_activation_bytes`; tests/
  test_memory.py). An element is 4 bytes in fp32; under bf16/fp16 autocast 3 bytes on average is assumed (about
  half the saved tensors, LayerNorm inputs and fp32-listed ops such as `pow`, stay fp32), which puts GPT-2-medium at
  ~2 MB per slot, the issue's own figure; not yet checked against a GPU's measured peak. With gradient checkpointing
  only each layer's input is kept, plus one layer's activations during its recomputation. On CPU the project's
  LM head keeps the full fp32 logits of every scored position (4 x vocabulary bytes per slot, an upper bound: only
  completion positions are scored); on CUDA TRL's chunked head never materialises them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("ddp", "fsdp", "fsdp_offload", "zero2", "zero3")
GIB = 2**30
HEADROOM = 0.9  # a run fits when its estimate is at most this share of the device's memory (allocator, CUDA context)
AUTOCAST_BYTES = 3.0  # average bytes per saved activation element under bf16/fp16 autocast (see the module doc)
HIDDEN_ELEMENTS = 10  # saved elements per token slot and layer, per unit of hidden size (measured, all families)
MLP_ELEMENTS = {"gelu_new": 5, "gated": 4, "fused": 2}  # ... per unit of intermediate size, by MLP kind (measured)


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


def _dims(config: Any) -> tuple[int, int, int, int]:
    """(layers, hidden, intermediate, vocabulary) of a transformers config."""
    hidden = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    inner = getattr(config, "n_inner", None) or getattr(config, "intermediate_size", None) or 4 * hidden
    return layers, hidden, int(inner), int(config.vocab_size)


def mlp_kind(config: Any) -> str:
    """gelu_new (GPT-2's eager tanh GELU), gated (SwiGLU: a separate gate projection) or fused (one-op GELU)."""
    act = str(getattr(config, "activation_function", None) or getattr(config, "hidden_act", "") or "")
    if getattr(config, "model_type", "") == "gpt2" or act == "gelu_new":
        return "gelu_new" if act in ("gelu_new", "") else "fused"
    return "gated" if getattr(config, "intermediate_size", None) else "fused"


def linear_layers(config: Any) -> list[tuple[str, int, int, bool]] | None:
    """(module name, in features, out features, has bias) of one transformer block's linear layers, for the
    families known here (GPT-2; Llama-style: llama, qwen2, mistral, ...); None for another family."""
    layers, hidden, inner, _ = _dims(config)
    if getattr(config, "model_type", "") == "gpt2":
        return [
            ("c_attn", hidden, 3 * hidden, True),
            ("c_proj", hidden, hidden, True),
            ("c_fc", hidden, inner, True),
            ("c_proj", inner, hidden, True),
        ]
    if mlp_kind(config) == "gated" and hasattr(config, "num_attention_heads"):
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads) * head_dim
        qkv_bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
        return [
            ("q_proj", hidden, heads * head_dim, qkv_bias),
            ("k_proj", hidden, kv, qkv_bias),
            ("v_proj", hidden, kv, qkv_bias),
            ("o_proj", heads * head_dim, hidden, bool(getattr(config, "attention_bias", False))),
            ("gate_proj", hidden, inner, False),
            ("up_proj", hidden, inner, False),
            ("down_proj", inner, hidden, False),
        ]
    return None


def count_parameters(
    config: Any, lora_r: int | None = None, lora_targets: tuple[str, ...] = ()
) -> tuple[int, int, int]:
    """(parameters, trainable parameters, parameters of one block). Counted from the config's shapes for the known
    families (nothing imported but the config), else on a meta-device build of the architecture (shapes only, no
    memory, no weights). LoRA trains r x (in + out) per targeted linear layer, as PEFT adds it."""
    layers, hidden, _, vocab = _dims(config)
    linears = linear_layers(config)
    if linears is None:
        key = (config.to_json_string(), lora_r, tuple(lora_targets))
        if key not in _COUNTS:
            _COUNTS[key] = _count_on_meta(config, lora_r, lora_targets)
        return _COUNTS[key]
    block = sum(i * o + (o if bias else 0) for _, i, o, bias in linears)
    if config.model_type == "gpt2":
        block += 4 * hidden  # two LayerNorms (weight and bias)
        total = vocab * hidden + int(config.n_positions) * hidden + layers * block + 2 * hidden
    else:
        block += 2 * hidden  # two RMSNorms
        total = vocab * hidden + layers * block + hidden
        if not getattr(config, "tie_word_embeddings", False):
            total += vocab * hidden
    if lora_r is None:
        return total, total, block
    targeted = [(i, o) for name, i, o, _ in linears if "all-linear" in lora_targets or name in lora_targets]
    return total, layers * sum(lora_r * (i + o) for i, o in targeted), block


_COUNTS: dict[tuple, tuple[int, int, int]] = {}  # validation runs often on the same model: count it once


def _count_on_meta(config: Any, lora_r: int | None, lora_targets: tuple[str, ...]) -> tuple[int, int, int]:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # tied weights once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    layer = 0
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            layer = max(layer, sum(p.numel() for p in module[0].parameters()))
    if lora_r is None:
        return total, total, layer
    trainable = 0
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2 or "lm_head" in name or "wte" in name or "embed" in name:
            continue
        if "all-linear" in lora_targets or short in lora_targets:
            trainable += lora_r * (weight.shape[0] + weight.shape[1])
    return total, trainable, layer


def activation_bytes_per_token(config: Any, batch: Batch) -> int:
    """Saved-for-backward bytes per token slot (see the module doc)."""
    layers, hidden, inner, vocab = _dims(config)
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
            out.append("lora=default")
    for sharded in ("fsdp", "zero3", "fsdp_offload"):
        if strategy != sharded and world_size > 1 and fits(estimate(config, sharded, world_size, batch), device_bytes):
            out.append(f"distributed={sharded}")
            break
    return out


def saved_activation_bytes(run: Any, model: Any = None) -> int:
    """Bytes of the distinct tensors autograd saves for backward while `run()` executes a forward pass, the
    `model`'s own parameters (and views of them) excluded: a measurement to check `activation_bytes_per_token`."""
    import torch

    weights = set() if model is None else {p.untyped_storage().data_ptr() for p in model.parameters()}
    sizes: dict[int, int] = {}

    def pack(tensor):
        if tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                sizes[storage.data_ptr()] = max(sizes.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(sizes.values())
