"""`trainer.disable_dropout`: true zeroes every Dropout as TRL does (lora.dropout too); false honours lora.dropout."""

from __future__ import annotations

import pytest
import torch

from .conftest import FAST_MODEL, FAST_TRAINER, compose


def _trainer(hh_file, tmp_path, disable: bool):
    from dpo_exp.data import load_preference_data
    from dpo_exp.models import build_model, load_tokenizer
    from dpo_exp.ref_logps import pairs_dataset
    from dpo_exp.tracking import Tracker
    from dpo_exp.train import build_trainer

    cfg = compose(
        [
            *FAST_MODEL,
            "lora=gpt2_attn",
            *FAST_TRAINER,
            "dataset=hh_rlhf",
            f"dataset.path={hh_file}",
            "data_size=4",
            "dataset.eval_size=2",
            "logger=none",
            "lora.dropout=0.2",
            f"trainer.disable_dropout={disable}",
            "trainer.precompute_ref_log_probs=false",
            "trainer.eval_strategy=no",
        ]
    )
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.dataset, 0, lambda p: len(tokenizer(p, verbose=False).input_ids) < 48)
    model = build_model(cfg.model, 0)
    return build_trainer(cfg, model, tokenizer, pairs_dataset(data.train), None, tmp_path, Tracker(), "fp32", "cpu")


def _lora_dropouts(model) -> list[torch.nn.Dropout]:
    return [m for name, m in model.named_modules() if ".lora_dropout." in name and isinstance(m, torch.nn.Dropout)]


@pytest.mark.parametrize("disable", [False, True])
def test_lora_dropout_follows_disable_dropout(hh_file, tmp_path, disable):
    trainer = _trainer(hh_file, tmp_path, disable)
    lora = _lora_dropouts(trainer.model)
    assert lora, "the PEFT model has no LoRA dropout modules"
    assert {m.p for m in lora} == ({0.0} if disable else {0.2})
    base = [m for name, m in trainer.model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora" not in name]
    assert {m.p for m in base} == ({0.0} if disable else {trainer.model.config.resid_pdrop})
