"""A run folder's record never lies: a finished run is skipped or refused, never re-recorded; an unfinished one is
resumed only under its own command (or resume=force, recorded); iterative DPO's rounds are keyed on the settings that
made them; a full disk is one line, a `failed` status, no torn checkpoint, and a resume from the last whole one."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import FAST_MODEL, FAST_TRAINER, compose, run_cli, shared_file
from .test_bad_input import assert_clean_error

# 8 pairs / batch 4 = 2 steps per epoch; a checkpoint every 2 steps
RUN = [
    *FAST_MODEL,
    *FAST_TRAINER,
    "dataset=hh_rlhf",
    "data_size=8",
    "dataset.eval_size=4",
    "epochs=1",
    "trainer.eval_strategy=no",
    "trainer.save_strategy=steps",
    "trainer.save_steps=2",
    "eval.enabled=false",
    "logger=none",
]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def record_files(run_dir: Path) -> dict[str, bytes]:
    """What compare, the app and evaluate read of a run: Hydra's files and the summary."""
    names = [".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "summary.json"]
    return {name: (run_dir / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, list[str]]:
    """One completed tiny run (2 steps, checkpoint-2) and the arguments that made it (hydra.run.dir left out)."""
    base = tmp_path_factory.mktemp("finished")
    args = [*RUN, f"dataset.path={shared_file('hh_rlhf/test.jsonl')}"]
    proc = run_cli([*args, f"hydra.run.dir={base / 'run'}"], base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "run", args


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_a_changed_command_on_a_completed_run_is_refused_and_its_record_kept(finished, tmp_path):
    source, args = finished
    run_dir = copy_run(source, tmp_path)
    before = record_files(run_dir)
    proc = run_cli([*args, f"hydra.run.dir={run_dir}", "beta=0.5", "lr=5e-4"], tmp_path)
    assert_clean_error(proc, ["beta: 0.1 -> 0.5", "lr: 0.0001 -> 0.0005", f"hydra.run.dir={run_dir}_2", str(run_dir)])
    assert record_files(run_dir) == before  # Hydra rewrote .hydra/ for this command: put back as the run wrote it
    # the same command (logged differently) is still skipped, and the record still unchanged
    same = run_cli([*args, f"hydra.run.dir={run_dir}", "logger=wandb"], tmp_path)
    assert same.returncode == 0, same.stderr[-3000:]
    assert "already completed: skipping" in same.stdout + same.stderr
    assert record_files(run_dir) == before


def test_a_sweep_job_refused_for_another_command_fails_the_sweep_and_keeps_its_record(finished, tmp_path):
    """In a multirun the refused job keeps its `completed` record, yet the sweep ends with exit 1 and lists it as
    refused (with the differing keys), so a changed sweep aimed at an old folder cannot pass for a finished one."""
    source, args = finished
    sweep = tmp_path / "sweep"
    shutil.copytree(source, sweep / "0")
    before = record_files(sweep / "0")
    proc = run_cli(["-m", *args, f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=0", "beta=0.5"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 of 1 jobs failed" in proc.stderr and "refused" in proc.stderr and "beta: 0.1 -> 0.5" in proc.stderr
    assert record_files(sweep / "0") == before
    again = run_cli(["-m", *args, f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=0"], tmp_path)  # its own command
    assert again.returncode == 0, again.stderr[-3000:]  # skipped as completed: the earlier refusal is forgotten


@pytest.mark.slow  # a second training run; the refusal alone is also tested on an interrupted run (test_resilience)
def test_resuming_under_a_changed_command_is_refused_unless_forced(finished, tmp_path):
    source, args = finished
    run_dir = copy_run(source, tmp_path)
    before = record_files(run_dir)
    changed = [*args, f"hydra.run.dir={run_dir}", "skip_completed=false", "beta=0.5", "epochs=2"]
    proc = run_cli(changed, tmp_path)
    assert_clean_error(proc, ["beta: 0.1 -> 0.5", "epochs: 1 -> 2", "resume=force"])
    assert record_files(run_dir) == before
    forced = run_cli([*changed, "resume=force"], tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    done = summary(run_dir)
    assert done["status"] == "completed" and done["resumed_from"].endswith("checkpoint-2")
    assert done["resume"]["setting"] == "force"
    assert done["resume"]["changed"]["beta"] == {"recorded": 0.1, "now": 0.5}
    assert done["resume"]["changed"]["epochs"] == {"recorded": 1, "now": 2}
    assert (run_dir / "checkpoints" / "checkpoint-4").is_dir()  # it trained on, under the new settings


def test_resume_accepts_force_or_a_run_folder_only(tmp_path):
    from dpo_exp.config import validate
    from dpo_exp.errors import UserError

    data = [*FAST_TRAINER, "dataset=preference_files", f"dataset.path={shared_file('ultrafeedback/sample.jsonl')}"]
    validate(compose([*FAST_MODEL, *data, "resume=force"]))
    validate(compose([*FAST_MODEL, *data, f"resume={tmp_path}"]))
    with pytest.raises(UserError, match="resume=nowhere is not a run directory"):
        validate(compose([*FAST_MODEL, *data, "resume=nowhere"]))


def test_only_what_a_run_trains_and_evaluates_is_compared():
    from dpo_exp.infra.runrecord import differences
    from dpo_exp.training.rerun import settings_of

    base = settings_of(compose([]))
    assert differences(base, settings_of(compose(["logger=none", "name=other", "skip_completed=false"]))) == {}
    changed = differences(base, settings_of(compose(["beta=0.5", "generation.num_samples=2"])))
    assert changed["beta"] == (0.1, 0.5) and changed["trainer.beta"] == (0.1, 0.5)
    assert set(changed) == {"beta", "trainer.beta", "generation.num_samples"}


def test_iterative_rounds_are_keyed_on_the_settings_that_made_them(tmp_path):
    from dpo_exp.methods.iterative_dpo import KEY_FILE, PAIRS_FILE, ROUND_FILE, claim_round, round_key

    cfg = compose(["method=iterative_dpo", "method.rounds=2"])
    key = round_key(cfg, 2, "abc")
    assert round_key(compose(["method=iterative_dpo", "method.rounds=3"]), 2, "abc") == key  # same round 2
    assert round_key(compose(["method=iterative_dpo", "logger=none"]), 2, "abc") == key
    other = round_key(compose(["method=iterative_dpo", "generation.num_samples=2"]), 2, "abc")
    assert len({key, other, round_key(cfg, 2, "def"), round_key(cfg, 1, "abc")}) == 4

    folder = tmp_path / "rounds" / "2"
    checkpoint = tmp_path / "checkpoints" / "checkpoint-1"
    claim_round(tmp_path, 2, key, last=True)
    for path in (folder / PAIRS_FILE, folder / ROUND_FILE, checkpoint / "trainer_state.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    claim_round(tmp_path, 2, key, last=True)  # the same settings: everything kept
    assert (folder / PAIRS_FILE).exists() and (folder / ROUND_FILE).exists() and checkpoint.exists()
    claim_round(tmp_path, 2, other, last=True)  # other settings: the round's pairs and training are stale
    assert not (folder / PAIRS_FILE).exists() and not (folder / ROUND_FILE).exists() and not checkpoint.exists()
    assert json.loads((folder / KEY_FILE).read_text())["key"] == other


@pytest.fixture
def small_disk(tmp_path):
    """A 30 MB tmpfs (one checkpoint of the tiny model fits, two do not); unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_full_disk_is_one_line_a_failed_status_and_no_torn_checkpoint(small_disk, tmp_path):
    run_dir = small_disk / "run"
    args = [*RUN, f"dataset.path={shared_file('hh_rlhf/test.jsonl')}", "epochs=2", f"hydra.run.dir={run_dir}"]
    proc = run_cli(args, tmp_path)  # checkpoint-2 fits, checkpoint-4 does not
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and f"no space left in {run_dir / 'checkpoints'}" in errors[0], errors
    assert "to write checkpoint-4 (it needs about" in errors[0] and "MB" in errors[0]
    failed = summary(run_dir)
    assert failed["status"] == "failed" and "no space left" in failed["error"]
    folder = run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".md")) == ["checkpoint-2"]
    assert (folder / "checkpoint-2" / "trainer_state.json").is_file()  # whole; nothing torn, no staging left

    # an unfinished run: another command is refused; with room again the same command resumes from checkpoint-2
    refused = run_cli([*args, "beta=0.5"], tmp_path)
    assert_clean_error(refused, ["beta: 0.1 -> 0.5", "resume=force"])
    subprocess.run(["mount", "-o", "remount,size=100m", str(small_disk)], check=True)
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    done = summary(run_dir)
    assert done["status"] == "completed" and done["resumed_from"].endswith("checkpoint-2") and "error" not in done
    assert (folder / "checkpoint-4" / "trainer_state.json").is_file()


def test_a_run_from_before_the_record_is_compared_on_its_overrides_and_its_hydra_files_kept(tmp_path):
    from omegaconf import OmegaConf

    from dpo_exp.infra.hydra_callbacks import KeepRunRecord
    from dpo_exp.infra.runrecord import RunRecordMismatch, restore_hydra_files
    from dpo_exp.training.rerun import check_rerun

    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (hydra_dir / name).write_text(f"{name}: as the run wrote it\n")
    # `python -m dpo_exp hydra.run.dir=RUN ...`: before Hydra rewrites RUN/.hydra, the callback keeps a copy
    KeepRunRecord().on_run_start(
        OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path)}, "output_subdir": ".hydra"}})
    )
    (hydra_dir / "config.yaml").write_text("rewritten for another command\n")
    assert restore_hydra_files(tmp_path, hydra_dir)
    assert (hydra_dir / "config.yaml").read_text() == "config.yaml: as the run wrote it\n"

    previous = {"status": "completed", "overrides": {"beta": "0.1", "logger": "wandb"}}
    cfg = compose(["beta=0.5", "logger=none"])
    with pytest.raises(RunRecordMismatch, match=r"beta: '0.1' -> '0.5'"):
        check_rerun(cfg, tmp_path, previous, {"beta": "0.5", "logger": "none"})
    assert check_rerun(cfg, tmp_path, previous, {"beta": "0.1", "logger": "none"}).skip
