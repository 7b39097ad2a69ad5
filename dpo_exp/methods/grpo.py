"""GRPO (group relative policy optimisation): TRL's GRPOTrainer with the run's scorer as the reward, as for RLOO.
Each step samples `num_generations` completions per training prompt, normalises their rewards within the group, and
penalises `beta` x KL to the run's starting weights."""

from __future__ import annotations

from pathlib import Path

from ..data.schema import PreferenceData
from ..training.stage import TrainResult
from .base import Method, MethodSettings, prompt_rows, train_trl
from .rloo import scored_prompt_trainer


def grpo_trainer(policy, reference: Path | None, data: PreferenceData, settings: MethodSettings, args, callbacks):
    """TRL's GRPOTrainer on the training prompts (`scored_prompt_trainer`, as RLOO)."""
    from trl import GRPOTrainer

    return scored_prompt_trainer(GRPOTrainer, policy, reference, settings, args, callbacks, prompt_rows(data))


class GRPO(Method):
    """Group-normalised policy gradient on freshly sampled completions, scored by the run's scorer."""

    uses_reward = True

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        def build(args, callbacks):
            return grpo_trainer(policy, reference, data, settings, args, callbacks)

        return train_trl(build, reference, settings)
