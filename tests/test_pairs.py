"""Pair building (margins, ties, strategies), the content-keyed pair cache, and the cache's crash/concurrency safety."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from dpo_exp.data.pairs import make_pairs
from dpo_exp.infra.cache import cached, check_entry, content_key

from .conftest import FAST_MODEL, FAST_TRAINER, compose

# ---------------------------------------------------------------- pairing rules


def test_best_vs_worst_and_all_pairs():
    texts = ["a", "b", "c", "d"]
    scores = [0.1, 0.9, 0.5, 0.5]
    pairs, dropped = make_pairs("p", texts, scores, "best_vs_worst", 0.0)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("b", "a")]
    pairs, dropped = make_pairs("p", texts, scores, "all_pairs", 0.0)
    assert len(pairs) == 5 and dropped == {"ties": 1, "below_margin": 0}  # c/d tie dropped
    pairs, dropped = make_pairs("p", texts, scores, "all_pairs", 0.45)
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {("b", "a")}
    assert dropped == {"ties": 1, "below_margin": 4}
    pairs, _ = make_pairs("p", texts, [0.3] * 4, "best_vs_worst", 0.0)
    assert pairs == []  # all tied: no preference


# ---------------------------------------------------------------- cache module


def _build_slowly(folder: Path) -> dict:
    time.sleep(1.0)  # long enough for the other process to arrive while this one holds the lock
    (folder / "data.txt").write_text("payload\n")
    with open(folder.parent.parent / "builds.log", "a") as log:
        log.write("built\n")
    return {"rows": 1}


def _worker(cache_dir: str, queue) -> None:
    entry = cached(cache_dir, "ns", "k1", _build_slowly)
    queue.put((entry.status, str(entry.path)))


def test_concurrent_builders_make_one_valid_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(s for s, _ in results) == ["built", "reused"]
    assert (tmp_path / "cache" / "builds.log").read_text() == "built\n"  # built exactly once
    manifest, reason = check_entry(tmp_path / "cache" / "ns" / "k1", "k1")
    assert manifest is not None, reason
    assert not [p for p in (tmp_path / "cache" / "ns").iterdir() if p.name.endswith(".tmp")]


def test_corrupt_or_unfinished_entries_are_rebuilt(tmp_path):
    calls = []

    def build(folder: Path) -> dict:
        calls.append(1)
        (folder / "rows.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
        return {"rows": 2}

    first = cached(tmp_path, "ns", "key", build)
    assert first.status == "built" and first.info == {"rows": 2}
    assert cached(tmp_path, "ns", "key", build).status == "reused" and len(calls) == 1

    (first.path / "rows.jsonl").write_text('{"a": 1}\n')  # truncated by a crash / disk error
    again = cached(tmp_path, "ns", "key", build)
    assert again.status == "rebuilt" and len(calls) == 2
    assert (again.path / "rows.jsonl").read_text().count("\n") == 2

    (again.path / "manifest.json").unlink()  # a build that died before its manifest
    assert cached(tmp_path, "ns", "key", build).status == "rebuilt" and len(calls) == 3

    def failing(folder: Path) -> dict:
        (folder / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cached(tmp_path, "ns", "other", failing)
    assert not (tmp_path / "ns" / "other").exists()
    assert not [p for p in (tmp_path / "ns").iterdir() if p.name.endswith(".tmp")]


def test_content_key_is_order_independent_and_sensitive():
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


# ---------------------------------------------------------------- pairs built from a tiny model, cached by content


def _build(tmp_path: Path, imdb_dir: Path, *extra: str):
    from dpo_exp.infra.runinfo import RunIdentity
    from dpo_exp.models import build_model, load_tokenizer
    from dpo_exp.pipeline import RunContext, record_task
    from dpo_exp.tasks import StageEnv, build_task

    cfg = compose(
        [
            "dataset=imdb_sentiment",
            "reward=tfidf_logreg",
            f"dataset.path={imdb_dir}",
            *FAST_MODEL,
            *FAST_TRAINER,
            "data_size=10",
            "generation.max_new_tokens=8",
            f"cache_dir={tmp_path / 'cache'}",
            "dataset.pairs.strategy=all_pairs",
            "dataset.pairs.min_margin=0.02",
            *extra,
        ]
    )
    run_dir = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    ctx = RunContext(cfg=cfg, identity=RunIdentity(run_dir, "test", "test"), env=StageEnv(run_dir=run_dir))
    tokenizer = load_tokenizer(cfg.model)
    task = build_task(cfg)
    prompt_sets = task.load(cfg, tokenizer)
    model = build_model(cfg.model, int(cfg.seed))
    result = task.prepare(cfg, ctx.env, model, tokenizer, prompt_sets)
    record_task(ctx, result)
    return ctx, result.data, prompt_sets


def test_pairs_respect_margin_and_cache_is_keyed_by_content(tmp_path, imdb_dir):
    ctx, data, prompt_sets = _build(tmp_path, imdb_dir, "beta=0.1")
    pairs = ctx.summary["pairs"]
    assert pairs["cache"] == "built" and ctx.summary["reward"]["heldout_accuracy"] >= 0.8
    assert data.train, "no pairs built"
    for row in data.train + data.eval:
        assert row["score_chosen"] > row["score_rejected"] + 0.02
        assert row["chosen"] != row["rejected"]
    train_prompts = set(prompt_sets.train_prompts)
    assert {r["prompt"] for r in data.train} <= train_prompts
    assert not {r["prompt"] for r in data.eval} & train_prompts  # eval pairs come from held-out prompts
    assert data.eval_prompts == prompt_sets.eval_prompts
    assert pairs["train_pairs"] == len(data.train) and pairs["eval_pairs"] == len(data.eval)
    n = int(ctx.cfg.generation.num_samples)  # all_pairs: at most n * (n - 1) / 2 pairs per prompt
    max_pairs = n * (n - 1) // 2 * (len(prompt_sets.train_prompts) + len(prompt_sets.pair_eval_prompts))
    assert len(data.train) + len(data.eval) <= max_pairs
    # the saved dataset has every column, in the cache and in the run dir, plus the histogram
    saved = [json.loads(line) for line in Path(pairs["run_copy"]).read_text().splitlines()]
    assert {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"} <= set(saved[0])
    assert Path(pairs["path"]).read_bytes() == Path(pairs["run_copy"]).read_bytes()
    assert (ctx.run_dir / "plots" / "pair_scores.png").stat().st_size > 1000

    ctx2, data2, _ = _build(tmp_path, imdb_dir, "beta=0.5", "lr=1e-3")  # a sweep's next job: same pairs
    assert ctx2.summary["pairs"]["cache"] == "reused" and ctx2.summary["pairs"]["key"] == pairs["key"]
    assert data2.train == data.train

    ctx3, _, _ = _build(tmp_path, imdb_dir, "beta=0.1", "generation.temperature=0.7")  # a generation setting
    assert ctx3.summary["pairs"]["cache"] == "built" and ctx3.summary["pairs"]["key"] != pairs["key"]


def test_sft_warm_start_is_cached_and_merged(tmp_path):
    """The SFT stage (LoRA merged into the weights) changes the model, saves it, and is reused by key."""
    import torch

    from dpo_exp.models import build_model, offline_gpt2_tokenizer
    from dpo_exp.sft import warm_start

    cfg = compose(
        [
            *FAST_MODEL,
            f"cache_dir={tmp_path / 'cache'}",
            "sft.enabled=true",
            "sft.lora=true",
            "sft.max_steps=2",
            "sft.batch_size=4",
            "sft.max_length=16",
            "sft.num_texts=8",
        ]
    )
    tokenizer = offline_gpt2_tokenizer()
    texts = [
        f"Review {i}: a {'great' if i % 2 else 'dull'} film with a {'moving' if i % 2 else 'weak'} story."
        for i in range(12)
    ]
    base = build_model(cfg.model, int(cfg.seed))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    warm, entry = warm_start(cfg, base, tokenizer, texts)
    assert entry.status == "built" and (entry.path / "config.json").is_file()
    assert not any("lora" in k for k in warm.state_dict())  # merged: a plain GPT-2 again
    changed = [k for k, v in warm.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any("c_attn" in k for k in changed)
    again, entry2 = warm_start(cfg, build_model(cfg.model, int(cfg.seed)), tokenizer, texts)
    assert entry2.status == "reused" and entry2.path == entry.path
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in warm.state_dict().items())
    other = compose(
        [
            *FAST_MODEL,
            f"cache_dir={tmp_path / 'cache'}",
            "sft.lora=true",
            "sft.max_steps=3",
            "sft.batch_size=4",
            "sft.max_length=16",
            "sft.num_texts=8",
        ]
    )
    from dpo_exp.sft import sft_key

    assert sft_key(other, texts)[0] != sft_key(cfg, texts)[0]
