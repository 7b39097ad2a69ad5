"""Preference data: load (hub or local files), normalise to prompt/chosen/rejected, filter, subset, split.

Every loader returns plain rows `{prompt, chosen, rejected[, score_chosen, score_rejected]}`; filtering and
splitting are shared. Problems in the user's data raise `UserError` naming the file, line or column.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ..errors import UserError
from .conversation import conversational_row, is_conversation, message_text, prompt_key
from .files import RawSplit, check_columns, load_located_splits
from .schema import PreferenceData

# ---------------------------------------------------------------- normalisation per source


def _message_text(value: Any, role: str | None = None) -> Any:
    """Flatten a chat-message list to the content of its last message (of `role`, when given)."""
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        chosen = [m for m in value if role is None or m.get("role") == role] or value
        return chosen[-1]["content"]
    return value


def _score(row: dict, key: str) -> float | None:
    """A pair's score, top-level (`score_chosen`) or nested (`metadata.score_chosen`); None when absent."""
    value = row.get(key)
    if value is None:
        meta = row.get("metadata")
        value = meta.get(key) if isinstance(meta, dict) else None
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"column '{key}' must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except ValueError:
        raise UserError(f"column '{key}' must be a number, got {str(value)[:40]!r}") from None


def _scores(row: dict, out: dict) -> dict:
    for key in ("score_chosen", "score_rejected"):
        value = _score(row, key)
        if value is not None:
            out[key] = value
    return out


def normalize_ultrafeedback(row: dict, columns: Any) -> dict:
    """UltraFeedback: flat strings (trl-lib flattened) or chat-message lists (hub); scores top-level or nested."""
    prompt = row.get(columns.prompt)
    if prompt is None and isinstance(row.get(columns.chosen), list):  # H4 format: the prompt is the first user turn
        users = [m for m in row[columns.chosen] if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[0].get("content") if users else None
    prompt = _message_text(prompt, role="user")
    out = {
        "prompt": prompt,
        "chosen": _message_text(row.get(columns.chosen), role="assistant"),
        "rejected": _message_text(row.get(columns.rejected), role="assistant"),
    }
    return _scores(row, out)


ASSISTANT_TAG = "\n\nAssistant:"


def split_hh_dialogue(chosen: str, rejected: str) -> dict:
    """Split two HH-RLHF dialogues into a shared prompt and the two responses.

    The prompt ends at the last "\\n\\nAssistant:" of the common prefix; when the dialogues diverge before the
    final assistant turn (a few rows in the source do), that earlier split point is used, so both responses keep
    everything after it.
    """
    common = 0
    limit = min(len(chosen), len(rejected))
    while common < limit and chosen[common] == rejected[common]:
        common += 1
    cut = chosen.rfind(ASSISTANT_TAG, 0, common)  # last tag lying wholly inside the shared prefix
    if cut < 0:  # no assistant turn in the shared part: no prompt can be separated
        return {"prompt": "", "chosen": chosen, "rejected": rejected}
    end = cut + len(ASSISTANT_TAG)
    return {"prompt": chosen[:end], "chosen": chosen[end:], "rejected": rejected[end:]}


def normalize_hh(row: dict, columns: Any) -> dict:
    """HH-RLHF: full dialogues split into prompt + responses (or an already split prompt column)."""
    chosen, rejected = row.get(columns.chosen), row.get(columns.rejected)
    if columns.prompt in row and row[columns.prompt] is not None:  # already split (e.g. trl-lib/hh-rlhf-helpful-base)
        return {"prompt": row[columns.prompt], "chosen": chosen, "rejected": rejected}
    if not isinstance(chosen, str) or not isinstance(rejected, str):  # the type check names the bad column
        return {"prompt": "", "chosen": chosen, "rejected": rejected}
    return split_hh_dialogue(chosen, rejected)


def normalize_files(row: dict, columns: Any) -> dict:
    """Local files: the configured prompt/chosen/rejected columns, plus scores when present."""
    out = {"prompt": row.get(columns.prompt), "chosen": row.get(columns.chosen), "rejected": row.get(columns.rejected)}
    return _scores(row, out)


NORMALIZERS: dict[str, Callable[[dict, Any], dict]] = {
    "ultrafeedback": normalize_ultrafeedback,
    "hh_rlhf": normalize_hh,
    "files": normalize_files,
}


def required_columns(ds_cfg: Any) -> list[str]:
    """Columns every row source must have: HH-RLHF and UltraFeedback can derive the prompt from the dialogue."""
    if ds_cfg.loader in ("hh_rlhf", "ultrafeedback"):
        return [ds_cfg.columns.chosen, ds_cfg.columns.rejected]
    return [ds_cfg.columns.prompt, ds_cfg.columns.chosen, ds_cfg.columns.rejected]


def normalize_split(raw: RawSplit, ds_cfg: Any, conversational: bool = False) -> list[dict]:
    """Normalise every row of a split (to TRL's conversational format when `conversational`: a chat model),
    prefixing the row's location to any error."""
    normalize = NORMALIZERS[ds_cfg.loader]
    out = []
    for index, row in enumerate(raw.rows):
        try:
            normalized = normalize(row, ds_cfg.columns)
            if conversational:
                normalized = conversational_row(row, normalized, ds_cfg.loader, ds_cfg.columns)
            out.append(normalized)
        except UserError as exc:
            raise UserError(f"{raw.locate(index)}: {exc}") from None
    return out


# ---------------------------------------------------------------- filtering, subsetting, splitting

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


def seeded_subset(rows: list[dict], size: int | None, seed: int) -> list[dict]:
    """A deterministic random subset (the whole list, shuffled, when size is None)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    if size is not None:
        order = order[:size]
    return [rows[i] for i in order]


def apply_template(rows: list[dict], ds_cfg: Any) -> list[dict]:
    """Wrap prompts/responses in the dataset's text template (e.g. Human/Assistant turns for flat strings)."""
    template = ds_cfg.get("prompt_template")
    prefix = ds_cfg.get("response_prefix") or ""
    if not template and not prefix:
        return rows
    if template and "{prompt}" not in template:
        raise UserError(f"dataset.prompt_template={template!r} must contain {{prompt}}")
    out = []
    for row in rows:
        row = dict(row)
        if template:
            row["prompt"] = template.replace("{prompt}", row["prompt"])
        row["chosen"], row["rejected"] = prefix + row["chosen"].lstrip(), prefix + row["rejected"].lstrip()
        out.append(row)
    return out


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


def split_by_prompt(pool: list[dict], fraction: float, source: str) -> tuple[list[dict], list[dict]]:
    """(held-out, training) pairs: `fraction` of the distinct prompts (in the pool's seeded order) and every pair
    that has one of them is held out, so no prompt is on both sides (HH-RLHF repeats prompts)."""
    prompts = list(dict.fromkeys(prompt_key(r["prompt"]) for r in pool))
    if len(prompts) < 2:
        raise UserError(
            f"{source}: only {len(prompts)} distinct prompt(s) left after filtering; need at least 2 (one is held "
            f"out for evaluation; or give a test file)"
        )
    held = set(prompts[: min(len(prompts) - 1, max(1, int(round(len(prompts) * fraction))))])
    return [r for r in pool if prompt_key(r["prompt"]) in held], [
        r for r in pool if prompt_key(r["prompt"]) not in held
    ]


def load_preference_data(
    ds_cfg: Any,
    seed: int,
    prompt_fits: Callable[[Any], bool] | None = None,
    max_length: Any = None,
    conversational: bool = False,
) -> PreferenceData:
    """Load, normalise, filter, split and subset a preference dataset according to its config.

    `prompt_fits(prompt)` (optional) says whether a prompt leaves room for a response within max_length.
    `conversational` (the model has a chat template): pairs in TRL's conversational format, every turn kept.
    """
    if ds_cfg.loader not in NORMALIZERS:
        raise UserError(f"dataset.loader={ds_cfg.loader!r} is not one of {sorted(NORMALIZERS)}")
    splits, source = load_located_splits(ds_cfg)
    counts: dict[str, int] = {}
    cleaned: dict[str, list[dict]] = {}
    for split, raw in splits.items():
        where = f"{raw.origin} [{split}]" if ds_cfg.get("path") else raw.origin
        check_columns(raw.rows, required_columns(ds_cfg), where)
        normalized = normalize_split(raw, ds_cfg, conversational)
        kept, dropped = filter_pairs(normalized, bool(ds_cfg.drop_ties), where, raw.locate)
        counts[f"{split}_raw"] = len(raw.rows)
        counts.update({f"{split}_dropped_{k}": v for k, v in dropped.items()})
        if not kept:
            raise UserError(f"{where}: 0 pairs left after filtering ({len(raw.rows)} rows; dropped {dropped})")
        kept = kept if conversational else apply_template(kept, ds_cfg)  # text templates are for plain-text models
        kept, counts[f"{split}_dropped_too_long"] = drop_long_prompts(kept, prompt_fits, where, max_length)
        cleaned[split] = kept

    pool = seeded_subset(cleaned["train"], None, seed)
    if "test" in cleaned:  # a held-out pair whose prompt is also a training prompt measures memory, not preference
        seen = {prompt_key(r["prompt"]) for r in cleaned["train"]}
        eval_pool = [r for r in seeded_subset(cleaned["test"], None, seed) if prompt_key(r["prompt"]) not in seen]
        counts["eval_dropped_prompt_overlap"] = len(cleaned["test"]) - len(eval_pool)
        if not eval_pool:
            raise UserError(f"{source}: every held-out pair's prompt is also a training prompt; nothing to evaluate on")
    else:  # hold out a share of the distinct PROMPTS, before the training subset is drawn
        eval_pool, pool = split_by_prompt(pool, float(ds_cfg.eval_fraction), source)
        counts["eval_dropped_prompt_overlap"] = 0
    if ds_cfg.get("eval_size"):
        eval_pool = eval_pool[: int(ds_cfg.eval_size)]

    size = ds_cfg.get("data_size")
    if size is not None and int(size) > len(pool):
        raise UserError(
            f"data_size={size} but only {len(pool)} training pairs are available after filtering "
            f"(from {counts['train_raw']} rows)"
        )
    train = pool[: int(size)] if size is not None else pool
    counts.update({"train_pairs": len(train), "eval_pairs": len(eval_pool)})
    return PreferenceData(train=train, eval=eval_pool, counts=counts, source=source)
