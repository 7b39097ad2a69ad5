"""Preference data: load (hub or local files), normalise to prompt/chosen/rejected, filter, subset, split.

Every loader returns plain rows `{prompt, chosen, rejected[, score_chosen, score_rejected]}`; filtering and
splitting are shared. Problems in the user's data raise `UserError` naming the file, line or column.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UserError
from .conversation import (
    check_last_turns,
    conversational_row,
    encode_prompts,
    refuse_conversations,
    uses_chat,
)
from .files import RawSplit, check_columns, load_located_splits
from .schema import PreferenceData
from .splits import divide_pairs, drop_long_prompts, filter_pairs, judge_settings, seeded_subset, split_by_prompt

__all__ = ["filter_pairs", "load_preference_data", "load_run_preferences", "seeded_subset", "split_by_prompt"]

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
    if not conversational:
        check_last_turns(raw, ds_cfg)
    out = []
    for index, row in enumerate(raw.rows):
        try:
            normalized = normalize(row, ds_cfg.columns)
            if conversational:
                normalized = conversational_row(row, normalized, ds_cfg.loader, ds_cfg.columns)
            else:
                refuse_conversations(normalized)
            out.append(normalized)
        except UserError as exc:
            raise UserError(f"{raw.locate(index)}: {exc}") from None
    return out


# ---------------------------------------------------------------- filtering, subsetting, splitting


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


def prompt_fits_within(tokenizer, max_length: Any, room: int) -> Callable[[Any], bool]:
    """Whether a prompt, as the model sees it (a conversation through its chat template), leaves `room` completion
    tokens within `max_length` (None: every prompt fits)."""

    def prompt_fits(prompt: Any) -> bool:
        if max_length is None:
            return True
        return len(encode_prompts(tokenizer, [prompt], verbose=False).input_ids[0]) + room <= int(max_length)

    return prompt_fits


def load_run_preferences(cfg: Any, tokenizer) -> PreferenceData:
    """The run's pairs as a preference task loads them: prompts that fit `trainer.max_length`, the judge's share
    carved out (judge_settings), a held-out pool sized to what evaluation samples (`eval.num_prompts`)."""
    share, judge_seed = judge_settings(cfg)
    ev = cfg.get("eval") or {}
    return load_preference_data(
        cfg.dataset,
        int(cfg.seed),
        prompt_fits_within(tokenizer, cfg.trainer.max_length, int(cfg.train.min_prompt_tokens)),
        cfg.trainer.max_length,
        uses_chat(tokenizer),
        judge_share=share,
        judge_seed=judge_seed,
        heldout_prompts=int(ev.num_prompts) if ev.get("enabled") else 0,
    )


def load_preference_data(
    ds_cfg: Any,
    seed: int,
    prompt_fits: Callable[[Any], bool] | None = None,
    max_length: Any = None,
    conversational: bool = False,
    judge_share: float = 0.0,
    judge_seed: int = 0,
    heldout_prompts: int | None = None,
) -> PreferenceData:
    """Load, normalise, filter, split and subset a preference dataset according to its config.

    `prompt_fits(prompt)` (optional) says whether a prompt leaves room for a response within max_length.
    `conversational` (the model has a chat template): pairs in TRL's conversational format, every turn kept.
    `judge_share` > 0 carves that share of the training prompts out for a trained judge (`data.judge`), disjoint
    from the DPO pairs and the held-out prompts. `heldout_prompts` is how many prompts evaluation samples: without
    a test split no more prompts than that (or `eval_size`) are held out. Every pair is counted: `counts` says
    where each went (dropped_*, judge, train, unused by data_size, eval pairs, eval prompts only, unused).
    """
    if ds_cfg.loader == "mixture":  # several sources, each loaded and held out by this function
        from .mixture import load_mixture_data

        def load_source(source_cfg: Any) -> PreferenceData:
            return load_preference_data(
                source_cfg,
                seed,
                prompt_fits,
                max_length,
                conversational,
                judge_share=judge_share,  # a trained judge learns from its share of every source
                judge_seed=judge_seed,
                heldout_prompts=heldout_prompts,
            )

        size = ds_cfg.get("data_size")
        return load_mixture_data(ds_cfg, seed, load_source, None if size is None else int(size))
    if ds_cfg.loader == "feedback":  # unpaired rows (method=kto)
        from .feedback import load_feedback_data

        return load_feedback_data(ds_cfg, seed, prompt_fits, max_length, heldout_prompts)
    if ds_cfg.loader not in NORMALIZERS:
        raise UserError(f"dataset.loader={ds_cfg.loader!r} is not one of {sorted(NORMALIZERS)}")
    splits, source = load_located_splits(ds_cfg)
    cleaned, templated, counts = _clean_splits(splits, ds_cfg, conversational, prompt_fits, max_length)
    return divide_pairs(ds_cfg, cleaned, templated, counts, source, seed, judge_share, judge_seed, heldout_prompts)


def _clean_splits(
    splits: dict[str, RawSplit], ds_cfg: Any, conversational: bool, prompt_fits: Any, max_length: Any
) -> tuple[dict[str, list[dict]], dict[str, list[dict]], dict[str, int]]:
    """Each split checked, normalised, filtered, templated and cut to prompts that fit: (cleaned, templated, counts)."""
    counts: dict[str, int] = {}
    cleaned: dict[str, list[dict]] = {}
    templated: dict[str, list[dict]] = {}
    for split, raw in splits.items():
        where = f"{raw.origin} [{split}]" if ds_cfg.get("path") else raw.origin
        check_columns(raw.rows, required_columns(ds_cfg), where)
        normalized = normalize_split(raw, ds_cfg, conversational)
        kept, dropped = filter_pairs(normalized, bool(ds_cfg.drop_ties), where, raw.locate)
        counts[f"{split}_raw"] = len(raw.rows)
        counts.update({f"{split}_dropped_{k}": v for k, v in dropped.items()})
        if not kept:
            raise UserError(f"{where}: 0 pairs left after filtering ({len(raw.rows)} rows; dropped {dropped})")
        # text templates are for plain-text models; a chat model's template is applied by TRL
        kept = templated[split] = kept if conversational else apply_template(kept, ds_cfg)
        kept, counts[f"{split}_dropped_too_long"] = drop_long_prompts(kept, prompt_fits, where, max_length)
        cleaned[split] = kept
    return cleaned, templated, counts
