"""Parameter counts from a transformers config: from the shapes of the known families (GPT-2, Llama-style), else
on a meta-device build (shapes only, no weights)."""

from __future__ import annotations

from typing import Any


def dims(config: Any) -> tuple[int, int, int, int]:
    """(layers, hidden, intermediate, vocabulary) of a transformers config."""
    hidden = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    inner = getattr(config, "n_inner", None) or getattr(config, "intermediate_size", None) or 4 * hidden
    return layers, hidden, int(inner), int(config.vocab_size)


def mlp_kind(config: Any) -> str:
    """gelu_new (GPT-2's eager tanh GELU), gated (SwiGLU: a separate gate projection) or fused (one-op GELU)."""
    act = str(getattr(config, "activation_function", None) or getattr(config, "hidden_act", "") or "")
    if getattr(config, "model_type", "") == "gpt2" or act == "gelu_new":
        return "gelu_new" if act in ("gelu_new", "") else "fused"
    return "gated" if getattr(config, "intermediate_size", None) else "fused"


def linear_layers(config: Any) -> list[tuple[str, int, int, bool]] | None:
    """(module name, in features, out features, has bias) of one transformer block's linear layers, for the
    families known here (GPT-2; Llama-style: llama, qwen2, mistral, ...); None for another family."""
    layers, hidden, inner, _ = dims(config)
    if getattr(config, "model_type", "") == "gpt2":
        return [
            ("c_attn", hidden, 3 * hidden, True),
            ("c_proj", hidden, hidden, True),
            ("c_fc", hidden, inner, True),
            ("c_proj", inner, hidden, True),
        ]
    if mlp_kind(config) == "gated" and hasattr(config, "num_attention_heads"):
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads) * head_dim
        qkv_bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
        return [
            ("q_proj", hidden, heads * head_dim, qkv_bias),
            ("k_proj", hidden, kv, qkv_bias),
            ("v_proj", hidden, kv, qkv_bias),
            ("o_proj", heads * head_dim, hidden, bool(getattr(config, "attention_bias", False))),
            ("gate_proj", hidden, inner, False),
            ("up_proj", hidden, inner, False),
            ("down_proj", inner, hidden, False),
        ]
    return None


def count_parameters(
    config: Any, lora_r: int | None = None, lora_targets: tuple[str, ...] = ()
) -> tuple[int, int, int]:
    """(parameters, trainable parameters, parameters of one block). Counted from the config's shapes for the known
    families (nothing imported but the config), else on a meta-device build of the architecture (shapes only, no
    memory, no weights). LoRA trains r x (in + out) per targeted linear layer, as PEFT adds it."""
    layers, hidden, _, vocab = dims(config)
    linears = linear_layers(config)
    if linears is None:
        key = (config.to_json_string(), lora_r, tuple(lora_targets))
        if key not in _COUNTS:
            _COUNTS[key] = _count_on_meta(config, lora_r, lora_targets)
        return _COUNTS[key]
    block = sum(i * o + (o if bias else 0) for _, i, o, bias in linears)
    if config.model_type == "gpt2":
        block += 4 * hidden  # two LayerNorms (weight and bias)
        total = vocab * hidden + int(config.n_positions) * hidden + layers * block + 2 * hidden
    else:
        block += 2 * hidden  # two RMSNorms
        total = vocab * hidden + layers * block + hidden
        if not getattr(config, "tie_word_embeddings", False):
            total += vocab * hidden
    if lora_r is None:
        return total, total, block
    targeted = [(i, o) for name, i, o, _ in linears if "all-linear" in lora_targets or name in lora_targets]
    return total, layers * sum(lora_r * (i + o) for i, o in targeted), block


_COUNTS: dict[tuple, tuple[int, int, int]] = {}  # validation runs often on the same model: count it once


def _count_on_meta(config: Any, lora_r: int | None, lora_targets: tuple[str, ...]) -> tuple[int, int, int]:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # tied weights once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    layer = 0
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            layer = max(layer, sum(p.numel() for p in module[0].parameters()))
    if lora_r is None:
        return total, total, layer
    trainable = 0
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2 or "lm_head" in name or "wte" in name or "embed" in name:
            continue
        if "all-linear" in lora_targets or short in lora_targets:
            trainable += lora_r * (weight.shape[0] + weight.shape[1])
    return total, trainable, layer
