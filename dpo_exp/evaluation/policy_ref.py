"""The policy and its reference, however the run defined the reference.

- LoRA: the reference is the same network with the adapter disabled (`model.disable_adapter()`): no second copy.
- Full fine-tuning: TRL's frozen copy (`trainer.ref_model`) when it has the policy's dtype.
- Otherwise (`precompute_ref_log_probs`: TRL keeps no reference; or a half-precision frozen copy) the starting
  model is rebuilt in the policy's dtype: the warm-started reference at `reference_path` (the task's result), else
  `models.build_model` with the run's seed (deterministic for the tiny model; the same hub/local weights otherwise).

Policy and reference always run in the same dtype here, so identical models give identical log-probs and samples:
KL exactly 0 and win rate exactly 0.5.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..models import is_peft


class PolicyReference:
    """A policy and a context manager giving its reference (a separate model, or the policy without adapter)."""

    def __init__(self, policy, reference=None):
        if reference is None and not is_peft(policy):
            raise ValueError("a full fine-tuned policy needs an explicit reference model")
        self.policy = policy
        self._reference = reference

    @property
    def shares_weights(self) -> bool:
        """True when the reference is the policy with its adapter disabled."""
        return self._reference is None

    @contextmanager
    def reference(self) -> Iterator[Any]:
        if self._reference is not None:
            yield self._reference
        else:
            with self.policy.disable_adapter():
                yield self.policy


def param_dtype(model):
    return next(model.parameters()).dtype


def load_reference(cfg: Any, reference_path: Path | str | None = None, device: str = "cpu", dtype=None):
    """The run's starting model (in `dtype`, default fp32): the warm-started reference at `reference_path` when the
    run has one, else the configured model."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..models import build_model

    dtype = dtype or torch.float32
    path = reference_path
    if path:
        if not Path(path).exists():
            from ..errors import UserError

            raise UserError(f"reference_path={path} (the warm-started reference) does not exist")
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return build_model(cfg.model, int(cfg.seed), "fp32", device).to(dtype).eval()


def from_trainer(trainer, cfg: Any, reference_path: Path | str | None = None) -> PolicyReference:
    """The policy a DPOTrainer trained and the reference it trained against."""
    policy = trainer.model
    frozen = getattr(trainer, "ref_model", None)
    if frozen is not None and param_dtype(frozen) == param_dtype(policy):
        return PolicyReference(policy, frozen)
    if is_peft(policy):
        return PolicyReference(policy)
    device = str(next(policy.parameters()).device)
    reference = load_reference(cfg, reference_path, device, param_dtype(policy))
    reference.requires_grad_(False)
    return PolicyReference(policy, reference)


def from_run_dir(
    run_dir: Path, cfg: Any, reference_path: Path | str | None = None, device: str = "cpu"
) -> PolicyReference:
    """Rebuild a finished run's policy (run_dir/model) and reference, as evaluate_policy saw them in the run
    (`reference_path`: its warm-started reference, used when run_dir/model has no base/ copy)."""
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = Path(run_dir) / "model"
    if not model_dir.is_dir():
        from ..errors import UserError

        raise UserError(f"run_dir={run_dir} has no model/ folder (the run did not finish training)")
    base = model_dir / "base"  # the run's own copy of its starting model (dpo_exp/training/export.py), when it has one
    adapter = next((d for d in (model_dir / "adapter", model_dir) if (d / "adapter_config.json").exists()), None)
    if adapter is not None:  # LoRA: the reference is the policy with its adapter disabled, as in the run
        from peft import PeftModel

        if (base / "config.json").is_file():
            reference = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).to(device).eval()
        else:
            reference = load_reference(cfg, reference_path, device)
        return PolicyReference(PeftModel.from_pretrained(reference, str(adapter)).to(device).eval())
    policy = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto").to(device).eval()
    dtype = param_dtype(policy)  # the reference runs in the policy's dtype: identical models -> KL exactly 0
    if (base / "config.json").is_file():
        reference = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype).to(device).eval()
    else:
        reference = load_reference(cfg, reference_path, device, dtype)
    return PolicyReference(policy, reference)
