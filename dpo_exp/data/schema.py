"""The one data type every task returns: training and held-out preference pairs, held-out prompts, counts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .conversation import prompt_key, unique_prompts

PAIR_ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")  # token ids of pairs built from samples


@dataclass
class PreferenceData:
    """Training and evaluation pairs plus the counts of what was dropped and why."""

    train: list[dict]
    eval: list[dict]
    counts: dict[str, int] = field(default_factory=dict)
    source: str = ""
    eval_prompts: list[str] = field(default_factory=list)  # held-out prompts for sampling-based evaluation
    judge: list[dict] = field(default_factory=list)  # pairs a trained judge learns from (disjoint from both above)
    eval_references: dict[str, Any] = field(default_factory=dict)  # prompt_key(held-out prompt) -> its chosen response
    eval_sources: dict[str, str] = field(default_factory=dict)  # prompt_key(held-out prompt) -> its source (mixtures)
    composition: list[dict] = field(default_factory=list)  # a mixture's sources: where from, weight/rows, pairs drawn

    def __post_init__(self) -> None:
        if not self.eval_prompts:
            self.eval_prompts = unique_prompts(r["prompt"] for r in self.eval)

    def heldout_hashes(self) -> dict[str, Any]:
        """sha256 (16 hex) of each held-out set: the same numbers in every member of a data_size sweep."""
        import hashlib

        def digest(obj: Any) -> str:
            return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]

        return {
            "eval_pairs": digest([[r["prompt"], r["chosen"], r["rejected"]] for r in self.eval]),
            "eval_pair_prompts": digest(sorted({prompt_key(r["prompt"]) for r in self.eval})),
            "eval_prompts": digest(self.eval_prompts),
            "n_eval_pairs": len(self.eval),
            "n_eval_prompts": len(self.eval_prompts),
        }
