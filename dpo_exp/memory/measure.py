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


def peak_tensor_bytes(run: Any, *external: Any) -> dict[str, int]:
    """Peak bytes of tensor storage alive while `run()` executes, per device (`{"cpu": ...}`): torch's MemTracker (a
    TorchDispatchMode that counts every storage an op creates until it is freed, DTensor shards by their local part,
    FSDP's freed unsharded parameters by their resized storage). `external` (modules, optimizers, tensors made before)
    are counted from the start. A measurement of whole training steps to check `estimate`'s total against where the
    device has no allocator statistics (CPU)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class StepsTracker(MemTracker):
        """MemTracker over several training steps: its per-module statistics (unused here) restart when the root
        module runs again (MemTracker itself refuses a second iteration); the peak per device is kept."""

        def _pre_fw_hook(self, module: Any, inputs: Any) -> None:
            name = self._mod_tracker.get_known_fqn(module)
            again = module in self.memory_tracking and not self._mod_tracker.is_bw
            if again and set(self._mod_tracker.parents) - {name} == {"Global"}:
                self.reset_mod_stats()
            super()._pre_fw_hook(module, inputs)

    tracker = StepsTracker()
    tracker.track_external(*external)
    with tracker:
        run()
    return {str(device): int(parts["Total"]) for device, parts in tracker.get_tracker_snapshot("peak").items()}
