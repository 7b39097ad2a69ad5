"""DPO: TRL's DPOTrainer on the task's pairs, as wired in dpo_exp.training (its trl.DPOConfig is the `trainer`
group; every TRL loss_type is a `trainer.loss_type` sweep)."""

from __future__ import annotations

from pathlib import Path

from ..data.schema import PreferenceData
from ..training.stage import TrainResult, train_policy
from .base import Method, MethodSettings


class DPO(Method):
    """Offline DPO on the task's pairs (the run's behaviour before the `method` group)."""

    skips_nonfinite = True  # dpo_exp's DPO trainer drops non-finite micro-batches (on_nonfinite=skip)

    def check(self, cfg) -> None:
        """The trainer group is checked as trl.DPOConfig by dpo_exp.config."""
        self.refuse_unpaired(cfg)

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        s = settings
        return train_policy(s.cfg, policy, s.tokenizer, data, s.run_dir, s.tracker, s.env, reference, s.callbacks)
