"""How preference pairs are filtered and divided: bad rows, long prompts, seeded subsets, held-out prompts, and
the share a trained judge learns from."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ..errors import UserError

TEXT_KEYS = ("prompt", "chosen", "rejected")


def filter_pairs(
    rows: list[dict], drop_ties: bool, where: str, locate: Callable[[int], str] | None = None
) -> tuple[list[dict], dict[str, int]]:
    """Drop empty, identical and (optionally) tied pairs; reject wrong types naming the row and column.

    A missing value (None) counts as empty; an empty prompt is allowed (unconditional generation).
    `locate(index)` names a row in errors (default: "WHERE: row N").
    """
    locate = locate or (lambda index: f"{where}: row {index + 1}")
    counts = {"empty": 0, "identical": 0, "ties": 0}
    kept: list[dict] = []
    for index, row in enumerate(rows):
        for key in TEXT_KEYS:
            value = row.get(key)
            if value is not None and not isinstance(value, str):
                raise UserError(f"{locate(index)}: column '{key}' must be text, got {type(value).__name__}")
            if value is not None and not _encodable(value):  # e.g. a lone "\ud800" escape in JSON
                raise UserError(f"{locate(index)}: column '{key}' holds an invalid unicode character (lone surrogate)")
        if any(row.get(k) is None for k in TEXT_KEYS) or not row["chosen"].strip() or not row["rejected"].strip():
            counts["empty"] += 1
        elif row["chosen"].strip() == row["rejected"].strip():
            counts["identical"] += 1
        elif drop_ties and row.get("score_chosen") is not None and row.get("score_chosen") == row.get("score_rejected"):
            counts["ties"] += 1
        else:
            kept.append(row)
    return kept, counts


def _encodable(text: str) -> bool:
    """False for text that cannot be encoded as UTF-8 (lone surrogates), which tokenizers reject."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def drop_long_prompts(
    rows: list[dict], prompt_fits: Callable[[str], bool] | None, where: str, max_length: Any
) -> tuple[list[dict], int]:
    """Drop pairs whose prompt leaves no room for a response within max_length; error when none is left."""
    if prompt_fits is None:
        return rows, 0
    kept = [r for r in rows if prompt_fits(r["prompt"])]
    if rows and not kept:
        raise UserError(
            f"{where}: trainer.max_length={max_length} is too small: every prompt ({len(rows)}) leaves no room for "
            f"a response (raise trainer.max_length or shorten the prompts)"
        )
    return kept, len(rows) - len(kept)


def seeded_subset(rows: list[dict], size: int | None, seed: int) -> list[dict]:
    """A deterministic random subset (the whole list, shuffled, when size is None)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    if size is not None:
        order = order[:size]
    return [rows[i] for i in order]


def split_by_prompt(
    pool: list[dict], fraction: float, source: str, cap: int | None = None
) -> tuple[list[dict], list[dict]]:
    """(held-out, training) pairs: `fraction` of the distinct prompts (in the pool's seeded order, at most `cap` of
    them) and every pair that has one of them is held out, so no prompt is on both sides (HH-RLHF repeats prompts)."""
    prompts = list(dict.fromkeys(r["prompt"] for r in pool))
    if len(prompts) < 2:
        raise UserError(
            f"{source}: only {len(prompts)} distinct prompt(s) left after filtering; need at least 2 (one is held "
            f"out for evaluation; or give a test file)"
        )
    count = min(len(prompts) - 1, max(1, int(round(len(prompts) * fraction))))
    if cap is not None:
        count = min(count, max(1, int(cap)))
    held = set(prompts[:count])
    return [r for r in pool if r["prompt"] in held], [r for r in pool if r["prompt"] not in held]


def judge_settings(cfg: Any) -> tuple[float, int]:
    """(share, seed) of the preference data a trained judge learns from: the evaluation's judge (`eval.reward`,
    else the run's `reward`) when it has a `share` field (reward=trained_rm), else (0, 0)."""
    ev = cfg.get("eval") or {}
    judge = ev.get("reward") if ev.get("reward") is not None else cfg.get("reward")
    if judge is None or not judge.get("share"):
        return 0.0, 0
    return float(judge.share), int(judge.get("seed") or 0)


def carve_judge_share(
    templated: list[dict], cleaned: list[dict], share: float, seed: int, source: str
) -> tuple[list[dict], list[dict]]:
    """(the judge's pairs, the training rows left for DPO): `share` of the distinct prompts, drawn with the judge's
    own `seed` from the rows before the policy's length filter, so the judge does not change with the run's seed,
    model or max_length. Every pair of a judge prompt leaves the DPO pool."""
    judge, _ = split_by_prompt(seeded_subset(templated, None, seed), share, source)
    taken = {r["prompt"] for r in judge}
    return judge, [r for r in cleaned if r["prompt"] not in taken]


def heldout_prompt_list(eval_pairs: list[dict], eval_pool: list[dict], wanted: int | None) -> list[str]:
    """Prompts evaluation samples: those of the held-out pairs first, then other held-out prompts up to `wanted`
    (None: all of them)."""
    first = list(dict.fromkeys(r["prompt"] for r in eval_pairs))
    rest = [p for p in dict.fromkeys(r["prompt"] for r in eval_pool) if p not in set(first)]
    extra = len(rest) if wanted is None else max(0, int(wanted) - len(first))
    return first + rest[:extra]
