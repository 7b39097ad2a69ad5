"""Typed schemas of the project's own config blocks, and trl.DPOConfig built from the `trainer` group.

`eval`, `generation`, `sft` and `train` are dataclasses registered in Hydra's ConfigStore (`schema/<block>`). Their
values, each documented, live in the YAMLs (conf/config.yaml, conf/eval/default.yaml, conf/generation/default.yaml);
the schemas say only what type each field has. `check_blocks` merges every block onto its schema before any model
loads, so a wrong type or an unknown key is rejected by OmegaConf with the field named, and later code reads typed
values. (They are checked at validation rather than at composition so that the mistake is one `error:` line,
exit code 2, like every other bad input, instead of Hydra's composition report.)

The `trainer` group is TRL's own `trl.DPOConfig` (`_target_` + TRL's field names); `dpo_config` instantiates it with
the fields the run decides (output folder, precision, device, seed, reporting).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import CONF_DIR
from .errors import UserError

if TYPE_CHECKING:  # trl (and transformers' TrainingArguments) load only when a config is built
    from trl import DPOConfig


@dataclass
class LLMJudgeModelSchema:
    """`eval.llm_judge.model`: a local chat model (transformers or vLLM) or an OpenAI-compatible endpoint."""

    path: str | None = MISSING
    base_url: str | None = MISSING
    name: str | None = MISSING
    api_key_env: str | None = MISSING
    timeout_s: float = MISSING
    backend: str = MISSING
    gpu_memory_utilization: float = MISSING


@dataclass
class LLMJudgeSchema:
    """`eval.llm_judge`: the pairwise LLM judge (documented in conf/eval/default.yaml)."""

    enabled: bool = MISSING
    model: LLMJudgeModelSchema = MISSING
    template: str = MISSING
    max_pairs: int = MISSING
    batch_size: int = MISSING
    max_new_tokens: int = MISSING
    vs_chosen: bool = MISSING


@dataclass
class HarnessSchema:
    """`eval.harness`: lm-evaluation-harness tasks on reference and policy (documented in conf/eval/default.yaml)."""

    enabled: bool = MISSING
    tasks: list[str] = MISSING
    include_path: str | None = MISSING
    data_dir: str | None = MISSING
    limit: int | None = MISSING
    batch_size: int | None = MISSING
    bootstrap_iters: int = MISSING


@dataclass
class EvalSchema:
    """`eval`: evaluation of the trained policy against its reference (documented in conf/eval/default.yaml)."""

    enabled: bool = MISSING
    num_prompts: int = MISSING
    num_samples: int = MISSING
    max_new_tokens: int = MISSING
    seed: int | None = MISSING
    reward: Any = MISSING  # a conf/reward option's content (eval/reward=NAME), or null
    score_with_prompt: bool | None = MISSING
    best_of_n: list[int] = MISSING
    best_of_n_prompts: int = MISSING
    num_pairs: int = MISSING
    num_side_by_side: int = MISSING
    bootstrap: int = MISSING
    batch_size: int | None = MISSING
    every_n_steps: int = MISSING
    trace_prompts: int = MISSING
    llm_judge: LLMJudgeSchema = MISSING
    harness: HarnessSchema = MISSING


@dataclass
class GenerationSchema:
    """`generation`: sampling settings (documented in conf/generation/default.yaml)."""

    num_samples: int = MISSING
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_k: int = MISSING
    top_p: float = MISSING
    batch_size: int | None = MISSING
    max_batch_tokens: int | None = MISSING


@dataclass
class SFTSchema:
    """`sft`: the supervised warm start of the reference (documented in conf/config.yaml)."""

    enabled: bool = MISSING
    lora: bool = MISSING
    max_steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    max_length: int = MISSING
    num_texts: int | None = MISSING
    packing: bool = MISSING


@dataclass
class TrainSchema:
    """`train`: dpo_exp's own training settings, beside TRL's `trainer` (documented in conf/config.yaml)."""

    precision: str = MISSING
    min_prompt_tokens: int = MISSING
    group_by_length: bool = MISSING
    max_tokens_per_batch: int | None = MISSING
    row_groups: int | None = MISSING
    auto_batch: bool = MISSING
    compile: bool = MISSING
    fused_gelu: Any = MISSING


SCHEMAS: dict[str, type] = {"eval": EvalSchema, "generation": GenerationSchema, "sft": SFTSchema, "train": TrainSchema}
for _name, _node in SCHEMAS.items():
    ConfigStore.instance().store(group="schema", name=_name, node=_node)


def _one_line(block: str, exc: OmegaConfBaseException) -> str:
    """OmegaConf's message (first line) prefixed with the full dotted name of the field."""
    key = getattr(exc, "full_key", None) or ""
    key = key if key.startswith(f"{block}.") or key == block else f"{block}.{key}" if key else block
    message = str(exc).splitlines()[0]
    return f"{key}: {message}"


def check_blocks(cfg: DictConfig, blocks: tuple[str, ...] = tuple(SCHEMAS)) -> None:
    """Replace each block of `cfg` by its typed version (schema + the block's values); UserError naming the field
    on a wrong type, an unknown key or a missing value. Interpolations stay interpolations (checked once resolved)."""
    for block in blocks:
        if cfg.get(block) is None:
            continue
        try:
            typed = OmegaConf.merge(OmegaConf.structured(SCHEMAS[block]), OmegaConf.to_container(cfg[block]))
            cfg[block] = typed
            OmegaConf.to_container(cfg[block], resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as exc:
            raise UserError(_one_line(block, exc)) from None


# ---------------------------------------------------------------- the `trainer` group: trl.DPOConfig

CHECKPOINT_DIR = "checkpoints"  # the Trainer's output_dir, under the run folder


def dpo_config(cfg: Any, run_dir: Path, precision: str, device: str) -> DPOConfig:
    """trl.DPOConfig from the `trainer` group (TRL's own fields), plus what the run decides: the checkpoint folder,
    bf16/fp16 autocast from the resolved precision, CPU or not, the run's seed, and no TRL reporting (the
    project's tracker reports). TRL's own validation errors come out as they are."""
    from hydra.utils import instantiate

    from .infra.sharding import strategy

    on_cuda: dict[str, Any] = {}
    if device.startswith("cuda") and cfg.trainer.get("optim") == "adamw_torch":
        on_cuda["optim"] = "adamw_torch_fused"  # the same AdamW in one kernel per step on CUDA (no per-tensor launches)
    if device.startswith("cuda") and cfg.trainer.get("accelerator_config") is None:
        # batches (pinned by the Trainer's loader) go to the GPU without blocking: a blocking copy waits for the
        # device's queue to drain first, a host sync per tensor per micro-batch
        on_cuda["accelerator_config"] = {"non_blocking": True}
    return instantiate(
        cfg.trainer,
        **on_cuda,
        **strategy(cfg).training_arguments(),  # fsdp / deepspeed settings for accelerate (none for ddp)
        output_dir=str(Path(run_dir) / CHECKPOINT_DIR),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        report_to="none",
        activation_checkpointing=checkpointing(cfg.trainer),
        # The DPO trainer never hands a non-finite loss on (`stop` raises, `skip` stands in a finite one), so the
        # Trainer's own NaN/inf filter would only add two host syncs per micro-batch
        logging_nan_inf_filter=False,
        torch_compile=bool(cfg.get("train", {}).get("compile", False)) or bool(cfg.trainer.get("torch_compile")),
        _convert_="all",  # plain lists and dicts (loss_type may be a list), not OmegaConf containers
    )


def checkpointing(settings: Any) -> bool:
    """TrainingArguments' `activation_checkpointing` for TRL `settings` that name only `gradient_checkpointing`.

    transformers 5 renamed the field and warns (a FutureWarning) whenever only the old name is set, which TRL's
    configs always do (they default it to True): every run printed it, even one stopped by a config error. Passing
    the new name (from the `trainer.gradient_checkpointing` knob, or TRL's default) keeps the setting and the quiet.
    """
    value = settings.get("activation_checkpointing")
    return bool(settings.get("gradient_checkpointing", True) if value is None else value)


def trl_loss_types() -> list[str]:
    """The loss types TRL's DPOTrainer implements, as trl.DPOConfig documents them in its `loss_type` field.

    DPOConfig does not check the value itself (an unknown one fails at the first loss computation, after the
    models loaded), so the list is read from TRL, never copied: a loss added to TRL is accepted at once.
    tests/test_config.py pins it to the list in the trainer's own "Unknown loss type" error."""
    from trl import DPOConfig

    field = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type")
    return re.findall(r"`'([a-z_0-9]+)'`", field.metadata["help"])


def check_trainer(cfg: DictConfig, precision: str, device: str) -> None:
    """Build the run's trl.DPOConfig (no model: cheap) so that TRL's own validation, and its loss types, reject a
    bad `trainer` setting as one line before anything loads."""
    import trl
    from hydra.errors import InstantiationException

    try:
        args = dpo_config(cfg, Path("."), precision, device)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        unknown = re.search(r"unexpected keyword argument '(\w+)'", message)
        if unknown:
            message = (
                f"trainer.{unknown.group(1)} is not a field of trl.DPOConfig (TRL {trl.__version__}); dpo_exp's own "
                "training settings live under `train` (conf/config.yaml)"
            )
        raise UserError(message if unknown else f"trainer (trl.DPOConfig): {message}") from None
    offered = trl_loss_types()
    for loss in args.loss_type:
        if loss not in offered:
            raise UserError(
                f"trainer.loss_type={loss!r}: unknown loss type; trl.DPOConfig (TRL {trl.__version__}) offers {offered}"
            )


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """A config of conf/ as Hydra composes it (inside a Hydra app: with that app's search path)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def reward_option(name: str) -> DictConfig:
    """The content of conf/reward/NAME.yaml as Hydra composes the `reward` group (for a scorer named at run time:
    the app's choice, or the eval.reward name a run saved before eval/reward was a config group)."""
    from hydra.errors import MissingConfigException

    try:
        return compose_config("config", [f"reward={name}"]).reward
    except MissingConfigException:
        options = sorted(p.stem for p in (CONF_DIR / "reward").glob("*.yaml"))
        raise UserError(f"reward {name!r} is not one of {options} (conf/reward/*.yaml)") from None


def check_eval_reward(cfg: DictConfig) -> None:
    """`eval.reward` is a config group (eval/reward=NAME); a bare name (eval.reward=NAME) is one clear error."""
    reward = cfg.eval.get("reward")
    if isinstance(reward, str):
        options = sorted(p.stem for p in (CONF_DIR / "reward").glob("*.yaml"))
        raise UserError(
            f"eval.reward={reward!r} is a name: choose the scorer as a config group, eval/reward={reward} "
            f"(one of {options})"
        )
