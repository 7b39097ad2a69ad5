"""Preference pairs as given: hub sets (UltraFeedback, HH-RLHF) or local prompt/chosen/rejected files."""

from __future__ import annotations

from typing import Any

from ..data.preference import load_preference_data
from ..data.schema import PreferenceData
from .base import HeldOut, StageEnv, Task, TaskResult


class PreferenceTask(Task):
    """Load, normalise, filter and split the configured pairs; the model is used as it is."""

    def load(self, cfg: Any, tokenizer) -> PreferenceData:
        """The pairs whose prompt leaves `train.min_prompt_tokens` of room within `trainer.max_length`."""
        max_length = cfg.trainer.max_length
        room = int(cfg.train.min_prompt_tokens)

        def prompt_fits(prompt: str) -> bool:
            return max_length is None or len(tokenizer(prompt, verbose=False).input_ids) + room <= int(max_length)

        return load_preference_data(cfg.dataset, int(cfg.seed), prompt_fits, max_length)

    def prepare(self, cfg: Any, env: StageEnv, model, tokenizer, loaded: PreferenceData) -> TaskResult:
        return TaskResult(data=loaded, model=model)

    def heldout(self, cfg: Any, tokenizer) -> HeldOut:
        data = self.load(cfg, tokenizer)
        trained = {r["prompt"] for r in data.train}
        prompts = list(dict.fromkeys(data.eval_prompts))
        kept = [p for p in prompts if p not in trained]
        return HeldOut(kept, data.eval, len(prompts) - len(kept))
