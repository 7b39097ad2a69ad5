"""Host syncs (the host waiting for the device to catch up): `causal_without_mask` avoids two per forward,
`HostSyncCounter` counts them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


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
