"""The app's models: one reference, one policy per run, and a context manager to sample from any of them.

The first LoRA run is loaded with `evaluation.policy_ref.from_run_dir` (the reference is its adapter-disabled base);
the other LoRA runs of a sweep become further named adapters of that PEFT model, so the base weights are held
once. Full fine-tuned runs load their own model next to it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..evaluation.policy_ref import PolicyReference, from_run_dir
from ..models import is_peft
from .runs import REFERENCE, RunInfo


def adapter_dir(run: RunInfo):
    """The run's LoRA adapter folder (model/adapter, or model/ itself in runs saved before the standalone layout),
    None for a fully fine-tuned run."""
    model_dir = run.path / "model"
    return next((d for d in (model_dir / "adapter", model_dir) if (d / "adapter_config.json").is_file()), None)


def is_lora_run(run: RunInfo) -> bool:
    return adapter_dir(run) is not None


@dataclass
class Models:
    """The tokenizer, the shared PolicyReference and, per run label, an adapter name (LoRA) or a model."""

    tokenizer: Any
    pair: PolicyReference
    policies: dict[str, Any]
    # held while a model is in use: the Generate tab, the Rate tab and its pair-ahead thread share one PEFT model,
    # whose active adapter (or disabled adapter, for the reference) must not change under a running generation
    lock: threading.RLock = field(default_factory=threading.RLock)

    @contextmanager
    def use(self, label: str) -> Iterator[Any]:
        """The model to sample from for `label` (REFERENCE or a run label), held for this thread meanwhile."""
        with self.lock:
            if label == REFERENCE:
                with self.pair.reference() as reference:
                    yield reference
                return
            target = self.policies[label]
            if isinstance(target, str):
                self.pair.policy.set_adapter(target)
                yield self.pair.policy
            else:
                yield target


def load_models(runs: list[RunInfo], device: str) -> Models:
    """Load the reference once and every run's policy (LoRA runs first, so they share the first one's base)."""
    from transformers import AutoModelForCausalLM

    from ..models import load_tokenizer

    ordered = sorted(runs, key=lambda r: not is_lora_run(r))
    first = ordered[0]
    pair = from_run_dir(first.path, first.cfg, first.summary.get("reference_path"), device)
    policies: dict[str, Any] = {first.label: "default" if is_peft(pair.policy) else pair.policy}
    for number, run in enumerate(ordered[1:], start=1):
        if is_lora_run(run):
            name = f"run{number}"
            pair.policy.load_adapter(str(adapter_dir(run)), adapter_name=name)
            policies[run.label] = name
        else:
            policies[run.label] = AutoModelForCausalLM.from_pretrained(str(run.path / "model")).to(device).eval()
    if is_peft(pair.policy):
        pair.policy.eval()
    return Models(load_tokenizer(first.cfg.model, first.cfg.dataset.get("chat_template")), pair, policies)
