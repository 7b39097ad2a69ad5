"""Damaged cache entries are detected and rebuilt, with a warning, for every cache kind: sampled pairs, the pair
datasets and the reference log-probs TRL adds to them, SFT warm starts and trained reward models (infra.cache)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from dpo_exp.infra.cache import ADDED, cached, verify_added
from dpo_exp.training.ref_logps import ADDED_FILES, arrow_readable, shared_dataset

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli

ROWS = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]


def cut(path: Path) -> None:
    """Truncate a file to half its size (a crash mid-write, a full disk, a bad copy)."""
    os.truncate(path, path.stat().st_size // 2)


def test_a_truncated_pair_dataset_is_rebuilt(tmp_path, caplog):
    """The issue's reproduction at unit scale: a cut `pair_datasets/*/data-*.arrow` gave ArrowInvalid."""
    first = shared_dataset(ROWS, tmp_path)
    assert first.to_list() == ROWS
    (data,) = (tmp_path / "pair_datasets").glob("*/data-*.arrow")
    cut(data)
    with caplog.at_level(logging.WARNING):
        again = shared_dataset(ROWS, tmp_path)
    assert again.to_list() == ROWS
    assert "is corrupt" in caplog.text and data.parent.name in caplog.text


def _added_file(folder: Path, name: str) -> Path:
    """A `datasets` cache file written into the entry the way TRL's maps write theirs."""
    from datasets import load_from_disk

    path = folder / name
    load_from_disk(str(folder)).map(lambda row: {"n": len(row["chosen"])}, cache_file_name=str(path))
    return path


def test_files_added_to_an_entry_are_sealed_and_damaged_ones_removed(tmp_path, caplog):
    shared_dataset(ROWS, tmp_path)
    (entry,) = (tmp_path / "pair_datasets").glob("*/")
    sealed = _added_file(entry, "cache-a.arrow")
    assert verify_added(entry, ADDED_FILES, arrow_readable) == []  # whole: sealed
    assert "cache-a.arrow" in json.loads((entry / ADDED).read_text())
    assert verify_added(entry, ADDED_FILES, arrow_readable) == []  # still whole: kept
    cut(sealed)
    unsealed = _added_file(entry, "cache-b.arrow")
    cut(unsealed)  # cut before any seal: caught by reading it
    whole = _added_file(entry, "cache-c.arrow")
    with caplog.at_level(logging.WARNING):
        removed = verify_added(entry, ADDED_FILES, arrow_readable)
    assert removed == ["cache-a.arrow", "cache-b.arrow"]
    assert not sealed.exists() and not unsealed.exists() and whole.exists()
    assert "cache-a.arrow is corrupt" in caplog.text
    assert set(json.loads((entry / ADDED).read_text())) == {"cache-c.arrow"}


def test_the_manifest_ignores_the_seals_file(tmp_path):
    """Sealing added files must not make the entry itself look corrupt (added.json is outside its manifest)."""
    entry = cached(tmp_path, "ns", "k", lambda folder: (folder / "x.txt").write_text("x") and None)
    (entry.path / ADDED).write_text("{}")
    assert cached(tmp_path, "ns", "k", lambda folder: pytest.fail("rebuilt")).status == "reused"


# Every cache kind in one small run: IMDb prompts -> tfidf_logreg reward model -> SFT warm start -> sampled pairs ->
# pair datasets with TRL's tokenised pairs and precomputed reference log-probs.
SMALL_IMDB = [
    "dataset=imdb_sentiment",
    "reward=tfidf_logreg",
    "data_size=8",
    *FAST_MODEL,
    *FAST_TRAINER,
    "generation.max_new_tokens=8",
    "epochs=2",  # at least two steps however many of the 8 prompts give a pair (one step would train at lr 0)
    "logger=none",
    "sft.enabled=true",
    "sft.max_steps=2",
    "sft.num_texts=32",
    "sft.max_length=32",
    "eval.enabled=false",
    "trainer.precompute_ref_log_probs=true",
    "skip_completed=false",
]


@pytest.mark.slow
def test_every_cache_kind_heals_after_its_files_are_truncated(tmp_path, imdb_dir):
    run_dir = tmp_path / "run"
    args = [*SMALL_IMDB, f"dataset.path={imdb_dir}", f"hydra.run.dir={run_dir}"]
    first = run_cli(args, tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    cache = tmp_path / ".cache"
    entries = sorted(p.parent for p in cache.glob("pair_datasets/*/data-*.arrow"))  # train and held-out pairs
    assert len(entries) == 2 and all(list(e.glob(ADDED_FILES)) for e in entries)
    damaged = [
        *cache.glob("pairs/*/pairs.jsonl"),
        *cache.glob("sft/*/model.safetensors"),
        *cache.glob("reward_tfidf/*/model.joblib"),
        *entries[0].glob("data-*.arrow"),  # one entry's own data ...
        *entries[1].glob(ADDED_FILES),  # ... the other's tokenised pairs and reference log-probs (added by TRL)
    ]
    assert len(damaged) >= 6
    for path in damaged:
        cut(path)

    second = run_cli(args, tmp_path, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["pairs"]["cache"] == summary["sft"]["cache"] == summary["reward"]["cache"] == "rebuilt"
    assert summary["ref_logps"]["train"] == summary["ref_logps"]["eval"] == "built"  # recomputed, not read cut
    log = second.stdout + second.stderr
    for name in ("pairs", "sft", "reward_tfidf", "pair_datasets"):
        assert f"cache entry {cache / name}" in log and "is corrupt" in log, name
    assert f"cache file {entries[1]}" in log
    assert "Traceback" not in log
