"""Non-finite losses and gradients: stop (`on_nonfinite=stop`) or skip the step without touching weights,
optimizer state or LR schedule (`skip`)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from ..errors import RunFailure
from ..infra.sharding import nonfinite_anywhere, on_every_process


class NonFiniteError(RunFailure):
    """Raised when the loss or gradients stop being finite and the run is configured to stop."""


class SkippableStep:
    """Mixed into the prepared (accelerate) optimizer by `make_skippable`.

    `skip()`, called just before `optimizer.step()`, drops every gradient: a torch optimizer leaves a parameter
    without a gradient alone (no update, no momentum, no weight decay, no step count), so the step changes nothing.
    The step is then reported through accelerate's `step_was_skipped`, as an fp16-overflow skip is, so the Trainer does
    not advance the LR scheduler either. `clear()` ends it before the next step. (The step itself is not overridden:
    torch's LR scheduler wraps `optimizer.step` on the instance.)
    """

    _skipping = False

    def skip(self) -> None:
        if self.scaler is not None:  # fp16: the grad scaler's step needs an inf check recorded on the gradients
            try:
                self.scaler.unscale_(self.optimizer)
            except RuntimeError:  # gradient clipping has unscaled them already
                pass
        self.optimizer.zero_grad(set_to_none=True)
        self._skipping = True

    def clear(self) -> None:
        self._skipping = False

    @property
    def step_was_skipped(self) -> bool:
        return self._skipping or super().step_was_skipped


def make_skippable(optimizer):
    """The accelerate optimizer, its class extended with `SkippableStep` (idempotent)."""
    if not isinstance(optimizer, SkippableStep):
        optimizer.__class__ = type(f"Skippable{type(optimizer).__name__}", (SkippableStep, type(optimizer)), {})
    return optimizer


def nonfinite_gradients(model) -> bool:
    """Whether any parameter's gradient holds a NaN or an inf, on any process (sharded gradients included)."""
    return nonfinite_anywhere(model)


def nonfinite_step(loss_finite: torch.Tensor | None, grad_norm: Any, model: Any, check_gradients: bool) -> str | None:
    """What is non-finite in the step, read back to the host in ONE transfer: "loss" (a micro-batch's loss, recorded
    on the device as `loss_finite`), "gradients", or None. The gradient norm that clipping computed is non-finite
    exactly when some gradient is, so one scalar stands for every parameter; without a tensor norm (e.g. DeepSpeed's
    float) each gradient is checked (`nonfinite_gradients`)."""
    flags = [] if loss_finite is None else [loss_finite.reshape(())]
    norm_flag = check_gradients and isinstance(grad_norm, torch.Tensor)
    if norm_flag:
        flags.append(torch.isfinite(grad_norm).reshape(()).to(flags[0].device if flags else grad_norm.device))
    values = on_every_process(torch.stack(flags)).tolist() if flags else []  # every process decides alike
    if loss_finite is not None and not values.pop(0):
        return "loss"
    if norm_flag:
        return None if values[0] else "gradients"
    return "gradients" if check_gradients and nonfinite_gradients(model) else None


class GradientGuard(TrainerCallback):
    """Checks the step before each optimiser step (after clipping), with one host read: `stop` raises naming the
    step, `skip` skips it.

    With fp16's grad scaler, non-finite gradients are the scaler's business (it skips the step and lowers its scale).
    """

    def __init__(self, policy: str):
        self.policy = policy
        self.trainer = None  # the ExperimentDPOTrainer, set once it exists

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer is None:
            return
        loss_finite, trainer.loss_finite = trainer.loss_finite, None
        grad_norm, trainer.step_grad_norm = getattr(trainer, "step_grad_norm", None), None
        if not trainer.skip_pending:
            scaled = trainer.accelerator.scaler is not None
            problem = nonfinite_step(loss_finite, grad_norm, trainer.model, check_gradients=not scaled)
            if problem is not None:
                if self.policy != "skip":
                    raise NonFiniteError(
                        f"non-finite {problem} at step {state.global_step + 1}; the last good checkpoint is kept"
                    )
                trainer.skip_optimizer_step(f"non-finite {problem}")
        if trainer.skip_pending:  # after clipping, just before optimizer.step()
            trainer.skip_pending = False
            make_skippable(trainer.optimizer).skip()


class NonFiniteStop(TrainerCallback):
    """`on_nonfinite=stop` for the TRL trainers other than dpo_exp's DPO trainer (SFT, RLOO, Online DPO): non-finite
    gradients just before an optimiser step stop the run naming the step, so the last good checkpoint is kept. The
    `skip` policy needs the DPO trainer's micro-batch bookkeeping; Method.check refuses it for the other methods.
    With fp16's grad scaler, non-finite gradients are the scaler's business (it skips the step itself)."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None or args.fp16:
            return
        if nonfinite_gradients(model):
            raise NonFiniteError(
                f"non-finite gradients at step {state.global_step + 1}; the last good checkpoint is kept"
            )
