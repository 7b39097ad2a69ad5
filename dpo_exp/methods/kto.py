"""KTO (Kahneman-Tversky Optimization): TRL's KTOTrainer on unpaired (prompt, completion, label) rows. From the
task's pairs each chosen completion is a desirable row and each rejected one an undesirable row; a binary-feedback
file (dataset=feedback: prompt, completion, label) is trained on as it is."""

from __future__ import annotations

from pathlib import Path

from ..data.schema import PreferenceData
from ..training.stage import TrainResult
from .base import Method, MethodSettings, peft_config, train_trl

FEEDBACK_COLUMNS = ("prompt", "completion", "label")  # TRL's unpaired preference format


def unpaired_rows(rows: list[dict]) -> list[dict]:
    """TRL's unpaired format: binary-feedback rows as they are; a pair becomes its chosen completion labelled
    desirable (True) and its rejected one undesirable (False), interleaved so every batch sees both kinds."""
    out: list[dict] = []
    for row in rows:
        if "label" in row and "completion" in row:
            out.append({"prompt": row["prompt"], "completion": row["completion"], "label": bool(row["label"])})
        else:
            out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
            out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
    return out


def kto_trainer(policy, data: PreferenceData, settings: MethodSettings, args, callbacks):
    """TRL's KTOTrainer on the unpaired training rows; with full fine-tuning its reference is a frozen copy of the
    starting weights in the run's compute dtype (as for DPO: TRL would reload it by id), with LoRA the adapter
    switched off."""
    from datasets import Dataset
    from trl import KTOTrainer

    from ..training.trainer import frozen_reference

    lora = peft_config(settings.cfg, policy)
    evaluating = bool(data.eval) and args.eval_strategy != "no"
    if not evaluating:  # nothing held out to evaluate the loss on (the run's evaluation still measures the policy)
        args.eval_strategy = "no"
    return KTOTrainer(
        model=policy,
        ref_model=frozen_reference(policy, settings.env.precision) if lora is None else None,
        args=args,
        train_dataset=Dataset.from_list(unpaired_rows(data.train)),
        eval_dataset=Dataset.from_list(unpaired_rows(data.eval)) if evaluating else None,
        processing_class=settings.tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    )


class KTO(Method):
    """KTO on thumbs-up / thumbs-down rows (or the task's pairs split into them)."""

    unpaired = True

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        def build(args, callbacks):
            return kto_trainer(policy, data, settings, args, callbacks)

        return train_trl(build, reference, settings)
