"""Every training method end to end through the CLI at test scale (slow): the same evaluation keys as DPO's, one
frontier line per method in a sweep's comparison, iterative DPO's rounds, resume, W&B grouping and caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dpo_exp.compare.plots import frontier_lines, frontier_x
from dpo_exp.compare.runs import find_run_dirs, load_run, swept_params
from dpo_exp.compare.table import compare

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli, shared_file

pytestmark = pytest.mark.slow

SMALL = [
    "dataset=imdb_sentiment",
    "reward=tfidf_logreg",
    "data_size=8",
    *FAST_MODEL,
    *FAST_TRAINER,
    "epochs=1",
    "trainer.max_steps=2",
    "lr=1e-3",
    "generation.max_new_tokens=8",
    "eval.max_new_tokens=8",
    "eval.num_prompts=4",
    "eval.num_samples=2",
    "eval.num_pairs=4",
    "eval.best_of_n=[1,2]",
    "eval.best_of_n_prompts=2",
    "eval.bootstrap=50",
    "eval.every_n_steps=0",
]
ONLINE = [o for o in SMALL if o != "epochs=1"]  # RLOO / Online DPO read no `epochs` (method.args.num_train_epochs)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def eval_keys(run_dir: Path) -> set[str]:
    return {k for k in summary(run_dir) if k.startswith("eval/")}


def weights_moved(run_dir: Path) -> bool:
    """The saved policy differs from its reference, both rebuilt as `python -m dpo_exp.evaluate` rebuilds them."""
    import torch

    from dpo_exp.evaluation.policy_ref import from_run_dir

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    pair = from_run_dir(run_dir, cfg, summary(run_dir).get("reference_path"))
    with pair.reference() as reference:
        ref = reference.state_dict()
        return any(not torch.equal(t, ref[k]) for k, t in pair.policy.state_dict().items() if k in ref)


@pytest.fixture(scope="module")
def method_sweep(tmp_path_factory) -> Path:
    """`-m method=dpo,preferred_ft`: one sweep, W&B offline, two jobs sharing the task's pairs."""
    shared_file("imdb/train.jsonl")
    imdb_dir = shared_file("imdb/test.jsonl").parent
    cwd = tmp_path_factory.mktemp("methods")
    args = ["-m", *SMALL, f"dataset.path={imdb_dir}", "logger.mode=offline", "hydra.sweep.dir=multirun/m"]
    proc = run_cli([*args, "method=dpo,preferred_ft"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "multirun" / "m"


def test_a_two_method_sweep_compares_one_frontier_line_per_method(method_sweep: Path):
    dirs = find_run_dirs([method_sweep])
    summaries = [summary(d) for d in dirs]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert [s["method"]["name"] for s in summaries] == ["dpo", "preferred_ft"]
    assert [s["sweep"] for s in summaries] == [{"method": "dpo"}, {"method": "preferred_ft"}]
    assert len({s["group"] for s in summaries}) == 1  # one W&B group for the sweep ...
    assert [s["name"].split("/")[-1] for s in summaries] == ["method=dpo", "method=preferred_ft"]  # ... named runs
    assert [s["pairs"]["cache"] for s in summaries] == ["built", "reused"]  # the task's pairs, built once
    assert eval_keys(dirs[1]) == eval_keys(dirs[0]) and "eval/kl_rb" in eval_keys(dirs[0])
    assert weights_moved(dirs[1])
    df = compare([method_sweep], console=False)
    assert len(df) == 2  # one table row per job
    params = swept_params([load_run(d) for d in dirs])
    along, lines = frontier_lines(df, params, frontier_x(df))
    assert params == ["method"] and along is None
    assert [label for label, _ in lines] == ["method=dpo", "method=preferred_ft"]
    assert "2 line(s)" in (method_sweep / "comparison.md").read_text()
    assert (method_sweep / "plots" / "reward_kl_frontier.png").stat().st_size > 5000


@pytest.mark.parametrize("method", ["rloo", "online_dpo"])
def test_an_online_method_runs_end_to_end_with_dpos_evaluation(method_sweep: Path, tmp_path, imdb_dir, method):
    """The scorer is the reward; the run folder, summary keys and re-evaluation are those of a DPO run."""
    run_dir = tmp_path / method
    args = [*ONLINE, f"dataset.path={imdb_dir}", "logger=none", f"method={method}", f"hydra.run.dir={run_dir}"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary(run_dir)
    assert s["status"] == "completed" and s["method"]["name"] == method
    assert eval_keys(run_dir) == eval_keys(find_run_dirs([method_sweep])[0])  # the DPO job's keys
    for name in ("metrics.jsonl", "model/config.json", "evaluation.json", "samples.md", "pairs.jsonl"):
        assert (run_dir / name).exists(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert s["reward"]["kind"] == "tfidf_logreg"  # the task's scorer section, not overwritten by TRL's metrics
    if method == "rloo":
        assert any("rewards/tfidf_logreg/mean" in row for row in rows) and "train/reward" in s  # TRL's reward log
    else:
        assert any("objective/scores" in row for row in rows)  # Online DPO's judged scores
    assert weights_moved(run_dir)


def test_rloo_resumes_from_its_checkpoint_like_a_dpo_run(tmp_path, imdb_dir):
    run_dir = tmp_path / "rloo"
    args = [*ONLINE, f"dataset.path={imdb_dir}", "logger=none", "method=rloo", f"hydra.run.dir={run_dir}"]
    args += ["trainer.save_strategy=steps", "trainer.save_steps=1", "eval.enabled=false"]
    assert run_cli(args, tmp_path).returncode == 0
    # a longer schedule is another command: resumed only when asked (resume=force), and recorded
    proc = run_cli([*args, "skip_completed=false", "trainer.max_steps=3", "resume=force"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary(run_dir)
    assert s["attempts"] == 2 and s["resumed_from"].endswith("checkpoint-2")
    assert s["resume"]["changed"] == {"trainer.max_steps": {"recorded": 2, "now": 3}}
    steps = [json.loads(line).get("step") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [step for step in steps if step is not None]
    assert sorted(set(train_steps)) == [1, 2, 3]


def test_iterative_dpo_samples_round_two_from_round_one_and_evaluates_both(tmp_path, imdb_dir):
    from transformers import AutoModelForCausalLM

    from dpo_exp.methods.iterative_dpo import weights_hash

    run_dir = tmp_path / "iterative"
    args = [*SMALL, f"dataset.path={imdb_dir}", "logger=none", "method=iterative_dpo", "method.rounds=2"]
    proc = run_cli([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary(run_dir)
    rounds = s["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and s["method"] == {
        "name": "iterative_dpo",
        "rounds": 2,
        "reference": "sft",
    }
    # two pair sets: the task's (sampled from the starting model) and round 2's, sampled from round 1's policy
    round_one = AutoModelForCausalLM.from_pretrained(run_dir / "rounds" / "1" / "model")
    assert rounds[1]["sampled_from"] == weights_hash(round_one) != rounds[0]["sampled_from"]
    pairs_two = (run_dir / "rounds" / "2" / "pairs.jsonl").read_text().splitlines()
    assert len(pairs_two) == rounds[1]["pairs"] > 0 and pairs_two != (run_dir / "pairs.jsonl").read_text().splitlines()
    # evaluated twice: round 1 into rounds/1, the last round as the run's own evaluation, with the same keys
    first = json.loads((run_dir / "rounds" / "1" / "evaluation.json").read_text())["metrics"]
    assert set(first) == eval_keys(run_dir) and {k: rounds[0][k] for k in first} == first
    assert first["eval/kl_rb"] != s["eval/kl_rb"]  # two policies (at this scale their samples may still coincide)
    # a rerun resumes: round 1 and round 2's pairs are reused, not redone
    mtime = (run_dir / "rounds" / "2" / "pairs.jsonl").stat().st_mtime
    proc = run_cli([*args, f"hydra.run.dir={run_dir}", "skip_completed=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 1 of 2: finished earlier" in proc.stdout + proc.stderr
    assert (run_dir / "rounds" / "2" / "pairs.jsonl").stat().st_mtime == mtime
    assert summary(run_dir)["rounds"][1]["sampled_from"] == rounds[1]["sampled_from"]
    # another command into the same folder (nothing to resume: no checkpoints): every round is keyed on the
    # settings that made it, so none made under generation.num_samples=4 is reused
    proc = run_cli([*args, f"hydra.run.dir={run_dir}", "skip_completed=false", "generation.num_samples=3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished earlier" not in proc.stdout + proc.stderr
    assert (run_dir / "rounds" / "2" / "pairs.jsonl").stat().st_mtime != mtime
    assert summary(run_dir)["rounds"][1]["sampled_from"] != rounds[1]["sampled_from"]  # round 1 retrained


NEW_METHODS = ["kto", "orpo", "simpo", "grpo"]


@pytest.fixture(scope="module")
def new_methods_sweep(tmp_path_factory) -> Path:
    """`-m method=dpo,kto,orpo,simpo,grpo`: the methods people compare DPO with, beside it in one sweep."""
    shared_file("imdb/train.jsonl")
    imdb_dir = shared_file("imdb/test.jsonl").parent
    cwd = tmp_path_factory.mktemp("new_methods")
    args = ["-m", *ONLINE, f"dataset.path={imdb_dir}", "logger=none", "hydra.sweep.dir=multirun/m"]
    proc = run_cli([*args, f"method=dpo,{','.join(NEW_METHODS)}"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "multirun" / "m"


def test_kto_orpo_simpo_grpo_run_beside_dpo_with_its_evaluation_on_one_frontier(new_methods_sweep: Path):
    """Each completes with DPO's eval keys, trains (the weights move), reuses the task's pairs, and compare draws one
    frontier line per method; reference-free ORPO / SimPO are measured against the run's starting model too."""
    dirs = find_run_dirs([new_methods_sweep])
    summaries = [summary(d) for d in dirs]
    assert [s["method"]["name"] for s in summaries] == ["dpo", *NEW_METHODS]
    assert all(s["status"] == "completed" for s in summaries)
    assert [s["pairs"]["cache"] for s in summaries] == ["built"] + ["reused"] * len(NEW_METHODS)
    dpo_keys = eval_keys(dirs[0])
    assert "eval/kl_rb" in dpo_keys and "eval/win_rate" in " ".join(dpo_keys)
    for run_dir in dirs[1:]:
        assert eval_keys(run_dir) == dpo_keys, run_dir
        assert weights_moved(run_dir), run_dir
    # every method, reference-free ORPO and SimPO included, is judged against the same starting model: the same
    # reference samples (one seed) and so the same reference reward as DPO's
    assert len({round(s["eval/reward_reference"], 9) for s in summaries}) == 1
    s = dict(zip(NEW_METHODS, summaries[1:]))
    assert s["simpo"]["method"]["name"] == "simpo" and s["grpo"]["reward"]["kind"] == "tfidf_logreg"
    rows = [json.loads(line) for line in (dirs[4] / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/tfidf_logreg/mean" in row for row in rows)  # GRPO trained on the run's scorer
    df = compare([new_methods_sweep], console=False)
    along, lines = frontier_lines(df, ["method"], frontier_x(df))
    assert sorted(label for label, _ in lines) == sorted(f"method={m}" for m in ("dpo", *NEW_METHODS))


TIMING_KEYS = {"step_time"}  # wall time


def as_killed_while_saving(run_dir: Path, step: int) -> None:
    """Turn a finished run's folder into the one a SIGKILL leaves while it saves checkpoint-`step`: that checkpoint
    torn in checkpoints/.partial, metrics rows logged up to `step` (no final row), no model, summary.json still
    `running` and the dead process's lock. (test_resilience kills a DPO run gracefully with SIGTERM; a SIGKILL can
    land anywhere, and this moment is the one a timed kill can not reliably hit.)"""
    import shutil
    import socket
    import subprocess
    import sys

    from dpo_exp.infra.runlock import LOCK_NAME
    from dpo_exp.infra.storage import read_jsonl, write_jsonl

    checkpoints = run_dir / "checkpoints"
    torn = checkpoints / ".partial" / f"checkpoint-{step}"
    torn.parent.mkdir()
    (checkpoints / f"checkpoint-{step}").rename(torn)
    (torn / "trainer_state.json").unlink()
    (torn / "optimizer.pt").write_bytes(b"\0" * 10)
    shutil.rmtree(run_dir / "model")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    write_jsonl(run_dir / "metrics.jsonl", [r for r in rows if r["split"] == "train" and r["step"] <= step])
    (run_dir / "summary.json").write_text(json.dumps({**summary(run_dir), "status": "running"}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}
    (run_dir / LOCK_NAME).write_text(json.dumps(holder))


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """One sweep of the four methods (3 steps, a checkpoint every step) kept as it finished; a copy of it killed
    while saving checkpoint-3 (`as_killed_while_saving`), then the same command again. {method: (resumed, whole)}."""
    import shutil

    shared_file("imdb/train.jsonl")
    imdb_dir = shared_file("imdb/test.jsonl").parent
    cwd = tmp_path_factory.mktemp("resume")
    args = ["-m", *[o for o in ONLINE if not o.startswith("trainer.max_steps")], "trainer.max_steps=3"]
    args += [f"dataset.path={imdb_dir}", "logger=none", "eval.enabled=false", "hydra.sweep.dir=multirun/m"]
    args += ["trainer.save_strategy=steps", "trainer.save_steps=1", f"method={','.join(NEW_METHODS)}"]
    proc = run_cli(args, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.copytree(cwd / "multirun" / "m", cwd / "whole")
    for run_dir in find_run_dirs([cwd / "multirun" / "m"]):
        as_killed_while_saving(run_dir, 3)
    proc = run_cli(args, cwd)  # the same command again
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = find_run_dirs([cwd / "multirun" / "m"])
    return {summary(d)["method"]["name"]: (d, cwd / "whole" / d.name) for d in runs}


@pytest.mark.parametrize("method", NEW_METHODS)
def test_a_killed_run_resumes_from_its_last_whole_checkpoint_to_the_uninterrupted_result(killed_and_resumed, method):
    """The same command resumes the killed run (no resume=force) from checkpoint-2, past the torn checkpoint-3 and the
    dead process's lock; step 3 is logged once, with the uninterrupted run's values, and the saved policy is its."""
    from safetensors.torch import load_file
    from torch.testing import assert_close

    from dpo_exp.infra.storage import read_jsonl

    resumed, whole = killed_and_resumed[method]
    s = summary(resumed)
    assert s["status"] == "completed" and s["attempts"] == 2 and "resume" not in s
    assert s["resumed_from"] == str(resumed / "checkpoints" / "checkpoint-2")
    assert not (resumed / "checkpoints" / ".partial").exists()  # the torn save removed, checkpoint-3 saved whole
    assert (resumed / "checkpoints" / "checkpoint-3" / "trainer_state.json").is_file()
    rows = {
        name: [r for r in read_jsonl(d / "metrics.jsonl") if r["split"] == "train"]
        for name, d in (("resumed", resumed), ("whole", whole))
    }
    assert [r["step"] for r in rows["resumed"]] == [1, 2, 3]  # every step once
    last, expected = rows["resumed"][-1], rows["whole"][-1]
    compared = {k for k, v in expected.items() if isinstance(v, float)} - TIMING_KEYS
    assert "loss" in compared and "grad_norm" in compared
    for key in compared:  # the optimizer, schedule, data order and RNG (GRPO's sampling) restored
        assert last[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    # the mean loss over all 3 steps, as the uninterrupted run reports it
    assert s["train_loss"] == pytest.approx(summary(whole)["train_loss"], rel=1e-5, abs=1e-9)
    assert_close(load_file(resumed / "model" / "model.safetensors"), load_file(whole / "model" / "model.safetensors"))
