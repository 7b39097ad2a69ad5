"""Reruns that can be trusted (issue 9): identical numbers with every cache warm, one held-out set per sweep, and
reference log-probs shared by a seed sweep. End to end through the CLI, tiny model, real IMDb / HH-RLHF samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli, shared_file

pytestmark = pytest.mark.slow

# Everything that a run's numbers are made of, and that must not move when caches are warm.
VOLATILE = (
    "wall_time_s",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
)


def _imdb(*extra: str) -> list[str]:
    imdb = shared_file("imdb/train.jsonl").parent
    return [
        *FAST_MODEL,
        *FAST_TRAINER,
        "dataset=imdb_sentiment",
        f"dataset.path={imdb}",
        "reward=vader",
        "sft.enabled=true",
        "sft.max_steps=2",
        "sft.batch_size=4",
        "sft.max_length=16",
        "sft.num_texts=16",
        "generation.num_samples=2",
        "generation.max_new_tokens=8",
        "dataset.eval_size=8",
        "epochs=1",
        "eval.num_prompts=6",
        "eval.num_samples=2",
        "eval.num_pairs=8",
        "eval.bootstrap=50",
        "logger=none",
        "lr=1e-3",
        *extra,
    ]


def _jobs(sweep: Path) -> list[dict]:
    dirs = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return [json.loads((d / "summary.json").read_text()) for d in dirs]


def _numbers(summary: dict) -> dict:
    return {
        k: v
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in VOLATILE and not k.startswith("timing/")
    }


@pytest.fixture(scope="module")
def lora_sweep(tmp_path_factory) -> list[dict]:
    """`-m data_size=16,32,16`: job 2 repeats job 0 with every cache warm (SFT, pairs, reference log-probs)."""
    cwd = tmp_path_factory.mktemp("repro")
    proc = run_cli(["-m", *_imdb("lora=gpt2_attn"), "hydra.sweep.dir=multirun/s", "data_size=16,32,16"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _jobs(cwd / "multirun" / "s")


def test_rerun_with_warm_caches_gives_identical_metrics(lora_sweep):
    first, _, again = lora_sweep
    assert [s["status"] for s in lora_sweep] == ["completed"] * 3
    assert again["sft"]["cache"] == "reused" and again["pairs"]["cache"] == "reused"
    assert again["ref_logps"]["cache"] == "reused" and first["ref_logps"]["cache"] == "built"
    numbers = _numbers(first)
    assert any(k.startswith("eval/") for k in numbers) and "loss" in numbers
    assert _numbers(again) == numbers


def test_data_size_sweep_members_share_their_heldout_sets(lora_sweep):
    small, large, _ = lora_sweep
    assert small["data"]["train_prompts"] == 16 and large["data"]["train_prompts"] == 32
    assert small["heldout"] == large["heldout"]
    assert small["heldout"]["n_eval_pairs"] > 0 and small["heldout"]["n_eval_prompts"] == 6


def test_full_fine_tuning_rerun_is_identical(tmp_path):
    proc = run_cli(["-m", *_imdb("lora=none", "data_size=12"), "hydra.sweep.dir=multirun/f", "seed=5,5"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, again = _jobs(tmp_path / "multirun" / "f")
    assert again["pairs"]["cache"] == "reused" and again["ref_logps"]["cache"] == "reused"
    assert _numbers(again) == _numbers(first)


def test_lora_seed_sweep_reuses_reference_logps(tmp_path):
    """Seeds change the LoRA init and the pair order, not what the reference sees: computed once."""
    from dpo_exp.models import build_model, offline_gpt2_tokenizer
    from tests.conftest import compose

    model_dir = tmp_path / "base"
    build_model(compose(FAST_MODEL).model, 0).save_pretrained(model_dir)
    offline_gpt2_tokenizer().save_pretrained(model_dir)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    rows = [json.loads(line) for line in shared_file("hh_rlhf/test.jsonl").read_text().splitlines()[:40]]
    (pairs / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    (pairs / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[24:]))
    args = [
        "model=gpt2",
        f"model.path={model_dir}",
        *FAST_TRAINER,
        "dataset=hh_rlhf",
        f"dataset.path={pairs}",
        "lora=gpt2_attn",
        "epochs=1",
        "eval.enabled=false",
        "logger=none",
        "hydra.sweep.dir=multirun/seeds",
        "seed=1,2",
    ]
    proc = run_cli(["-m", *args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _jobs(tmp_path / "multirun" / "seeds")
    assert one["ref_logps"]["cache"] == "built" and two["ref_logps"]["cache"] == "reused"
    assert one["loss"] != two["loss"]  # the seeds did train differently
