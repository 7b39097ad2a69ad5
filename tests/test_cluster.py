"""Clusters and sweeps that fail visibly: a submitit job of several tasks trains data-parallel (submitit's own
TorchDistributedEnvironment), a sweep with failed jobs exits 1 with their table, a failed job is a failed submitit
task."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_exp.infra import distributed
from dpo_exp.infra.storage import read_jsonl

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli
from .wandb_records import offline_runs, run_record

TORCH_DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
    """None of the variables set; whatever the test exports (submitit writes os.environ itself) is undone after."""
    for name in (*TORCH_DIST_VARS, "SUBMITIT_EXECUTOR", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.setenv(name, "")  # recorded, so that monkeypatch restores the original (absent) state
        monkeypatch.delenv(name)
    return monkeypatch


# ---------------------------------------------------------------- submitit tasks -> torch.distributed (fast)


def test_submitit_local_tasks_become_processes_of_one_run(clean_env):
    """The variables submitit's local executor sets for task 1 of 2 (submitit/local/local.py)."""
    for name, value in {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "4242",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
    }.items():
        clean_env.setenv(name, value)
    assert distributed.join_submitit_job()
    assert (distributed.rank(), distributed.world_size()) == (1, 2) and not distributed.is_main_process()
    assert os.environ["MASTER_ADDR"] == socket.gethostname() and os.environ["LOCAL_RANK"] == "1"
    assert 20000 <= int(os.environ["MASTER_PORT"]) <= 60000  # submitit's port, derived from the job id
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # left to Slurm: accelerate uses cuda:LOCAL_RANK


def test_submitit_slurm_tasks_across_nodes_rendezvous_on_the_first_node(clean_env):
    """Task 3 of a 2-node x 2-task Slurm job: global rank 3 of 4, local rank 1, the master on the first node."""
    for name, value in {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "777",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "MASTER_PORT": "29555",
    }.items():
        clean_env.setenv(name, value)
    assert distributed.join_submitit_job()
    assert (distributed.rank(), distributed.world_size()) == (3, 4)
    assert [os.environ[k] for k in TORCH_DIST_VARS] == ["gpu07", "29555", "3", "4", "1", "2"]


def test_outside_submitit_or_with_one_task_nothing_is_exported(clean_env):
    assert not distributed.join_submitit_job()
    clean_env.setenv("SUBMITIT_EXECUTOR", "local")
    clean_env.setenv("SUBMITIT_LOCAL_JOB_ID", "1")
    clean_env.setenv("SUBMITIT_LOCAL_NTASKS", "1")
    assert not distributed.join_submitit_job()
    assert distributed.world_size() == 1 and "MASTER_ADDR" not in os.environ


# ---------------------------------------------------------------- a sweep with failed jobs exits 1 (fast: no model)


def _empty_and_identical(tmp_path: Path) -> tuple[Path, Path]:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n")
    return empty, same


def test_sweep_with_failed_jobs_exits_1_and_ends_with_their_table(tmp_path):
    empty, same = _empty_and_identical(tmp_path)
    proc = run_cli(
        [
            "-m",
            *FAST_MODEL,
            *FAST_TRAINER,
            "dataset=preference_files",
            f"dataset.path={empty},{same}",
            "logger=none",
            "hydra.sweep.dir=multirun/s",
        ],
        tmp_path,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    table = proc.stderr[proc.stderr.index("error: 2 of 2 jobs failed") :].splitlines()
    assert table[1].split() == ["job", "overrides", "status", "reason"]
    assert table[2].startswith("0 ") and f"dataset.path={empty}" in table[2] and "no rows" in table[2]
    assert table[3].startswith("1 ") and "0 pairs left after filtering" in table[3]
    assert len(table) == 4  # the table ends the output


# ---------------------------------------------------------------- submitit end to end (slow)


@pytest.mark.slow
def test_submitit_local_two_tasks_train_one_data_parallel_run(tmp_path, ultrafeedback_file):
    """Issue 23's command: `hydra.launcher.tasks_per_node=2` under submitit is one 2-process DDP run."""
    pairs, batch = 16, 2
    proc = run_cli(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.tasks_per_node=2",
            *FAST_MODEL,
            *(a for a in FAST_TRAINER if not a.startswith("trainer.per_device_train_batch_size")),  # batch_size=
            "dataset=preference_files",
            f"dataset.path={ultrafeedback_file}",
            f"data_size={pairs}",
            f"batch_size={batch}",
            "epochs=1",
            "eval.enabled=false",
            "logger=wandb",
            "hydra.sweep.dir=multirun/ddp",
        ],
        tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "multirun" / "ddp"
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0"]  # one run
    run_dir = sweep / "0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["num_processes"] == 2
    train = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert train == list(range(1, pairs // (2 * batch) + 1))  # 4 steps: one batch per process per step
    (wandb_run,) = offline_runs(run_dir)  # one W&B run
    assert run_record(wandb_run)["run_id"] == summary["wandb_id"]
    (job,) = (sweep / ".submitit").glob("[0-9]*")
    for task in (0, 1):
        assert "Job completed successfully" in (job / f"{job.name}_{task}_log.out").read_text()


@pytest.mark.slow
def test_failed_job_is_a_failed_submitit_task_and_the_sweep_goes_on(tmp_path, ultrafeedback_file):
    """hydra/launcher=local_submitit (dpo_exp's launcher, as slurm_gpu): the empty-file job's task fails, the
    other job still completes, and the sweep exits 1 naming only the failed job."""
    empty, _ = _empty_and_identical(tmp_path)
    proc = run_cli(
        [
            "-m",
            "hydra/launcher=local_submitit",
            *FAST_MODEL,
            *FAST_TRAINER,
            "dataset=preference_files",
            f"dataset.path={ultrafeedback_file},{empty}",
            "data_size=8",
            "dataset.eval_size=4",
            "epochs=1",
            "eval.enabled=false",
            "logger=none",
            "hydra.sweep.dir=multirun/f",
        ],
        tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    sweep = tmp_path / "multirun" / "f"
    statuses = [json.loads((sweep / n / "summary.json").read_text())["status"] for n in ("0", "1")]
    assert statuses == ["completed", "failed"]
    table = proc.stderr[proc.stderr.index("error: 1 of 2 jobs failed") :].splitlines()
    assert len(table) == 3 and table[2].startswith("1 ") and "no rows" in table[2]
    outcomes = {}
    for result in (sweep / ".submitit").glob("*/*_result.pkl"):
        outcome, detail = pickle.loads(result.read_bytes())
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        log = result.with_name(result.name.replace("_result.pkl", "_log.out")).read_text()
        if outcome == "error":
            assert "JobFailed: job #1 failed: " in detail and "no rows" in detail
            assert "Job completed successfully" not in log
    assert outcomes == {"success": 1, "error": 1}


def test_slurm_gpu_preset_submits_one_multi_node_ddp_job(tmp_path, monkeypatch):
    """hydra/launcher=slurm_gpu with nodes=2, 4 GPUs and 4 tasks per node: dpo_exp's launcher (a failed job fails its
    task) builds the sbatch script of one 2 x 4-process job; each task runs `join_submitit_job` (tests above)."""
    bin_dir = tmp_path / "bin"  # submitit's Slurm executor only starts where `srun` is on PATH; nothing is submitted
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    from hydra import compose, initialize_config_dir
    from hydra.core.plugins import Plugins
    from omegaconf import OmegaConf

    from dpo_exp import CONF_DIR

    overrides = ["hydra/launcher=slurm_gpu", "hydra.launcher.partition=a100", "hydra.launcher.nodes=2"]
    overrides += ["hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4", f"hydra.sweep.dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_ == "hydra_plugins.dpo_exp_launcher.submitit_launcher.SlurmLauncher"
    assert launcher_cfg._target_ in {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover()}
    from hydra_plugins.dpo_exp_launcher.submitit_launcher import SlurmLauncher

    params = OmegaConf.to_container(launcher_cfg, resolve=True)
    params.pop("_target_")
    executor = SlurmLauncher(**params).executor()
    script = executor._executor._make_submission_file_text("python -m dpo_exp", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=a100", "--signal=USR2@120"):
        assert f"#SBATCH {line}" in script, script
    assert "export SUBMITIT_EXECUTOR=slurm" in script and "srun" in script


@pytest.mark.slow
def test_multi_node_torchrun_rendezvous_as_two_nodes_on_one_machine(tmp_path, ultrafeedback_file):
    """The README's multi-node torchrun command (c10d rendezvous, one torchrun per node), with both "nodes" on this
    machine: one run of 2 processes, 4 steps, written once."""
    torchrun = Path(sys.executable).with_name("torchrun")
    torchrun = str(torchrun) if torchrun.exists() else (shutil.which("torchrun") or "torchrun")
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    rendezvous = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d"]
    rendezvous += ["--rdzv_endpoint", f"localhost:{port}", "--rdzv_id", "test"]
    args = [*FAST_MODEL, *FAST_TRAINER, "trainer.per_device_train_batch_size=2", "dataset=preference_files"]
    args += [f"dataset.path={ultrafeedback_file}", "data_size=16", "epochs=1", "eval.enabled=false", "logger=none"]
    env = {**os.environ, "DPO_EXP_CACHE": str(tmp_path / ".cache"), "OMP_NUM_THREADS": "1"}
    command = [torchrun, *rendezvous, "-m", "dpo_exp", *args, f"hydra.run.dir={tmp_path / 'run'}"]
    nodes = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sum(out.count("[dpo_exp] completed") for out, _ in outputs) == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["num_processes"] == 2
    train = [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert train == [1, 2, 3, 4]
