"""One process per run folder (a pid lock, stale locks taken over) and Ctrl-C before training: `interrupted`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dpo_exp.infra.runlock import LOCK_NAME, RunFolderBusy, RunLock

from .conftest import FAST_MODEL, FAST_TRAINER, ROOT, run_cli, shared_file
from .test_bad_input import assert_clean_error

HOLDER = """import sys, time
from pathlib import Path
from dpo_exp.infra.runlock import RunLock
with RunLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_exclusive_while_held_and_released_after(tmp_path):
    with RunLock(tmp_path):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_stale_lock_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": os.uname().nodename}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_second_process_on_a_held_folder_stops_naming_the_holder(tmp_path, ultrafeedback_file):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = [
            *FAST_MODEL,
            *FAST_TRAINER,
            "dataset=preference_files",
            f"dataset.path={ultrafeedback_file}",
            "logger=none",
            f"hydra.run.dir={run_dir}",
        ]
        proc = run_cli(args, tmp_path, timeout=120)
        assert_clean_error(proc, [f"is in use by pid {holder.pid}", str(run_dir)])
        assert not (run_dir / "summary.json").exists()  # the holder's folder is left alone
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
            RunLock(run_dir).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale and the next run takes it over (it then stops on the
    # data error below, proving it got past the lock, and releases the lock on the way out)
    assert (run_dir / LOCK_NAME).exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n", encoding="utf-8")
    args = [
        *FAST_MODEL,
        *FAST_TRAINER,
        "dataset=preference_files",
        f"dataset.path={bad}",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    ]
    proc = run_cli(args, tmp_path, timeout=120)
    assert_clean_error(proc, ["missing column(s) ['rejected']"])
    assert not (run_dir / LOCK_NAME).exists()


def test_ctrl_c_while_reading_data_marks_the_run_interrupted(tmp_path):
    """SIGINT during data loading/tokenising (before training): exit 130, one line, status `interrupted`."""
    rows = [json.loads(line) for line in shared_file("ultrafeedback/sample.jsonl").open(encoding="utf-8")]
    big = tmp_path / "big.jsonl"
    with big.open("w", encoding="utf-8") as handle:
        for i in range(40_000):  # long enough to still be loading when the signal comes
            row = rows[i % len(rows)]
            handle.write(
                json.dumps(
                    {
                        "prompt": f"{row['prompt'][:300]} #{i}",
                        "chosen": row["chosen"][:200],
                        "rejected": row["rejected"][:200],
                    }
                )
                + "\n"
            )  # ~25 MB: seconds of tokenising
    run_dir = tmp_path / "run"
    args = [
        *FAST_MODEL,
        *FAST_TRAINER,
        "dataset=preference_files",
        f"dataset.path={big}",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "DPO_EXP_CACHE": str(tmp_path / ".cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpo_exp", *args],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # as in a terminal
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        summary = run_dir / "summary.json"
        if summary.exists() and json.loads(summary.read_text() or "{}").get("status") == "running":
            break
        time.sleep(0.1)
    time.sleep(1.0)
    assert proc.poll() is None, "the run ended before the signal"
    started = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert time.time() - started < 30
    assert "Traceback" not in err and "interrupted:" in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert not (run_dir / "metrics.jsonl").exists()  # it was stopped before training started
    assert not (run_dir / LOCK_NAME).exists()
