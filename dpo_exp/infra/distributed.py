"""Which process am I in a multi-process run (torchrun / accelerate launch / a submitit job of several tasks)? Only
the main one writes the run folder.

Read from the launcher's environment (RANK / WORLD_SIZE, set by torchrun and accelerate; exported from submitit's
own job environment by `join_submitit_job`) so it works before torch or accelerate are imported; the Trainer sets up
the process group itself.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any


def join_submitit_job() -> bool:
    """Inside a submitit job of several tasks (`tasks_per_node > 1` and/or `nodes > 1`): export torch.distributed's
    env:// variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) from submitit's own
    `TorchDistributedEnvironment`, so each task is one process of a data-parallel run, as under torchrun. The
    master is the job's first node; MASTER_PORT is kept if set, else derived from the job id. True when exported.

    CUDA_VISIBLE_DEVICES is left as Slurm set it (every GPU of the node, for `gpus_per_node`): accelerate places
    each process on cuda:LOCAL_RANK, as under torchrun, which a one-GPU CUDA_VISIBLE_DEVICES would break.
    """
    if not os.environ.get("SUBMITIT_EXECUTOR"):  # set by submitit in its jobs (local and slurm)
        return False
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks <= 1:
        return False
    # overwrite: submitit's numbers are this task's truth (a job may be started from a shell that had RANK set)
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return True


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    return rank() == 0


def run_folder_lock(run_dir: Path) -> Any:
    """The run folder's lock on the main process; nothing on the others (they share the main process's run)."""
    from .runlock import RunLock

    return RunLock(run_dir) if is_main_process() else nullcontext()


def barrier() -> None:
    """Wait for every process (no-op in a single-process run or before the process group exists)."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shared_run_dir(run_dir: Path) -> Path:
    """Every process uses the main process's run folder (each rank's Hydra may have stamped a different time)."""
    return Path(broadcast(str(run_dir)))


def broadcast(value: Any) -> Any:
    """Process 0's `value` on every process (the value itself in a single-process run). Through torch.distributed
    itself: accelerate's `broadcast_object_list` does nothing in a CPU-only launch, where its state says
    DistributedType.NO although the process group exists (until a TrainingArguments with use_cpu=True resets it)."""
    if world_size() <= 1:
        return value
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState()  # joins the launcher's process group (gloo on CPU, nccl on GPUs); the Trainer reuses it
    if not dist.is_initialized():
        raise RuntimeError(f"WORLD_SIZE={world_size()} but no torch.distributed process group could be joined")
    objects = [value]
    dist.broadcast_object_list(objects, src=0)
    return objects[0]
