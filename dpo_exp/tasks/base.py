"""What a task (a workflow) is: the config in, one typed `TaskResult` (the preference pairs) out.

A task is one module with a `Task` subclass, named by `_target_` in its `conf/dataset/<name>.yaml`; the other keys
of that file are its settings, read as `cfg.dataset.*`. The pipeline calls, in order: `check(cfg)` (cheap, before
anything loads), `load(cfg, tokenizer)` (read and validate the data, before any model loads), and
`prepare(cfg, env, model, tokenizer, loaded)` (what needs the model: a warm start, sampling, scoring). Re-evaluating
a finished run calls `heldout(cfg, tokenizer)`. A task never writes the run folder: it returns what to record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.schema import PreferenceData
from ..errors import UserError


@dataclass
class StageEnv:
    """Where a stage computes (device, compute precision `bf16`/`fp16`/`fp32`) and the run folder it reports on."""

    device: str = "cpu"
    precision: str = "fp32"
    run_dir: Path | None = None  # where the pipeline puts the artifacts (a task never writes there itself)


@dataclass
class Artifact:
    """A file for the run folder, written by the pipeline (main process only): `write(path)` returns the path."""

    name: str  # relative to the run folder, e.g. plots/pair_scores.png
    write: Callable[[Path], Path]
    image: bool = False  # also sent to the tracker as an image (under the name without suffix)


@dataclass
class TaskResult:
    """A task's pairs and what the pipeline records about how they came to be."""

    data: PreferenceData
    model: Any  # the policy to train, and the reference DPO measures against (warm-started or as built)
    reference_path: Path | None = None  # a saved warm-started reference (None: the reference is the configured model)
    summary: dict[str, Any] = field(default_factory=dict)  # sections for summary.json (e.g. reward, sft, pairs)
    metrics: dict[str, float] = field(default_factory=dict)  # scalars for the tracker's summary
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds (summary.json timing/<stage>_s)
    artifacts: list[Artifact] = field(default_factory=list)


@dataclass
class HeldOut:
    """A finished run's held-out inputs, rebuilt from the config: prompts never trained on, and pairs (None: the
    pairs were sampled during the run, so only its saved ones are valid)."""

    prompts: list[str]
    pairs: list[dict] | None = None
    dropped_seen_in_training: int = 0


class Task:
    """Base class of a workflow. Subclass it in one module and name it in a conf/dataset YAML's `_target_`."""

    uses_reward: bool = False  # the run's `reward` scores samples into pairs (otherwise it must be `none`)

    def __init__(self, **settings: Any) -> None:
        self.settings = settings  # the dataset YAML's keys (also readable as cfg.dataset.*)
        self.name = str(settings.get("name") or type(self).__name__)

    def check(self, cfg: Any) -> None:
        """Raise UserError for settings this task cannot run with; cheap (no data, no model)."""

    def load(self, cfg: Any, tokenizer) -> Any:
        """Read and validate the data before any model loads; the result is passed to `prepare`."""
        raise NotImplementedError

    def prepare(self, cfg: Any, env: StageEnv, model, tokenizer, loaded: Any) -> TaskResult:
        """Turn the loaded data into training and held-out pairs (may use, warm-start or replace the model)."""
        raise NotImplementedError

    def heldout(self, cfg: Any, tokenizer) -> HeldOut:
        """The held-out prompts (and pairs) of a run with this config, for re-evaluating it."""
        raise NotImplementedError


def build_task(cfg: Any) -> Task:
    """The task named by `dataset._target_`, built with hydra.utils.instantiate (its settings as keyword args)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = cfg.dataset.get("_target_")
    if not target:
        raise UserError(
            f"dataset={cfg.dataset.get('name')}: no `_target_` naming its task class "
            "(e.g. dpo_exp.tasks.preference.PreferenceTask)"
        )
    try:
        task = instantiate(cfg.dataset, _convert_="all")
    except InstantiationException as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UserError(f"dataset._target_={target}: {message}") from None
    if not isinstance(task, Task):
        raise UserError(f"dataset._target_={target} is not a dpo_exp.tasks.Task subclass")
    return task
