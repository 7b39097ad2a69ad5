"""Throughput hooks for TRL's DPOTrainer: compact fused LM head, length-grouped batches, a host-sync counter.

Two places where TRL 1.x does avoidable work on a CPU (measured in benchmarks/bench_dpo_step.py):

- The fused LM head (`trl.trainer.utils.add_fused_lm_head`) scores only the positions that have a label on
  Triton devices (CUDA/XPU), but EVERY position (prompt tokens and padding included) elsewhere, because on
  compiled backends such as Neuron a varying number of positions would recompile the kernel. Eager CPU has no
  such cost, so `compact_lm_head()` makes it score only the completion tokens there too (positions without a
  label are zero either way). On CPU the chunked kernel itself (its torch fallback) costs ~2.4x a plain
  log_softmax over the same logits, so within the block the labelled positions are scored from full logits when
  they fit in memory (`full_logits_log_probs`): same values, same gradient of the log-probs. In the plain fp32
  case (`FullLogitsLogProb`) the row statistics are taken over small row blocks that stay in cache, and the
  backward turns the saved logits into their gradient in place: no second [N, V] tensor, no zero-filled
  gradient to scatter into (a plain log_softmax + gather makes ~4 passes and 2 fresh allocations of [N, V]).
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
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import Sampler
from transformers import TrainerCallback

# Above this many logits (rows x vocabulary; 2**28 fp32 = 1 GiB per copy) the full-logits CPU path would use too
# much memory, and TRL's chunked kernel is used instead.
MAX_FULL_LOGITS = 2**28
# Rows per block in FullLogitsLogProb: a block (x 50k vocabulary x 4 bytes = 6 MiB) stays in cache across passes.
ROW_BLOCK = 32
# The per-token outputs TRL's fused LM head can return, in the order of its 5-tuple.
LM_HEAD_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


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
    """What TRL's `ChunkedLogProbFunction.apply` returns, computed from the materialised [N, V] logits (a few
    passes over the logits instead of the chunked kernel's torch fallback, which makes ~a dozen elementwise passes
    per tile forward and again backward, plus a second matmul): `FullLogitsLogProb` for fp32 logits without
    temperature, scale or soft-capping, plain autograd ops (log_softmax + gather) otherwise.

    The per-token log-probability keeps its gradient; entropy, log(sum p^2) and mean logit are computed without one
    (the DPO and SFT trainers only log them, detached). TRL's kernel does give them a gradient, so a loss that
    back-propagates through one of them raises here (`NO_GRADIENT`) instead of silently getting none."""
    plain = temperature == 1.0 and logit_scale == 1.0 and final_logit_softcapping is None
    fp32 = hidden.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
    if plain and fp32 and not torch.is_autocast_enabled(hidden.device.type):
        return FullLogitsLogProb.apply(hidden, weight, bias, targets, tuple(outputs))
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
    if z.requires_grad:
        entropy, log_sum_sq, mean_logits = (
            None if x is None else RefuseGradient.apply(x, z) for x in (entropy, log_sum_sq, mean_logits)
        )
    return logprobs, entropy, log_sum_sq, mean_logits, is_top1


NO_GRADIENT = (
    "the CPU full-logits LM head (dpo_exp.throughput) gives entropy, log_sum_sq_probs and mean_logits no gradient, "
    "unlike TRL's kernel; a loss that needs one must run without dpo_exp.throughput.compact_lm_head()"
)


class RefuseGradient(torch.autograd.Function):
    """`value` unchanged, tied to `anchor` in the graph so that a backward pass through it raises (`NO_GRADIENT`)
    rather than giving the inputs no gradient without a word."""

    @staticmethod
    def forward(ctx, value, anchor):
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(NO_GRADIENT)


class FullLogitsLogProb(torch.autograd.Function):
    """Per-token log-probabilities (and the logged-only statistics in `outputs`) of `hidden @ weight.T + bias`
    from the full fp32 logits, with a hand-written backward; returns TRL's 5-tuple (absent outputs are None).

    Forward: one matmul, then per block of `ROW_BLOCK` rows the max, log-sum-exp and, when asked, entropy and
    log(sum p^2) from one exp pass that stays in cache. Backward: d log p_t / d z = onehot(t) - softmax(z), built
    in place in the saved logits (so a second backward through the same graph is refused), then two matmuls."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, outputs):
        ctx.set_materialize_grads(False)
        logits = hidden @ weight.t()
        if bias is not None:
            logits += bias
        rows = logits.shape[0]
        log_z = logits.new_empty(rows)
        row_max = logits.new_empty(rows)
        entropy = logits.new_empty(rows) if "entropy" in outputs else None
        log_sum_sq = logits.new_empty(rows) if "log_sum_sq_probs" in outputs else None
        block = logits.new_empty(min(rows, ROW_BLOCK), logits.shape[1])
        for start in range(0, rows, ROW_BLOCK):
            part = slice(start, start + ROW_BLOCK)
            z = logits[part]
            ez = block[: z.shape[0]]
            m = z.amax(-1)
            torch.sub(z, m[:, None], out=ez).exp_()
            total = ez.sum(-1)
            row_max[part] = m
            log_z[part] = m + total.log()
            if log_sum_sq is not None:
                log_sum_sq[part] = ez.square().sum(-1).log() - 2 * total.log()
            if entropy is not None:  # H = log Z - sum_v p_v z_v
                entropy[part] = log_z[part] - ez.mul_(z).sum(-1) / total
        target_logit = logits.gather(1, targets[:, None]).squeeze(1)
        log_probs = target_logit - log_z
        mean_logits = logits.mean(-1) if "mean_logits" in outputs else None
        is_top1 = None
        if "is_top1" in outputs:  # the target is a maximum; ties count for the first maximum only, as in TRL
            is_top1 = target_logit >= row_max
            tied = is_top1.nonzero().squeeze(1)
            is_top1[tied] = logits[tied].argmax(-1) == targets[tied]
        ctx.save_for_backward(hidden, weight, targets, log_z, logits)
        ctx.has_bias = bias is not None
        ctx.used = False
        if is_top1 is not None:  # the statistics stay differentiable outputs so that backward can refuse them
            ctx.mark_non_differentiable(is_top1)
        return log_probs, entropy, log_sum_sq, mean_logits, is_top1

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy, grad_log_sum_sq, grad_mean_logits, _grad_is_top1):
        if any(g is not None for g in (grad_entropy, grad_log_sum_sq, grad_mean_logits)):
            raise RuntimeError(NO_GRADIENT)
        if grad_log_probs is None:
            return None, None, None, None, None
        if ctx.used:
            raise RuntimeError("FullLogitsLogProb: its saved logits were consumed by the first backward")
        ctx.used = True
        hidden, weight, targets, log_z, logits = ctx.saved_tensors
        g = grad_log_probs.to(logits.dtype)
        for start in range(0, logits.shape[0], ROW_BLOCK):  # logits -> -g * softmax, in place
            part = slice(start, start + ROW_BLOCK)
            logits[part].sub_(log_z[part, None]).exp_().mul_(-g[part, None])
        flat_targets = torch.arange(logits.shape[0], device=logits.device) * logits.shape[1] + targets
        logits.view(-1).index_add_(0, flat_targets, g)
        grad_hidden = logits @ weight if ctx.needs_input_grad[0] else None
        grad_weight = logits.t() @ hidden if ctx.needs_input_grad[1] else None
        grad_bias = logits.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None


class _CpuLogProb:
    """Stands in for TRL's `_ChunkedLogProbFunction` inside `compact_lm_head()`: the full-logits path on CPU when
    the logits fit `MAX_FULL_LOGITS` (and the model runs eagerly), TRL's kernel otherwise."""

    def __init__(self, kernel):
        self.kernel = kernel

    def apply(self, hidden, weight, bias, targets, *args):
        # Under torch.compile the graph's backward is traced for every output (the logged-only statistics too, which
        # this path refuses to differentiate): TRL's kernel there
        eager = not torch.compiler.is_compiling()
        if eager and hidden.device.type == "cpu" and hidden.shape[0] * weight.shape[0] <= MAX_FULL_LOGITS:
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


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def causal_without_mask() -> Iterator[None]:
    """Within the block, models on PyTorch's SDPA attention get no attention mask, so SDPA runs its causal kernel
    (`is_causal`) and transformers reads nothing back from the device to decide that (its mask builder checks the
    padding on the host: two syncs per forward). Only for right-padded batches: a causal model's outputs at a row's
    real tokens never see the padding after them, so their values are the same (tests/test_step_speed.py). The
    mask is still passed to the model (no padding warning, no packed-sequence check, positions unchanged); other
    attention implementations (eager, flash, flex) are left alone."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    previous = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
    ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] = _no_mask
    try:
        yield
    finally:
        if previous is AttentionMaskInterface._global_mapping["sdpa"]:
            del ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
        else:
            ALL_MASK_ATTENTION_FUNCTIONS["sdpa"] = previous


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


class HostSyncCounter(TorchDispatchMode):
    """Counts the host's reads of tensor values (`item()`, `bool()`/`if t`, `float()`, `tolist()`, `.cpu()`): on a
    GPU each is a point where the host waits for the device to catch up (a host sync).

    On a GPU, reads of device tensors and device-to-host copies are counted. With `cpu=True` (a CPU-only run, where
    nothing waits) every read of a CPU tensor is counted instead, so a CPU test pins how many syncs the same code
    makes on a GPU (an upper bound: values that live on the host there too, such as a non-fused optimiser's step
    counters, count as well). Use as a context manager around the steps; `count` is the total."""

    def __init__(self, cpu: bool = False):
        super().__init__()
        self.cpu = cpu
        self.count = 0
        self._tolist = None

    def _counts(self, tensor: Any) -> bool:
        return isinstance(tensor, torch.Tensor) and (tensor.device.type == "cpu") == self.cpu

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += self._counts(args[0])
        elif not self.cpu and func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            target = args[0].device if func is torch.ops.aten.copy_.default else kwargs.get("device")
            if isinstance(source, torch.Tensor) and source.device.type != "cpu" and target is not None:
                self.count += torch.device(target).type == "cpu"
        return func(*args, **kwargs)

    def __enter__(self):
        if self.cpu:  # a CPU tensor's tolist() reads memory directly, below the dispatcher
            original = self._tolist = torch.Tensor.tolist

            def counted_tolist(tensor):
                self.count += 1
                return original(tensor)

            torch.Tensor.tolist = counted_tolist
        return super().__enter__()

    def __exit__(self, *exc):
        if self._tolist is not None:
            torch.Tensor.tolist = self._tolist
            self._tolist = None
        return super().__exit__(*exc)


def swap_tanh_gelu(model: Any, fused: bool = True) -> int:
    """Replace each of the model's eager tanh-GELU modules (transformers' `NewGELUActivation`, GPT-2's `gelu_new`:
    ~8 element-wise ops, each saving its output for backward) by the one-kernel `GELUTanh` (torch's
    `gelu(approximate="tanh")`: the same function, equal up to float rounding), or back with `fused=False`. The
    model's config is left alone, so what is saved and reloaded still names its own activation. Returns how many
    modules were swapped."""
    from transformers.activations import GELUTanh, NewGELUActivation

    source, target = (NewGELUActivation, GELUTanh) if fused else (GELUTanh, NewGELUActivation)
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is source:
                setattr(module, name, target())
                swapped += 1
    return swapped


class FusedTanhGelu(TrainerCallback):
    """The fused tanh GELU (`swap_tanh_gelu`) while the Trainer trains, the model's own activation again when it
    ends (evaluation, generation and the saved model then compute exactly what a reloaded model computes)."""

    def __init__(self, model: Any):
        self.model = model

    def on_train_begin(self, args, state, control, **kwargs):
        swap_tanh_gelu(self.model, fused=True)

    def on_train_end(self, args, state, control, **kwargs):
        swap_tanh_gelu(self.model, fused=False)
