"""Data from anywhere (issue 32): any preference set by column mapping, binary feedback (prompt, completion, label)
and the Rate tab's votes exported as it, mixtures of sources (all fast: no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_exp.data.preference import load_preference_data
from dpo_exp.errors import UserError

from .conftest import compose


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def renamed_copy(source: Path, out: Path, names: dict[str, str]) -> Path:
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    return write_jsonl(out, [{names.get(k, k): v for k, v in row.items()} for row in rows])


# ---------------------------------------------------------------- column mapping


def test_any_preference_file_loads_by_naming_its_columns(tmp_path, ultrafeedback_file):
    """A renamed copy of the UltraFeedback sample, mapped back with dataset.columns.*, gives the same pairs."""
    copy = renamed_copy(
        ultrafeedback_file, tmp_path / "renamed.jsonl", {"prompt": "question", "chosen": "good", "rejected": "bad"}
    )
    original = load_preference_data(compose(["dataset=ultrafeedback", f"dataset.path={ultrafeedback_file}"]).dataset, 0)
    mapped_cfg = compose(
        [
            "dataset=ultrafeedback",
            f"dataset.path={copy}",
            "dataset.columns.prompt=question",
            "dataset.columns.chosen=good",
            "dataset.columns.rejected=bad",
        ]
    ).dataset
    mapped = load_preference_data(mapped_cfg, 0)
    assert mapped.train == original.train and mapped.eval == original.eval and len(mapped.train) > 700
    files_cfg = compose(
        [
            "dataset=preference_files",
            f"dataset.path={copy}",
            "dataset.columns={prompt: question, chosen: good, rejected: bad}",
        ]
    ).dataset
    assert len(load_preference_data(files_cfg, 0).train) > 700


def test_a_missing_column_is_one_line_listing_the_columns_there_are(tmp_path, ultrafeedback_file):
    copy = renamed_copy(ultrafeedback_file, tmp_path / "renamed.jsonl", {"chosen": "good"})
    cfg = compose(["dataset=preference_files", f"dataset.path={copy}"]).dataset
    with pytest.raises(UserError) as caught:
        load_preference_data(cfg, 0)
    message = str(caught.value)
    assert "\n" not in message and "missing column(s) ['chosen']" in message
    assert "found ['good', 'metadata', 'prompt', 'rejected', 'source_index']" in message


# ---------------------------------------------------------------- binary feedback


def feedback_file(path: Path, prompts: int = 20) -> Path:
    rows = []
    for i in range(prompts):
        rows += [
            {"prompt": f"Prompt {i}:", "completion": f" a good answer {i}", "label": True},
            {"prompt": f"Prompt {i}:", "completion": f" a bad answer {i}", "label": "false"},
        ]
    return write_jsonl(path, rows)


def test_binary_feedback_is_held_out_by_prompt_and_paired_for_the_pair_metrics(tmp_path):
    path = feedback_file(tmp_path / "feedback.jsonl")
    data = load_preference_data(
        compose(["dataset=feedback", f"dataset.path={path}", "dataset.eval_fraction=0.2"]).dataset, 0
    )
    train_prompts = {r["prompt"] for r in data.train}
    assert len(data.train) == 32 and {r["label"] for r in data.train} == {True, False}
    assert {tuple(sorted(r)) for r in data.train} == {("completion", "label", "prompt")}
    assert len(data.eval) == 4 and not train_prompts & {r["prompt"] for r in data.eval}
    assert all(" good " in r["chosen"] and " bad " in r["rejected"] for r in data.eval)
    assert data.counts["train_desirable"] == data.counts["train_undesirable"] == 16


def test_a_bad_feedback_label_names_its_line(tmp_path):
    path = write_jsonl(
        tmp_path / "f.jsonl",
        [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "p", "completion": "d", "label": "maybe"}],
    )
    with pytest.raises(UserError, match=r"f.jsonl line 2: label must be true/false \(or 1/0\), got 'maybe'"):
        load_preference_data(compose(["dataset=feedback", f"dataset.path={path}"]).dataset, 0)


def test_the_rate_tabs_votes_export_as_kto_feedback_and_train_kto(tmp_path):
    """`export --format kto`: each winner desirable, each loser undesirable, ties dropped; the file is the feedback
    dataset method=kto trains on (one KTO step on the tiny model)."""
    from dpo_exp.human.__main__ import main
    from dpo_exp.human.store import RatingStore
    from dpo_exp.methods.base import trl_args
    from dpo_exp.methods.kto import kto_trainer
    from dpo_exp.models import build_policy, load_tokenizer

    from .conftest import FAST_MODEL, FAST_TRAINER
    from .test_human import vote
    from .test_methods import method_settings

    store = RatingStore(tmp_path / "rated")
    for i in range(10):
        store.append(vote(f"p{i}", "policy", "reference", "left" if i % 2 else "right"))
    store.append(vote("tied", "policy", "reference", "tie"))
    out = tmp_path / "kto.jsonl"
    assert main(["export", str(tmp_path / "rated"), "--out", str(out), "--format", "kto"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20 and "tied" not in {r["prompt"] for r in rows}
    for row in rows:
        i = int(row["prompt"][1:])
        winner = "policy" if i % 2 else "reference"
        assert row["label"] == (row["model"] == winner) and row["completion"] == f"{row['model']} on p{i}"

    cfg = compose(
        [
            "dataset=feedback",
            f"dataset.path={out}",
            "method=kto",
            *FAST_MODEL,
            *FAST_TRAINER,
            "trainer.max_steps=1",
            "lr=1e-3",
            "trainer.warmup_steps=0",
        ]
    )
    from dpo_exp.config import validate

    validate(cfg)
    data = load_preference_data(cfg.dataset, 0)
    assert len(data.train) == 18 and len(data.eval) == 1  # one prompt (of 10) held out with both its rows
    policy, tokenizer = build_policy(cfg.model, 0), load_tokenizer(cfg.model)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    trainer = kto_trainer(
        policy, data, method_settings(cfg, tokenizer, tmp_path), trl_args(cfg, tmp_path, "fp32", "cpu"), []
    )
    trainer.train()
    assert trainer.state.global_step == 1
    assert any(not v.equal(before[k]) for k, v in policy.state_dict().items())
