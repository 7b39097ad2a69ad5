"""Preferred-FT (the DPO paper's baseline): TRL's SFTTrainer on each training pair's chosen completion, with its
completion-only loss (the prompt is context, not a target)."""

from __future__ import annotations

from pathlib import Path

from ..data.schema import PAIR_ID_COLUMNS, PreferenceData
from ..training.stage import TrainResult
from .base import Method, MethodSettings, peft_config, train_trl


def chosen_rows(pairs: list[dict]) -> list[dict]:
    """prompt + chosen completion of each pair for SFTTrainer. Pairs built from samples carry the exact ids that were
    sampled (EOS only where a sample ended, as DPO trains on them): those go in as TRL's pre-tokenised format
    (`input_ids` + `completion_mask`), since from text SFTTrainer would re-tokenise and append an EOS to every
    completion, teaching the policy to stop where a sample was merely cut at max_new_tokens. Other pairs go in
    TRL's prompt-completion format (text or conversational)."""
    if pairs and all(set(PAIR_ID_COLUMNS) <= row.keys() for row in pairs):
        return [
            {
                "input_ids": [*row["prompt_ids"], *row["chosen_ids"]],
                "completion_mask": [0] * len(row["prompt_ids"]) + [1] * len(row["chosen_ids"]),
            }
            for row in pairs
        ]
    return [{"prompt": row["prompt"], "completion": row["chosen"]} for row in pairs]


def preferred_ft_trainer(policy, data: PreferenceData, settings: MethodSettings, args, callbacks):
    """TRL's SFTTrainer on the chosen completions (held-out ones as its eval set when the trainer evaluates)."""
    from datasets import Dataset
    from trl import SFTTrainer

    return SFTTrainer(
        model=policy,
        args=args,
        train_dataset=Dataset.from_list(chosen_rows(data.train)),
        eval_dataset=Dataset.from_list(chosen_rows(data.eval)) if data.eval and args.eval_strategy != "no" else None,
        processing_class=settings.tokenizer,
        peft_config=peft_config(settings.cfg, policy),
        callbacks=callbacks,
    )


class PreferredFT(Method):
    """Supervised fine-tuning on the preferred completions only."""

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        def build(args, callbacks):
            return preferred_ft_trainer(policy, data, settings, args, callbacks)

        return train_trl(build, reference, settings)
