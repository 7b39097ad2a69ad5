"""W&B history (issue 23): an announced, bounded online start; charts against train/global_step; no step logged twice
after a crash-resume; no stale eval/* keys after a re-evaluation; an earlier attempt's W&B folders are kept; the
sweep workspace targets the entity and project the jobs logged to. All read back with W&B's own reader, offline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dpo_exp import CONF_DIR
from dpo_exp.compare.workspace import WORKSPACE_FILE
from dpo_exp.infra.storage import read_jsonl
from dpo_exp.infra.tracking import STEP_METRIC, start_tracker

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli
from .test_compare import curves, write_run
from .wandb_records import history, offline_runs, records, run_record

UNREACHABLE = {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
HYDRA_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _logged_at(output: str, text: str) -> datetime:
    """When Hydra's log line containing `text` was written."""
    line = next(line for line in output.splitlines() if text in line)
    return datetime.strptime(HYDRA_TIME.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f")


def _metric_definitions(offline_run: Path) -> list[dict]:
    return [r["metric"] for r in records(offline_run) if r.get("type") == "metric"]


def test_unreachable_wandb_is_announced_at_once_and_bounded_by_init_timeout(tmp_path, hh_file):
    """A well-formed key and no server: the run says it is trying online before it waits, falls back within
    logger.init_timeout (5 s here; W&B's own default would wait 90 s), plots against train/global_step and records
    where it logged in summary.json."""
    run_dir = tmp_path / "run"
    args = [*FAST_MODEL, *FAST_TRAINER, "dataset=hh_rlhf", f"dataset.path={hh_file}", "data_size=8"]
    args += ["dataset.eval_size=4", "epochs=1", "eval.enabled=false", "logger=wandb", "logger.init_timeout=5"]
    env = {**UNREACHABLE, "WANDB_ENTITY": "probe-team"}
    result = run_cli([*args, "logger.project=probe", f"hydra.run.dir={run_dir}"], tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stderr + result.stdout
    announced = _logged_at(output, "W&B: starting the online run")
    assert "logger.init_timeout" in output and output.index("starting the online run") < output.index("start failed")
    waited = (_logged_at(output, "W&B online start failed") - announced).total_seconds()
    assert 0 <= waited < 45, waited  # generous: the cap is 5 s; a cap W&B ignored would show its own 90 s
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (summary["wandb_entity"], summary["wandb_project"]) == ("probe-team", "probe")  # where it logged
    (offline,) = offline_runs(run_dir)
    definitions = _metric_definitions(offline)
    assert {"name": STEP_METRIC, "options": {"defined": True}} in definitions
    assert any(d.get("glob_name") == "*" and d.get("step_metric") == STEP_METRIC for d in definitions)
    rows = history(offline)
    assert any("train/loss" in row for row in rows)
    assert all(STEP_METRIC in row for row in rows)  # tables and images too (step_sync)


def test_the_default_init_timeout_is_documented_and_bounded():
    text = (CONF_DIR / "logger" / "wandb.yaml").read_text()
    line = next(line for line in text.splitlines() if line.startswith("init_timeout:"))
    assert "#" in line and 0 < float(line.split(":")[1].split("#")[0]) <= 30


def _earlier_attempt(tmp_path: Path) -> tuple[str, Path]:
    """A first attempt logged offline (its records not yet synced): its run id and folder."""
    cfg = OmegaConf.create({"enabled": True, "mode": "offline", "project": "t", "init_timeout": 30})
    tracker = start_tracker(cfg, tmp_path, "t", "g", [], {"a": 1})
    tracker.log({"train/loss": 0.9, STEP_METRIC: 1})
    tracker.finish()
    (folder,) = offline_runs(tmp_path)
    return tracker.run_id, folder


def test_offline_fallback_keeps_an_earlier_attempts_online_folder(tmp_path, monkeypatch):
    """Resumed, the online try fails for real (no server) and the fallback logs offline under the same id: the
    folder a first, online attempt left (`run-*-ID`, possibly holding unsynced records) is not the failed try's."""
    run_id, _ = _earlier_attempt(tmp_path)
    earlier = tmp_path / "wandb" / f"run-20200101_000000-{run_id}"
    (earlier / "files").mkdir(parents=True)
    (earlier / f"run-{run_id}.wandb").write_bytes(b"records of the first attempt")
    for key, value in UNREACHABLE.items():
        monkeypatch.setenv(key, value)
    cfg = OmegaConf.create({"enabled": True, "mode": "online", "project": "t", "init_timeout": 3})
    tracker = start_tracker(cfg, tmp_path, "t", "g", [], {"a": 1}, resume_id=run_id)
    tracker.finish()
    assert tracker.mode == "offline" and tracker.run_id == run_id
    assert (earlier / f"run-{run_id}.wandb").exists()
    assert len(offline_runs(tmp_path)) == 2  # the first attempt's and this one's
    assert not [p for p in (tmp_path / "wandb").glob("run-*") if p != earlier]  # this try's online folder is gone


def test_offline_fallback_under_a_new_id_keeps_the_earlier_attempts_offline_run(tmp_path, monkeypatch):
    """Resumed, the online try fails and the offline start under the run's id fails too ("in use", seen under
    load; both injected): the new-id fallback removes only this attempt's failed folders, never the first
    attempt's unsynced offline run of the same id."""
    import wandb

    run_id, first = _earlier_attempt(tmp_path)
    real_init, calls = wandb.init, []

    def init(*args, **kwargs):
        calls.append(kwargs["mode"])
        if len(calls) == 1:
            raise TimeoutError("Timed out while retrying: connection refused")
        if len(calls) == 2:
            (Path(kwargs["dir"]) / "wandb" / f"offline-run-20990101_000000-{kwargs['id']}").mkdir(parents=True)
            raise RuntimeError(f"run ID {kwargs['id']} is in use")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    cfg = OmegaConf.create({"enabled": True, "mode": "online", "project": "t", "init_timeout": 5})
    tracker = start_tracker(cfg, tmp_path, "t", "g", [], {"a": 1}, resume_id=run_id)
    tracker.finish()
    assert calls == ["online", "offline", "offline"] and tracker.run_id != run_id
    assert first.is_dir() and [row["train/loss"] for row in history(first)] == [0.9]
    kept = {run_record(p)["run_id"] for p in offline_runs(tmp_path)}
    assert kept == {run_id, tracker.run_id}  # the failed try's folder is gone, both real runs stay


# 16 pairs / batch 4 = 4 steps per epoch, 2 epochs = 8 steps; a checkpoint every 2 steps; a small evaluation
RESUMED_RUN = [
    *FAST_MODEL,
    *FAST_TRAINER,
    "dataset=hh_rlhf",
    "data_size=16",
    "dataset.eval_size=4",
    "epochs=2",
    "trainer.eval_strategy=no",
    "trainer.save_strategy=steps",
    "trainer.save_steps=2",
    "logger=wandb",
    "logger.mode=offline",
    "eval/reward=vader",
    "eval.num_prompts=4",
    "eval.num_samples=2",
    "eval.num_pairs=4",
    "eval.max_new_tokens=8",
    "eval.bootstrap=50",
    "eval.best_of_n=[2]",
    "eval.best_of_n_prompts=2",
]
CRASH_AT = 3  # a crash right after step 3 was logged: the last checkpoint is step 2
CRASHING = f"""
import sys
from dpo_exp.training import callbacks
logged = callbacks.MetricsRecorder.on_log
def on_log(self, args, state, control, logs=None, **kwargs):
    logged(self, args, state, control, logs=logs, **kwargs)
    if state.global_step >= {CRASH_AT} and logs and "loss" in logs:
        raise RuntimeError("injected crash")  # as an OOM or a data error would, after the row was logged
callbacks.MetricsRecorder.on_log = on_log
from dpo_exp.__main__ import main
sys.argv = ["dpo_exp", *sys.argv[1:]]
main()
"""


def _train_steps(offline_run: Path) -> list[int]:
    return [int(row[STEP_METRIC]) for row in history(offline_run) if "train/loss" in row]


@pytest.fixture(scope="module")
def crashed_and_resumed(tmp_path_factory) -> Path:
    """A run that crashed after step 3 (checkpoint 2), then the same command again, resuming it."""
    data = Path(os.environ.get("DPO_EXP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    hh = data / "hh_rlhf" / "test.jsonl"
    if not hh.exists():
        pytest.skip("shared HH-RLHF sample missing")
    cwd = tmp_path_factory.mktemp("crash")
    run_dir = cwd / "run"
    args = [*RESUMED_RUN, f"dataset.path={hh}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "DPO_EXP_CACHE": str(cwd / ".cache"), "PYTHONUNBUFFERED": "1"}
    crash = subprocess.run(
        [sys.executable, "-c", CRASHING, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert crash.returncode == 1 and "injected crash" in crash.stderr, crash.stderr[-3000:]
    assert max(r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")) == CRASH_AT
    failed = json.loads((run_dir / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["wandb_step"] == CRASH_AT  # what its W&B run holds
    resumed = run_cli(args, cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_a_crash_resume_logs_every_step_to_wandb_once(crashed_and_resumed):
    run_dir = crashed_and_resumed
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"].endswith("checkpoint-2")
    first, second = offline_runs(run_dir)
    assert run_record(first)["run_id"] == run_record(second)["run_id"] == summary["wandb_id"]
    crashed, resumed = _train_steps(first), _train_steps(second)
    assert crashed == [1, 2, 3]  # the crashed attempt's rows reached W&B (step 3 after the checkpoint)
    assert sorted(crashed + resumed) == list(range(1, 9))  # step 3, replayed from checkpoint 2, is not logged again
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"] == list(range(1, 9))


@pytest.mark.slow
def test_reevaluation_removes_the_stale_eval_keys_from_the_wandb_summary(crashed_and_resumed):
    run_dir = crashed_and_resumed
    before = json.loads((run_dir / "summary.json").read_text())
    stale = {k for k in before if k.startswith("eval/bon_")}
    assert "eval/bon_reward_2" in stale
    proc = run_cli([f"run_dir={run_dir}", "eval.best_of_n=[]"], run_dir.parent, module="dpo_exp.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((run_dir / "summary.json").read_text())
    assert not any(k.startswith("eval/bon_") for k in after) and "eval/reward_delta" in after
    evaluation = offline_runs(run_dir)[-1]
    assert run_record(evaluation)["run_id"] == before["wandb_id"]  # the run's own W&B run, resumed
    removed = {
        "/".join(item["key"]) if isinstance(item["key"], list) else item["key"]
        for r in records(evaluation)
        if r.get("type") == "summary"
        for item in r["summary"].get("remove", [])
    }
    assert stale <= removed and "eval/reward_delta" not in removed


def test_sweep_workspace_targets_the_entity_and_project_the_jobs_logged_to(tmp_path):
    """The jobs' saved .hydra/config.yaml holds the logger block unresolved (`${oc.env:WANDB_ENTITY,null}`); the
    workspace takes the entity and project each job recorded at tracker start, and the summary run starts."""
    root = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    logger = OmegaConf.load(CONF_DIR / "logger" / "wandb.yaml")
    for job, beta in enumerate((0.1, 0.5)):
        summary = {
            "status": "completed",
            "group": "g-sweep",
            "sweep": {"beta": str(beta)},
            "wandb_id": f"job{job}",
            "wandb_entity": "team-logged",
            "wandb_project": "project-logged",
            "eval/reward_delta": 0.1 / beta,
            "eval/kl": 1 / beta,
        }
        run_dir = write_run(root / str(job), {"beta": str(beta)}, summary, curves(beta))
        OmegaConf.save(OmegaConf.create({"beta": beta, "logger": logger}), run_dir / ".hydra" / "config.yaml")
    assert "${oc.env:WANDB_ENTITY" in (root / "0" / ".hydra" / "config.yaml").read_text()
    proc = run_cli([str(root), "--wandb"], tmp_path, module="dpo_exp.compare", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep summary run logged offline" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    text = (root / WORKSPACE_FILE).read_text()
    assert "${" not in text
    workspace = json.loads(text)["workspace"]
    assert (workspace["entity"], workspace["project"]) == ("team-logged", "project-logged")
