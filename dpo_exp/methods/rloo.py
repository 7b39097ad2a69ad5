"""Online RL with the run's scorer as the reward: TRL's RLOOTrainer (REINFORCE leave-one-out, the KL coefficient
`beta` the swept knob). It stands in for the DPO paper's PPO, which TRL no longer ships."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.schema import PreferenceData
from ..training.stage import TrainResult
from .base import Method, MethodSettings, peft_config, prompt_rows, scorer_reward, train_trl

REFERENCE_DIR = "reference"  # run_dir/reference: the starting weights, when TRL cannot load them from anywhere else


def point_at_starting_weights(policy, reference: Path | None, model_cfg: Any, run_dir: Path) -> None:
    """TRL's RLOO/GRPO build their frozen reference with `from_pretrained(policy.config.name_or_path)`: point that at
    the starting weights (the warm start's folder, the local model folder, the hub id), or save them into
    run_dir/reference when they exist nowhere else (the tiny model built from its config)."""
    if reference is not None:
        policy.config._name_or_path = str(reference)
    elif model_cfg.get("path"):
        policy.config._name_or_path = str(model_cfg.path)
    elif model_cfg.get("tiny") or not model_cfg.get("hub_id"):
        folder = Path(run_dir) / REFERENCE_DIR
        policy.save_pretrained(str(folder))
        policy.config._name_or_path = str(folder)


class RLOO(Method):
    """REINFORCE leave-one-out on freshly sampled completions of the training prompts, scored by the run's scorer."""

    uses_reward = True

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        from datasets import Dataset
        from trl import RLOOTrainer

        cfg = settings.cfg
        lora = peft_config(cfg, policy)
        if lora is None:
            point_at_starting_weights(policy, reference, cfg.model, settings.run_dir)

        def build(args, callbacks):
            return RLOOTrainer(
                model=policy,
                reward_funcs=scorer_reward(cfg),
                args=args,
                train_dataset=Dataset.from_list(prompt_rows(data)),
                processing_class=settings.tokenizer,
                peft_config=lora,
                callbacks=callbacks,
            )

        return train_trl(build, reference, settings)
