"""What a training method is: the policy, its reference and the task's data in, one typed `TrainResult` out.

A method is one module with a `Method` subclass, named by `_target_` in its `conf/method/<name>.yaml`; the other keys
of that file are its settings (`cfg.method.*`), among them `shorthands`: the top-level shorthands (beta, lr, epochs,
batch_size, data_size, seed) it reads, so that setting or sweeping another is refused (dpo_exp.config). Each wraps one TRL trainer. The config check calls `check(cfg)`
(cheap, before anything loads); the pipeline calls `train(policy, reference, data, settings)` after the task
prepared its data. Shared here: the TRL config of a non-DPO method (the `trainer` group's TrainingArguments fields +
the method's `args`), the run's scorer as a TRL reward function, and the callbacks every run's trainer carries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.schema import PreferenceData
from ..errors import UserError
from ..infra.tracking import Tracker
from ..training.stage import TrainResult

# summary.json's own top-level sections, which a trainer's final metrics must not overwrite
SUMMARY_SECTIONS = frozenset(
    {"reward", "model", "data", "dataset", "pairs", "sft", "method", "rounds", "status", "name"}
)
DEFAULT_METHOD = "dpo_exp.methods.dpo.DPO"  # runs saved before the `method` group trained with DPO

__all__ = ["Method", "MethodSettings", "TrainResult", "TrainedPolicy", "build_method"]


@dataclass
class MethodSettings:
    """Where and how a method trains: the run config, tokenizer, run folder, tracker, device/precision, the run's
    training callbacks (e.g. the reward-KL trace, bound to the trainer), and `evaluate(policy, run_dir=folder,
    reference_path=...)` for methods that evaluate intermediate policies (iterative DPO's rounds) against the run's
    starting model: it writes evaluation.json etc. into `folder` and returns that evaluation's eval/ keys."""

    cfg: Any
    tokenizer: Any
    run_dir: Path
    tracker: Tracker
    env: Any  # device, precision (a tasks.StageEnv)
    callbacks: list = field(default_factory=list)
    evaluate: Callable[..., dict[str, Any]] | None = None


@dataclass
class TrainedPolicy:
    """What evaluation reads of a trainer: the policy and a frozen reference (None: the run's starting model,
    rebuilt from its reference_path)."""

    model: Any
    ref_model: Any = None


class Method:
    """Base class of a training method. Subclass it in one module and name it in a conf/method YAML's `_target_`."""

    uses_reward: bool = False  # trains on the run's `reward` scorer (online methods): the task must have one
    skips_nonfinite: bool = False  # supports on_nonfinite=skip (dpo_exp's DPO trainer); the others stop on NaN/inf
    unpaired: bool = False  # trains on binary feedback (dataset=feedback: prompt, completion, label), not only pairs

    def __init__(self, **settings: Any) -> None:
        self.settings = settings  # the method YAML's keys (also readable as cfg.method.*)
        self.name = str(settings.get("name") or type(self).__name__)

    def check(self, cfg: Any) -> None:
        """Raise UserError for settings this method cannot run with; cheap (no data, no model)."""
        if self.uses_reward and str((cfg.get("reward") or {}).get("kind", "none")) == "none":
            raise UserError(
                f"method={self.name} trains on a scorer's rewards: it needs a task with one "
                "(dataset=imdb_sentiment with reward=tfidf_logreg|sst2|...)"
            )
        self.refuse_unpaired(cfg)
        if str(cfg.get("on_nonfinite", "stop")) == "skip" and not self.skips_nonfinite:
            raise UserError(
                f"on_nonfinite=skip needs a DPO-based method; method={self.name} stops on non-finite values"
            )
        if self.settings.get("args") is not None:
            trl_args(cfg, Path("."), "fp32", "cpu")  # TRL's own validation of the method's config, as one line

    def refuse_unpaired(self, cfg: Any) -> None:
        """Binary feedback (dataset=feedback) is refused by the methods that train on pairs."""
        if str((cfg.get("dataset") or {}).get("loader")) == "feedback" and not self.unpaired:
            raise UserError(
                f"dataset=feedback holds unpaired (prompt, completion, label) rows: method={self.name} trains on "
                "pairs; use method=kto"
            )

    def run(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        """`train`, with the method's name and scalar settings recorded (summary.json "method")."""
        result = self.train(policy, reference, data, settings)
        scalars = {k: v for k, v in self.settings.items() if isinstance(v, (str, int, float, bool)) and k != "_target_"}
        result.summary.setdefault("method", {**scalars, "name": self.name})
        return result

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        """Train `policy` (starting from the reference's weights; `reference`: the warm-started reference's folder,
        None: the configured model) on the task's data; save it into run_dir/model; raise RunInterrupted on a signal."""
        raise NotImplementedError


def build_method(cfg: Any) -> Method:
    """The method named by `method._target_` (DPO for a config from before the `method` group)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = cfg.get("method")
    if node is None:
        node = {"_target_": DEFAULT_METHOD, "name": "dpo"}
    target = node.get("_target_")
    if not target:
        raise UserError(f"method={node.get('name')}: no `_target_` naming its class (e.g. dpo_exp.methods.dpo.DPO)")
    settings = {k: v for k, v in node.items() if k != "args"}  # TRL's config is built at training time
    try:
        method = instantiate(settings, _convert_="all")
    except InstantiationException as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UserError(f"method._target_={target}: {message}") from None
    if not isinstance(method, Method):
        raise UserError(f"method._target_={target} is not a dpo_exp.methods.Method subclass")
    method.settings["args"] = node.get("args")
    return method


def trl_args(cfg: Any, run_dir: Path, precision: str, device: str) -> Any:
    """The method's TRL config (`method.args`, with its `_target_`): the `trainer` group's TrainingArguments fields
    (lr, epochs, batch size, schedule, logging, checkpoints), then the method's own fields, then what the run decides
    (output folder, precision, device, seed, no TRL reporting), as `schema.dpo_config` does for DPO."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from transformers import TrainingArguments

    from ..schema import CHECKPOINT_DIR, checkpointing

    shared = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    own = OmegaConf.to_container(cfg.method.args, resolve=True)
    merged = {**{k: v for k, v in trainer.items() if k in shared}, **own}
    run = {
        "output_dir": str(Path(run_dir) / CHECKPOINT_DIR),
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": device == "cpu",
        "seed": int(cfg.seed),
        "data_seed": int(cfg.seed),
        "report_to": "none",
        "activation_checkpointing": checkpointing(merged),  # the new name: no FutureWarning (schema.checkpointing)
    }
    try:
        return instantiate({**merged, **run}, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise UserError(f"method.args ({own.get('_target_')}): {message}") from None


def scorer_reward(cfg: Any) -> Callable[..., list[float]]:
    """The run's `reward` scorer as a TRL reward function `(prompts, completions, **columns) -> rewards`: it scores
    prompt + completion when the evaluation does (eval.score_with_prompt), so training and evaluation agree."""
    from ..judges import build_scorer, score_completions

    scorer = build_scorer(cfg.reward, cfg)
    with_prompt = bool(cfg.eval.get("score_with_prompt"))

    def reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return score_completions(scorer, prompts, completions, with_prompt)  # each judge formats conversations

    reward.__name__ = scorer.name  # TRL logs rewards/<name>/mean
    return reward


def run_callbacks(settings: MethodSettings) -> list:
    """What every run's trainer carries besides the graceful stop: metrics.jsonl + tracker rows, the run's own."""
    from ..training.callbacks import MetricsRecorder

    return [MetricsRecorder(settings.run_dir / "metrics.jsonl", settings.tracker), *settings.callbacks]


def prompt_rows(data: PreferenceData) -> list[dict[str, str]]:
    """The distinct training prompts (first-seen order): what the online methods sample from."""
    return [{"prompt": p} for p in dict.fromkeys(row["prompt"] for row in data.train)]


def train_trl(build: Callable[[Any, list], Any], reference: Path | None, settings: MethodSettings) -> TrainResult:
    """Build a TRL trainer with `build(trl_args, callbacks)` and run it as every run's trainer runs (resume from the
    last checkpoint, graceful stop, final metrics, run_dir/model: dpo_exp.training.stage.run_trainer)."""
    from ..training.callbacks import GracefulStop
    from ..training.nonfinite import NonFiniteStop
    from ..training.stage import run_trainer

    cfg, env = settings.cfg, settings.env
    stopper = GracefulStop()
    callbacks = [stopper, NonFiniteStop(), *run_callbacks(settings)]
    trainer = build(trl_args(cfg, settings.run_dir, env.precision, env.device), callbacks)
    result = run_trainer(trainer, cfg, settings.tokenizer, settings.run_dir, stopper, reference, settings.callbacks)
    # TRL's online trainers log e.g. `reward`: kept as train/reward, never over the summary's own `reward` section
    result.final = {(f"train/{k}" if k in SUMMARY_SECTIONS else k): v for k, v in result.final.items()}
    return result


def peft_config(cfg: Any, policy) -> Any:
    """The run's LoRA adapter for a TRL trainer (None: full fine-tuning)."""
    from ..lora import lora_config

    return lora_config(cfg.lora, policy) if cfg.lora.enabled else None
