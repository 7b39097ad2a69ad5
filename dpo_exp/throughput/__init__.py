"""Throughput hooks for TRL's trainers, each in one module: lm_head (the compact fused LM head on CPU,
`compact_lm_head`), batches (length-grouped pair batches, `LengthGroupedPairSampler`), syncs (`causal_without_mask`,
`HostSyncCounter`) and gelu (the fused tanh GELU while training, `FusedTanhGelu`). Measured in
benchmarks/bench_dpo_step.py and benchmarks/gpu_profile.py.
"""

from .batches import LengthGroupedPairSampler, pair_lengths
from .gelu import FusedTanhGelu, swap_tanh_gelu
from .lm_head import (
    LM_HEAD_OUTPUTS,
    MAX_FULL_LOGITS,
    NO_GRADIENT,
    ROW_BLOCK,
    FullLogitsLogProb,
    RefuseGradient,
    compact_lm_head,
    full_logits_log_probs,
)
from .syncs import HostSyncCounter, causal_without_mask

__all__ = [
    "LM_HEAD_OUTPUTS",
    "MAX_FULL_LOGITS",
    "NO_GRADIENT",
    "ROW_BLOCK",
    "FullLogitsLogProb",
    "FusedTanhGelu",
    "HostSyncCounter",
    "LengthGroupedPairSampler",
    "RefuseGradient",
    "causal_without_mask",
    "compact_lm_head",
    "full_logits_log_probs",
    "pair_lengths",
    "swap_tanh_gelu",
]
