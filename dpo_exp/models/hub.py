"""Causal LMs and tokenizers from the Hugging Face hub or a local save_pretrained folder (`AutoModelForCausalLM`).

`model.revision` pins a hub branch, tag or commit; `model.trust_remote_code` (off by default) lets a hub repository
run its own modelling code, which is code from the internet: switch it on only for repositories you trust.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


def _source(model_cfg: Any) -> tuple[str, dict[str, Any]]:
    """(folder or hub id, from_pretrained keyword arguments common to configs, tokenizers and models)."""
    kwargs: dict[str, Any] = {"trust_remote_code": bool(model_cfg.get("trust_remote_code", False))}
    if model_cfg.get("path"):
        return str(model_cfg.path), kwargs
    return str(model_cfg.hub_id), {**kwargs, "revision": model_cfg.get("revision")}


def _access(model_cfg: Any):
    """An unreachable hub as one clear line (a local folder needs no hub)."""
    from contextlib import nullcontext

    from ..infra.hub import hub_access

    return nullcontext() if model_cfg.get("path") else hub_access("model", str(model_cfg.hub_id), "model.path")


def hub_tokenizer(model_cfg: Any) -> PreTrainedTokenizerBase:
    """The model's own tokenizer (its pad/EOS/BOS tokens, padding side and chat template)."""
    from transformers import AutoTokenizer

    name, kwargs = _source(model_cfg)
    with _access(model_cfg):
        return AutoTokenizer.from_pretrained(name, **kwargs)


def hub_config(model_cfg: Any) -> PretrainedConfig | None:
    """The model's config (config.json only, never weights); None when it cannot be read without the network."""
    from transformers import AutoConfig

    name, kwargs = _source(model_cfg)
    try:
        return AutoConfig.from_pretrained(name, **kwargs)
    except Exception:  # noqa: BLE001 - offline without a cached config, or no such repo: checked again when loading
        return None


def hub_model(model_cfg: Any, dtype, extra: dict[str, Any]) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` with the configured source, dtype and GPU options."""
    from transformers import AutoModelForCausalLM

    name, kwargs = _source(model_cfg)
    with _access(model_cfg):
        try:
            return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs, **extra)
        except ValueError as exc:
            if "trust_remote_code" in str(exc):
                raise UserError(
                    f"model {name} needs its own modelling code: set model.trust_remote_code=true if you trust it"
                ) from None
            raise
