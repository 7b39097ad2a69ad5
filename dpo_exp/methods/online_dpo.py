"""Online DPO: TRL's OnlineDPOTrainer (trl.experimental, pinned in dpo_exp.trl_compat): two fresh samples per
training prompt each step, the run's scorer picks the chosen one, DPO's loss (beta) trains on the pair. The samples
are drawn with the run's `generation` temperature, top_k and top_p (conf/method/online_dpo.yaml), as evaluated."""

from __future__ import annotations

from pathlib import Path

from ..data.schema import PreferenceData
from ..training.stage import TrainResult
from .base import Method, MethodSettings, peft_config, prompt_rows, scorer_reward, train_trl


def online_dpo_trainer(policy, data: PreferenceData, settings: MethodSettings, args, callbacks):
    """TRL's OnlineDPOTrainer on the training prompts; with full fine-tuning its reference is a frozen copy of the
    starting weights in the run's compute dtype (as for DPO)."""
    from datasets import Dataset

    from ..training.ref_logps import frozen_reference
    from ..trl_compat import OnlineDPOTrainer

    cfg = settings.cfg
    lora = peft_config(cfg, policy)
    ref_model = frozen_reference(policy, settings.env.precision) if lora is None else None
    return OnlineDPOTrainer(
        model=policy,
        ref_model=ref_model,
        reward_funcs=[scorer_reward(cfg)],
        args=args,
        train_dataset=Dataset.from_list(prompt_rows(data)),
        processing_class=settings.tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    )


class OnlineDPO(Method):
    """DPO on pairs sampled from the current policy and judged by the run's scorer."""

    uses_reward = True

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        def build(args, callbacks):
            return online_dpo_trainer(policy, data, settings, args, callbacks)

        return train_trl(build, reference, settings)
