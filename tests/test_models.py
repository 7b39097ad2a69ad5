"""Models and tokenizers offline: the real GPT-2 BPE tokenizer and a tiny GPT-2 built from GPT2Config."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from dpo_exp.models import build_model, load_tokenizer, lora_config, offline_gpt2_tokenizer, resolve_precision

from .conftest import compose


def test_offline_tokenizer_is_the_real_gpt2_bpe():
    tokenizer = offline_gpt2_tokenizer()
    assert tokenizer("Hello world").input_ids == [15496, 995]
    assert len(tokenizer) == 50257
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token_id == 50256
    text = "DPO works offline, isn't it neat?"
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_tiny_model_is_deterministic_and_runs():
    cfg = compose(["model=tiny_gpt2", "model.tiny.n_layer=1", "model.tiny.n_embd=32", "model.tiny.n_head=2"])
    a, b = build_model(cfg.model, seed=1), build_model(cfg.model, seed=1)
    c = build_model(cfg.model, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    tokenizer = load_tokenizer(cfg.model)
    out = a(**tokenizer(["a tiny model"], return_tensors="pt"))
    assert out.logits.shape[-1] == 50257 and torch.isfinite(out.logits).all()


def test_lora_targets_gpt2_attention():
    cfg = compose(
        ["model=tiny_gpt2", "lora=gpt2_attn", "model.tiny.n_layer=1", "model.tiny.n_embd=32", "model.tiny.n_head=2"]
    )
    config = lora_config(cfg.lora, build_model(cfg.model, seed=0))
    assert set(config.target_modules) == {"c_attn", "c_proj"} and config.r == cfg.lora.r


def test_precision_is_fp32_on_cpu_and_overridable():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert OmegaConf.select(compose(["model=gpt2"]), "model.dtype") == "auto"
