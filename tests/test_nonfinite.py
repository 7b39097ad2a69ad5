"""Non-finite losses: `on_nonfinite=stop` stops naming the step and keeps the last good checkpoint; `skip` goes on."""

from __future__ import annotations

import json

import pytest
import torch

from .conftest import FAST_MODEL, FAST_TRAINER, compose


def _setup(hh_file, tmp_path, policy: str, extra: tuple[str, ...] = ()):
    from dpo_exp.data.preference import load_preference_data
    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.models import build_model, load_tokenizer
    from dpo_exp.training.ref_logps import pairs_dataset
    from dpo_exp.training.trainer import build_trainer

    cfg = compose(
        [
            *FAST_MODEL,
            *FAST_TRAINER,
            "dataset=hh_rlhf",
            f"dataset.path={hh_file}",
            "data_size=8",
            "dataset.eval_size=4",
            "epochs=1",
            "logger=none",
            "lora=none",
            f"on_nonfinite={policy}",
            "trainer.precompute_ref_log_probs=false",
            "trainer.eval_strategy=no",
            "trainer.save_strategy=steps",
            "trainer.save_steps=1",
            "trainer.per_device_train_batch_size=2",
            *extra,
        ]
    )
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
    from dpo_exp.training.nonfinite import NonFiniteError
    from dpo_exp.training.stage import last_checkpoint

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


class _OneShotNaN:
    """Armed, the next forward of the policy's final layer norm outputs NaN once: one bad micro-batch, good weights."""

    def __init__(self, module):
        self.armed = False
        self.fired = 0
        module.register_forward_hook(self)

    def __call__(self, module, args, output):
        if not self.armed:
            return output
        self.armed = False
        self.fired += 1
        return output * float("nan")


def _snapshot(trainer) -> dict:
    import copy

    return {
        "weights": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "lr": list(trainer.lr_scheduler.get_last_lr()),
        "scheduler_epoch": trainer.lr_scheduler.last_epoch,
    }


def _same_optimizer_state(a: dict, b: dict) -> bool:
    if a["state"].keys() != b["state"].keys():
        return False
    for key, state in a["state"].items():
        other = b["state"][key]
        if state.keys() != other.keys() or not all(
            torch.equal(torch.as_tensor(state[k]), torch.as_tensor(other[k])) for k in state
        ):
            return False
    return True


# AdamW with momentum and weight decay and a decaying LR: a step that zeroes gradients but still calls the optimizer
# and the scheduler moves weights, moments and LR; a truly skipped step moves none of them.
SKIP_TRAINER = ("trainer.weight_decay=0.1", "trainer.lr_scheduler_type=linear", "trainer.warmup_steps=0", "lr=1e-2")


def test_skipped_step_leaves_weights_optimizer_state_and_lr_schedule_untouched(hh_file, tmp_path):
    from transformers import TrainerCallback

    trainer = _setup(hh_file, tmp_path, "skip", SKIP_TRAINER)  # 8 pairs / batch 2 = 4 steps; step 3 is poisoned
    poison = _OneShotNaN(trainer.model.transformer.ln_f)
    seen: dict = {}

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                seen["before"] = _snapshot(trainer)
                poison.armed = True

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                seen["after"] = _snapshot(trainer)

    trainer.add_callback(Watch())
    trainer.train()
    before, after = seen["before"], seen["after"]
    assert poison.fired == 1 and trainer.skipped_steps == 1 and trainer.state.global_step == 4
    losses = {row["step"]: row for row in trainer.state.log_history if "loss" in row}
    assert losses[3]["loss"] == losses[2]["loss"] and "rewards/chosen" not in losses[3]  # stand-in, no NaN metrics
    assert before["optimizer"]["state"], "the optimizer had state (moments) before the skipped step"
    assert all(torch.equal(before["weights"][n], after["weights"][n]) for n in before["weights"])
    assert _same_optimizer_state(before["optimizer"], after["optimizer"])
    assert after["lr"] == before["lr"] and after["scheduler_epoch"] == before["scheduler_epoch"]
    # the next step trains again: finite weights that moved, schedule advanced
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.lr_scheduler.last_epoch == before["scheduler_epoch"] + 1
    assert not all(torch.equal(after["weights"][n], p) for n, p in trainer.model.named_parameters())


def test_with_gradient_accumulation_only_the_bad_micro_batch_is_dropped(hh_file, tmp_path):
    """Two micro-batches per step, the second of step 2 non-finite: step 2's gradient is exactly the first
    micro-batch's own (full-weight) gradient, the step is taken and the schedule advances."""
    from transformers import TrainerCallback

    trainer = _setup(
        hh_file, tmp_path, "skip", (*SKIP_TRAINER, "trainer.gradient_accumulation_steps=2", "trainer.max_grad_norm=1e9")
    )  # no clipping: compare raw gradients
    poison = _OneShotNaN(trainer.model.transformer.ln_f)
    micro_batches: list = []
    seen: dict = {}
    training_step = trainer.training_step

    def recording_training_step(model, inputs, *args, **kwargs):  # records what the Trainer feeds, changes nothing
        micro_batches.append((trainer.state.global_step, inputs))
        return training_step(model, inputs, *args, **kwargs)

    trainer.training_step = recording_training_step

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                seen["before"] = _snapshot(trainer)

        def on_substep_end(self, args, state, control, **kwargs):
            if state.global_step == 1:  # after the first micro-batch of step 2: poison the second
                poison.armed = True

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step != 1:
                return
            model = trainer.model
            applied = {n: p.grad.clone() for n, p in model.named_parameters()}
            good = next(inputs for step, inputs in micro_batches if step == 1)
            model.zero_grad(set_to_none=True)
            trainer.compute_loss(model, trainer._prepare_inputs(good)).backward()
            seen["expected"] = {n: p.grad.clone() for n, p in model.named_parameters()}
            seen["applied"] = applied
            for n, p in model.named_parameters():
                p.grad = applied[n]

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                seen["after"] = _snapshot(trainer)

    trainer.add_callback(Watch())
    trainer.train()
    assert poison.fired == 1 and trainer.skipped_steps == 0
    logged = [v for row in trainer.state.log_history for v in row.values() if isinstance(v, float)]
    assert logged and all(torch.isfinite(torch.tensor(logged)))  # the dropped micro-batch left no NaN in the logs
    for name, expected in seen["expected"].items():
        assert torch.isfinite(seen["applied"][name]).all()
        torch.testing.assert_close(seen["applied"][name], expected, rtol=1e-4, atol=1e-7, msg=name)
    assert any(expected.abs().sum() > 0 for expected in seen["expected"].values())
    before, after = seen["before"], seen["after"]
    assert not all(torch.equal(before["weights"][n], after["weights"][n]) for n in before["weights"])
    assert after["scheduler_epoch"] == before["scheduler_epoch"] + 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_skip_works_with_the_fp16_grad_scaler():
    """With fp16's GradScaler (here torch's CPU one, under accelerate's optimizer wrapper as on a GPU), a skipped step
    leaves the parameter and AdamW's state alone, keeps the scaler's bookkeeping consistent (whether gradient clipping
    unscaled the gradients first or not), and the next step updates normally."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    from dpo_exp.training.nonfinite import make_skippable

    Accelerator(cpu=True)
    param = torch.nn.Parameter(torch.ones(3))
    inner = torch.optim.AdamW([param], lr=0.1, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = AcceleratedOptimizer(inner, scaler=scaler)

    def step(skip: bool, clipped: bool) -> bool:
        optimizer.zero_grad()
        scaler.scale((param * 2).sum()).backward()
        if clipped:  # what accelerator.clip_grad_norm_ does first
            scaler.unscale_(inner)
        if skip:
            make_skippable(optimizer).skip()
        before = param.detach().clone()
        optimizer.step()
        changed = not torch.equal(before, param)
        assert optimizer.step_was_skipped == skip
        if hasattr(optimizer, "clear"):  # what the trainer does before the next step
            optimizer.clear()
        return changed

    assert step(skip=False, clipped=True)
    assert not step(skip=True, clipped=True) and inner.state[param]["step"].item() == 1
    assert not step(skip=True, clipped=False) and inner.state[param]["step"].item() == 1
    assert step(skip=False, clipped=False) and inner.state[param]["step"].item() == 2
    assert scaler.get_scale() == 1024.0  # no overflow was recorded for the skipped steps


def test_another_methods_trl_trainer_stops_at_the_step_and_keeps_the_last_good_checkpoint(imdb_dir, tmp_path):
    """Preferred-FT's TRL SFTTrainer with the NonFiniteStop callback every non-DPO method carries (methods.base)."""
    from datasets import Dataset
    from trl import SFTTrainer

    from dpo_exp.methods.base import trl_args
    from dpo_exp.models import build_model, load_tokenizer
    from dpo_exp.training.nonfinite import NonFiniteError, NonFiniteStop
    from dpo_exp.training.stage import last_checkpoint

    cfg = compose(
        [
            *FAST_MODEL,
            *FAST_TRAINER,
            "dataset=imdb_sentiment",
            f"dataset.path={imdb_dir}",
            "method=preferred_ft",
            "lora=none",
            "logger=none",
            "epochs=1",
            "trainer.save_strategy=steps",
            "trainer.save_steps=1",
            "trainer.per_device_train_batch_size=2",
            "trainer.eval_strategy=no",
        ]
    )
    tokenizer = load_tokenizer(cfg.model)
    rows = [{"prompt": f"Review {i}: the film", "completion": " was fine and well acted."} for i in range(8)]
    trainer = SFTTrainer(
        model=build_model(cfg.model, 0),
        args=trl_args(cfg, tmp_path, "fp32", "cpu"),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[NonFiniteStop()],
    )
    _poison_after(trainer, 3)
    with pytest.raises(NonFiniteError, match="non-finite gradients at step 3"):
        trainer.train()
    assert last_checkpoint(tmp_path).name == "checkpoint-2"
