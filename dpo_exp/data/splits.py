"""How preference pairs are filtered and divided: bad rows, long prompts, seeded subsets, held-out prompts, and
the share a trained judge learns from."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ..errors import UserError
from .conversation import conversation_problem, is_conversation, message_text, prompt_key, unique_prompts
from .schema import PreferenceData

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
            if isinstance(value, list) and not is_conversation(value):  # meant as messages: say what is wrong
                raise UserError(f"{locate(index)}: column '{key}' {conversation_problem(value)}")
            if value is not None and not isinstance(value, str) and not is_conversation(value):
                raise UserError(f"{locate(index)}: column '{key}' must be text, got {type(value).__name__}")
            if value is not None and not _encodable(message_text(value) or ""):  # e.g. a lone "\ud800" in JSON
                raise UserError(f"{locate(index)}: column '{key}' holds an invalid unicode character (lone surrogate)")
        chosen, rejected = (message_text(row.get(k)) for k in ("chosen", "rejected"))
        if row.get("prompt") is None or not (chosen or "").strip() or not (rejected or "").strip():
            counts["empty"] += 1
        elif chosen.strip() == rejected.strip():
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
    rows: list[dict], prompt_fits: Callable[[Any], bool] | None, where: str, max_length: Any
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
    prompts = list(dict.fromkeys(prompt_key(r["prompt"]) for r in pool))
    if len(prompts) < 2:
        raise UserError(
            f"{source}: only {len(prompts)} distinct prompt(s) left after filtering; need at least 2 (one is held "
            f"out for evaluation; or give a test file)"
        )
    count = min(len(prompts) - 1, max(1, int(round(len(prompts) * fraction))))
    if cap is not None:
        count = min(count, max(1, int(cap)))
    held = set(prompts[:count])
    return [r for r in pool if prompt_key(r["prompt"]) in held], [
        r for r in pool if prompt_key(r["prompt"]) not in held
    ]


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
    taken = {prompt_key(r["prompt"]) for r in judge}
    return judge, [r for r in cleaned if prompt_key(r["prompt"]) not in taken]


def heldout_prompt_list(eval_pairs: list[dict], eval_pool: list[dict], wanted: int | None) -> list[Any]:
    """Prompts evaluation samples: those of the held-out pairs first, then other held-out prompts up to `wanted`
    (None: all of them)."""
    first = unique_prompts(r["prompt"] for r in eval_pairs)
    seen = {prompt_key(p) for p in first}
    rest = [p for p in unique_prompts(r["prompt"] for r in eval_pool) if prompt_key(p) not in seen]
    extra = len(rest) if wanted is None else max(0, int(wanted) - len(first))
    return first + rest[:extra]


def heldout_counts(
    eval_pool: list[dict], eval_pairs: list[dict], eval_prompts: list[Any], counts: dict[str, int]
) -> dict[str, Any]:
    """Count where every held-out pair went (into `counts`); return the first chosen response of every sampled
    prompt, keyed by `prompt_key` (the reference of eval/win_rate_vs_chosen)."""
    sampled = {prompt_key(p) for p in eval_prompts}
    prompt_only = sum(1 for r in eval_pool[len(eval_pairs) :] if prompt_key(r["prompt"]) in sampled)
    counts.update(
        {
            "eval_pairs": len(eval_pairs),
            "eval_prompts": len(eval_prompts),
            "eval_prompt_only_pairs": prompt_only,  # held out; their prompts are sampled, the pairs not scored
            "eval_unused_pairs": len(eval_pool) - len(eval_pairs) - prompt_only,
        }
    )
    references: dict[str, Any] = {}
    for row in eval_pool:
        if prompt_key(row["prompt"]) in sampled:
            references.setdefault(prompt_key(row["prompt"]), row["chosen"])
    return references


def divide_pairs(
    ds_cfg: Any,
    cleaned: dict[str, list[dict]],
    templated: dict[str, list[dict]],
    counts: dict[str, int],
    source: str,
    seed: int,
    judge_share: float,
    judge_seed: int,
    heldout_prompts: int | None,
) -> PreferenceData:
    """The filtered splits divided into the judge's share, training pairs and held-out pairs and prompts."""
    judge: list[dict] = []
    train_rows = cleaned["train"]
    if judge_share > 0:
        judge, train_rows = carve_judge_share(templated["train"], train_rows, judge_share, judge_seed, source)
        counts["judge_pairs"] = len(judge)
        counts["train_judge_pairs"] = len(cleaned["train"]) - len(train_rows)  # of the rows DPO could have used
    pool = seeded_subset(train_rows, None, seed)
    eval_size = int(ds_cfg.eval_size) if ds_cfg.get("eval_size") else None
    if "test" in cleaned:  # a held-out pair whose prompt is also a training prompt measures memory, not preference
        seen = {prompt_key(r["prompt"]) for r in cleaned["train"]}
        eval_pool = [r for r in seeded_subset(cleaned["test"], None, seed) if prompt_key(r["prompt"]) not in seen]
        counts["eval_dropped_prompt_overlap"] = len(cleaned["test"]) - len(eval_pool)
        if not eval_pool:
            raise UserError(f"{source}: every held-out pair's prompt is also a training prompt; nothing to evaluate on")
    else:  # hold out a share of the distinct PROMPTS (no more than evaluation uses), before the training subset
        cap = max(int(heldout_prompts), eval_size or 0) if heldout_prompts else None
        eval_pool, pool = split_by_prompt(pool, float(ds_cfg.eval_fraction), source, cap)
        counts["eval_dropped_prompt_overlap"] = 0
    eval_pairs = eval_pool[:eval_size] if eval_size else eval_pool
    eval_prompts = heldout_prompt_list(eval_pairs, eval_pool, heldout_prompts)

    size = ds_cfg.get("data_size")
    if size is not None and int(size) > len(pool):
        raise UserError(
            f"data_size={size} but only {len(pool)} training pairs are available after filtering "
            f"(from {counts['train_raw']} rows)"
        )
    train = pool[: int(size)] if size is not None else pool
    counts.update({"train_pairs": len(train), "train_unused_pairs": len(pool) - len(train)})  # beyond data_size
    references = heldout_counts(eval_pool, eval_pairs, eval_prompts, counts)
    return PreferenceData(
        train=train,
        eval=eval_pairs,
        counts=counts,
        source=source,
        eval_prompts=eval_prompts,
        judge=judge,
        eval_references=references,
    )
