"""Preferred-FT (the DPO paper's baseline): TRL's SFTTrainer on each training pair's chosen completion, with its
completion-only loss (the prompt is context, not a target)."""

from __future__ import annotations

from pathlib import Path

from ..data.schema import PreferenceData
from ..training.stage import TrainResult
from .base import Method, MethodSettings, peft_config, train_trl


def chosen_rows(pairs: list[dict]) -> list[dict[str, str]]:
    """prompt + chosen completion of each pair, in TRL's prompt-completion format."""
    return [{"prompt": row["prompt"], "completion": row["chosen"]} for row in pairs]


class PreferredFT(Method):
    """Supervised fine-tuning on the preferred completions only."""

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        from datasets import Dataset
        from trl import SFTTrainer

        def build(args, callbacks):
            return SFTTrainer(
                model=policy,
                args=args,
                train_dataset=Dataset.from_list(chosen_rows(data.train)),
                eval_dataset=Dataset.from_list(chosen_rows(data.eval))
                if data.eval and args.eval_strategy != "no"
                else None,
                processing_class=settings.tokenizer,
                peft_config=peft_config(settings.cfg, policy),
                callbacks=callbacks,
            )

        return train_trl(build, reference, settings)
