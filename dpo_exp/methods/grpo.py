"""GRPO (group relative policy optimisation): TRL's GRPOTrainer with the run's scorer as the reward, as for RLOO.
Each step samples `num_generations` completions per training prompt, normalises their rewards within the group, and
penalises `beta` x KL to the run's starting weights."""

from __future__ import annotations

from pathlib import Path

from ..data.schema import PreferenceData
from ..training.stage import TrainResult
from .base import Method, MethodSettings, peft_config, prompt_rows, scorer_reward, train_trl
from .rloo import point_at_starting_weights, without_misleading_warning


def grpo_trainer(policy, reference: Path | None, data: PreferenceData, settings: MethodSettings, args, callbacks):
    """TRL's GRPOTrainer on the training prompts, its KL reference the run's starting weights (full fine-tuning;
    with LoRA the adapter is switched off instead)."""
    from datasets import Dataset
    from trl import GRPOTrainer

    cfg = settings.cfg
    lora = peft_config(cfg, policy)
    if lora is None and args.beta != 0.0:  # TRL builds a reference only for a KL term
        init_kwargs = point_at_starting_weights(policy, reference, cfg.model, settings.run_dir)
        if init_kwargs:
            args.model_init_kwargs = {**(args.model_init_kwargs or {}), **init_kwargs}
    with without_misleading_warning("trl.trainer.grpo_trainer"):
        return GRPOTrainer(
            model=policy,
            reward_funcs=scorer_reward(cfg),
            args=args,
            train_dataset=Dataset.from_list(prompt_rows(data)),
            processing_class=settings.tokenizer,
            peft_config=lora,
            callbacks=callbacks,
        )


class GRPO(Method):
    """Group-normalised policy gradient on freshly sampled completions, scored by the run's scorer."""

    uses_reward = True

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        def build(args, callbacks):
            return grpo_trainer(policy, reference, data, settings, args, callbacks)

        return train_trl(build, reference, settings)
