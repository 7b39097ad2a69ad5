"""End to end on real human preference samples: CLI -> DPO -> run directory, with W&B offline read back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dpo_exp.storage import read_jsonl

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli
from .wandb_records import history, offline_runs, run_info

SMALL = [*FAST_MODEL, *FAST_TRAINER, "data_size=12", "dataset.eval_size=8", "epochs=1", "eval.enabled=false"]
TRL_KEYS = ["loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"]


def assert_run_directory(run_dir: Path, lora: bool = True) -> dict:
    """The artifacts every run leaves, with finite, in-range metrics."""
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    for key in TRL_KEYS:
        for name in (key, f"eval_{key}"):
            assert math.isfinite(summary[name]), name
    for name in ("rewards/accuracies", "eval_rewards/accuracies"):
        assert 0.0 <= summary[name] <= 1.0
    assert 0 < summary["loss"] < 5 and 0 < summary["eval_loss"] < 5
    assert summary["data"]["train_pairs"] == 12 and summary["data"]["eval_pairs"] == 8
    assert summary["wall_time_s"] > 0 and summary["model"]["source"].startswith("tiny:")
    assert summary["dataset"]["source"].startswith("files:")
    assert summary["environment"]["versions"]["trl"]

    rows = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    assert len(train) == 3 and [r["step"] for r in train] == [1, 2, 3]  # 12 pairs / batch 4, logged every step
    assert evals and all(all(math.isfinite(r[k]) for k in TRL_KEYS) for r in train + evals)
    assert all("epoch" in r for r in rows)

    plots = {p.name for p in (run_dir / "plots").glob("*.png")}
    assert {"loss.png", "reward_accuracy.png", "reward_margins.png", "rewards_chosen_rejected.png"} <= plots
    model_dir = run_dir / "model"
    assert (model_dir / "config.json").is_file()  # LoRA: the merged policy, the adapter alone in model/adapter
    assert (model_dir / "adapter" / "adapter_config.json").is_file() == lora
    assert (model_dir / "tokenizer.json").is_file()
    return summary


def test_ultrafeedback_run_with_wandb_offline(tmp_path, ultrafeedback_file):
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            "model=tiny_gpt2",
            "lora=gpt2_attn",  # the seed project's LoRA path (the tiny model's default is full fine-tuning)
            "dataset=ultrafeedback",
            f"dataset.path={ultrafeedback_file}",
            *SMALL,
            "logger=wandb",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = assert_run_directory(run_dir)
    assert summary["data"]["train_dropped_ties"] > 0  # the sample has tied scores

    (offline,) = offline_runs(run_dir)
    logged = history(offline)  # read back by W&B's own reader
    losses = [row["train/loss"] for row in logged if "train/loss" in row]
    margins = [row["train/rewards/margins"] for row in logged if "train/rewards/margins" in row]
    metrics = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert losses == pytest.approx([r["loss"] for r in metrics])  # the same rows as on disk
    assert len(margins) == len(metrics)
    assert any("eval/loss" in row for row in logged)
    info = run_info(offline)
    assert info["state"] == "finished" and info["exit_code"] == 0
    assert info["config"]["beta"] == 0.1 and info["config"]["dataset"]["name"] == "ultrafeedback"


def test_hh_rlhf_run_with_full_finetuning(tmp_path, hh_file):
    run_dir = tmp_path / "run"
    result = run_cli(
        ["dataset=hh_rlhf", f"dataset.path={hh_file}", *SMALL, "lora=none", "logger=none", f"hydra.run.dir={run_dir}"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = assert_run_directory(run_dir, lora=False)
    assert summary["rewards/chosen"] != 0 or summary["rewards/rejected"] != 0  # the policy moved off the reference
    assert not (run_dir / "wandb").exists()


def test_two_job_multirun_gives_two_run_dirs_and_two_wandb_runs(tmp_path, hh_file):
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "dataset=hh_rlhf",
            f"dataset.path={hh_file}",
            *SMALL,
            "trainer.eval_strategy=no",
            "beta=0.1,0.5",
            "logger=wandb",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / "summary.json").exists())
    assert len(jobs) == 2
    summaries = [json.loads((j / "summary.json").read_text()) for j in jobs]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert sorted(s["overrides"]["beta"] for s in summaries) == ["0.1", "0.5"]
    ids = set()
    for job in jobs:
        (offline,) = offline_runs(job)
        info = run_info(offline)
        ids.add(info["run_id"])
        assert info["state"] == "finished"
    assert len(ids) == 2
