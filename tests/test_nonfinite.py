"""Non-finite losses: `on_nonfinite=stop` stops naming the step and keeps the last good checkpoint; `skip` goes on."""

from __future__ import annotations

import json

import pytest
import torch

from .conftest import FAST_MODEL, FAST_TRAINER, compose


def _setup(hh_file, tmp_path, policy: str):
    from dpo_exp.data import load_preference_data
    from dpo_exp.models import build_model, load_tokenizer
    from dpo_exp.ref_logps import pairs_dataset
    from dpo_exp.tracking import Tracker
    from dpo_exp.train import build_trainer

    cfg = compose([*FAST_MODEL, *FAST_TRAINER, "dataset=hh_rlhf", f"dataset.path={hh_file}", "data_size=8",
                   "dataset.eval_size=4", "epochs=1", "logger=none", "lora=none", f"on_nonfinite={policy}",
                   "trainer.precompute_ref_log_probs=false", "trainer.eval_strategy=no",
                   "trainer.save_strategy=steps", "trainer.save_steps=1",
                   "trainer.per_device_train_batch_size=2"])
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.dataset, 0, lambda p: len(tokenizer(p, verbose=False).input_ids) < 48)
    model = build_model(cfg.model, 0)
    trainer = build_trainer(cfg, model, tokenizer, pairs_dataset(data.train), None, tmp_path, Tracker(), "fp32", "cpu")
    return trainer


def _poison_after(trainer, step: int) -> None:
    """From optimiser step `step` on, the policy's final layer norm outputs NaN (a real diverged network)."""
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == step - 1:
                with torch.no_grad():
                    trainer.model.transformer.ln_f.weight.fill_(float("nan"))

    trainer.add_callback(Poison())


def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(hh_file, tmp_path):
    from dpo_exp.train import NonFiniteError, last_checkpoint

    trainer = _setup(hh_file, tmp_path, "stop")
    _poison_after(trainer, 3)
    with pytest.raises(NonFiniteError, match="non-finite loss at step 3"):
        trainer.train()
    good = last_checkpoint(tmp_path)
    assert good is not None and good.name == "checkpoint-2"
    state = json.loads((good / "trainer_state.json").read_text())
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in state["log_history"] if "loss" in r)


def test_skip_carries_on_and_counts_the_skipped_steps(hh_file, tmp_path):
    trainer = _setup(hh_file, tmp_path, "skip")
    _poison_after(trainer, 3)
    trainer.train()  # 8 pairs / batch 2 = 4 steps; steps 3 and 4 see the NaN weights and are skipped
    assert trainer.skipped_steps == 2 and trainer.state.global_step == 4
