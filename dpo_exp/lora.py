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


def model_config(model_cfg: Any):
    """The configured model's transformers config without any weights: a tiny model's from its settings, a GPT-2
    hub id's from its known size, a folder's or hub model's from its config.json; None when unreadable offline."""
    from transformers import GPT2Config

    if model_cfg.get("tiny") and not model_cfg.get("path"):
        from .models.tiny import tiny_config, tiny_tokenizer

        return tiny_config(model_cfg.tiny, tiny_tokenizer(model_cfg.tiny))
    hub_id = str(model_cfg.get("hub_id") or "").removeprefix("openai-community/")
    if not model_cfg.get("path") and hub_id in GPT2_HUB_LAYERS:
        return GPT2Config(n_layer=GPT2_HUB_LAYERS[hub_id])
    from .models.hub import hub_config

    return hub_config(model_cfg)


def model_type(model_cfg: Any) -> str | None:
    """The configured model's `model_type` (gpt2, llama, qwen2, ...), known without loading weights; None if not."""
    if model_cfg.get("tiny") and not model_cfg.get("path"):
        from .models.tiny import architecture

        return architecture(model_cfg.tiny)
    if is_gpt2_family(model_cfg):
        return "gpt2"
    config = model_config(model_cfg)
    return None if config is None else str(config.model_type)


def architecture_modules(model_cfg: Any) -> dict[str, str] | None:
    """{module name: class name} of the configured model, from a weightless meta-device build of its actual config
    (any architecture; nothing is downloaded but a hub model's config.json); None when the config is unknown."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        config = model_config(model_cfg)
        if config is None:
            return None
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                config, trust_remote_code=bool(model_cfg.get("trust_remote_code", False))
            )
    except Exception:  # noqa: BLE001 - an unreadable config is reported when the model itself is loaded
        return None
    return {name: type(module).__name__ for name, module in model.named_modules()}


def is_gpt2_family(model_cfg: Any) -> bool:
    """True when the configured model is a GPT-2 known without loading it (tiny GPT-2, a GPT-2 hub id or folder)."""
    if model_cfg.get("path"):
        config = Path(str(model_cfg.path)) / "config.json"
        try:
            return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "gpt2"
        except (OSError, ValueError, AttributeError):
            return False
    if model_cfg.get("tiny"):
        return str(model_cfg.tiny.get("architecture") or "gpt2") == "gpt2"
    hub_id = str(model_cfg.get("hub_id") or "").removeprefix("openai-community/")
    return hub_id in GPT2_HUB_LAYERS


AUTO = "auto"
GPT2_DEFAULT_TARGETS = ["c_attn", "c_proj"]  # the seed project's choice: fused q/k/v and both output projections


def default_targets(kind: str | None) -> list[str] | str:
    """LoRA targets for an architecture: GPT-2's c_attn/c_proj; else PEFT's own per-model-type default
    (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`, what `LoraConfig(target_modules=None)` uses); else
    `all-linear` (every linear layer but the output head) for an architecture PEFT has no entry for."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    if kind == "gpt2":
        return list(GPT2_DEFAULT_TARGETS)
    return list(PEFT_TARGETS[kind]) if kind in PEFT_TARGETS else "all-linear"


def resolve_targets(raw: Any, kind: str | None) -> list[str] | str:
    """`lora.target_modules` as PEFT takes it: `auto` becomes the architecture's default."""
    if isinstance(raw, str):
        return default_targets(kind) if raw == AUTO else raw
    return list(raw or [])


def check_lora_targets(lora_cfg: Any, model_cfg: Any) -> None:
    """Before any model loads: the LoRA target modules must exist in the configured architecture.

    For GPT-2 (tiny, hub GPT-2 ids, local GPT-2 folders) plain names are checked against GPT2_LORA_NAMES without
    importing torch, so the error comes in about a second; `auto`, dotted names and every other architecture are
    checked against the module names of a meta-device build of the model's actual config (no weights). A hub model
    whose config.json cannot be read offline is checked after loading, in `lora_config`.
    """
    if not lora_cfg.get("enabled"):
        return
    raw = lora_cfg.target_modules
    if raw == "all-linear":
        return
    if raw != AUTO:
        targets = [raw] if isinstance(raw, str) else list(raw or [])
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
    problem = lora_targets_problem(resolve_targets(raw, model_type(model_cfg)), modules)
    if problem:
        raise UserError(problem)


def lora_config(lora_cfg: Any, model: PreTrainedModel):
    """A peft.LoraConfig for the model (`auto`: the architecture's default targets), checking that the target
    modules exist (naming the ones that do)."""
    from peft import LoraConfig

    modules = {name: type(module).__name__ for name, module in model.named_modules()}
    targets = resolve_targets(lora_cfg.target_modules, getattr(model.config, "model_type", None))
    problem = lora_targets_problem(targets, modules)
    if problem:
        raise UserError(problem)
    conv1d = any(kind == "Conv1D" for kind in modules.values())
    return LoraConfig(
        r=int(lora_cfg.r),
        lora_alpha=int(lora_cfg.alpha),
        lora_dropout=float(lora_cfg.dropout),
        target_modules=targets,
        task_type="CAUSAL_LM",
        fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores weights transposed; nn.Linear (Llama, Qwen2, ...) does not
    )
