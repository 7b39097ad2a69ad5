"""Online RL with the run's scorer as the reward: TRL's RLOOTrainer (REINFORCE leave-one-out, the KL coefficient
`beta` the swept knob). It stands in for the DPO paper's PPO, which TRL no longer ships."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..data.schema import PreferenceData
from ..training.stage import TrainResult
from .base import Method, MethodSettings, peft_config, prompt_rows, scorer_reward, train_trl

REFERENCE_DIR = "reference"  # run_dir/reference: the starting weights, when TRL cannot load them from anywhere else
# TRL 1.x logs this when `model_init_kwargs` comes with an instantiated model, yet builds its KL reference with them
MISLEADING_WARNING = "The `model_init_kwargs` will be ignored"


def point_at_starting_weights(policy, reference: Path | None, model_cfg: Any, run_dir: Path) -> dict[str, Any]:
    """TRL's RLOO/GRPO build their frozen reference with `from_pretrained(policy.config.name_or_path,
    **args.model_init_kwargs)`: point that at the starting weights (the warm start's folder, the local model folder,
    the hub id), or save them into run_dir/reference when they exist nowhere else (the tiny model built from its
    config). Returns the `model_init_kwargs` that load them: a hub model's pinned `model.revision` (else TRL would
    read the hub's main branch) and its `trust_remote_code`."""
    if reference is not None:
        policy.config._name_or_path = str(reference)
    elif model_cfg.get("path"):
        policy.config._name_or_path = str(model_cfg.path)
    elif model_cfg.get("tiny") or not model_cfg.get("hub_id"):
        folder = Path(run_dir) / REFERENCE_DIR
        policy.save_pretrained(str(folder))
        policy.config._name_or_path = str(folder)
    else:
        policy.config._name_or_path = str(model_cfg.hub_id)
        kwargs = {"trust_remote_code": bool(model_cfg.get("trust_remote_code", False))}
        return {**kwargs, **({"revision": str(model_cfg.revision)} if model_cfg.get("revision") else {})}
    return {}


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextmanager
def without_misleading_warning(logger_name: str = "trl.trainer.rloo_trainer"):
    """TRL's claim that `model_init_kwargs` are ignored is untrue for the reference it builds (RLOO, GRPO): not
    shown."""
    logger = logging.getLogger(logger_name)
    drop = _DropMessage(MISLEADING_WARNING)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def scored_prompt_trainer(
    trainer_class: Any, policy, reference: Path | None, settings: MethodSettings, args, callbacks, rows: list[dict]
):
    """One of TRL's online trainers that score fresh samples of the training prompts with the run's scorer (RLOO,
    GRPO), its KL reference the run's starting weights (full fine-tuning with a KL term; with LoRA the adapter is
    switched off instead)."""
    from datasets import Dataset

    cfg = settings.cfg
    lora = peft_config(cfg, policy)
    if lora is None and args.beta != 0.0:  # TRL builds a reference only for a KL term
        init_kwargs = point_at_starting_weights(policy, reference, cfg.model, settings.run_dir)
        if init_kwargs:
            args.model_init_kwargs = {**(args.model_init_kwargs or {}), **init_kwargs}
    with without_misleading_warning(trainer_class.__module__):
        return trainer_class(
            model=policy,
            reward_funcs=scorer_reward(cfg),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=settings.tokenizer,
            peft_config=lora,
            callbacks=callbacks,
        )


def rloo_trainer(policy, reference: Path | None, data: PreferenceData, settings: MethodSettings, args, callbacks):
    """TRL's RLOOTrainer on the training prompts (`scored_prompt_trainer`)."""
    from trl import RLOOTrainer

    return scored_prompt_trainer(RLOOTrainer, policy, reference, settings, args, callbacks, prompt_rows(data))


class RLOO(Method):
    """REINFORCE leave-one-out on freshly sampled completions of the training prompts, scored by the run's scorer."""

    uses_reward = True

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        def build(args, callbacks):
            return rloo_trainer(policy, reference, data, settings, args, callbacks)

        return train_trl(build, reference, settings)
