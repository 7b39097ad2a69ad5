"""Multirun sweeps end to end: one run dir + one W&B run per job in one group, failures recorded, shared
reference log-probs, the comparison report on a real sweep, launchers, the Optuna preset, accelerate launch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli, shared_file

WANDB = str(Path(sys.executable).parent / "wandb")


def fast_overrides() -> list[str]:
    """Tiny model, 8 training pairs, 8 eval pairs, one epoch, no sampling-based evaluation."""
    hh = shared_file("hh_rlhf/test.jsonl")
    return [
        *FAST_MODEL,
        *FAST_TRAINER,
        "dataset=hh_rlhf",
        f"dataset.path={hh}",
        "data_size=8",
        "dataset.eval_size=8",
        "epochs=1",
        "eval.enabled=false",
        "lora=none",
    ]


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def wandb_records(run_dir: Path) -> dict:
    """The offline .wandb log of a run, read back by W&B's own CLI: the run record and the exit record."""
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, f"expected one offline W&B run in {run_dir}, found {offline}"
    out = subprocess.run(
        [WANDB, "leet", "inspect", "--json", str(offline[0])], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    records = {}
    for line in out.splitlines():
        record = json.loads(line)
        if record["type"] in ("run", "exit"):
            records[record["type"]] = record[record["type"]]
    return records


# ---------------------------------------------------------------- one shared 4-job beta sweep, one job failing


@pytest.fixture(scope="module")
def beta_sweep(tmp_path_factory) -> Path:
    """`-m beta=0.1,0.5,1.0,-1`: three jobs complete, beta=-1 fails validation; the sweep must still finish, then
    exit 1 with the failed job's table."""
    cwd = tmp_path_factory.mktemp("beta_sweep")
    proc = run_cli(
        [
            "-m",
            *fast_overrides(),
            "trainer.precompute_ref_log_probs=true",
            "hydra.sweep.dir=multirun/beta",
            "beta=0.1,0.5,1.0,-1",
        ],
        cwd,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: 1 of 4 jobs failed" in proc.stderr and "beta must be > 0" in proc.stderr.splitlines()[-1]
    return cwd / "multirun" / "beta"


def test_sweep_one_run_dir_per_job_and_failure_is_recorded(beta_sweep: Path):
    dirs = job_dirs(beta_sweep)
    assert [d.name for d in dirs] == ["0", "1", "2", "3"]
    summaries = [summary(d) for d in dirs]
    assert [s["status"] for s in summaries] == ["completed", "completed", "completed", "failed"]
    assert [s["sweep"] for s in summaries] == [{"beta": "0.1"}, {"beta": "0.5"}, {"beta": "1.0"}, {"beta": "-1"}]
    assert "beta must be > 0" in summaries[3]["error"]
    for s in summaries[:3]:
        assert isinstance(s["eval_loss"], float) and isinstance(s["loss"], float)
        assert (beta_sweep / "multirun.yaml").is_file()


def test_sweep_wandb_runs_share_one_group_with_distinct_names(beta_sweep: Path):
    records = [wandb_records(d) for d in job_dirs(beta_sweep)]
    runs = [r["run"] for r in records]
    groups = {r["run_group"] for r in runs}
    assert len(groups) == 1 and groups.pop().startswith("dpo-sweep-")
    assert [r["display_name"] for r in runs] == ["dpo/beta=0.1", "dpo/beta=0.5", "dpo/beta=1.0", "dpo/beta=-1"]
    assert "beta=0.5" in runs[1]["tags"] and "sweep" in runs[1]["tags"]
    assert runs[1]["config"]["update"]["beta"] == 0.5  # a config field, for parallel coordinates
    assert [r["exit"]["exit_code"] for r in records] == [0, 0, 0, 1]  # the failed job is failed in W&B


def test_finished_sweep_leaves_a_summary_run_in_its_group(beta_sweep: Path):
    """The Hydra on_multirun_end callback: comparison files, a sweep-summary W&B run beside the jobs, the workspace."""
    from .wandb_records import offline_runs, run_record

    summary_runs = offline_runs(beta_sweep)
    assert summary_runs, "no sweep-summary W&B run in the sweep folder"
    record = run_record(summary_runs[0])
    assert record["job_type"] == "sweep-summary"
    assert record["run_group"] == wandb_records(beta_sweep / "0")["run"]["run_group"]
    assert (beta_sweep / "comparison.csv").is_file() and (beta_sweep / "wandb_workspace.json").is_file()


def test_sweep_reference_logps_built_once_then_reused(beta_sweep: Path):
    caches = [summary(d)["ref_logps"]["cache"] for d in job_dirs(beta_sweep)[:3]]
    assert caches == ["built", "reused", "reused"]
    logs = [(d / "__main__.log").read_text() for d in job_dirs(beta_sweep)[:3]]
    assert "reference log-probs: built" in logs[0] and "reference log-probs: reused" in logs[2]


def test_compare_on_the_sweep_marks_the_failed_job(beta_sweep: Path, tmp_path: Path):
    proc = run_cli([str(beta_sweep)], tmp_path, module="dpo_exp.compare")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "beta" in proc.stdout and "failed" in proc.stdout  # the console table
    import pandas as pd

    df = pd.read_csv(beta_sweep / "comparison.csv")
    assert len(df) == 4 and sorted(df["beta"]) == [-1, 0.1, 0.5, 1.0]
    assert df.set_index("beta").loc[0.5, "eval/loss"] == pytest.approx(summary(beta_sweep / "1")["eval_loss"])
    md = (beta_sweep / "comparison.md").read_text()
    failed_row = next(line for line in md.splitlines() if line.startswith("| 3 |"))
    assert "| -1 | failed |" in failed_row
    assert "beta must be > 0" in md
    for png in ("learning_curves.png", "metrics_vs_beta.png"):
        assert (beta_sweep / "plots" / png).stat().st_size > 1000


def test_relaunching_the_sweep_skips_completed_jobs(beta_sweep: Path):
    """A half-finished (here: partly failed) sweep re-launched over the same folder does not redo completed jobs."""
    before = {d.name: (d / "summary.json").read_text() for d in job_dirs(beta_sweep)}
    proc = run_cli(
        [
            "-m",
            *fast_overrides(),
            "trainer.precompute_ref_log_probs=true",
            "hydra.sweep.dir=multirun/beta",
            "beta=0.1,0.5,1.0,-1",
        ],
        beta_sweep.parent.parent,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # the failed job fails again
    for name in ("0", "1", "2"):
        assert (beta_sweep / name / "summary.json").read_text() == before[name]  # untouched: skipped
        assert "already completed: skipping" in (beta_sweep / name / "__main__.log").read_text()
    assert summary(beta_sweep / "3")["status"] == "failed"


# ---------------------------------------------------------------- config-only checks (fast)


def compose(overrides: list[str]):
    """The composed config including its `hydra` node (sweeper, launcher)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dpo_exp import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_presets_compose_with_their_sweep_params():
    cfg = compose(["experiment=sweep_beta"])
    assert str(cfg.hydra.sweeper.params.beta) == "0.05,0.1,0.5,1.0,5.0"
    assert cfg.trainer.precompute_ref_log_probs is True
    assert "lr" in compose(["experiment=sweep_lr"]).hydra.sweeper.params
    assert "data_size" in compose(["experiment=sweep_data_size"]).hydra.sweeper.params
    slurm = compose(["hydra/launcher=slurm_gpu", "hydra.launcher.partition=a100"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.partition, slurm.gpus_per_node, slurm.timeout_min, slurm.mem_gb) == ("a100", 1, 240, 64)
    assert compose(["hydra/launcher=local_parallel"]).hydra.launcher.n_jobs == 2


def test_accelerate_launch_composes_the_config(tmp_path: Path):
    """The multi-GPU entry point (`accelerate launch -m dpo_exp ...`) parses and composes; DDP needs GPUs."""
    accelerate = str(Path(sys.executable).parent / "accelerate")
    proc = subprocess.run(
        [
            accelerate,
            "launch",
            "--cpu",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "dpo_exp",
            "--cfg",
            "job",
            "model=tiny_gpt2",
            "beta=0.3",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "beta: 0.3" in proc.stdout.splitlines()


# ---------------------------------------------------------------- launchers and Optuna (each a 2-job sweep)


def launcher_sweep(tmp_path: Path, extra: list[str]) -> list[dict]:
    proc = run_cli(
        [
            "-m",
            *fast_overrides(),
            "logger=none",
            "trainer.eval_strategy=no",
            "objective=loss",
            "hydra.sweep.dir=multirun/s",
            *extra,
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [summary(d) for d in job_dirs(tmp_path / "multirun" / "s")]


@pytest.mark.slow
def test_joblib_launcher_runs_a_two_job_sweep(tmp_path: Path):
    summaries = launcher_sweep(tmp_path, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "beta=0.1,0.5"])
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert [s["sweep"] for s in summaries] == [{"beta": "0.1"}, {"beta": "0.5"}]


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path: Path):
    summaries = launcher_sweep(
        tmp_path, ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "lr=1e-4,1e-3"]
    )
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert [s["sweep"] for s in summaries] == [{"lr": "0.0001"}, {"lr": "0.001"}]
    assert (tmp_path / "multirun" / "s" / ".submitit").is_dir()


@pytest.mark.slow
def test_optuna_preset_runs_trials_and_optimises_the_objective(tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the optuna extra")
    proc = run_cli(
        [
            "hparams_search=optuna_beta_lr",
            *fast_overrides(),
            "logger=none",
            "objective=loss",
            "hydra.sweeper.direction=minimize",
            "hydra.sweeper.n_trials=2",
            "hydra.sweep.dir=multirun/o",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "multirun" / "o"
    summaries = [summary(d) for d in job_dirs(sweep)]
    assert len(summaries) == 2 and all(s["status"] == "completed" for s in summaries)
    assert all(set(s["sweep"]) == {"beta", "lr"} for s in summaries)
    from omegaconf import OmegaConf

    results = OmegaConf.load(sweep / "optimization_results.yaml")  # Optuna got the returned objective values
    assert results.best_value == pytest.approx(min(s["loss"] for s in summaries))
