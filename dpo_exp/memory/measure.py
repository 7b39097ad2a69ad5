"""The measurement the estimate is checked against (tests/test_memory.py): bytes autograd saves for backward."""

from __future__ import annotations

from typing import Any


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
