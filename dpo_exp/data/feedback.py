"""Binary feedback: unpaired (prompt, completion, label) rows, a thumbs-up (desirable) or thumbs-down per completion,
as `method=kto` trains on them (TRL's unpaired preference format; `python -m dpo_exp.human export --format kto`
writes them). Held out by prompt like pairs; the held-out rows of a prompt with both kinds are also paired
(desirable vs undesirable) for the evaluation's pair metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UserError
from .conversation import prompt_key, unique_prompts
from .files import RawSplit, check_columns, load_located_splits
from .schema import PreferenceData
from .splits import drop_long_prompts, seeded_subset, split_by_prompt

TRUE, FALSE = ("true", "1", "yes", "desirable"), ("false", "0", "no", "undesirable")


def feedback_label(value: Any) -> bool:
    """A row's label as a bool: true/false, 1/0, or the words true/false, yes/no, desirable/undesirable."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise UserError(f"label must be true/false (or 1/0), got {str(value)[:40]!r}")


def feedback_rows(raw: RawSplit, ds_cfg: Any) -> list[dict]:
    """The split's rows as {prompt, completion, label}, the dataset's text template applied; bad rows name their
    location; empty completions are dropped."""
    columns, template, prefix = ds_cfg.columns, ds_cfg.get("prompt_template"), ds_cfg.get("response_prefix") or ""
    out = []
    for index, row in enumerate(raw.rows):
        prompt, completion = row.get(columns.prompt), row.get(columns.completion)
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise UserError(f"{raw.locate(index)}: prompt and completion must be text")
        try:
            label = feedback_label(row.get(columns.label))
        except UserError as exc:
            raise UserError(f"{raw.locate(index)}: {exc}") from None
        if completion.strip():
            prompt = template.replace("{prompt}", prompt) if template else prompt
            out.append({"prompt": prompt, "completion": prefix + completion.lstrip(), "label": label})
    return out


def heldout_pairs(rows: list[dict]) -> list[dict]:
    """prompt/chosen/rejected pairs of the held-out rows: each prompt's desirable completions matched in order with
    its undesirable ones (what the evaluation's pair metrics read)."""
    by_prompt: dict[str, tuple[Any, list[str], list[str]]] = {}
    for row in rows:
        entry = by_prompt.setdefault(prompt_key(row["prompt"]), (row["prompt"], [], []))
        entry[1 if row["label"] else 2].append(row["completion"])
    return [
        {"prompt": prompt, "chosen": good, "rejected": bad}
        for prompt, goods, bads in by_prompt.values()
        for good, bad in zip(goods, bads)
    ]


def load_feedback_data(
    ds_cfg: Any, seed: int, prompt_fits: Callable[[Any], bool] | None, max_length: Any, heldout_prompts: int | None
) -> PreferenceData:
    """Binary-feedback rows: `eval_fraction` of the distinct prompts held out (or the test split), the training rows
    cut to `data_size`."""
    splits, source = load_located_splits(ds_cfg)
    counts: dict[str, int] = {}
    cleaned: dict[str, list[dict]] = {}
    for split, raw in splits.items():
        where = f"{raw.origin} [{split}]" if ds_cfg.get("path") else raw.origin
        check_columns(raw.rows, [ds_cfg.columns.prompt, ds_cfg.columns.completion, ds_cfg.columns.label], where)
        rows = feedback_rows(raw, ds_cfg)
        counts[f"{split}_raw"] = len(raw.rows)
        counts[f"{split}_dropped_empty"] = len(raw.rows) - len(rows)
        rows, counts[f"{split}_dropped_too_long"] = drop_long_prompts(rows, prompt_fits, where, max_length)
        cleaned[split] = rows
    pool = seeded_subset(cleaned["train"], None, seed)
    if "test" in cleaned:
        seen = {prompt_key(r["prompt"]) for r in cleaned["train"]}
        eval_pool = [r for r in cleaned["test"] if prompt_key(r["prompt"]) not in seen]
    else:
        cap = max(int(heldout_prompts), int(ds_cfg.eval_size or 0)) if heldout_prompts else None
        eval_pool, pool = split_by_prompt(pool, float(ds_cfg.eval_fraction), source, cap)
    size = ds_cfg.get("data_size")
    if size is not None and int(size) > len(pool):
        raise UserError(f"data_size={size} but only {len(pool)} training feedback rows are available after filtering")
    train = pool[: int(size)] if size is not None else pool
    pairs = heldout_pairs(eval_pool)
    eval_pairs = pairs[: int(ds_cfg.eval_size)] if ds_cfg.get("eval_size") else pairs
    prompts = unique_prompts(r["prompt"] for r in eval_pool)
    prompts = prompts[: int(heldout_prompts)] if heldout_prompts else prompts
    references = {}
    for row in eval_pool:
        if row["label"]:
            references.setdefault(prompt_key(row["prompt"]), row["completion"])
    counts.update(
        {
            "train_rows": len(train),
            "train_desirable": sum(r["label"] for r in train),
            "train_undesirable": sum(not r["label"] for r in train),
            "train_unused_rows": len(pool) - len(train),
            "eval_rows": len(eval_pool),
            "eval_pairs": len(eval_pairs),
            "eval_prompts": len(prompts),
        }
    )
    return PreferenceData(
        train=train,
        eval=eval_pairs,
        counts=counts,
        source=source,
        eval_prompts=prompts,
        eval_references=references,
    )
