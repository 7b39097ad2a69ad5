"""LoRA: which modules an adapter can target (checked before any model loads) and the peft.LoraConfig to train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


# Layer types PEFT's LoRA can wrap (peft.tuners.lora.model._create_new_module), by class name.
LORA_LAYER_TYPES = frozenset({"Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention"})
# The LoRA-able leaf names of every GPT-2 (any size): c_attn (fused q/k/v), c_proj (attention and MLP output),
# c_fc (MLP input), wte/wpe (embeddings), lm_head. tests/test_bad_input.py checks this against a meta-device GPT-2.
GPT2_LORA_NAMES = frozenset({"c_attn", "c_proj", "c_fc", "wte", "wpe", "lm_head"})
GPT2_HUB_LAYERS = {"gpt2": 12, "gpt2-medium": 24, "gpt2-large": 36, "gpt2-xl": 48, "distilgpt2": 6}


def lora_targets_problem(targets: Any, modules: dict[str, str]) -> str | None:
    """Why `targets` cannot be LoRA targets of a model whose modules are {qualified name: class name}; None if fine.

    Matching follows PEFT: a target names a module when it equals the module's name or is a dotted suffix of it,
    and every module it names must be a layer type LoRA supports.
    """
    if isinstance(targets, str):
        if targets == "all-linear":
            return None
        targets = [targets]
    targets = list(targets)
    available = sorted({n.rsplit(".", 1)[-1] for n, kind in modules.items() if n and kind in LORA_LAYER_TYPES})
    if not targets:
        return f"lora.target_modules is empty; available: {available}"
    problems = []
    for target in targets:
        hits = [kind for name, kind in modules.items() if name == target or name.endswith("." + target)]
        if not hits:
            problems.append(f"{target!r} is not a module of the model")
        elif any(kind not in LORA_LAYER_TYPES for kind in hits):
            problems.append(f"{target!r} is a {sorted(set(hits) - LORA_LAYER_TYPES)[0]}, which LoRA cannot wrap")
    if problems:
        return f"lora.target_modules={targets}: {'; '.join(problems)}; available: {available}"
    return None


def _gpt2_config(model_cfg: Any):
    """A GPT2Config with the configured architecture (tiny or a known hub GPT-2), or None when not GPT-2."""
    from transformers import GPT2Config

    if model_cfg.get("tiny"):
        tiny = model_cfg.tiny
        return GPT2Config(
            n_layer=int(tiny.n_layer),
            n_embd=int(tiny.n_embd),
            n_head=int(tiny.n_head),
            n_positions=int(tiny.n_positions),
        )
    hub_id = str(model_cfg.get("hub_id") or "").removeprefix("openai-community/")
    if hub_id in GPT2_HUB_LAYERS:
        return GPT2Config(n_layer=GPT2_HUB_LAYERS[hub_id])
    return None


def architecture_modules(model_cfg: Any) -> dict[str, str] | None:
    """{module name: class name} of the configured model, from a weightless meta-device build; None when the
    architecture is not known without downloading (hub models other than GPT-2)."""
    import torch

    try:
        if model_cfg.get("path"):
            if not (Path(str(model_cfg.path)) / "config.json").is_file():
                return None
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.from_pretrained(str(model_cfg.path))
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
        else:
            from transformers import GPT2LMHeadModel

            config = _gpt2_config(model_cfg)
            if config is None:
                return None
            with torch.device("meta"):
                model = GPT2LMHeadModel(config)
    except Exception:  # noqa: BLE001 - an unreadable config is reported when the model itself is loaded
        return None
    return {name: type(module).__name__ for name, module in model.named_modules()}


def is_gpt2_family(model_cfg: Any) -> bool:
    """True when the configured model is a GPT-2 known without loading it (tiny, or a GPT-2 hub id)."""
    if model_cfg.get("path"):
        config = Path(str(model_cfg.path)) / "config.json"
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "gpt2"
        except (OSError, ValueError, AttributeError):
            return False
    hub_id = str(model_cfg.get("hub_id") or "").removeprefix("openai-community/")
    return bool(model_cfg.get("tiny")) or hub_id in GPT2_HUB_LAYERS


def check_lora_targets(lora_cfg: Any, model_cfg: Any) -> None:
    """Before any model loads: the LoRA target modules must exist in the configured architecture.

    For GPT-2 (tiny, hub GPT-2 ids, local GPT-2 folders) plain names are checked against GPT2_LORA_NAMES without
    importing torch, so the error comes in about a second; dotted names ("attn.c_attn") and other local
    architectures are checked against the module names of a meta-device build (no weights, no download). Models
    whose architecture is unknown before loading (hub models other than GPT-2) are checked after loading, in
    `lora_config`.
    """
    if not lora_cfg.get("enabled"):
        return
    raw = lora_cfg.target_modules
    targets = [raw] if isinstance(raw, str) else list(raw or [])
    if targets == ["all-linear"]:
        return
    if targets and is_gpt2_family(model_cfg) and all("." not in t for t in targets):
        unknown = [t for t in targets if t not in GPT2_LORA_NAMES]
        if unknown:
            raise UserError(
                f"lora.target_modules={targets}: {unknown} not LoRA-able modules of GPT-2; "
                f"available: {sorted(GPT2_LORA_NAMES)}"
            )
        return
    modules = architecture_modules(model_cfg)
    if modules is None:
        return
    problem = lora_targets_problem(targets, modules)
    if problem:
        raise UserError(problem)


def lora_config(lora_cfg: Any, model: PreTrainedModel):
    """A peft.LoraConfig for the model, checking that the target modules exist (naming the ones that do)."""
    from peft import LoraConfig

    modules = {name: type(module).__name__ for name, module in model.named_modules()}
    raw = lora_cfg.target_modules
    targets = raw if isinstance(raw, str) else list(raw)
    problem = lora_targets_problem(targets, modules)
    if problem:
        raise UserError(problem)
    return LoraConfig(
        r=int(lora_cfg.r),
        lora_alpha=int(lora_cfg.alpha),
        lora_dropout=float(lora_cfg.dropout),
        target_modules=targets,
        task_type="CAUSAL_LM",
        fan_in_fan_out=True,  # GPT-2's Conv1D stores weights transposed
    )
