"""End to end through the CLI: `dataset=imdb_sentiment` builds pairs, trains DPO, leaves pairs + histogram."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli, shared_file

FAST_IMDB = [*FAST_MODEL, *FAST_TRAINER, "generation.max_new_tokens=16", "epochs=1", "logger.mode=offline"]


def _run(tmp_path: Path, imdb_dir: Path, name: str, *extra: str) -> tuple[Path, dict]:
    run_dir, summary, _ = _run_with_output(tmp_path, imdb_dir, name, *extra)
    return run_dir, summary


def _run_with_output(tmp_path: Path, imdb_dir: Path, name: str, *extra: str) -> tuple[Path, dict, str]:
    """(run directory, summary.json, stdout) of one CLI run on the shared IMDb sample."""
    run_dir = tmp_path / name
    result = run_cli(
        [
            "dataset=imdb_sentiment",
            "reward=tfidf_logreg",
            f"dataset.path={imdb_dir}",
            "data_size=16",
            *FAST_IMDB,
            f"hydra.run.dir={run_dir}",
            *extra,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, json.loads((run_dir / "summary.json").read_text()), result.stdout


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory) -> tuple[Path, Path, dict, str]:
    """One CLI run on the IMDb sample with a short warm start and a small evaluation, shared by the tests below."""
    shared_file("imdb/train.jsonl")
    imdb_dir = shared_file("imdb/test.jsonl").parent
    tmp_path = tmp_path_factory.mktemp("imdb")
    run_dir, summary, stdout = _run_with_output(
        tmp_path,
        imdb_dir,
        "timed",
        "sft.enabled=true",
        "sft.max_steps=2",
        "sft.num_texts=64",
        "sft.max_length=32",
        "eval.num_prompts=6",
        "eval.num_samples=2",
        "eval.num_pairs=4",
        "eval.bootstrap=100",
        "eval.best_of_n=[1,2,4]",
        "eval.best_of_n_prompts=3",
    )
    return tmp_path, run_dir, summary, stdout


def test_imdb_sentiment_cli_run(timed_run):
    tmp_path, run_dir, summary, _ = timed_run
    assert summary["status"] == "completed"
    # the foundation's run directory ...
    for name in (".hydra/config.yaml", "metrics.jsonl", "model", "plots/loss.png"):
        assert (run_dir / name).exists(), name
    assert "eval_loss" in summary and "rewards/accuracies" in summary
    # ... plus the pair dataset, its histogram, the reward's quality and the cache record
    pairs = [json.loads(line) for line in (run_dir / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == summary["pairs"]["pairs_built"] and pairs
    assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    assert (run_dir / "plots" / "pair_scores.png").stat().st_size > 1000
    assert summary["pairs"]["cache"] == "built"
    assert Path(summary["pairs"]["path"]).is_relative_to(tmp_path / ".cache")
    assert summary["reward"]["kind"] == "tfidf_logreg" and summary["reward"]["heldout_accuracy"] >= 0.8
    assert summary["data"]["train_prompts"] == 16
    assert summary["data"]["train_pairs"] == summary["pairs"]["train_pairs"] > 0
    assert (tmp_path / ".cache" / "pairs").is_dir()


def test_imdb_run_records_stage_times_and_prints_the_headline(timed_run):
    """summary.json has every stage's time; the console's last lines give reward, delta + CI, win rate + CI, KL."""
    _, _, summary, stdout = timed_run
    for stage in ("sft", "pairs", "train", "eval"):
        assert isinstance(summary[f"timing/{stage}_s"], float) and summary[f"timing/{stage}_s"] > 0, stage
    assert sum(summary[f"timing/{s}_s"] for s in ("sft", "pairs", "train", "eval")) <= summary["wall_time_s"]
    assert summary["eval/num_prompts"] == 6 and isinstance(summary["eval/significant"], bool)
    assert summary["eval/bon_kl_4"] > summary["eval/bon_kl_2"] > summary["eval/bon_kl_1"] == 0.0
    assert summary["eval/bon_reward_4"] >= summary["eval/bon_reward_1"]
    lines = [line for line in stdout.splitlines() if line.startswith("[dpo_exp]")]
    assert lines[0].startswith("[dpo_exp] completed in")
    text = "\n".join(lines)
    assert f"{summary['eval/reward_reference']:.4f} -> {summary['eval/reward_policy']:.4f}" in text
    assert f"delta {summary['eval/reward_delta']:+.4f} [95% CI {summary['eval/reward_delta_ci_low']:+.4f}" in text
    assert f"win rate {summary['eval/win_rate']:.3f} [95% CI {summary['eval/win_rate_ci_low']:.3f}" in text
    assert f"KL(policy || reference) {summary['eval/kl_rb']:.3f}" in text and "stage times: sft" in text  # kl_rb heads
    assert f"Monte-Carlo diagnostic {summary['eval/kl']:.3f}" in text
    assert summary["eval/judge_beats_chance"] is (summary["eval/judge_accuracy_ci_low"] > 0.5)  # tfidf's interval


def test_bad_imdb_labels_exit_2_before_any_model(tmp_path):
    data = tmp_path / "reviews.jsonl"
    data.write_text('{"text": "a fine film", "label": 3}\n' * 10)
    result = run_cli(
        [
            "dataset=imdb_sentiment",
            "reward=vader",
            f"dataset.path={data}",
            *FAST_MODEL,
            *FAST_TRAINER,
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2
    assert "label" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_second_run_with_other_beta_reuses_pairs(tmp_path, imdb_dir):
    """The issue's 'done when': the same command with beta=0.5 reuses the cached pairs."""
    _, first = _run(tmp_path, imdb_dir, "beta01", "eval.enabled=false", "beta=0.1")
    _, second = _run(tmp_path, imdb_dir, "beta05", "eval.enabled=false", "beta=0.5")
    assert first["pairs"]["cache"] == "built" and second["pairs"]["cache"] == "reused"
    assert first["pairs"]["key"] == second["pairs"]["key"]
    assert second["reward"]["cache"] == "reused"


@pytest.mark.slow
def test_quickstart_runs_offline_end_to_end(tmp_path):
    """`experiment=quickstart`: demo fixture inside the package, SFT warm start, vader, DPO, evaluation."""
    run_dir = tmp_path / "qs"
    result = run_cli(["experiment=quickstart", f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["sft"]["cache"] == "built" and Path(summary["reference_path"]).is_dir()
    assert summary["sft"]["last_loss"] < summary["sft"]["first_loss"]
    assert summary["reward"]["kind"] == "vader" and summary["pairs"]["train_pairs"] > 0
    assert (run_dir / "pairs.jsonl").exists() and (run_dir / "plots" / "pair_scores.png").exists()
    # The demo shows the effect, not just the pipeline (issue 11): the gain's CI excludes 0. Measured on 2 cores with
    # seeds 42 / 1 / 2: delta +0.121 [0.069, 0.165] / +0.121 [0.081, 0.157] / +0.053 [0.017, 0.089] VADER compound
    # on ~35 held-out demo prompts x 8 samples, per-prompt win rate 0.79 / 0.84 / 0.61.
    assert summary["eval/significant"] is True and summary["eval/reward_delta_ci_low"] > 0
    assert summary["eval/win_rate_prompt_coupled"] > 0.5 and summary["eval/win_rate"] > 0.5
    assert (run_dir / "samples.md").exists() and (run_dir / "plots" / "reward_kl.png").exists()


def test_presets_compose():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dpo_exp import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        paper = hydra_compose(config_name="config", overrides=["experiment=dpo_paper_imdb"], return_hydra_config=True)
        gpt2 = hydra_compose(config_name="config", overrides=["experiment=imdb_sentiment_gpt2"])
        quick = hydra_compose(config_name="config", overrides=["experiment=quickstart"])
    assert (paper.dataset.prompt_tokens_min, paper.dataset.prompt_tokens_max) == (2, 8)
    assert paper.generation.num_samples == 4 and paper.dataset.pairs.strategy == "all_pairs"
    assert paper.reward.kind == "siebert" and paper.sft.enabled and paper.model.name == "gpt2-large"
    assert paper.hydra.sweeper.params.beta == "0.05,0.1,1,5"
    assert gpt2.reward.kind == "sst2" and gpt2.model.name == "gpt2" and not gpt2.sft.enabled
    assert quick.reward.kind == "vader" and quick.model.tiny and quick.sft.enabled and quick.lora.enabled
    assert quick.dataset.name == "imdb_sentiment" and float(quick.lr) == 1e-3


# A scale CI can afford (a few minutes on 2 idle cores): the default tiny GPT-2 (4 layers, 128 wide),
# a short SFT warm start (60 steps), 96 training prompts -> best-vs-worst pairs scored by TF-IDF + logistic
# regression, 3 epochs of full-fine-tuning DPO at lr 1e-4, evaluation on 64 held-out test prompts x 4 samples.
# Measured on a train-only split of the IMDb sample (tuning data): delta +0.015 [0.009, 0.022], win rate 0.56
# [0.52, 0.60], KL 0.12; LoRA at the tiny model's lr 2e-3 moved it less (delta +0.007 [0.002, 0.012], win rate
# CI [0.50, 0.59]). A 1-layer, 32-wide model is too
# small for this: after its warm start it still writes near-uniform token soup (entropy ~10.4 nats) and DPO found no
# sentiment direction (measured: delta -0.008 [-0.021, +0.004], win rate 0.45).
EFFECT = [
    "model.tiny.n_layer=4",
    "model.tiny.n_embd=128",
    "model.tiny.n_head=4",
    "model.tiny.n_positions=256",
    "sft.enabled=true",
    "sft.max_steps=60",
    "sft.batch_size=16",
    "sft.lr=3e-3",
    "sft.max_length=48",
    "sft.num_texts=960",
    "data_size=96",
    "epochs=3",
    "generation.max_new_tokens=24",
    "generation.batch_size=64",
    "generation.num_samples=4",
    "trainer.per_device_train_batch_size=8",
    "trainer.per_device_eval_batch_size=16",
    "eval.num_prompts=64",
    "eval.num_samples=4",
    "eval.num_pairs=16",
    "eval.bootstrap=500",
    "eval.best_of_n=[1,2,4,8]",
    "eval.best_of_n_prompts=16",
    "lora=none",
    "lr=1e-4",
]


@pytest.mark.slow
def test_dpo_gives_a_significant_sentiment_gain(tmp_path, imdb_dir):
    """Issue 11: on held-out IMDb prompts DPO raises the reward; the gain's CI excludes 0, the same-seed win rate
    > 0.5 at its CI's lower bound. The independent-draw win rate (P(policy sample beats reference sample)) is
    reported with its CI; at this scale (+0.01 reward) it is not resolved from 0.5 (0.48 measured), so not asserted."""
    _, summary, stdout = _run_with_output(tmp_path, imdb_dir, "effect", *EFFECT)
    assert summary["eval/num_prompts"] == 64
    assert summary["eval/reward_delta_ci_low"] > 0 and summary["eval/significant"] is True
    assert summary["eval/win_rate_coupled_ci_low"] > 0.5
    assert summary["eval/win_rate_ci_low"] <= summary["eval/win_rate"] <= summary["eval/win_rate_ci_high"]
    assert summary["eval/kl"] > 0
    assert "significant" in stdout and "NOT significant" not in stdout
