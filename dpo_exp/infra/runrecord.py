"""A run folder's own record of the command that made it, kept where Hydra does not write.

Hydra rewrites RUN/.hydra/{config,hydra,overrides}.yaml for every command aimed at RUN, before dpo_exp runs (its
`run_job` saves them ahead of the task function and of any `on_job_start` callback). So each run keeps in
RUN/.dpo_exp/ the resolved config it runs under (`config.yaml`, what a later command is compared with) and a copy of
Hydra's files as they were written for it (`hydra/`), which are put back when a later command is skipped or refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError
from .storage import atomic_write_text

RECORD_DIR = ".dpo_exp"
RECORD_CONFIG = "config.yaml"
HYDRA_COPY = "hydra"
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
REFUSED = "refused.txt"  # the last command refused on this folder (a sweep's failed-jobs table reads it)
# Top-level keys that say how a run is launched, named and logged, or what it reports to a sweeper: not what it
# trains and evaluates. A command that differs only in these is the same run.
NOT_COMPARED = frozenset({"logger", "resume", "skip_completed", "cache_dir", "name", "objective", "hydra"})


class RunRecordMismatch(UserError):
    """The command differs from the one the run folder recorded (the folder is left as it was)."""


def comparable(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved config's settings that make a run what it is, flattened to dotted keys (lists stay values)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:  # YAML-safe leaves (the record is YAML); anything else compared as its text
            flat[prefix] = value if isinstance(value, (str, int, float, bool, list, type(None))) else str(value)

    walk("", {k: v for k, v in resolved.items() if k not in NOT_COMPARED})
    return flat


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (recorded, current) for the settings of both flattened configs that differ. Keys only one side has
    are left out: a key the record lacks was added by a newer dpo_exp (its default then was the old behaviour)."""
    return {k: (recorded[k], current[k]) for k in sorted(recorded.keys() & current.keys()) if recorded[k] != current[k]}


def describe(diff: dict[str, tuple[Any, Any]], limit: int = 8) -> str:
    """`beta: 0.1 -> 0.5, lr: 0.0001 -> 0.0005` (at most `limit` keys, then how many more)."""
    parts = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(diff.items())[:limit]]
    if len(diff) > limit:
        parts.append(f"and {len(diff) - limit} more")
    return ", ".join(parts)


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The flattened settings the run folder recorded, or None (a run from before the record, or no run)."""
    path = Path(run_dir) / RECORD_DIR / RECORD_CONFIG
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def write_record(run_dir: Path, settings: dict[str, Any], hydra_dir: Path | None) -> None:
    """Record `settings` (from `comparable`) and copy Hydra's files of this command from `hydra_dir`."""
    record = Path(run_dir) / RECORD_DIR
    atomic_write_text(record / RECORD_CONFIG, yaml.safe_dump(settings, sort_keys=True))
    if hydra_dir is not None and hydra_dir.is_dir():
        keep_hydra_files(hydra_dir, record / HYDRA_COPY, replace=True)


def keep_hydra_files(hydra_dir: Path, copy_dir: Path, replace: bool = False) -> None:
    """Copy Hydra's files from `hydra_dir` into `copy_dir` (unless a copy is there and `replace` is False)."""
    if copy_dir.is_dir() and not replace:
        return
    for name in HYDRA_FILES:
        source = hydra_dir / name
        if source.is_file():
            atomic_write_text(copy_dir / name, source.read_text(encoding="utf-8"))


def restore_hydra_files(run_dir: Path, hydra_dir: Path | None) -> bool:
    """Put the run's own copy of Hydra's files back over what Hydra wrote for this command. False: no copy."""
    copy_dir = Path(run_dir) / RECORD_DIR / HYDRA_COPY
    if hydra_dir is None or not copy_dir.is_dir():
        return False
    for name in HYDRA_FILES:
        kept = copy_dir / name
        if kept.is_file():
            atomic_write_text(hydra_dir / name, kept.read_text(encoding="utf-8"))
    return True


def backup_legacy_hydra_files(run_dir: Path, output_subdir: str | None) -> None:
    """Before Hydra writes into a run folder that has Hydra's files but no copy of them (a run recorded before
    RUN/.dpo_exp existed): keep a copy, so that a refused or skipped command can put them back."""
    if not output_subdir:
        return
    hydra_dir = Path(run_dir) / output_subdir
    copy_dir = Path(run_dir) / RECORD_DIR / HYDRA_COPY
    if (hydra_dir / "config.yaml").is_file() and not copy_dir.is_dir():
        keep_hydra_files(hydra_dir, copy_dir)


def heldout_split_config(run_dir: Path, cfg: DictConfig) -> DictConfig:
    """`cfg` with the run's own eval.num_prompts: the held-out pool is sized to what the run evaluated, so asking a
    re-evaluation for more prompts never moves training prompts into it."""
    saved = run_dir / ".hydra" / "config.yaml"
    original = OmegaConf.select(OmegaConf.load(saved), "eval.num_prompts") if saved.is_file() else None
    if original is None:
        return cfg
    split_cfg = cfg.copy()
    OmegaConf.update(split_cfg, "eval.num_prompts", original, merge=False)
    return split_cfg


def note_refusal(run_dir: Path, reason: str) -> None:
    """Record that the latest command aimed at `run_dir` was refused (summary.json, the record of what ran, is left
    as it was), so the end of a multirun counts the job as failed."""
    atomic_write_text(Path(run_dir) / RECORD_DIR / REFUSED, reason + "\n")


def refusal(run_dir: Path) -> str | None:
    """Why the latest command aimed at `run_dir` was refused; None when it was accepted (or none was refused)."""
    path = Path(run_dir) / RECORD_DIR / REFUSED
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def clear_refusal(run_dir: Path) -> None:
    """A new command is checked against the folder: an earlier refusal no longer describes it."""
    (Path(run_dir) / RECORD_DIR / REFUSED).unlink(missing_ok=True)
