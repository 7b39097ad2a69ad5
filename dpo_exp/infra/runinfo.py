"""Who a run is (name, group, tags from the Hydra overrides) and what it ran on (versions, git, hardware)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

PACKAGES = ("dpo_exp", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "hydra-core", "wandb")


@dataclass
class RunIdentity:
    run_dir: Path
    name: str  # e.g. dpo/beta=0.1,lr=1e-4
    group: str  # one per sweep (W&B group)
    tags: list[str] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)  # the task overrides, key -> value
    swept: dict[str, str] = field(default_factory=dict)  # multirun: the swept keys -> this job's values


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


def _sweep_keys(items: list[str]) -> set[str]:
    """Keys of the overrides in `items` that sweep (`a,b`, range(), choice(), interval(), glob())."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(items)
    except Exception:  # noqa: BLE001 - an unparsable list just contributes nothing
        return set()
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def swept_keys(hc: Any) -> set[str]:
    """The keys a sweep varies: `hydra.sweeper.params` (presets, Optuna) plus the command line's sweep overrides.

    The command line's original overrides (`beta=0.1,0.5`) are not in a job's own Hydra config, only in the
    `multirun.yaml` that Hydra's basic sweeper writes into the sweep folder before launching any job.
    """
    keys = {str(k).lstrip("+~") for k in (hc.sweeper.get("params") or {})}
    multirun_yaml = Path(str(hc.sweep.dir)) / "multirun.yaml"
    if multirun_yaml.is_file():
        from omegaconf import OmegaConf

        try:
            task = list(OmegaConf.load(multirun_yaml).hydra.overrides.task)
        except Exception:  # noqa: BLE001 - a missing or odd file only loses the command-line keys
            task = []
        keys |= {k.lstrip("+~") for k in _sweep_keys([str(t) for t in task])}
    return keys


def _tag(key: str, value: str) -> str | None:
    tag = f"{key}={value}"
    return tag if len(tag) <= 64 else None  # W&B rejects tags longer than 64 characters


def run_identity(cfg: DictConfig, run_dir: Path | None = None) -> RunIdentity:
    """Identity of the current job, from Hydra's runtime config when there is one.

    Single run: name = `<cfg.name>/<every task override>`; multirun job: `<cfg.name>/<the swept overrides>`
    (e.g. `dpo/beta=0.1,lr=0.0001`), so runs of one sweep differ exactly by what the sweep varies.
    """
    hc = _hydra_config()
    overrides = parse_overrides(list(hc.overrides.task)) if hc else {}
    shown = {k: v for k, v in overrides.items() if not k.startswith(IGNORED_IN_NAME)}
    multirun = bool(hc and str(hc.mode) == "RunMode.MULTIRUN")
    swept: dict[str, str] = {}
    if multirun:
        keys = swept_keys(hc)
        swept = {k: v for k, v in overrides.items() if k in keys}
    named = swept or shown
    suffix = ",".join(f"{k}={v}" for k, v in sorted(named.items()))
    name = f"{cfg.name}/{suffix}" if suffix else str(cfg.name)
    if run_dir is None:
        run_dir = Path(hc.runtime.output_dir) if hc else Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    if cfg.logger.get("group"):
        group = str(cfg.logger.group)
    elif multirun:
        sweep = Path(hc.sweep.dir)
        group = f"{cfg.name}-sweep-{sweep.parent.name}_{sweep.name}"
    else:
        group = str(cfg.name)
    tagged = {**shown, **swept}
    identity_tags = {"dataset": cfg.dataset.name, "model": cfg.model.name}  # unless an override already says it
    tags = (
        [t for t in (_tag(k, v) for k, v in tagged.items()) if t]
        + [f"{k}={v}" for k, v in identity_tags.items() if k not in tagged]
        + ["lora" if cfg.lora.enabled else "full-ft", *map(str, cfg.logger.get("tags") or [])]
    )
    if multirun:
        tags.append("sweep")
    return RunIdentity(Path(run_dir), name, group, tags, overrides, swept)


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
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
    }
