"""`reward=trained_rm`: a reward model trained here with TRL's RewardTrainer, the gold-RM protocol.

It learns from `reward.share` of the run's distinct training prompts (drawn with `reward.seed`, not the run's seed,
so every run of a sweep is judged by the same model), disjoint from the DPO training pairs and from the held-out
prompts (`dpo_exp.data.preference.carve_judge_share`). The base model is `reward.base` (a tiny GPT-2 built offline,
a hub id or a local folder); it is trained and saved once per content key (base, settings, pairs, device) under
`cache_dir/reward_model/`, like the warm start. Its accuracy on the run's held-out pairs (chosen scored above
rejected) is `info["heldout_accuracy"]`, reported as eval/judge_accuracy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import UserError
from .base import completion_text, dialogue_text, setting
from .reward_model import RewardModelJudge

log = logging.getLogger(__name__)


class TrainedRewardModel(RewardModelJudge):
    """A Bradley-Terry reward model on the dialogue text (prompt + response + EOS), as RewardTrainer trains it; a
    chat model's conversations are written in HH form (`dialogue_text`), for training and scoring alike."""

    name = "trained_rm"

    def __init__(self, cfg: Any = None, context: Any = None) -> None:
        super(RewardModelJudge, self).__init__()
        self.configure(cfg)
        self.input_format, self.append_eos = "dialogue", True  # the text RewardTrainer saw
        if context is None or not hasattr(context, "dataset"):
            raise UserError("reward=trained_rm needs the run config (dataset, model, cache_dir) to train on")
        self.settings = train_settings(cfg)
        data = self._data(context)
        if len(data.judge) < 2:
            raise UserError(f"reward=trained_rm: reward.share={cfg.share} leaves {len(data.judge)} pair(s) to train on")
        pairs = data.judge[: self.settings["max_pairs"]] if self.settings["max_pairs"] else data.judge
        entry = self._train_cached(context.cache_dir, pairs)
        self.load(str(entry.path))
        self.key = entry.key
        accuracy, n = self.pair_accuracy(data.eval)
        self.info.update(
            {
                "kind": self.name,
                "cache": entry.status,
                "path": str(entry.path),
                "train_pairs": len(pairs),
                **{k: v for k, v in entry.info.items() if k != "train_pairs"},
                "heldout_accuracy": accuracy,
                "heldout_pairs": n,
            }
        )
        log.info("trained_rm (%s): held-out pair accuracy %s on %d pairs", entry.status, accuracy, n)

    @staticmethod
    def _data(context: Any):
        from ..data.preference import judge_settings, load_run_preferences
        from ..models import load_tokenizer

        if judge_settings(context)[0] <= 0:
            raise UserError("reward=trained_rm needs reward.share > 0 (the share of prompts it learns from)")
        if not context.dataset.get("loader"):
            raise UserError(f"reward=trained_rm learns from preference pairs; dataset={context.dataset.name} has none")
        return load_run_preferences(context, load_tokenizer(context.model))

    def pair_accuracy(self, pairs: list[dict]) -> tuple[float | None, int]:
        """Share of pairs whose chosen response scores above the rejected one (ties count half)."""
        if not pairs:
            return None, 0
        prompts = [r["prompt"] for r in pairs]
        chosen = self.score(prompts, [r["chosen"] for r in pairs])
        rejected = self.score(prompts, [r["rejected"] for r in pairs])
        wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)]
        return sum(wins) / len(wins), len(wins)

    def _train_cached(self, cache_dir: str, pairs: list[dict]):
        from ..infra.cache import arithmetic, cached, content_key

        description = {
            "settings": self.settings,
            "pairs": content_key([[r["prompt"], r["chosen"], r["rejected"]] for r in pairs], 64),
            "n_pairs": len(pairs),
            **arithmetic(self.device),
            "v": 1,
        }
        key = content_key(description)
        return cached(cache_dir, "reward_model", key, lambda folder: self._train(folder, pairs), description)

    def _train(self, folder: Path, pairs: list[dict]) -> dict[str, Any]:
        """RewardTrainer on pre-tokenised pairs (cut from the left to max_length, as scoring cuts them)."""
        import tempfile

        import torch
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer

        s = self.settings
        model, tokenizer = base_reward_model(s, self.device)
        tokenizer.truncation_side = "left"

        def ids(prompt: Any, response: Any) -> list[int]:  # the text the judge scores (a conversation in HH form)
            text = dialogue_text(prompt, completion_text(response)) + tokenizer.eos_token
            return tokenizer(text, truncation=True, max_length=self.max_length, verbose=False).input_ids

        rows = [
            {"chosen_ids": ids(r["prompt"], r["chosen"]), "rejected_ids": ids(r["prompt"], r["rejected"])}
            for r in pairs
        ]
        cuda = self.device.startswith("cuda")
        with tempfile.TemporaryDirectory() as out:
            args = RewardConfig(
                output_dir=out,
                num_train_epochs=s["epochs"],
                per_device_train_batch_size=s["batch_size"],
                learning_rate=s["lr"],
                seed=s["seed"],
                max_length=None,  # already cut (RewardTrainer would drop longer pairs instead)
                report_to=[],
                save_strategy="no",
                logging_steps=max(1, len(rows) // s["batch_size"] // 4),
                use_cpu=not cuda,
                bf16=cuda and torch.cuda.is_bf16_supported(),
                disable_tqdm=False,  # a progress bar (the judge trains before DPO)
                activation_checkpointing=True,  # TRL's default, by transformers 5's name (the old one warns)
            )
            trainer = RewardTrainer(
                model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
            )
            result = trainer.train()
        trainer.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return {"train_pairs": len(rows), "train_loss": float(result.training_loss)}

    def identity(self) -> str:
        return f"{self.name}:{self.key}:{self.max_length}:{self.dtype}"


def train_settings(cfg: Any) -> dict[str, Any]:
    """What the judge's weights follow from (besides its pairs): base model, size, share, optimisation."""
    base = setting(cfg, "base", None)
    tiny = setting(cfg, "tiny", None)
    return {
        "base": str(base) if base else None,
        "tiny": {k: int(tiny[k]) for k in ("n_layer", "n_embd", "n_head", "n_positions")}
        if tiny and not base
        else None,
        "share": float(setting(cfg, "share", 0.0)),
        "max_pairs": int(setting(cfg, "max_pairs", 0)) or None,
        "epochs": float(setting(cfg, "epochs", 1)),
        "batch_size": int(setting(cfg, "train_batch_size", 8)),
        "lr": float(setting(cfg, "lr", 1e-4)),
        "seed": int(setting(cfg, "seed", 0)),
        "max_length": int(setting(cfg, "max_length", 512)),
    }


def base_reward_model(settings: dict[str, Any], device: str):
    """(model with one output, tokenizer): a tiny GPT-2 built offline from `tiny` (seeded), else `base` loaded."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        GPT2Config,
        GPT2ForSequenceClassification,
    )

    if settings["base"]:
        from ..infra.hub import hub_access

        with hub_access("reward base model", settings["base"], "reward.base"):
            tokenizer = AutoTokenizer.from_pretrained(settings["base"])
            model = AutoModelForSequenceClassification.from_pretrained(settings["base"], num_labels=1)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        from ..models import offline_gpt2_tokenizer

        if not settings["tiny"]:
            raise UserError("reward=trained_rm: set reward.base (hub id or folder) or reward.tiny (a tiny GPT-2)")
        tokenizer = offline_gpt2_tokenizer()
        eos = tokenizer.eos_token_id
        config = GPT2Config(
            vocab_size=len(tokenizer),
            num_labels=1,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
            **settings["tiny"],
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings["seed"])
            model = GPT2ForSequenceClassification(config)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer
