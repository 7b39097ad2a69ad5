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

from .data.preference import seeded_subset
from .infra.cache import CacheEntry, arithmetic, cached, content_key
from .infra.distributed import barrier, broadcast, is_main_process, world_size
from .throughput import compact_lm_head

log = logging.getLogger(__name__)


def sft_settings(cfg: Any) -> dict[str, Any]:
    s = cfg.sft
    return {
        "lora": bool(s.lora),
        "max_steps": int(s.max_steps),
        "batch_size": int(s.batch_size),
        "lr": float(s.lr),
        "max_length": int(s.max_length),
        "num_texts": int(s.num_texts) if s.get("num_texts") else None,
        **({"packing": True} if s.get("packing") else {}),  # absent when off: earlier cache keys stay valid
    }


def sft_lora(cfg: Any) -> Any:
    """The LoRA settings an `sft.lora=true` warm start trains with: the run's `lora` group, or GPT-2 defaults."""
    return cfg.lora if cfg.lora.enabled else _default_lora()


def sft_key(cfg: Any, texts: list[str], device: str = "cpu", precision: str = "fp32") -> tuple[str, dict[str, Any]]:
    """The cache key of a warm start and everything it is computed from: the starting weights' content, seed,
    SFT settings, the LoRA settings when SFT trains an adapter, the texts, and device/precision (bf16 autocast on
    a GPU trains a different model than fp32 on a CPU), with the CPU thread count (`infra.cache.arithmetic`)."""
    from omegaconf import OmegaConf

    from .models import model_identity

    settings = sft_settings(cfg)
    lora = None
    if settings["lora"]:
        lora_cfg = sft_lora(cfg)
        lora = {
            k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
            for k, v in lora_cfg.items()
            if k in ("r", "alpha", "dropout", "target_modules")
        }
    description = {
        "model": model_identity(cfg.model),
        "seed": int(cfg.seed),
        "settings": settings,
        "lora": lora,
        "texts": content_key(texts, 64),
        "n_texts": len(texts),
        **arithmetic(device),
        "precision": precision,
        "v": 2,
    }
    return content_key(description), description


def sft_trainer(cfg: Any, model, tokenizer, texts: list[str], out: str, device: str, precision: str = "fp32"):
    """TRL's SFTTrainer for the warm start (`cfg.sft`), writing its checkpoints (none by default) under `out`: fp32
    weights, bf16/fp16 autocast per `precision`.

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
        from .lora import lora_config

        peft_config = lora_config(sft_lora(cfg), model)
    model = model.to(torch.float32)  # trainable weights are fp32 master weights; autocast does the half precision
    args = SFTConfig(
        output_dir=out,
        max_length=settings["max_length"],
        per_device_train_batch_size=settings["batch_size"],
        learning_rate=settings["lr"],
        max_steps=settings["max_steps"],
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a float < 1 is a ratio of the total steps
        logging_steps=max(1, settings["max_steps"] // 10),
        save_strategy="no",
        report_to="none",
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        packing=bool(settings.get("packing", False)),
        dataset_text_field="text",
        activation_checkpointing=False,  # transformers 5's name (the old one warns)
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    return CompactSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def _train(cfg: Any, model, tokenizer, texts: list[str], folder: Path, device: str, precision: str) -> dict[str, Any]:
    """SFT with TRL (fp32 weights, bf16/fp16 autocast per `precision`), merge LoRA if used, save_pretrained into
    `folder`; returns the loss figures."""
    import torch

    settings = sft_settings(cfg)
    with tempfile.TemporaryDirectory(prefix="dpo_exp_sft_") as out:
        trainer = sft_trainer(cfg, model, tokenizer, texts, out, device, precision)
        trainer.train()
        history = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        trained = trainer.model
        if settings["lora"]:
            trained = trained.merge_and_unload()
        trained = trained.to(torch.float32)
        trained.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    return {
        "steps": settings["max_steps"],
        "first_loss": history[0] if history else None,
        "last_loss": history[-1] if history else None,
    }


def _default_lora() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.create({"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["c_attn", "c_proj"]})


def _train_together(
    cfg: Any, model, tokenizer, texts: list[str], device: str, precision: str, key: str, description: Any
) -> str:
    """Several processes (torchrun / accelerate): the warm start trains data-parallel with all of them (a lone
    process 0 would wait forever for the others), process 0 writing the cache entry; the key counts the processes
    (the effective batch differs). Returns that key; afterwards every process finds the entry built."""
    from .infra.cache import check_entry

    key = broadcast(content_key({"sft": key, "processes": world_size()}))  # process 0's, whatever each one's threads
    manifest, _ = check_entry(Path(cfg.cache_dir) / "sft" / key, key)
    if broadcast(manifest is None):  # process 0 decides: everybody trains, or nobody does
        if is_main_process():
            cached(
                cfg.cache_dir,
                "sft",
                key,
                lambda folder: _train(cfg, model, tokenizer, texts, folder, device, precision),
                description,
            )
        else:
            with tempfile.TemporaryDirectory(prefix="dpo_exp_sft_rank_") as scratch:
                _train(cfg, model, tokenizer, texts, Path(scratch), device, precision)
    barrier()
    return key


def warm_start(
    cfg: Any, model, tokenizer, texts: list[str], device: str = "cpu", precision: str = "fp32"
) -> tuple[Any, CacheEntry]:
    """The SFT'd reference (loaded from its cache entry, built first when needed) and the entry.

    The returned model has fp32 weights (it is the policy DPO trains); `precision` is the autocast of the SFT."""
    import torch
    from transformers import AutoModelForCausalLM

    settings = sft_settings(cfg)
    texts = seeded_subset(texts, min(settings["num_texts"] or len(texts), len(texts)), int(cfg.seed))
    key, description = sft_key(cfg, texts, device, precision)
    if world_size() > 1:
        key = _train_together(cfg, model, tokenizer, texts, device, precision, key, description)
    entry = cached(
        cfg.cache_dir,
        "sft",
        key,
        lambda folder: _train(cfg, model, tokenizer, texts, folder, device, precision),
        description,
    )
    log.info("SFT warm start %s: %s (%s)", entry.status, entry.path, entry.info)
    warm = AutoModelForCausalLM.from_pretrained(str(entry.path), dtype=torch.float32)
    if warm.config.pad_token_id is None:
        warm.config.pad_token_id = warm.config.eos_token_id
    warm.generation_config.pad_token_id = warm.config.pad_token_id
    return warm.to(device=device), entry
