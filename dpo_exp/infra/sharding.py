"""How the run's processes share the model: the `distributed` group (ddp, fsdp, fsdp_offload, zero2, zero3).

The one place that knows the strategies. It turns the choice into TrainingArguments fields (transformers hands them
to accelerate, which does the sharding: FSDP2's `fully_shard`, or DeepSpeed), refuses what a run cannot do before any
model loads, and answers the stages' questions: is this model sharded, how many parameter bytes does this process
hold, are the gradients finite on every process, how is the model gathered for saving. No other module reads the
strategy's name.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

BACKENDS = ("ddp", "fsdp", "deepspeed")
CHECKPOINT_FORMATS = ("sharded", "full")
DEEPSPEED_EXTRA = "pip install 'dpo_exp[deepspeed]'"


@dataclass(frozen=True)
class Strategy:
    """The `distributed` group, typed."""

    name: str = "ddp"
    backend: str = "ddp"
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    checkpoints: str = "full"
    deepspeed: dict[str, Any] = field(default_factory=dict)

    @property
    def sharded(self) -> bool:
        """Whether each process holds only part of the model (fsdp, zero3) or of its training state (zero2)."""
        return self.backend != "ddp"

    def training_arguments(self) -> dict[str, Any]:
        """The TrainingArguments fields of this strategy (none for ddp: accelerate's DDP is the default)."""
        if self.backend == "fsdp":
            return {
                "fsdp": True,  # full shard: parameters, gradients and optimiser state
                "fsdp_config": {
                    "version": 2,  # FSDP2: torch's fully_shard (DTensor parameters)
                    # blocks to wrap: accelerate reads the model's own `_no_split_modules` when none are named
                    "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                    "reshard_after_forward": self.reshard_after_forward,
                    "cpu_offload": self.cpu_offload,
                    "state_dict_type": "SHARDED_STATE_DICT" if self.checkpoints == "sharded" else "FULL_STATE_DICT",
                },
            }
        if self.backend == "deepspeed":
            return {"deepspeed": deepspeed_config(self)}
        return {}

    def record(self, world_size: int) -> dict[str, Any]:
        """What summary.json records under `distributed`."""
        return {"strategy": self.name, "backend": self.backend, "world_size": world_size, "sharded": self.sharded}


def strategy(cfg: Any) -> Strategy:
    """The run's strategy (`cfg.distributed`; ddp when the config has no such group)."""
    group = cfg.get("distributed") if cfg is not None else None
    if group is None:
        return Strategy()
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(group, resolve=True) if not isinstance(group, dict) else dict(group)
    unknown = sorted(
        set(values) - {"name", "backend", "cpu_offload", "reshard_after_forward", "checkpoints", "deepspeed"}
    )
    if unknown:
        raise UserError(f"distributed.{unknown[0]} is not a setting of the distributed group (conf/distributed/)")
    if values.get("backend") not in BACKENDS:
        raise UserError(f"distributed.backend={values.get('backend')!r} is not one of {list(BACKENDS)}")
    if values.get("checkpoints", "full") not in CHECKPOINT_FORMATS:
        raise UserError(
            f"distributed.checkpoints={values.get('checkpoints')!r} is not one of {list(CHECKPOINT_FORMATS)}"
        )
    return Strategy(
        name=str(values.get("name") or values["backend"]),
        backend=str(values["backend"]),
        cpu_offload=bool(values.get("cpu_offload", False)),
        reshard_after_forward=bool(values.get("reshard_after_forward", True)),
        checkpoints=str(values.get("checkpoints", "full")),
        deepspeed=dict(values.get("deepspeed") or {}),
    )


def deepspeed_config(chosen: Strategy) -> dict[str, Any]:
    """The strategy's DeepSpeed config (the group's `deepspeed` dict), checked, with `cpu_offload` applied."""
    import copy

    config = copy.deepcopy(chosen.deepspeed)
    zero = config.get("zero_optimization")
    if not isinstance(zero, dict) or zero.get("stage") not in (1, 2, 3):
        raise UserError(
            f"distributed={chosen.name}: deepspeed.zero_optimization.stage must be 1, 2 or 3, "
            f"got {zero.get('stage') if isinstance(zero, dict) else zero!r}"
        )
    if chosen.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if zero["stage"] == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return config


def check_strategy(cfg: Any, world_size: int, method: str, device: str, launched: bool | None = None) -> Strategy:
    """The run's strategy, refused (one line, before any model loads) where this run (`world_size` processes,
    `method`, on `device`; `launched`: started by torchrun, accelerate launch or submitit tasks, which set
    LOCAL_RANK) cannot use it."""
    chosen = strategy(cfg)
    if not chosen.sharded:
        return chosen
    name = f"distributed={chosen.name}"
    if chosen.backend == "deepspeed":
        deepspeed_config(chosen)
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError(f"{name} needs DeepSpeed, which is not installed: {DEEPSPEED_EXTRA} (on a GPU machine)")
    if device == "cpu" and (chosen.cpu_offload or chosen.backend == "deepspeed"):
        # torch's CPU offload moves shards between an accelerator and the host; DeepSpeed's engine needs GPUs
        raise UserError(f"{name} needs a GPU, but this run's device is cpu; on CPU use distributed=fsdp")
    launched = bool(os.environ.get("LOCAL_RANK")) if launched is None else launched
    if world_size < 2 and not launched:
        # accelerate turns FSDP/DeepSpeed on only inside a launched process group (one process is one too: a single
        # device, e.g. to offload); a plain `python -m dpo_exp` would train unsharded
        raise UserError(
            f"{name} shards the model across processes, but this run has one and no launcher: launch it with "
            f"torchrun --nproc_per_node N (N = 1 on one device), accelerate launch or submitit tasks, "
            f"or use distributed=ddp"
        )
    if method != "dpo":
        raise UserError(
            f"method={method} cannot run with {name} (only method=dpo trains a sharded model); use distributed=ddp"
        )
    refusals = (
        (cfg.sft.enabled, "sft.enabled=true", "the warm start trains unsharded: warm-start with distributed=ddp first"),
        (cfg.on_nonfinite == "skip", "on_nonfinite=skip", "use on_nonfinite=stop"),
        (
            cfg.eval.enabled and int(cfg.eval.every_n_steps) > 0,
            "eval.every_n_steps > 0",
            "the trace samples from the policy during training: use eval.every_n_steps=0",
        ),
    )
    for refused, what, instead in refusals:
        if refused:
            raise UserError(f"{what} cannot run with {name} ({instead})")
    return chosen


def is_sharded(model: Any) -> bool:
    """Whether `model`'s parameters are shards (FSDP2 DTensors, or DeepSpeed ZeRO-3's partitioned parameters)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters())


def _local(tensor: Any) -> Any:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_param_bytes(model: Any) -> int:
    """Bytes of parameters this process holds (its shards under FSDP, the whole model under DDP)."""
    return sum(_local(p).numel() * _local(p).element_size() for p in model.parameters())


def nonfinite_anywhere(model: Any) -> bool:
    """Whether any process holds a NaN or an inf in its gradients (of its shards, or of the whole model): every
    process gets the same answer, so all of them stop or skip together."""
    import torch
    import torch.distributed as dist

    grads = [_local(p.grad) for p in model.parameters() if p.grad is not None]
    # one flag for all gradients, read once (one host sync, not one per parameter)
    local = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all().logical_not()) if grads else False
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([1.0 if local else 0.0], device=grads[0].device if grads else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
    return local


@contextmanager
def consolidated_save(trainer: Any):
    """Inside: `trainer.save_model` writes one consolidated model (a plain transformers folder), even when the
    checkpoints are sharded. Every process must enter it (the gather is collective)."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        yield
        return
    before = str(plugin.state_dict_type).split(".")[-1]
    plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        yield
    finally:
        plugin.set_state_dict_type(before)


def enable_cpu_fsdp(accelerator: Any, fsdp_plugin_args: dict[str, Any] | None) -> bool:
    """Turn FSDP on for a multi-process CPU run (gloo); True when it did.

    accelerate switches its FSDP plugin on only for accelerator back-ends (CUDA, XPU, ...) and silently falls back to
    DDP on CPU, although torch's FSDP2 `fully_shard` runs on CPU with gloo. accelerate has no switch for it, so the
    state accelerate already built is given the plugin the TrainingArguments asked for (what it does on a GPU).
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if (
        not fsdp_plugin_args
        or getattr(state, "fsdp_plugin", None) is not None
        or state.distributed_type != DistributedType.MULTI_CPU
    ):
        return False
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**fsdp_plugin_args)
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def on_every_process(flags: Any) -> Any:
    """`flags` (a bool tensor) AND-ed across the processes of a multi-process run, so that every process decides
    alike (one stops, all stop; a process that raised alone would leave the others waiting in a collective). One
    all-reduce of a few elements; the flags themselves in a single-process run."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flags
    agreed = flags.to(torch.int32)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return agreed.bool()


def gathered_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The whole model's state dict on the main process (None on the others), gathered from the shards; every
    process must call it (the gather is collective)."""
    state = trainer.accelerator.get_state_dict(trainer.model)
    return state if trainer.args.should_save else None
