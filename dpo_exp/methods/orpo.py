"""ORPO (odds-ratio preference optimisation): TRL's experimental ORPOTrainer on the task's pairs. Reference-free:
it trains without a reference model; the run's evaluation still measures KL and win rate against the run's starting
model (the warm-start reference), so ORPO sits on the same reward-KL frontier as DPO."""

from __future__ import annotations

from pathlib import Path

from ..data.schema import PreferenceData
from ..training.stage import TrainResult
from .base import Method, MethodSettings, peft_config, train_trl


def text_pairs(rows: list[dict]) -> list[dict]:
    """prompt / chosen / rejected of each pair (TRL's paired format, text or conversational); the sampled token ids
    some pairs carry are dropped (these trainers tokenise text themselves)."""
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


def reference_free_trainer(trainer_class, policy, data: PreferenceData, settings: MethodSettings, args, callbacks):
    """A reference-free pair trainer (ORPO, CPO/SimPO) on the training pairs (held-out ones when it evaluates)."""
    from datasets import Dataset

    evaluating = bool(data.eval) and args.eval_strategy != "no"
    if not evaluating:  # nothing held out to evaluate the loss on (the run's evaluation still measures the policy)
        args.eval_strategy = "no"
    return trainer_class(
        model=policy,
        args=args,
        train_dataset=Dataset.from_list(text_pairs(data.train)),
        eval_dataset=Dataset.from_list(text_pairs(data.eval)) if evaluating else None,
        processing_class=settings.tokenizer,
        peft_config=peft_config(settings.cfg, policy),
        callbacks=callbacks,
    )


class ORPO(Method):
    """SFT on the chosen completion plus an odds-ratio penalty on the rejected one; no reference model."""

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        from ..trl_compat import ORPOTrainer

        def build(args, callbacks):
            return reference_free_trainer(ORPOTrainer, policy, data, settings, args, callbacks)

        return train_trl(build, reference, settings)
