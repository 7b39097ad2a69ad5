"""Preference pairs as given: hub sets (UltraFeedback, HH-RLHF) or local prompt/chosen/rejected files."""

from __future__ import annotations

from typing import Any

from ..data.conversation import prompt_key, unique_prompts
from ..data.preference import load_run_preferences
from ..data.schema import PreferenceData
from .base import HeldOut, StageEnv, Task, TaskResult


class PreferenceTask(Task):
    """Load, normalise, filter and split the configured pairs; the model is used as it is."""

    def check(self, cfg: Any) -> None:
        """A mixture's sources are well formed (each one origin, a weight or a row count), before anything loads."""
        if cfg.dataset.get("loader") == "mixture":
            from ..data.mixture import check_sources

            check_sources(cfg.dataset)

    def load(self, cfg: Any, tokenizer) -> PreferenceData:
        """The pairs whose prompt leaves `train.min_prompt_tokens` of room within `trainer.max_length`, less a
        trained judge's share; as many held-out prompts as evaluation samples."""
        return load_run_preferences(cfg, tokenizer)

    def prepare(self, cfg: Any, env: StageEnv, model, tokenizer, loaded: PreferenceData) -> TaskResult:
        return TaskResult(data=loaded, model=model)

    def heldout(self, cfg: Any, tokenizer) -> HeldOut:
        data = self.load(cfg, tokenizer)
        trained = {prompt_key(r["prompt"]) for r in data.train}
        prompts = unique_prompts(data.eval_prompts)
        kept = [p for p in prompts if prompt_key(p) not in trained]
        return HeldOut(kept, data.eval, len(prompts) - len(kept))
