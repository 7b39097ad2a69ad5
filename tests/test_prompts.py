"""IMDb prompt extraction: cleaning, token-prefix lengths, seeding, train/eval separation, data errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_exp import DEMO_DIR
from dpo_exp.data.imdb import clean_text, load_prompt_sets
from dpo_exp.errors import UserError
from dpo_exp.models import offline_gpt2_tokenizer

from .conftest import FAST_MODEL, compose


@pytest.fixture(scope="module")
def tokenizer():
    return offline_gpt2_tokenizer()


def imdb_cfg(path, *extra: str):
    return compose(["dataset=imdb_sentiment", "reward=vader", *FAST_MODEL, f"dataset.path={path}", *extra])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_clean_text_removes_br_and_collapses_space():
    assert clean_text("Great film.<br /><br />Really<br/>great <BR>  fun \n") == "Great film. Really great fun"


def test_prefixes_cleaned_in_range_seeded_and_disjoint(imdb_dir, tokenizer):
    cfg = imdb_cfg(imdb_dir, "data_size=64", "dataset.prompt_tokens_min=2", "dataset.prompt_tokens_max=8")
    sets = load_prompt_sets(cfg, tokenizer)
    assert len(sets.train_prompts) == 64 and len(set(sets.train_prompts)) == 64
    assert sets.pair_eval_prompts and len(sets.eval_prompts) == int(cfg.eval.num_prompts)
    lengths = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in sets.train_prompts]
    assert min(lengths) >= 1 and max(lengths) <= 8
    assert len(set(lengths)) >= 4  # lengths are drawn per prompt, not fixed
    texts = sets.train.texts + sets.test.texts
    assert all("<br" not in t for t in texts) and all("<br" not in p for p in sets.train_prompts)
    train_texts = set(sets.train.texts)
    assert all(any(t.startswith(p) for t in train_texts) for p in sets.train_prompts[:10])  # prefixes of reviews
    test_texts = sets.test.texts
    assert all(any(t.startswith(p) for t in test_texts) for p in sets.eval_prompts[:10])  # eval from the test split
    used = set(sets.train_prompts)
    assert not used & set(sets.eval_prompts)
    assert not used & set(sets.pair_eval_prompts)
    assert not set(sets.pair_eval_prompts) & set(sets.eval_prompts)

    again = load_prompt_sets(cfg, tokenizer)
    assert again.train_prompts == sets.train_prompts and again.eval_prompts == sets.eval_prompts
    other = load_prompt_sets(imdb_cfg(imdb_dir, "data_size=64", "seed=7"), tokenizer)
    assert other.train_prompts != sets.train_prompts


def test_fixed_prefix_length(imdb_dir, tokenizer):
    cfg = imdb_cfg(imdb_dir, "data_size=16", "dataset.prompt_tokens_min=3", "dataset.prompt_tokens_max=3")
    sets = load_prompt_sets(cfg, tokenizer)
    lengths = {len(tokenizer(p, add_special_tokens=False).input_ids) for p in sets.train_prompts}
    assert lengths <= {2, 3} and 3 in lengths  # re-tokenising a stripped prefix may merge one boundary


def test_single_file_holds_out_reviews(tmp_path, tokenizer):
    rows = [
        {"text": f"Review number {i} says the movie was {'great' if i % 2 else 'bad'}.", "label": i % 2}
        for i in range(200)
    ]
    path = write_jsonl(tmp_path / "reviews.jsonl", rows)
    sets = load_prompt_sets(
        imdb_cfg(path, "data_size=4", "dataset.prompt_tokens_min=3", "dataset.prompt_tokens_max=4"), tokenizer
    )
    assert sets.counts["test_reviews"] == 50 and sets.counts["train_reviews"] == 150  # dataset.eval_fraction 0.25
    assert not set(sets.train.texts) & set(sets.test.texts)
    assert not set(sets.train_prompts) & set(sets.eval_prompts)


def test_acl_imdb_folder(tmp_path, tokenizer):
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            folder = tmp_path / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i in range(6):
                (folder / f"{i}_7.txt").write_text(f"{split} {label} review {i}<br />with a second line.")
    sets = load_prompt_sets(
        imdb_cfg(tmp_path, "data_size=4", "dataset.prompt_tokens_min=4", "dataset.prompt_tokens_max=4"), tokenizer
    )
    assert sets.source.startswith("aclImdb:")
    assert sets.counts["train_reviews"] == 12 and sets.counts["test_reviews"] == 12
    assert sorted(set(sets.train.labels)) == [0, 1]
    assert all(p.startswith("train") for p in sets.train_prompts)
    assert all(p.startswith("test") for p in sets.eval_prompts)


def test_demo_fixture_resolves_inside_the_package(tokenizer):
    cfg = compose(["experiment=quickstart"])
    assert Path(cfg.dataset.path).parent == DEMO_DIR and Path(cfg.dataset.path).is_file()
    sets = load_prompt_sets(cfg, tokenizer)
    assert len(sets.train_prompts) == int(cfg.data_size)
    assert sets.eval_prompts and not set(sets.train_prompts) & set(sets.eval_prompts)


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        ([{"text": "fine film", "label": 2}] * 5, [], "must be 0 or 1"),
        ([{"text": "  <br />", "label": 1}] * 5, [], "empty"),
        ([{"review": "fine film", "label": 1}] * 5, [], "missing column"),
        ([{"text": f"film {i} is good", "label": 1} for i in range(20)], ["data_size=500"], "data_size=500"),
        (
            [{"text": f"film {i} is good", "label": 1} for i in range(20)],
            ["dataset.prompt_tokens_min=5", "dataset.prompt_tokens_max=2"],
            "min <= max",
        ),
    ],
)
def test_bad_data_is_one_clear_user_error(tmp_path, tokenizer, rows, extra, message):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError, match=message) as info:
        load_prompt_sets(imdb_cfg(path, *extra), tokenizer)
    assert "\n" not in str(info.value)
