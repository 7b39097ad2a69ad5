"""Preference pairs as given: hub sets (UltraFeedback, HH-RLHF) or local prompt/chosen/rejected files."""

from __future__ import annotations

from typing import Any

from ..data.conversation import prompt_key, unique_prompts
from ..data.preference import load_preference_data
from ..data.schema import PreferenceData
from ..models.chat import encode_prompts, uses_chat
from .base import HeldOut, StageEnv, Task, TaskResult


class PreferenceTask(Task):
    """Load, normalise, filter and split the configured pairs; the model is used as it is."""

    def load(self, cfg: Any, tokenizer) -> PreferenceData:
        """The pairs whose prompt leaves `train.min_prompt_tokens` of room within `trainer.max_length`."""
        max_length = cfg.trainer.max_length
        room = int(cfg.train.min_prompt_tokens)

        def prompt_fits(prompt) -> bool:
            if max_length is None:
                return True
            return len(encode_prompts(tokenizer, [prompt], verbose=False).input_ids[0]) + room <= int(max_length)

        return load_preference_data(cfg.dataset, int(cfg.seed), prompt_fits, max_length, uses_chat(tokenizer))

    def prepare(self, cfg: Any, env: StageEnv, model, tokenizer, loaded: PreferenceData) -> TaskResult:
        return TaskResult(data=loaded, model=model)

    def heldout(self, cfg: Any, tokenizer) -> HeldOut:
        data = self.load(cfg, tokenizer)
        trained = {prompt_key(r["prompt"]) for r in data.train}
        prompts = unique_prompts(data.eval_prompts)
        kept = [p for p in prompts if prompt_key(p) not in trained]
        return HeldOut(kept, data.eval, len(prompts) - len(kept))
