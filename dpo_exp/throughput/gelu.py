"""GPT-2's eager tanh GELU as torch's one-kernel tanh GELU while training (`train.fused_gelu`)."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


def swap_tanh_gelu(model: Any, fused: bool = True) -> int:
    """Replace each of the model's eager tanh-GELU modules (transformers' `NewGELUActivation`, GPT-2's `gelu_new`:
    ~8 element-wise ops, each saving its output for backward) by the one-kernel `GELUTanh` (torch's
    `gelu(approximate="tanh")`: the same function, equal up to float rounding), or back with `fused=False`. The
    model's config is left alone, so what is saved and reloaded still names its own activation. Returns how many
    modules were swapped."""
    from transformers.activations import GELUTanh, NewGELUActivation

    source, target = (NewGELUActivation, GELUTanh) if fused else (GELUTanh, NewGELUActivation)
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is source:
                setattr(module, name, target())
                swapped += 1
    return swapped


class FusedTanhGelu(TrainerCallback):
    """The fused tanh GELU (`swap_tanh_gelu`) while the Trainer trains, the model's own activation again when it
    ends (evaluation, generation and the saved model then compute exactly what a reloaded model computes)."""

    def __init__(self, model: Any):
        self.model = model

    def on_train_begin(self, args, state, control, **kwargs):
        swap_tanh_gelu(self.model, fused=True)

    def on_train_end(self, args, state, control, **kwargs):
        swap_tanh_gelu(self.model, fused=False)
