"""A sequence-classification reward model as a judge (hub id or local save_pretrained folder).

The input format must be the one the model was trained on (`reward.input_format`):
- `text_pair`: the tokenizer's text pair (question, completion), as OpenAssistant's DeBERTa reward models (a
  conversation's question: its one user message, or the dialogue so far in HH form);
- `dialogue`: the dialogue as one HH-RLHF text ("\\n\\nHuman: ...\\n\\nAssistant: ..."), as the GPT-2-large HH
  helpful/harmless reward models: a text prompt joined to the completion as it is, a conversation (a chat model's
  prompt) written turn by turn in that form;
- `chat_template`: the dialogue as chat messages through the judge's own chat template, as Skywork-Reward-V2: a
  conversation's messages as they are, an HH text prompt split into its turns.
The score is the logit of `reward.label_index` (reward models have one). Texts are scored in batches of
`reward.batch_size`, on the GPU when there is one, cut from the LEFT to `reward.max_length` tokens so the completion
is always seen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from .base import Judge, completion_text, dialogue_text, judge_messages, question_text, setting

log = logging.getLogger(__name__)

INPUT_FORMATS = ("text_pair", "dialogue", "chat_template")


class RewardModelJudge(Judge):
    """`reward.hub_id` (or a local folder) loaded with AutoModelForSequenceClassification, frozen, batched."""

    name = "reward_model"

    def __init__(self, cfg: Any = None, context: Any = None) -> None:
        super().__init__()
        self.configure(cfg)
        if not self.source:
            raise UserError("reward.hub_id is empty: name a hub reward model or a local save_pretrained folder")
        self.load(self.source)

    def configure(self, cfg: Any) -> None:
        """Read and check the settings (no model loads)."""
        self.input_format = str(setting(cfg, "input_format", "dialogue"))
        if self.input_format not in INPUT_FORMATS:
            raise UserError(f"reward.input_format={self.input_format!r} is not one of {list(INPUT_FORMATS)}")
        self.batch_size = int(setting(cfg, "batch_size", 16))
        self.max_length = int(setting(cfg, "max_length", 512))
        self.label_index = int(setting(cfg, "label_index", 0))
        self.append_eos = bool(setting(cfg, "append_eos", False))
        self.revision = setting(cfg, "revision", None)
        self.device = self._device(str(setting(cfg, "device", "auto")))
        self.source = str(setting(cfg, "hub_id", "") or "")

    @staticmethod
    def _device(spec: str) -> str:
        import torch

        return ("cuda" if torch.cuda.is_available() else "cpu") if spec == "auto" else spec

    def load(self, source: str) -> None:
        """Load model and tokenizer from a hub id or folder: fp16 on a GPU (frozen), fp32 on the CPU."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..infra.hub import hub_access

        self.dtype = "fp16" if self.device.startswith("cuda") else "fp32"
        revision = None if Path(source).is_dir() else self.revision
        with hub_access("reward model", source, "reward.hub_id"):
            self.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                source, revision=revision, dtype=torch.float16 if self.dtype == "fp16" else torch.float32
            )
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:  # GPT-2 style: pad with EOS (the model reads the last non-pad token)
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.truncation_side = "left"  # keep the completion, drop the oldest turns
        labels = int(self.model.config.num_labels)
        if not 0 <= self.label_index < labels:
            raise UserError(f"reward.label_index={self.label_index} but {source} has {labels} output(s)")
        if self.input_format == "chat_template" and not getattr(self.tokenizer, "chat_template", None):
            raise UserError(f"reward.input_format=chat_template but {source}'s tokenizer has no chat template")
        self.loaded_from = source
        self.info.update(kind=self.name, source=source, input_format=self.input_format, device=self.device)

    def texts(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[Any]:
        """What this judge reads per (prompt, completion), in its input format: a text (dialogue, chat_template) or
        a (question, answer) tuple (text_pair). Prompts are text or conversations, completions text or messages."""
        answers = [completion_text(c) for c in completions]
        eos = (self.tokenizer.eos_token or "") if self.append_eos else ""
        if self.input_format == "text_pair":
            return [(question_text(p), a + eos) for p, a in zip(prompts, answers)]
        if self.input_format == "dialogue":
            return [dialogue_text(p, a) + eos for p, a in zip(prompts, answers)]
        tok = self.tokenizer
        texts = [tok.apply_chat_template(judge_messages(p, a), tokenize=False) for p, a in zip(prompts, answers)]
        bos = tok.bos_token  # the template writes BOS itself; tokenizing would add a second one (Skywork's card)
        return [t[len(bos) :] if bos and t.startswith(bos) else t for t in texts]

    def encode(self, prompts: Sequence[Any], completions: Sequence[Any]) -> dict[str, Any]:
        """Token ids of a batch in this judge's input format (left-truncated to max_length, padded)."""
        tok, texts = self.tokenizer, self.texts(prompts, completions)
        common = {"truncation": True, "max_length": self.max_length, "padding": True, "return_tensors": "pt"}
        if self.input_format == "text_pair":
            return tok([q for q, _ in texts], [a for _, a in texts], **common)
        return tok(texts, **common)

    def score(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        import torch
        from tqdm.auto import tqdm

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        scores: list[float] = []
        starts = range(0, len(prompts), self.batch_size)
        for start in tqdm(starts, desc=f"scoring ({self.name})", unit="batch", disable=len(starts) <= 8):
            batch = self.encode(prompts[start : start + self.batch_size], completions[start : start + self.batch_size])
            with torch.inference_mode():
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits
            scores += logits[:, self.label_index].float().cpu().tolist()
        return scores

    def identity(self) -> str:
        """Weights (a local folder by content, a hub id by revision), input format, length, label, dtype."""
        source = f"{self.loaded_from}@{self.revision or 'main'}"
        if Path(self.loaded_from).is_dir():
            from ..infra.cache import folder_digest
            from ..models import MODEL_FILE_PATTERNS

            source = f"files:{folder_digest(Path(self.loaded_from), MODEL_FILE_PATTERNS)}"
        extra = ":eos" if self.append_eos else ""
        return f"{self.name}:{source}:{self.input_format}:{self.max_length}:{self.label_index}:{self.dtype}{extra}"
