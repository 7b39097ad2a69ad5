"""A 2-process data-parallel run on CPU (torchrun, gloo): one run folder written by process 0 only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_exp.infra.storage import read_jsonl

from .conftest import FAST_MODEL, FAST_TRAINER
from .wandb_records import offline_runs, run_record

PAIRS, PER_DEVICE, PROCESSES = 16, 2, 2


BROADCASTING = """
import json, os, sys
from pathlib import Path
from dpo_exp.infra.distributed import broadcast, shared_run_dir
r = int(os.environ["RANK"])
got = [shared_run_dir(Path(f"rank{r}")).name, broadcast({"rank": r, "threads": r + 1})["threads"]]
Path(sys.argv[1], f"rank{r}.json").write_text(json.dumps(got))  # a file each: the ranks' stdout interleaves
import torch.distributed as dist
dist.barrier()
dist.destroy_process_group()
"""


def test_every_process_takes_process_0s_run_folder_and_values_on_cpu(tmp_path):
    """Under a CPU-only torchrun accelerate's own broadcast does nothing (its state says not distributed until a
    TrainingArguments resets it): each rank would keep its own run folder (Hydra stamps each rank's time) and its own
    cache keys (its own thread count)."""
    script = tmp_path / "broadcasting.py"
    script.write_text(BROADCASTING)
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got == [["rank0", 1], ["rank0", 1]]


def test_torchrun_two_processes_write_one_run(tmp_path, ultrafeedback_file):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = Path(shutil.which("torchrun") or "torchrun")
    run_dir = tmp_path / "run"
    args = [
        *FAST_MODEL,
        "lora=gpt2_attn",
        *FAST_TRAINER,
        f"trainer.per_device_train_batch_size={PER_DEVICE}",
        "dataset=preference_files",
        f"dataset.path={ultrafeedback_file}",
        f"data_size={PAIRS}",
        "dataset.eval_size=4",
        "epochs=1",
        "eval.num_prompts=4",
        "eval.num_samples=1",
        "eval.num_pairs=4",
        "eval.bootstrap=10",
        "eval.max_new_tokens=4",
        "eval/reward=vader",
        "logger=wandb",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "DPO_EXP_CACHE": str(tmp_path / ".cache"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", str(PROCESSES), "-m", "dpo_exp", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("[dpo_exp] completed") == 1

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["num_processes"] == PROCESSES
    steps = PAIRS // (PROCESSES * PER_DEVICE)  # each optimiser step consumes one batch per process
    train = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert train == list(range(1, steps + 1))  # one row per step, not one per process
    (wandb_run,) = offline_runs(run_dir)  # exactly one W&B run
    assert run_record(wandb_run)["run_id"] == summary["wandb_id"]
    assert (run_dir / "model" / "config.json").is_file() and (run_dir / "model" / "adapter").is_dir()
    assert "eval/kl" in json.dumps(summary) and (run_dir / "samples.md").is_file()  # evaluated once, on process 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache", "run"]  # no second run folder


@pytest.mark.slow
def test_torchrun_imdb_with_warm_start_does_not_deadlock(tmp_path):
    """The quickstart shape (SFT warm start -> sampled pairs -> DPO) on 2 processes: the warm start trains on both
    (process 0 alone would wait forever for the other), the pairs are sampled once and reused."""
    torchrun = Path(sys.executable).with_name("torchrun")
    run_dir = tmp_path / "run"
    args = [
        "experiment=quickstart",
        "data_size=16",
        "epochs=1",
        "trainer.warmup_steps=0",  # one step per process: a warm-up would leave it at learning rate 0 (refused)
        "sft.max_steps=4",
        "eval.num_prompts=4",
        "eval.num_samples=1",
        "eval.bootstrap=10",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "DPO_EXP_CACHE": str(tmp_path / ".cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun if torchrun.exists() else "torchrun"), "--nproc_per_node", "2", "-m", "dpo_exp", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["num_processes"] == 2
    assert len(list((tmp_path / ".cache" / "sft").glob("*/manifest.json"))) == 1  # one warm start, built once
    assert proc.stdout.count("[dpo_exp] completed") == 1 and (run_dir / "pairs.jsonl").is_file()
