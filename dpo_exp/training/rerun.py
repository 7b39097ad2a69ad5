"""A command aimed at a run folder that already holds a run: skip it (completed), resume it (unfinished), or refuse
a command that differs from the one the folder recorded (dpo_exp.infra.runrecord), so that no folder ever holds a
record of one command and the results of another.

- completed, skip_completed=true: the same command is skipped; another one is refused (the folder is kept as it
  was, Hydra's rewritten .hydra files included) with the keys that differ and where to put the new run;
- unfinished with training progress (a checkpoint, its own or a round's): resumed under the same command; another
  command is refused, unless `resume=force` (resume under the new settings) or `resume=PATH` (continue another
  run's checkpoint, an explicit choice); the accepted differences go into summary.json `resume`;
- nothing to resume: a fresh start, whatever the folder recorded before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..infra.distributed import is_main_process
from ..infra.runrecord import (
    NOT_COMPARED,
    RunRecordMismatch,
    clear_refusal,
    comparable,
    describe,
    differences,
    read_record,
    restore_hydra_files,
    write_record,
)
from ..infra.storage import read_json

FORCE = "force"  # resume=force: resume this folder's checkpoint under a command that differs from its record


@dataclass
class Rerun:
    """What to do with the run folder: skip it, or run (resuming where there is progress) with `changed` accepted."""

    skip: bool = False
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # what summary.json records of it (`resume`)


def resume_folder(cfg: Any, run_dir: Path) -> Path:
    """The folder whose checkpoints a run resumes from: `resume=PATH`, else the run's own (also with resume=force)."""
    resume = cfg.get("resume")
    return Path(str(resume)) if resume and str(resume) != FORCE else Path(run_dir)


def has_progress(folder: Path) -> bool:
    """A Trainer checkpoint anywhere in the run folder (its own checkpoints/ or a round's): something to resume."""
    return Path(folder).is_dir() and next(Path(folder).rglob("checkpoint-*/trainer_state.json"), None) is not None


def settings_of(cfg: DictConfig) -> dict[str, Any]:
    """The resolved settings a run is compared on (dpo_exp.infra.runrecord.comparable)."""
    return comparable(OmegaConf.to_container(cfg, resolve=True))


def derived_keys(node: Any, prefix: str = "") -> set[str]:
    """Dotted keys whose value is an interpolation (`trainer.beta: ${beta}`): left out of a refusal's key list when
    what they follow is in it."""
    keys: set[str] = set()
    for key in node:
        path = f"{prefix}.{key}" if prefix else str(key)
        if OmegaConf.is_interpolation(node, key):
            keys.add(path)
        elif OmegaConf.is_dict(node.get(key)):
            keys |= derived_keys(node.get(key), path)
    return keys


def hydra_output_dir(run_dir: Path) -> Path | None:
    """Where Hydra wrote this job's .hydra files, when that is in `run_dir` (None outside Hydra, with
    hydra.output_subdir=null, or for a run folder other than Hydra's output folder)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    output_dir, subdir = OmegaConf.select(hc, "runtime.output_dir"), hc.get("output_subdir")
    if not output_dir or not subdir or Path(str(output_dir)).resolve() != Path(run_dir).resolve():
        return None
    return Path(run_dir) / str(subdir)


def free_sibling(folder: Path) -> Path:
    """`FOLDER_2` (or _3, ...): the first sibling of `folder` that does not exist, for a run that must go elsewhere."""
    n = 2
    while folder.with_name(f"{folder.name}_{n}").exists():
        n += 1
    return folder.with_name(f"{folder.name}_{n}")


def _legacy_differences(previous: dict[str, Any], overrides: dict[str, str]) -> dict[str, tuple[Any, Any]] | None:
    """A run recorded before RUN/.dpo_exp: compare the command-line overrides its summary.json kept."""
    if not isinstance(previous.get("overrides"), dict):
        return None

    def kept(items: dict[str, Any]) -> dict[str, Any]:
        return {k: str(v) for k, v in items.items() if k.split(".")[0].split("/")[0] not in NOT_COMPARED}

    old, new = kept(previous["overrides"]), kept(overrides)
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


def check_rerun(cfg: DictConfig, run_dir: Path, previous: dict[str, Any], overrides: dict[str, str]) -> Rerun:
    """Skip, run, or raise RunRecordMismatch (one line: the differing keys and where to put the new run)."""
    from hydra.core.hydra_config import HydraConfig

    settings = settings_of(cfg)
    derived = derived_keys(cfg)

    def describe_diff(diff: dict[str, tuple[Any, Any]]) -> str:
        return describe({k: v for k, v in diff.items() if k not in derived} or diff)

    multirun = HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"
    folder = Path(str(HydraConfig.get().sweep.dir)) if multirun else Path(run_dir)
    where = f"{'hydra.sweep.dir' if multirun else 'hydra.run.dir'}={free_sibling(folder)}"
    hydra_dir = hydra_output_dir(run_dir)
    if previous.get("status") == "completed" and cfg.skip_completed:
        recorded = read_record(run_dir)
        diff = differences(recorded, settings) if recorded is not None else _legacy_differences(previous, overrides)
        if is_main_process():
            restore_hydra_files(run_dir, hydra_dir)  # a finished run's record never changes
        if diff:
            raise RunRecordMismatch(
                f"{run_dir} holds a completed run of another command ({describe_diff(diff)}); it is kept as it was. "
                f"Put this run in another folder: {where}"
            )
        return Rerun(skip=True)
    source = resume_folder(cfg, run_dir)
    if not has_progress(source):
        return Rerun()  # nothing to resume: a fresh start
    recorded = read_record(source)
    if recorded is not None:
        diff = differences(recorded, settings)
    else:
        diff = _legacy_differences(read_json(source / "summary.json") or {}, overrides) or {}
    resume = str(cfg.get("resume") or "")
    if diff and not resume:
        state = "a completed" if previous.get("status") == "completed" else "an unfinished"
        if is_main_process():
            restore_hydra_files(run_dir, hydra_dir)
        raise RunRecordMismatch(
            f"{run_dir} holds {state} run of another command ({describe_diff(diff)}): resuming it would train under "
            f"mixed settings. Run its own command again to resume it, put this run in another folder ({where}), "
            "or add resume=force to resume it under the new settings (recorded in summary.json)"
        )
    return Rerun(changed=diff)


def claim_folder(cfg: DictConfig, run_dir: Path, previous: dict[str, Any], overrides: dict[str, str]) -> Rerun:
    """`check_rerun`; once the command is accepted (not skipped), the folder records it (main process)."""
    if is_main_process():
        clear_refusal(run_dir)  # this command is checked afresh; a refusal is noted again by the entry point
    rerun = check_rerun(cfg, run_dir, previous, overrides)
    if not rerun.skip and is_main_process():
        write_record(run_dir, settings_of(cfg), hydra_output_dir(run_dir))
    setting = cfg.get("resume")
    if setting or rerun.changed:  # summary.json `resume`: the setting and the differences a resume accepted
        changed = {key: {"recorded": old, "now": new} for key, (old, new) in rerun.changed.items()}
        rerun.summary = {"resume": {"setting": str(setting) if setting else None, "changed": changed}}
    return rerun
