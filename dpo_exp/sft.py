"""Supervised warm start of the reference model on review texts (the DPO paper's IMDb setup), cached on disk.

TRL's `SFTTrainer` trains the model (full fine-tuning, or a LoRA adapter that is merged back in) on the train
split's reviews cut to `sft.max_length` tokens. The result is saved with `save_pretrained` into a cache entry
keyed by the starting model, the seed, the SFT settings and the texts, so every job of a sweep reuses it, and a
later standalone evaluation can rebuild the reference from `summary.json["reference_path"]`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from .cache import CacheEntry, cached, content_key
from .data import seeded_subset
from .throughput import compact_lm_head

log = logging.getLogger(__name__)


def sft_settings(cfg: Any) -> dict[str, Any]:
    s = cfg.sft
    return {
        "lora": bool(s.lora), "max_steps": int(s.max_steps), "batch_size": int(s.batch_size), "lr": float(s.lr),
        "max_length": int(s.max_length), "num_texts": int(s.num_texts) if s.get("num_texts") else None,
        **({"packing": True} if s.get("packing") else {}),  # absent when off: earlier cache keys stay valid
    }


def sft_key(cfg: Any, texts: list[str]) -> tuple[str, dict[str, Any]]:
    """The cache key of a warm start and what it is computed from."""
    from .models import model_source

    description = {
        "model": model_source(cfg.model), "seed": int(cfg.seed), "settings": sft_settings(cfg),
        "texts": content_key(texts, 64), "n_texts": len(texts), "v": 1,
    }
    return content_key(description), description


def sft_trainer(cfg: Any, model, tokenizer, texts: list[str], out: str, device: str):
    """TRL's SFTTrainer for the warm start (`cfg.sft`), writing its checkpoints (none by default) under `out`.

    `sft.packing` packs the texts into `max_length` rows with TRL's best-fit-decreasing packing (padding-free:
    every row full, attention kept within each text through position_ids) instead of padding each batch; on CPU
    the fused LM head scores only the labelled tokens (dpo_exp.throughput.compact_lm_head)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    class CompactSFTTrainer(SFTTrainer):
        """SFTTrainer whose fused LM head scores only labelled tokens on CPU too (no projection of padding)."""

        def compute_loss(self, *args, **kwargs):
            with compact_lm_head():
                return super().compute_loss(*args, **kwargs)

    settings = sft_settings(cfg)
    peft_config = None
    if settings["lora"]:
        from .models import lora_config

        peft_config = lora_config(cfg.lora if cfg.lora.enabled else _default_lora(), model)
    bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    args = SFTConfig(
        output_dir=out,
        max_length=settings["max_length"],
        per_device_train_batch_size=settings["batch_size"],
        learning_rate=settings["lr"],
        max_steps=settings["max_steps"],
        lr_scheduler_type="cosine",
        warmup_steps=0.05,                  # a float < 1 is a ratio of the total steps
        logging_steps=max(1, settings["max_steps"] // 10),
        save_strategy="no",
        report_to="none",
        use_cpu=device == "cpu",
        bf16=bf16,
        fp16=False,
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        packing=bool(settings.get("packing", False)),
        dataset_text_field="text",
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    return CompactSFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer, peft_config=peft_config,
    )


def _train(cfg: Any, model, tokenizer, texts: list[str], folder: Path, device: str) -> dict[str, Any]:
    """SFT with TRL, merge LoRA if used, save_pretrained into `folder`; returns the loss figures."""
    import torch

    settings = sft_settings(cfg)
    with tempfile.TemporaryDirectory(prefix="dpo_exp_sft_") as out:
        trainer = sft_trainer(cfg, model, tokenizer, texts, out, device)
        trainer.train()
        history = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        trained = trainer.model
        if settings["lora"]:
            trained = trained.merge_and_unload()
        trained = trained.to(torch.float32)
        trained.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    return {"steps": settings["max_steps"], "first_loss": history[0] if history else None,
            "last_loss": history[-1] if history else None}


def _default_lora() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.create({"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["c_attn", "c_proj"]})


def warm_start(cfg: Any, model, tokenizer, texts: list[str], device: str = "cpu") -> tuple[Any, CacheEntry]:
    """The SFT'd reference (loaded from its cache entry, built first when needed) and the entry."""
    from transformers import AutoModelForCausalLM

    settings = sft_settings(cfg)
    texts = seeded_subset(texts, min(settings["num_texts"] or len(texts), len(texts)), int(cfg.seed))
    key, description = sft_key(cfg, texts)
    entry = cached(cfg.cache_dir, "sft", key,
                   lambda folder: _train(cfg, model, tokenizer, texts, folder, device), description)
    log.info("SFT warm start %s: %s (%s)", entry.status, entry.path, entry.info)
    warm = AutoModelForCausalLM.from_pretrained(str(entry.path))
    if warm.config.pad_token_id is None:
        warm.config.pad_token_id = warm.config.eos_token_id
    warm.generation_config.pad_token_id = warm.config.pad_token_id
    dtype = next(model.parameters()).dtype
    return warm.to(device=device, dtype=dtype), entry
