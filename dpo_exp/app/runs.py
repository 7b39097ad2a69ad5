"""Which runs the app shows and their models: completed run directories, one reference, one policy per run.

Finding and checking runs reads only small files (summary.json, .hydra/config.yaml), so a bad PATH is reported
before any model loads. Loading reuses `evaluation.policy_ref.from_run_dir`; runs that share a reference (a sweep)
load it once: further LoRA adapters are added to the same PEFT model as named adapters.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from ..compare.runs import config_problem, find_run_dirs, json_problem, load_run, swept_params
from ..errors import UserError
from ..evaluation.inputs import INPUTS_FILE, EvalInputs, load_run_config
from ..infra.storage import read_json

log = logging.getLogger(__name__)

REFERENCE = "reference"


@dataclass
class RunInfo:
    """A completed run directory and what the app reads from it without loading a model."""

    path: Path
    label: str
    cfg: DictConfig
    summary: dict[str, Any]
    prompts: list[Any] = field(default_factory=list)  # text, or conversations (lists of messages)
    sweep_dir: Path | None = None  # the multirun folder it was found in (for the sweep's frontier plot)


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_WEIGHTS = ("model*.safetensors", "pytorch_model*.bin")


def weights_problem(run_dir: Path) -> str | None:
    """Why RUN/model cannot be loaded (None when its files are there): a LoRA adapter without its weights, a saved
    base or full model without config.json or weights. Checked on the file names alone, before anything loads."""
    model_dir = run_dir / "model"
    adapter = next((d for d in (model_dir / "adapter", model_dir) if (d / "adapter_config.json").is_file()), None)
    folders = [model_dir / "base"] if (model_dir / "base").is_dir() else []  # a LoRA run's copy of its base
    if adapter is not None:
        if not any((adapter / name).is_file() for name in ADAPTER_WEIGHTS):
            return f"{adapter} holds no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})"
    else:
        folders = [model_dir]
    for folder in folders:
        if not (folder / "config.json").is_file():
            return f"{folder} has no config.json"
        if not any(next(folder.glob(pattern), None) for pattern in MODEL_WEIGHTS):
            return f"{folder} holds no weights ({' or '.join(MODEL_WEIGHTS)})"
    return None


def completion_problem(run_dir: Path) -> str | None:
    """Why `run_dir` is not a completed run with a saved model that can be loaded (None when it is)."""
    unreadable = json_problem(run_dir / "summary.json")
    if unreadable:
        return f"{run_dir} cannot be shown: {unreadable}"
    summary = read_json(run_dir / "summary.json")
    if summary is None:
        return f"{run_dir} is not a completed run: no summary.json"
    if summary.get("status") != "completed":
        return f"{run_dir} is not a completed run: summary.json says status={summary.get('status')!r}"
    if not (run_dir / "model").is_dir():
        return f"{run_dir} is not a completed run: no model/ folder"
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        return f"{run_dir} is not a completed run: no .hydra/config.yaml"
    problem = config_problem(run_dir, needed=("model", "dataset", "seed")) or weights_problem(run_dir)
    return f"{run_dir} cannot be shown: {problem}" if problem else None


def find_runs(paths: list[Path]) -> list[RunInfo]:
    """The completed runs under `paths`: a run directory must be completed; a sweep folder gives its completed jobs.

    UserError (before any model loads) for a missing path, an unfinished run directory or a folder without one.
    """
    chosen: list[tuple[Path, Path | None]] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path} does not exist")
        if (path / "summary.json").is_file() or (path / ".hydra").is_dir():
            problem = completion_problem(path)
            if problem:
                raise UserError(problem)
            chosen.append((path.resolve(), None))
            continue
        jobs = find_run_dirs([path])
        done = [job for job in jobs if completion_problem(job) is None]
        for job in jobs:
            if job not in done:
                log.warning("skipping: %s", completion_problem(job))
        if not done:
            raise UserError(f"{path} holds no completed run (summary.json status completed and a model/ folder)")
        chosen += [(job, path.resolve()) for job in done]
    unique = list(dict.fromkeys(chosen))
    runs = [_run_info(p, sweep, i) for i, (p, sweep) in enumerate(unique)]
    if len({reference_key(r) for r in runs}) > 1:
        raise UserError("these runs start from different reference models; open them in separate apps")
    label_runs(runs)
    return runs


def _run_info(path: Path, sweep_dir: Path | None, index: int) -> RunInfo:
    cfg = load_run_config(path)
    with open_dict(cfg):  # conf/config.yaml's default, resolved as Hydra would here (the app is not a Hydra app)
        cfg.cache_dir = os.environ.get("DPO_EXP_CACHE") or str(Path.cwd() / ".cache" / "dpo_exp")
    inputs = EvalInputs.load(path / INPUTS_FILE)
    return RunInfo(
        path,
        f"policy {index + 1}",
        cfg,
        read_json(path / "summary.json") or {},
        inputs.prompts if inputs else [],
        sweep_dir,
    )


def label_runs(runs: list[RunInfo]) -> None:
    """A single run is "policy"; several are labelled by their swept values (`beta=0.1,lr=1e-3`), else their
    folder names; labels are unique."""
    if len(runs) == 1:
        runs[0].label = "policy"
        return
    params = swept_params([load_run(r.path) for r in runs])
    seen: set[str] = set()
    for run in runs:
        swept = run.summary.get("sweep") or {}
        overrides = load_run(run.path).overrides
        label = ",".join(f"{k}={overrides.get(k, swept.get(k))}" for k in params) or run.path.name
        if label in seen or label == REFERENCE:
            label = f"{label} ({run.path.name})"
        seen.add(label)
        run.label = label


def reference_key(run: RunInfo) -> str:
    """Runs with equal keys start from the same reference model (a warm start, or the configured model; the
    randomly initialised tiny model also depends on the seed)."""
    from ..models import model_source

    path = run.summary.get("reference_path")
    if path:
        return f"path:{path}"
    source = model_source(run.cfg.model)
    return f"{source}:seed={int(run.cfg.seed)}" if source.startswith("tiny:") else source
