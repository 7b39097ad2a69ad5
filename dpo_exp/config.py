"""Validation of a composed config: every user mistake becomes one clear line, before any model loads. Types and
unknown keys of the project's own blocks are the schemas' job (dpo_exp.schema), TRL's settings are checked by
building TRL's own config; what is left here are ranges and settings that depend on each other."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import UserError
from .infra.distributed import world_size
from .infra.sharding import check_strategy
from .infra.storage import folder_problem
from .judges.llm import check_llm_judge_settings
from .schema import check_blocks, check_eval_reward, check_trainer
from .shorthands import command_line, ignored_shorthand_problem

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MIN_DATA_SIZE = 2  # fewer training pairs (or prompts) cannot train anything worth comparing; see conf/config.yaml
MAX_SEED = 2**32 - 1  # numpy's seed range (transformers.set_seed seeds numpy too)


def _number(value: Any, name: str, integer: bool = False) -> None:
    """value is a finite number (a whole one with integer=True): `abc`, `nan`, `inf`, `1.5` name the field."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be a {'whole number' if integer else 'number'}, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be finite, got {value!r}")
    if integer and int(value) != value:
        raise UserError(f"{name} must be a whole number, got {value!r}")


def _positive(value: Any, name: str, integer: bool = False) -> None:
    _number(value, name, integer)
    if value <= 0:
        raise UserError(f"{name} must be > 0, got {value!r}")


def _at_least(value: Any, name: str, low: int, why: str) -> None:
    _positive(value, name, integer=True)
    if value < low:
        raise UserError(f"{name} must be >= {low} ({why}), got {value!r}")


def _choice(value: Any, name: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise UserError(f"{name}={value!r} is not one of {list(options)}")


def _fraction(value: Any, name: str, low_open: bool = True) -> None:
    """value in (0, 1) (or [0, 1) with low_open=False)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value < 1
    ok = ok and (value > 0 if low_open else value >= 0)
    if not ok:
        raise UserError(f"{name} must be in {'(0' if low_open else '[0'}, 1), got {value!r}")


def _validate_dataset(ds: Any) -> None:
    """Settings of the `dataset` group that would otherwise fail deep inside loading."""
    if ds.get("eval_fraction") is not None:
        _fraction(ds.eval_fraction, "dataset.eval_fraction")
    if ds.get("eval_size") is not None:
        _positive(ds.eval_size, "dataset.eval_size", integer=True)
    for key, column in (ds.get("columns") or {}).items():
        if not isinstance(column, str) or not column:
            raise UserError(f"dataset.columns.{key} must be a column name, got {column!r}")
    template = ds.get("prompt_template")
    if template is not None and (not isinstance(template, str) or "{prompt}" not in template):
        raise UserError(f"dataset.prompt_template={template!r} must be text containing {{prompt}}")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def _check_model_folder(path: Path) -> None:
    """model.path must be a save_pretrained folder: a config and a tokenizer (the run loads both from it)."""
    if not path.exists():
        raise UserError(f"model.path={path} does not exist")
    if not (path / "config.json").is_file():
        raise UserError(f"model.path={path} is not a save_pretrained model folder (no config.json inside)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"model.path={path} has no tokenizer ({' / '.join(TOKENIZER_FILES)}); save it there with save_pretrained"
        )


def _validate_model(model: Any) -> None:
    tiny = model.get("tiny")
    if tiny and not model.get("path"):
        for key in ("n_layer", "n_embd", "n_head", "n_positions"):
            _positive(tiny[key], f"model.tiny.{key}", integer=True)
        if int(tiny.n_embd) % int(tiny.n_head):
            raise UserError(f"model.tiny.n_embd={tiny.n_embd} must be divisible by model.tiny.n_head={tiny.n_head}")
        from .models.tiny import architecture

        architecture(tiny)  # a known family


def _validate_task(cfg: DictConfig) -> None:
    """The dataset's task (its `_target_`) checks its own settings. `reward` scores the samples a task turns into
    pairs; for a task with pairs of its own it would only silently score evaluation samples, which is what
    `eval/reward` says explicitly."""
    from .tasks import build_task

    task = build_task(cfg)
    kind = cfg.reward.get("kind", "none") if cfg.get("reward") is not None else "none"
    judge = bool(cfg.get("reward") is not None and cfg.reward.get("_target_"))  # a judge: it scores evaluation
    if kind != "none" and not task.uses_reward and not judge:
        raise UserError(
            f"reward={kind} builds pairs for dataset=imdb_sentiment only (tasks that score samples into pairs); "
            f"dataset={cfg.dataset.name} already has its pairs (to score evaluation samples with it, use "
            f"eval/reward={kind} and leave reward=none)"
        )
    _validate_judge_share(cfg)
    task.check(cfg)


def _validate_judge_share(cfg: DictConfig) -> None:
    """A trained judge (a `share` of the preference data) needs preference pairs, and a share in (0, 1)."""
    from .data.preference import judge_settings

    share, _ = judge_settings(cfg)
    if not share:
        return
    if not 0 < share < 1:
        raise UserError(f"reward.share={share} must be in (0, 1): the share of training prompts the judge learns from")
    if not cfg.dataset.get("loader"):
        raise UserError(
            f"reward=trained_rm learns from preference pairs: dataset={cfg.dataset.name} has none "
            "(use it with dataset=ultrafeedback|hh_rlhf|preference_files)"
        )


def precision_setting(cfg: DictConfig) -> tuple[str, str]:
    """(the compute precision asked for, the field that asks): train.precision, or model.dtype when that is auto."""
    if cfg.train.precision != "auto":
        return str(cfg.train.precision), "train.precision"
    return str(cfg.model.get("dtype", "auto")), "model.dtype"


def _validate_precision(cfg: DictConfig) -> tuple[str, str]:
    """(precision, device) of the run. Half precision (fp16/bf16) trains on a GPU only; name the device instead of
    failing inside the Trainer."""
    from .models import resolve_device, resolve_precision

    spec, field_name = precision_setting(cfg)
    device = resolve_device(cfg.model.get("device", "auto"))
    if spec in ("fp16", "bf16") and device == "cpu":
        raise UserError(
            f"{field_name}={spec} needs a GPU, but this run's device is cpu (model.device="
            f"{cfg.model.get('device', 'auto')}); use {field_name}=fp32 or auto"
        )
    return resolve_precision(spec, device), device


def check_sampling(temperature: Any, top_k: Any, top_p: Any, prefix: str = "generation.") -> None:
    """The sampling settings every sampler of the project accepts: the run's and `python -m dpo_exp.evaluate`'s
    `generation` block, and the app's controls (prefix ""), all through this one check. transformers' top-p warper
    takes top_p=0 and keeps only the likeliest token, i.e. decodes greedily: refused, as is a negative top-k."""
    _positive(temperature, f"{prefix}temperature")
    _number(top_k, f"{prefix}top_k", integer=True)
    if top_k < 0:
        raise UserError(f"{prefix}top_k must be >= 0 (0 = no top-k cut), got {top_k!r}")
    _number(top_p, f"{prefix}top_p")
    if not 0 < top_p <= 1:
        raise UserError(
            f"{prefix}top_p must be in (0, 1] (1 = no nucleus cut; 0 would keep only the likeliest token, i.e. "
            f"greedy decoding), got {top_p!r}"
        )


def check_eval(cfg: DictConfig) -> None:
    """`eval` and `generation` typed by their schemas, the sampling settings and the evaluation's ranges (cheap:
    no models). Shared by the run's validation and `python -m dpo_exp.evaluate`."""
    check_blocks(cfg, ("eval", "generation"))
    _validate_generation(cfg)
    ev = cfg.eval
    check_eval_reward(cfg)
    if not ev.enabled:
        return
    for key in ("num_prompts", "num_samples", "bootstrap", "max_new_tokens"):
        if ev[key] <= 0:
            raise UserError(f"eval.{key} must be > 0, got {ev[key]}")
    if any(n < 1 for n in ev.best_of_n):
        raise UserError(
            f"eval.best_of_n must be a list of whole numbers >= 1 (e.g. [1,2,4,8,16]), got {list(ev.best_of_n)}"
        )
    for key in ("num_pairs", "num_side_by_side", "every_n_steps", "trace_prompts", "best_of_n_prompts"):
        if ev[key] < 0:
            raise UserError(f"eval.{key} must be >= 0, got {ev[key]}")
    check_llm_judge_settings(ev.get("llm_judge"))


def _validate_lora(lora: Any) -> None:
    if lora.enabled:
        _positive(lora.r, "lora.r", integer=True)
        _positive(lora.alpha, "lora.alpha")
        _fraction(lora.dropout, "lora.dropout", low_open=False)
        if not lora.target_modules:
            raise UserError("lora.target_modules is empty (use lora=none for full fine-tuning)")


def _validate_trainer(cfg: DictConfig) -> None:
    """The `trainer` group's numbers (TRL's DPOConfig validates the rest at the end) and the `train` block's."""
    t = cfg.trainer
    if int(t.max_steps) <= 0:
        _positive(t.num_train_epochs, "epochs (trainer.num_train_epochs)")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        _positive(t[key], f"trainer.{key}", integer=True)
    if t.max_length is not None:
        _positive(t.max_length, "trainer.max_length", integer=True)
    _positive(t.logging_steps, "trainer.logging_steps", integer=True)
    _choice(t.truncation_mode, "trainer.truncation_mode", ("keep_start", "keep_end"))
    if cfg.train.min_prompt_tokens <= 0:
        raise UserError(f"train.min_prompt_tokens must be > 0, got {cfg.train.min_prompt_tokens}")
    _choice(cfg.train.precision, "train.precision", PRECISIONS)


def validate(cfg: DictConfig) -> None:
    """Raise UserError for invalid settings; cheap checks only (no data, no weights: at most a meta-device model)."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # noqa: BLE001 - omegaconf raises several types for missing / bad interpolations
        message = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise UserError(f"{key}: {message}" if key else message) from None

    check_blocks(cfg, ("sft", "train"))
    check_eval(cfg)
    _number(cfg.seed, "seed", integer=True)
    if not 0 <= cfg.seed <= MAX_SEED:
        raise UserError(f"seed must be in [0, {MAX_SEED}], got {cfg.seed!r}")
    _positive(cfg.beta, "beta")
    _positive(cfg.trainer.beta, "trainer.beta")
    _positive(cfg.trainer.learning_rate, "lr (trainer.learning_rate)")
    few = "DPO needs at least two pairs to train and compare"
    if cfg.data_size is not None:
        _at_least(cfg.data_size, "data_size", MIN_DATA_SIZE, few)
    if cfg.dataset.get("data_size") is not None:
        _at_least(cfg.dataset.data_size, "dataset.data_size", MIN_DATA_SIZE, few)
    _validate_trainer(cfg)
    _choice(cfg.on_nonfinite, "on_nonfinite", ("stop", "skip"))
    _validate_dataset(cfg.dataset)
    _validate_model(cfg.model)
    _validate_lora(cfg.lora)

    _validate_sources(cfg)
    precision, device = _validate_precision(cfg)
    problem = folder_problem(str(cfg.cache_dir))
    if problem:
        raise UserError(
            f"cache_dir={cfg.cache_dir} cannot hold the caches: {problem} (set cache_dir= or DPO_EXP_CACHE)"
        )
    resume = cfg.get("resume")
    if resume and str(resume) != "force" and not Path(str(resume)).is_dir():
        raise UserError(f"resume={resume} is not a run directory (nor `force`)")
    _validate_task(cfg)

    # Last, as they import torch / TRL: LoRA targets (meta-device), TRL's DPOConfig, strategy, memory, the method.
    from .lora import check_lora_targets
    from .memory_check import check_memory
    from .methods import build_method

    check_lora_targets(cfg.lora, cfg.model)
    check_trainer(cfg, precision, device)
    method = str(cfg.method.name) if cfg.get("method") is not None else "dpo"
    check_strategy(cfg, world_size(), method, device)  # the `distributed` group: can this launch and method use it
    check_memory(cfg, precision, device)  # after the strategy: the estimate is per device under it
    build_method(cfg).check(cfg)  # the `method` group: its class, its needs, its TRL config (conf/method/*.yaml)
    ignored = ignored_shorthand_problem(cfg.get("method"), command_line())  # e.g. beta for method=preferred_ft
    if ignored:
        raise UserError(ignored)


def _validate_sources(cfg: DictConfig) -> None:
    """The data file and model folder exist; the tiny model holds trainer.max_length tokens."""
    path = cfg.dataset.get("path")
    if path is not None and not Path(str(path)).exists():
        raise UserError(f"dataset.path={path} does not exist")
    model_path = cfg.model.get("path")
    if model_path:
        _check_model_folder(Path(str(model_path)))
    max_length = cfg.trainer.max_length
    if cfg.model.get("tiny") and max_length and int(max_length) > int(cfg.model.tiny.n_positions):
        raise UserError(
            f"trainer.max_length={max_length} exceeds the tiny model's context (model.tiny.n_positions="
            f"{cfg.model.tiny.n_positions})"
        )


def _validate_generation(cfg: DictConfig) -> None:
    """Ranges of the `generation` block (its types are GenerationSchema's)."""
    gen = cfg.generation
    for key in ("num_samples", "max_new_tokens", "batch_size", "max_batch_tokens"):
        if gen[key] is not None and gen[key] <= 0:
            raise UserError(f"generation.{key} must be > 0, got {gen[key]}")
    check_sampling(gen.temperature, gen.top_k, gen.top_p)
