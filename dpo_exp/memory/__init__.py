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

Modules: estimate (`Batch`, `MemoryEstimate`, `estimate`, activations per token slot, `fused_gelu_on`), shapes (parameter counts
from a config's shapes, or a meta-device build), fit (what fits a device: `fits`, `largest_budget`,
`what_would_fit`, `device_memory_bytes`), measure (what the estimate is checked
against: `saved_activation_bytes`, the activations; `peak_tensor_bytes`, the peak of whole training steps,
benchmarks/bench_memory_check.py). The run's own check (log, refuse, `train.auto_batch`) is dpo_exp.memory_check.
"""

from .estimate import (
    AUTOCAST_BYTES,
    GIB,
    HIDDEN_ELEMENTS,
    MLP_ELEMENTS,
    STRATEGIES,
    Batch,
    MemoryEstimate,
    activation_bytes_per_token,
    estimate,
    fused_gelu_on,
)
from .fit import HEADROOM, device_memory_bytes, fits, largest_budget, what_would_fit
from .measure import peak_tensor_bytes, saved_activation_bytes
from .shapes import count_parameters, linear_layers, mlp_kind

__all__ = [
    "AUTOCAST_BYTES",
    "GIB",
    "HEADROOM",
    "HIDDEN_ELEMENTS",
    "MLP_ELEMENTS",
    "STRATEGIES",
    "Batch",
    "MemoryEstimate",
    "activation_bytes_per_token",
    "count_parameters",
    "device_memory_bytes",
    "estimate",
    "fits",
    "fused_gelu_on",
    "largest_budget",
    "linear_layers",
    "mlp_kind",
    "peak_tensor_bytes",
    "saved_activation_bytes",
    "what_would_fit",
]
