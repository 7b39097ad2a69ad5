"""Runs that survive: SIGTERM -> checkpoint -> resume, reproducibility, completed runs skipped, W&B failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpo_exp.infra.storage import read_jsonl

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli
from .test_bad_input import assert_clean_error
from .wandb_records import history, offline_runs, run_record

# 16 pairs / batch 4 = 4 steps per epoch, 2 epochs = 8 steps; a checkpoint every 2 steps.
RUN = [
    *FAST_MODEL,
    *FAST_TRAINER,
    "dataset=hh_rlhf",
    "data_size=16",
    "dataset.eval_size=4",
    "epochs=2",
    "trainer.eval_strategy=no",
    "trainer.save_strategy=steps",
    "trainer.save_steps=2",
    "eval.enabled=false",
    "lr=1e-3",
]


def train_rows(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """Two uninterrupted runs of the same config, side by side."""
    data = Path(os.environ.get("DPO_EXP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    hh = data / "hh_rlhf" / "test.jsonl"
    if not hh.exists():
        pytest.skip("shared HH-RLHF sample missing")
    base = tmp_path_factory.mktemp("reference")
    procs = []
    for name in ("a", "b"):
        args = [*RUN, f"dataset.path={hh}", "logger=none", f"hydra.run.dir={base / name}"]
        env = {**os.environ, "DPO_EXP_CACHE": str(base / ".cache"), "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "dpo_exp", *args],
                cwd=base,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    return hh, base / "a", base / "b"


def test_same_config_and_seed_reproduce_the_metrics(reference_runs):
    _, a, b = reference_runs
    rows_a, rows_b = train_rows(a), train_rows(b)
    assert sorted(rows_a) == list(range(1, 9))
    for step in rows_a:
        for key in ("loss", "rewards/margins", "rewards/chosen", "grad_norm"):
            assert rows_b[step][key] == pytest.approx(rows_a[step][key], rel=1e-5, abs=1e-7), (step, key)
    env_a = summary(a)["environment"]
    assert env_a["versions"]["torch"] and env_a["versions"]["trl"] and "git_commit" in env_a and "cpu_count" in env_a


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes_to_the_same_result(reference_runs, tmp_path):
    hh, uninterrupted, _ = reference_runs
    run_dir = tmp_path / "run"
    args = [*RUN, f"dataset.path={hh}", "logger=wandb", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "DPO_EXP_CACHE": str(tmp_path / ".cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpo_exp", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and len(train_rows(run_dir)) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "resume" in err
    assert summary(run_dir)["status"] == "interrupted"
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    stopped_at = max(checkpoints)
    assert 3 <= stopped_at < 8  # saved right after the step in flight, not at the last interval

    # another command would resume it under mixed settings: refused, the folder left as it was (resume=force allows it)
    saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    changed = run_cli([*args, "beta=0.5", "epochs=3"], tmp_path)
    assert_clean_error(changed, ["beta: 0.1 -> 0.5", "epochs: 2 -> 3", "resume=force"])
    assert summary(run_dir)["status"] == "interrupted" and summary(run_dir)["attempts"] == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == saved

    result = run_cli(args, tmp_path)  # the same command again
    assert result.returncode == 0, result.stderr[-3000:]
    done = summary(run_dir)
    assert done["status"] == "completed" and done["attempts"] == 2
    assert done["resumed_from"].endswith(f"checkpoint-{stopped_at}")

    resumed, reference = train_rows(run_dir), train_rows(uninterrupted)
    assert sorted(resumed) == list(range(1, 9))  # every step once, none repeated
    for step in range(stopped_at + 1, 9):
        assert resumed[step]["loss"] == pytest.approx(reference[step]["loss"], rel=1e-4, abs=1e-6), step
        assert resumed[step]["num_tokens"] == reference[step]["num_tokens"], step  # the count goes on, not from 0
    assert done["loss"] == pytest.approx(summary(uninterrupted)["loss"], rel=1e-4, abs=1e-6)
    # the mean over ALL 8 steps (transformers alone would average only the resumed ones)
    assert done["train_loss"] == pytest.approx(summary(uninterrupted)["train_loss"], rel=1e-5)
    assert done["train_loss"] == pytest.approx(sum(r["loss"] for r in resumed.values()) / 8, rel=1e-5)
    (final_row,) = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "final"]
    assert final_row["train_loss"] == done["train_loss"]

    ids = {run_record(o)["run_id"] for o in offline_runs(run_dir)}
    assert len(ids) == 1, "the W&B run must be resumed, not duplicated"

    before = (run_dir / "summary.json").read_text()
    again = run_cli(args, tmp_path)  # a completed run is not redone
    assert again.returncode == 0 and (run_dir / "summary.json").read_text() == before


def test_wandb_unreachable_does_not_stop_the_run(tmp_path, hh_file):
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    result = run_cli(
        [
            *FAST_MODEL,
            *FAST_TRAINER,
            "dataset=hh_rlhf",
            f"dataset.path={hh_file}",
            "data_size=8",
            "dataset.eval_size=4",
            "epochs=1",
            "eval.enabled=false",
            "logger=wandb",
            "logger.init_timeout=3",  # the fallback, not the wait, is under test
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stderr + result.stdout
    assert "W&B online start failed" in output and "logging offline" in output
    done = summary(run_dir)
    assert done["status"] == "completed"
    assert train_rows(run_dir) and (run_dir / "plots" / "loss.png").exists() and (run_dir / "model").is_dir()
    # the record is kept offline in the run folder, under the id the summary names, ready for `wandb sync`
    runs = offline_runs(run_dir)
    assert len(runs) == 1 and done["wandb_id"], output[-3000:]
    assert run_record(runs[0])["run_id"] == done["wandb_id"]
    assert not list((run_dir / "wandb").glob("run-*"))  # nothing left of the failed online try
    assert any("train/loss" in row for row in history(runs[0]))


def test_wandb_failing_mid_run_is_reported_once_and_ignored(tmp_path, caplog):
    from omegaconf import OmegaConf

    from dpo_exp.infra.tracking import start_tracker

    cfg = OmegaConf.create({"enabled": True, "mode": "offline", "project": "t", "init_timeout": 30})
    tracker = start_tracker(cfg, tmp_path, "t", "g", [], {"a": 1})
    assert tracker.active
    tracker.run.finish()  # W&B goes away behind the tracker's back: logging now raises inside wandb
    tracker.log({"x": 1.0})
    tracker.summary({"y": 2})
    assert not tracker.active and "continuing without it" in caplog.text
    tracker.finish()


def test_wandb_offline_fallback_survives_its_id_still_in_use(tmp_path, monkeypatch):
    """Seen under load: after the online try fails, the local W&B service still holds its id and the offline
    start under the same id fails ("run ID ... is in use"). The run is then logged offline under a new id, and
    only that run's folder is left for `wandb sync`. The two failures are injected; the third start is W&B's."""
    import wandb
    from omegaconf import OmegaConf

    from dpo_exp.infra.tracking import start_tracker

    real_init, calls = wandb.init, []

    def init(*args, **kwargs):
        calls.append((kwargs["mode"], kwargs["id"]))
        if len(calls) == 1:
            raise TimeoutError("Timed out while retrying: connection refused")  # the unreachable server
        if len(calls) == 2:  # what the failed offline try leaves behind, then its error
            (Path(kwargs["dir"]) / "wandb" / f"offline-run-20260101_000000-{kwargs['id']}").mkdir(parents=True)
            raise RuntimeError(f"run ID {kwargs['id']} is in use")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    cfg = OmegaConf.create({"enabled": True, "mode": "online", "project": "t", "init_timeout": 5})
    tracker = start_tracker(cfg, tmp_path, "t", "g", [], {"a": 1})
    tracker.log({"train/loss": 0.5}, step=1)
    tracker.finish()
    assert [mode for mode, _ in calls] == ["online", "offline", "offline"]
    assert calls[0][1] == calls[1][1] != calls[2][1] == tracker.run_id  # same id first, then a new one
    runs = offline_runs(tmp_path)
    assert len(runs) == 1 and run_record(runs[0])["run_id"] == tracker.run_id
    assert any("train/loss" in row for row in history(runs[0]))


def test_graceful_stop_forwards_the_signal_to_the_previous_handler():
    """On SLURM, submitit's SIGUSR2 handler (checkpoint + requeue) must still run after our checkpoint."""
    from dpo_exp.training.callbacks import GracefulStop

    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    stopper = GracefulStop()
    stopper.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stopper.signal_name == "SIGUSR2" and not seen
    finally:
        stopper.uninstall()
    stopper.forward()
    assert seen == [signal.SIGUSR2]
    signal.signal(signal.SIGUSR2, previous)
