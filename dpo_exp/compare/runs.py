"""Finished runs as `compare` reads them: run folders under a path, their summary, metrics and overrides."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..infra.runinfo import parse_overrides
from ..infra.storage import read_json, read_jsonl
from ..shorthands import SHORTHANDS, method_option, method_shorthands

# (column as W&B shows it, summary.json key as TRL names it)
FINAL_METRICS = [
    ("train/loss", "loss"),
    ("eval/loss", "eval_loss"),
    ("train/rewards/accuracies", "rewards/accuracies"),
    ("eval/rewards/accuracies", "eval_rewards/accuracies"),
    ("train/rewards/margins", "rewards/margins"),
    ("eval/rewards/margins", "eval_rewards/margins"),
]
# Sampling-based evaluation (the evaluation writes them as eval/* keys): shown in the markdown/console table.
EVAL_SHOWN = [
    "eval/implicit_accuracy",  # exact per held-out pair (TRL's eval/rewards/accuracies is a per-batch mean)
    "eval/judge_accuracy",
    "eval/win_rate_vs_chosen",
    "eval/reward_policy",
    "eval/reward_reference",
    "eval/reward_delta",
    "eval/win_rate",  # P(policy beats reference), independent draws (the coupled ones are diagnostics, not shown)
    "eval/kl_rb",  # the headline KL (never negative, lower variance)
    "eval/kl",  # the Monte-Carlo estimate, a diagnostic (can come out negative)
]
# The pairwise LLM judge (summary.json eval/llm_judge/* keys): shown when any run has them.
LLM_JUDGE_SHOWN = [
    "eval/llm_judge/win_rate",  # both orders agree = win, disagreement = 1/2; its CI is in the csv
    "eval/llm_judge/win_rate_lc",  # length-controlled (AlpacaEval 2)
    "eval/llm_judge/position_consistency",
    "eval/llm_judge/vs_chosen/win_rate",
]
# People's votes (the app's Rate tab, summary.json human/* keys): shown when any run has them.
HUMAN_SHOWN = ["human/win_rate", "human/votes", "human/judge_agreement", "human/judge_kappa", "human/bt_strength"]
TRAIN_SUFFIX = " (last-epoch mean)"  # train/* columns: mean over the last epoch's logged steps, not the last step
SKIP_DIRS = {"wandb", "checkpoints", "model", "plots", "__pycache__"}
IGNORED_KEYS = ("hydra.", "hydra/", "resume", "cache_dir", "logger")  # never treated as swept parameters


@dataclass
class Run:
    """One run directory's files; `problem` names a file of it that exists but cannot be read."""

    path: Path
    overrides: dict[str, str]
    summary: dict[str, Any]
    metrics: list[dict] = field(default_factory=list)
    problem: str | None = None

    @property
    def status(self) -> str:
        if self.problem:
            return "unreadable"
        return str(self.summary.get("status") or ("unknown" if self.summary else "no summary"))


def is_run_dir(path: Path) -> bool:
    return (path / "summary.json").is_file() or (path / ".hydra" / "overrides.yaml").is_file()


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories in `paths` (each a run dir or a folder searched recursively), in a stable order."""
    found: list[Path] = []
    for root in paths:
        if not root.exists():
            raise UserError(f"{root} does not exist")
        if is_run_dir(root):
            found.append(root)
            continue
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            if here != root and is_run_dir(here):
                found.append(here)
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS)
    unique = list(dict.fromkeys(p.resolve() for p in found))

    def order(p: Path) -> tuple:
        return (str(p.parent), int(p.name) if p.name.isdigit() else math.inf, p.name)

    return sorted(unique, key=order)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_yaml(file: Path) -> tuple[Any, str | None]:
    """(the YAML file's content, None), or (None, why it cannot be read) for a file that exists but is corrupt."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.load(file), None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        return None, f"{file} is unreadable ({_first_line(exc)}{where})"


def json_problem(file: Path) -> str | None:
    """Why an existing JSON file cannot be read (truncated by a crash, not JSON, not an object); None when it can
    be read or does not exist."""
    if not file.is_file():
        return None
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{file} is unreadable: truncated or not JSON ({_first_line(exc)})"
    return None if isinstance(value, dict) else f"{file} is unreadable: not a JSON object"


def config_problem(path: Path, needed: tuple[str, ...] = ()) -> str | None:
    """Why the run's saved config (`.hydra/config.yaml`) cannot be used (None when it can, or there is none): not
    YAML, not a mapping, or (for a reader that needs them) without the `needed` keys, e.g. cut short."""
    file = path / ".hydra" / "config.yaml"
    if not file.is_file():
        return None
    from omegaconf import DictConfig

    cfg, problem = read_yaml(file)
    if problem:
        return problem
    if not isinstance(cfg, DictConfig):
        return f"{file} is unreadable (not a mapping of settings)"
    missing = [key for key in needed if key not in cfg]
    return f"{file} is unreadable (no {', '.join(missing)}: cut short?)" if missing else None


def _read_overrides(path: Path) -> tuple[dict[str, str], str | None]:
    file = path / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return {}, None
    from omegaconf import ListConfig, OmegaConf

    items, problem = read_yaml(file)
    if problem:
        return {}, problem
    if not items:  # an empty file: no overrides
        return {}, None
    if not isinstance(items, ListConfig):
        return {}, f"{file} is unreadable (not a list of overrides)"
    return parse_overrides([str(item) for item in OmegaConf.to_container(items) or []]), None


def load_run(path: Path) -> Run:
    """The run's files as compare reads them; a corrupt file makes it an `unreadable` run naming the file, not an
    error (the other runs of the sweep are still compared)."""
    metrics_file = path / "metrics.jsonl"
    overrides, overrides_problem = _read_overrides(path)
    problem = json_problem(path / "summary.json") or config_problem(path) or overrides_problem
    try:
        metrics = read_jsonl(metrics_file) if metrics_file.is_file() else []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        metrics, problem = [], problem or f"{metrics_file} is unreadable ({_first_line(exc)})"
    return Run(path, overrides, read_json(path / "summary.json") or {}, metrics, problem)


def swept_params(runs: list[Run]) -> list[str]:
    """Keys the runs were swept over: the runs' recorded sweep keys, then any override whose value differs."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in (run.summary.get("sweep") or {}) if k not in keys]
    all_keys = sorted({k for run in runs for k in run.overrides})
    for key in all_keys:
        if key in keys or key.startswith(IGNORED_KEYS):
            continue
        if len({run.overrides.get(key) for run in runs}) > 1:
            keys.append(key)
    return keys


def _method(path: Path) -> tuple[str, tuple[str, ...]]:
    """The method a run trained with (its saved config's `method`: name, the shorthands it reads). A config saved
    before methods declared `shorthands` reads this checkout's conf/method/NAME.yaml; one from before the `method`
    group is DPO, which reads them all."""
    from omegaconf import OmegaConf

    config_file = path / ".hydra" / "config.yaml"
    try:
        node = OmegaConf.load(config_file).get("method") if config_file.is_file() else None
    except Exception:  # noqa: BLE001 - an unreadable config is reported elsewhere; no note from it
        return "?", SHORTHANDS
    if node is None:
        return "dpo", SHORTHANDS
    name = str(node.get("name"))
    return name, method_shorthands(node if node.get("shorthands") is not None else method_option(name))


def ignored_settings(runs: list[Run], params: list[str]) -> list[str]:
    """A note per (shorthand, method) where runs set or swept a shorthand their method ignores (e.g. beta for
    method=preferred_ft): their values of it differ, what they trained does not."""
    found: dict[tuple[str, str], list[str]] = {}
    for run in runs:
        keys = [k for k in dict.fromkeys([*params, *run.overrides]) if k in SHORTHANDS]
        if not keys:
            continue
        name, used = _method(run.path)
        for key in keys:
            if key not in used:
                found.setdefault((key, name), []).append(run.path.name)
    return [
        f"WARNING: method={name} ignores `{key}` ({len(names)} run(s): {', '.join(names)}): their {key} values "
        "change nothing that was trained (conf/method/*.yaml `shorthands`)"
        for (key, name), names in found.items()
    ]


def _saved_setting(path: Path, key: str) -> Any:
    """What the run at `path` ran with for `key`, from its own saved config: the chosen option of a config group
    (`.hydra/hydra.yaml` runtime choices: model, eval/reward), else the key's value in `.hydra/config.yaml`
    (interpolations to other keys resolved); None when it has neither."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    hydra_file, config_file = path / ".hydra" / "hydra.yaml", path / ".hydra" / "config.yaml"
    hydra_cfg = read_yaml(hydra_file)[0] if hydra_file.is_file() else None
    if isinstance(hydra_cfg, DictConfig):
        choices = OmegaConf.select(hydra_cfg, "hydra.runtime.choices", default=None) or {}
        if key in choices:
            return choices[key]
    if config_problem(path) or not config_file.is_file():
        return None
    value = OmegaConf.select(read_yaml(config_file)[0], key, default=None, throw_on_resolution_failure=False)
    return None if isinstance(value, (DictConfig, ListConfig)) else value


def param_value(run: Run, key: str) -> Any:
    """The run's value of a swept key, as a number when it is one: its command-line override, else the value its
    summary recorded for the sweep, else its own saved config (a run that did not override the key still ran with
    a value; YAML's null is shown as "null"). None only when the run saved no config."""
    value = run.overrides.get(key, (run.summary.get("sweep") or {}).get(key))
    if value is None:
        value = _saved_setting(run.path, key)
        readable = (run.path / ".hydra" / "config.yaml").is_file() and not config_problem(run.path)
        value = "null" if value is None and readable else value
    return as_number(value)


def param_order(value: Any) -> tuple:
    """Sort key of a parameter column holding numbers, text and missing values: numbers ascending, then text, then
    missing (None / NaN), so a column mixing 64, "null" and nothing sorts instead of raising TypeError."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def as_number(value: Any) -> Any:
    """'0.1' -> 0.1, '8' -> 8, anything else unchanged (so numeric parameters sort and plot as numbers)."""
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                continue
    return value


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def metric_columns() -> list[str]:
    """The table's columns for FINAL_METRICS (train/* ones carry TRAIN_SUFFIX)."""
    return [c + TRAIN_SUFFIX if c.startswith("train/") else c for c, _ in FINAL_METRICS]
