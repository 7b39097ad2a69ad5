"""Who a run is (name, group, tags from the Hydra overrides) and what it ran on (versions, git, hardware)."""

from __future__ import annotations

import platform
import socket
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

PACKAGES = ("dpo_exp", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "hydra-core", "wandb")


@dataclass
class RunIdentity:
    run_dir: Path
    name: str                       # e.g. dpo/beta=0.1,lr=1e-4
    group: str                      # one per sweep (W&B group)
    tags: list[str] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)   # the task overrides, key -> value
    multirun: bool = False
    job_num: int | None = None


def _hydra_config():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


IGNORED_IN_NAME = ("experiment", "logger", "resume", "hydra", "cache_dir", "dataset.path", "model.path")


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def run_identity(cfg: DictConfig, run_dir: Path | None = None) -> RunIdentity:
    """Identity of the current job, from Hydra's runtime config when there is one."""
    hc = _hydra_config()
    overrides = parse_overrides(list(hc.overrides.task)) if hc else {}
    shown = {k: v for k, v in overrides.items() if not k.startswith(IGNORED_IN_NAME)}
    suffix = ",".join(f"{k}={v}" for k, v in sorted(shown.items()))
    name = f"{cfg.name}/{suffix}" if suffix else str(cfg.name)
    multirun = bool(hc and str(hc.mode) == "RunMode.MULTIRUN")
    if run_dir is None:
        run_dir = Path(hc.runtime.output_dir) if hc else Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    if cfg.logger.get("group"):
        group = str(cfg.logger.group)
    elif multirun:
        sweep = Path(hc.sweep.dir)
        group = f"{cfg.name}-sweep-{sweep.parent.name}_{sweep.name}"
    else:
        group = str(cfg.name)
    tags = [f"{k}={v}" for k, v in shown.items()] + [
        f"dataset={cfg.dataset.name}", f"model={cfg.model.name}", "lora" if cfg.lora.enabled else "full-ft",
        *map(str, cfg.logger.get("tags") or []),
    ]
    job_num = int(hc.job.num) if multirun and hc.job.get("num") is not None else None
    return RunIdentity(Path(run_dir), name, group, tags, overrides, multirun, job_num)


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Package versions, git commit and hardware, for summary.json and the W&B config."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
    }
