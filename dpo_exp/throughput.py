"""CPU throughput hooks for TRL's DPOTrainer: compact fused LM head and length-grouped batches.

Two places where TRL 1.x does avoidable work on a CPU (measured in benchmarks/bench_dpo_step.py):

- The fused LM head (`trl.trainer.utils.add_fused_lm_head`) scores only the positions that have a label on
  Triton devices (CUDA/XPU), but EVERY position (prompt tokens and padding included) elsewhere, because on
  compiled backends such as Neuron a varying number of positions would recompile the kernel. Eager CPU has no
  such cost, so `compact_lm_head()` makes it score only the completion tokens there too (positions without a
  label are zero either way). On CPU the chunked kernel itself (its torch fallback) costs ~2.4x a plain
  log_softmax over the same logits, so within the block the labelled positions are scored from full logits when
  they fit in memory (`full_logits_log_probs`): same values, same gradient of the log-probs.
- Random batches of pairs of very different lengths are mostly padding. `LengthGroupedPairSampler` shuffles, cuts
  the pairs into mega-batches, sorts each by length and shuffles the resulting batches (the idea of
  transformers' `LengthGroupedSampler`, whose mega-batch collapses to one batch on small datasets). Trade-off:
  within a mega-batch, batches hold pairs of similar length rather than a uniform mix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

# Above this many logits (rows x vocabulary; 2**28 fp32 = 1 GiB per copy) the full-logits CPU path would use too
# much memory, and TRL's chunked kernel is used instead.
MAX_FULL_LOGITS = 2**28


def full_logits_log_probs(
    hidden,
    weight,
    bias,
    targets,
    temperature,
    chunk_size,
    final_logit_softcapping=None,
    logit_scale=1.0,
    outputs=("log_probs",),
):
    """What TRL's `ChunkedLogProbFunction.apply` returns, computed from the materialised [N, V] logits with plain
    autograd ops (log_softmax + gather: a few passes over the logits instead of the chunked kernel's torch
    fallback, which makes ~a dozen elementwise passes per tile forward and again backward, plus a second matmul).

    The per-token log-probability keeps its gradient; entropy, log(sum p^2), mean logit and top-1 are computed
    without gradient (the DPO and SFT trainers only log them)."""
    z = hidden @ weight.t()
    if bias is not None:
        z = z + bias
    z = z.float()
    if logit_scale != 1.0:
        z = z * logit_scale
    if final_logit_softcapping is not None:
        z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
    if temperature != 1.0:
        z = z / temperature
    log_p = torch.log_softmax(z, dim=-1)
    logprobs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = log_sum_sq = mean_logits = is_top1 = None
    with torch.no_grad():
        if "entropy" in outputs:
            entropy = -(log_p.exp() * log_p).sum(-1)
        if "log_sum_sq_probs" in outputs:
            log_sum_sq = torch.logsumexp(2 * log_p, dim=-1)
        if "mean_logits" in outputs:
            mean_logits = z.mean(-1)
        if "is_top1" in outputs:
            is_top1 = z.argmax(-1) == targets  # argmax returns the first maximum, as TRL's kernel counts ties
    return logprobs, entropy, log_sum_sq, mean_logits, is_top1


class _CpuLogProb:
    """Stands in for TRL's `_ChunkedLogProbFunction` inside `compact_lm_head()`: the full-logits path on CPU when
    the logits fit `MAX_FULL_LOGITS`, TRL's kernel otherwise."""

    def __init__(self, kernel):
        self.kernel = kernel

    def apply(self, hidden, weight, bias, targets, *args):
        if hidden.device.type == "cpu" and hidden.shape[0] * weight.shape[0] <= MAX_FULL_LOGITS:
            return full_logits_log_probs(hidden, weight, bias, targets, *args)
        return self.kernel.apply(hidden, weight, bias, targets, *args)


@contextlib.contextmanager
def compact_lm_head() -> Iterator[None]:
    """Within the block, TRL's fused LM head on CPU scores only labelled positions (as it does on CUDA) and, when
    they fit in memory, from full logits (`full_logits_log_probs`) rather than its chunked kernel's torch fallback.
    Same outputs (up to float rounding); GPU behaviour is unchanged."""
    from .trl_compat import fused_lm_head_kernel, set_fused_lm_head_kernel

    found = fused_lm_head_kernel()
    if found is None:  # another TRL version: leave it alone
        yield
        return
    use_triton, kernel = found

    def compact(device: torch.device) -> bool:
        return use_triton(device) or device.type == "cpu"

    set_fused_lm_head_kernel(compact, _CpuLogProb(kernel))
    try:
        yield
    finally:
        set_fused_lm_head_kernel(use_triton, kernel)


def pair_lengths(dataset: Any) -> list[int]:
    """Padded cost of each tokenised pair: the longer of prompt+chosen and prompt+rejected."""
    columns = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).with_format("arrow")
    lengths: list[int] = []
    for batch in columns.iter(batch_size=4096):
        prompt = batch.column("prompt_ids").to_pylist()
        chosen = batch.column("chosen_ids").to_pylist()
        rejected = batch.column("rejected_ids").to_pylist()
        lengths.extend(len(p) + max(len(c), len(r)) for p, c, r in zip(prompt, chosen, rejected))
    return lengths


class LengthGroupedPairSampler(Sampler[int]):
    """Batches of pairs of similar length, in random order, seeded by (`seed`, epoch): the Trainer calls
    `set_epoch`, so an epoch's order is the same whether the run went straight through or resumed mid-way.

    Each epoch: shuffle, cut into mega-batches of `mega_batches` batches, sort each mega-batch by length
    (longest first), cut into batches, shuffle the full batches (a short remainder batch comes last). The batch
    size must be the per-step batch (per-device batch x gradient accumulation)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega_batches: int = 8):
        self.lengths = list(lengths)
        self.batch_size = max(1, int(batch_size))
        self.mega = self.batch_size * max(1, int(mega_batches))
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1  # without set_epoch, the next pass still draws a new order
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), self.mega):
            group = sorted(order[start : start + self.mega], key=lambda i: -self.lengths[i])
            batches.extend(group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size))
        full = [b for b in batches if len(b) == self.batch_size]
        rest = [b for b in batches if len(b) < self.batch_size]
        for j in torch.randperm(len(full), generator=generator).tolist():
            yield from full[j]
        for b in rest:
            yield from b
