"""Preference loaders on the real samples: UltraFeedback formats, HH-RLHF prompt split, filters, subsets, eval split."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dpo_exp.data.files import read_records
from dpo_exp.data.preference import (
    ASSISTANT_TAG,
    filter_pairs,
    load_preference_data,
    normalize_hh,
    split_hh_dialogue,
)
from dpo_exp.errors import UserError

from .conftest import compose


def read_jsonl(path: Path, n: int | None = None) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return rows[:n] if n else rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def dataset_cfg(*overrides: str):
    return compose(list(overrides)).dataset


def pair_key(row: dict) -> tuple[str, str, str]:
    return row["prompt"], row["chosen"], row["rejected"]


# ---------------------------------------------------------------- UltraFeedback


def test_ultrafeedback_flat_sample_is_templated_and_ties_counted(ultrafeedback_file):
    raw = read_jsonl(ultrafeedback_file)
    usable = [
        r for r in raw if r["chosen"].strip() and r["rejected"].strip() and r["chosen"].strip() != r["rejected"].strip()
    ]
    ties = sum(r["metadata"]["score_chosen"] == r["metadata"]["score_rejected"] for r in usable)
    data = load_preference_data(dataset_cfg("dataset=ultrafeedback", f"dataset.path={ultrafeedback_file}"), seed=0)
    assert data.counts["train_raw"] == len(raw) == 1000
    assert data.counts["train_dropped_ties"] == ties > 0  # nested metadata scores are read
    kept = len(raw) - ties - data.counts["train_dropped_empty"] - data.counts["train_dropped_identical"]
    held_out = round(kept * 0.1)  # dataset.eval_fraction, capped at dataset.eval_size=64 for evaluation
    assert data.counts["train_pairs"] == kept - held_out and data.counts["eval_pairs"] == min(64, held_out)
    by_prompt = {f"\n\nHuman: {r['prompt']}\n\nAssistant:": r for r in raw}
    for row in data.train[:20]:
        source = by_prompt[row["prompt"]]  # the template wraps the flat instruction in one dialogue turn
        assert row["chosen"] == " " + source["chosen"].lstrip() and row["rejected"] == " " + source["rejected"].lstrip()
        assert source["metadata"]["score_chosen"] != source["metadata"]["score_rejected"]


def to_chat(row: dict, with_prompt: bool, nested: bool) -> dict:
    """The hub's H4 layout: chosen/rejected as [user, assistant] message lists; scores top-level or nested."""
    out = {
        "chosen": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["rejected"]}],
    }
    if with_prompt:
        out["prompt"] = row["prompt"]
    scores = dict(row["metadata"])
    out.update({"metadata": scores} if nested else scores)
    return out


@pytest.mark.parametrize("with_prompt,nested", [(True, True), (False, False), (False, True)])
def test_ultrafeedback_chat_lists_give_the_same_pairs_as_flat_strings(
    tmp_path, ultrafeedback_file, with_prompt, nested
):
    raw = read_jsonl(ultrafeedback_file, 60)
    flat = write_jsonl(tmp_path / "flat.jsonl", raw)
    chat = write_jsonl(tmp_path / "chat.jsonl", [to_chat(r, with_prompt, nested) for r in raw])
    a = load_preference_data(dataset_cfg("dataset=ultrafeedback", f"dataset.path={flat}"), seed=1)
    b = load_preference_data(dataset_cfg("dataset=ultrafeedback", f"dataset.path={chat}"), seed=1)
    assert [pair_key(r) for r in a.train] == [pair_key(r) for r in b.train]
    assert a.counts["train_dropped_ties"] == b.counts["train_dropped_ties"] > 0
    assert a.counts == b.counts


# ---------------------------------------------------------------- HH-RLHF


def test_hh_split_recombines_to_the_original_dialogues(hh_file):
    raw = read_jsonl(hh_file)
    cfg = dataset_cfg("dataset=hh_rlhf")
    early = 0
    for source in raw:
        row = normalize_hh(source, cfg.columns)
        assert row["prompt"] + row["chosen"] == source["chosen"]
        assert row["prompt"] + row["rejected"] == source["rejected"]
        assert row["prompt"].endswith(ASSISTANT_TAG)
        cut = len(row["prompt"]) - len(ASSISTANT_TAG)
        if cut != source["chosen"].rfind(ASSISTANT_TAG) or cut != source["rejected"].rfind(ASSISTANT_TAG):
            early += 1  # diverged before the final assistant turn: split at the last shared one
            assert ASSISTANT_TAG in row["chosen"] + row["rejected"]  # later turns stay in the responses
    assert early == 4  # the shared sample holds exactly four such rows


def test_hh_split_cases():
    same_prefix = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?"
    row = split_hh_dialogue(same_prefix + "\n\nAssistant: no.", same_prefix + "\n\nAssistant: sure!")
    assert row == {"prompt": same_prefix + ASSISTANT_TAG, "chosen": " no.", "rejected": " sure!"}
    # diverging inside an earlier assistant turn: the prompt stops at that turn's tag
    row = split_hh_dialogue(
        "\n\nHuman: q\n\nAssistant: A\n\nHuman: more\n\nAssistant: x", "\n\nHuman: q\n\nAssistant: B"
    )
    assert row == {
        "prompt": "\n\nHuman: q\n\nAssistant:",
        "chosen": " A\n\nHuman: more\n\nAssistant: x",
        "rejected": " B",
    }
    # no shared assistant turn at all: no prompt can be separated
    assert split_hh_dialogue("\n\nHuman: a", "\n\nHuman: b")["prompt"] == ""


def test_hh_file_loads_with_counts(hh_file):
    data = load_preference_data(dataset_cfg("dataset=hh_rlhf", f"dataset.path={hh_file}", "data_size=50"), seed=0)
    assert len(data.train) == 50 and len(data.eval) == 64  # eval_size caps the held-out fraction
    assert data.counts["train_raw"] == 2000
    assert all(r["prompt"].endswith(ASSISTANT_TAG) for r in data.train + data.eval)


# ---------------------------------------------------------------- filters


def test_filter_counts_empty_identical_ties():
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "  ", "rejected": "b"},  # empty
        {"prompt": "p", "chosen": "a", "rejected": None},  # missing value: empty
        {"prompt": "p", "chosen": " same ", "rejected": "same"},  # identical after stripping
        {"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 5.0, "score_rejected": 5.0},  # tie
        {"prompt": "", "chosen": "a", "rejected": "b", "score_chosen": 6.0, "score_rejected": 5.0},  # empty prompt ok
    ]
    kept, counts = filter_pairs(rows, drop_ties=True, where="x")
    assert counts == {"empty": 2, "identical": 1, "ties": 1} and kept == [rows[0], rows[5]]
    kept, counts = filter_pairs(rows, drop_ties=False, where="x")
    assert counts["ties"] == 0 and len(kept) == 3


def test_filter_rejects_non_text_naming_row_and_column():
    with pytest.raises(UserError, match=r"x: row 2: column 'rejected' must be text, got int"):
        filter_pairs(
            [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": 1}],
            drop_ties=True,
            where="x",
        )


def test_file_counts_reach_the_preference_data(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]
    rows += [{"prompt": "e", "chosen": "", "rejected": "x"}, {"prompt": "i", "chosen": "y", "rejected": "y"}]
    rows += [{"prompt": "t", "chosen": "c", "rejected": "r", "score_chosen": 1, "score_rejected": 1}]
    path = write_jsonl(tmp_path / "f.jsonl", rows)
    data = load_preference_data(dataset_cfg("dataset=preference_files", f"dataset.path={path}"), 0)
    assert data.counts == {
        "train_raw": 13,
        "train_dropped_empty": 1,
        "train_dropped_identical": 1,
        "train_dropped_ties": 1,
        "train_dropped_too_long": 0,
        "train_pairs": 9,
        "train_unused_pairs": 0,
        "eval_pairs": 1,
        "eval_prompts": 1,
        "eval_prompt_only_pairs": 0,
        "eval_unused_pairs": 0,
        "eval_dropped_prompt_overlap": 0,
    }


# ---------------------------------------------------------------- subsets and eval splits


def test_data_size_subset_is_seeded(hh_file):
    def train(seed: int, size: int) -> list[tuple]:
        cfg = dataset_cfg("dataset=hh_rlhf", f"dataset.path={hh_file}", f"data_size={size}")
        return [pair_key(r) for r in load_preference_data(cfg, seed).train]

    assert train(3, 20) == train(3, 20)
    assert train(3, 20) != train(4, 20)
    assert len(train(3, 20)) == 20 and set(train(3, 20)) <= set(train(3, 200))


def test_eval_split_from_a_test_file_has_no_overlap(tmp_path, hh_file):
    raw = read_jsonl(hh_file)
    write_jsonl(tmp_path / "train.jsonl", raw[:300])
    write_jsonl(tmp_path / "test.jsonl", raw[300:400])
    data = load_preference_data(dataset_cfg("dataset=hh_rlhf", f"dataset.path={tmp_path}", "dataset.eval_size=null"), 0)
    cfg = dataset_cfg("dataset=hh_rlhf")
    test_pairs = {pair_key(normalize_hh(r, cfg.columns)) for r in raw[300:400]}
    assert {pair_key(r) for r in data.eval} <= test_pairs and len(data.eval) == data.counts["test_raw"] - sum(
        data.counts[f"test_dropped_{k}"] for k in ("empty", "identical", "ties", "too_long")
    )
    assert not {pair_key(r) for r in data.train} & test_pairs
    assert data.counts["train_raw"] == 300 and data.counts["test_raw"] == 100


def test_held_out_fraction_has_no_overlap(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]
    path = write_jsonl(tmp_path / "f.jsonl", rows)
    data = load_preference_data(
        dataset_cfg("dataset=preference_files", f"dataset.path={path}", "dataset.eval_fraction=0.25"), seed=0
    )
    assert len(data.eval) == 10 and len(data.train) == 30
    assert not {pair_key(r) for r in data.train} & {pair_key(r) for r in data.eval}
    assert data.eval_prompts == [r["prompt"] for r in data.eval]


# ---------------------------------------------------------------- file formats


def test_csv_parquet_json_and_jsonl_read_the_same_rows(tmp_path):
    rows = [
        {"prompt": f"q{i}, with a comma", "chosen": f"good\n{i}", "rejected": "", "score_chosen": float(i)}
        for i in range(5)
    ]
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.json").write_text(json.dumps(rows), encoding="utf-8")
    pd.DataFrame(rows).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    for suffix in ("jsonl", "json", "csv", "parquet"):
        assert read_records(tmp_path / f"a.{suffix}") == rows, suffix


def test_byte_order_mark_is_not_data(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows[0]).encode())
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\np,a,b\n")
    assert read_records(tmp_path / "a.jsonl") == rows == read_records(tmp_path / "a.csv")
