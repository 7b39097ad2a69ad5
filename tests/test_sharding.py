"""Sharded training (the `distributed` group, dpo_exp.infra.sharding): its settings, its refusals, and a 2-process
FSDP2 run on CPU (torchrun, gloo) against the same run under DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_exp.errors import UserError
from dpo_exp.infra.sharding import DEEPSPEED_EXTRA, check_strategy, deepspeed_config, strategy
from dpo_exp.infra.storage import read_jsonl
from dpo_exp.infra.tracking import STEP_METRIC

from .conftest import FAST_MODEL, FAST_TRAINER, compose, run_cli, shared_file
from .wandb_records import history, offline_runs, run_record

# ---------------------------------------------------------------- settings and refusals (no model, no processes)


@pytest.mark.parametrize("name", ["fsdp", "fsdp_offload"])
def test_fsdp_strategies_become_fsdp2_training_arguments(name):
    chosen = strategy(compose([f"distributed={name}"]))
    args = chosen.training_arguments()
    assert chosen.sharded and chosen.name == name
    assert args["fsdp"] is True and args["fsdp_config"]["version"] == 2
    assert args["fsdp_config"]["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"  # blocks from _no_split_modules
    assert args["fsdp_config"]["cpu_offload"] is (name == "fsdp_offload")
    assert args["fsdp_config"]["state_dict_type"] == "SHARDED_STATE_DICT"


def test_ddp_is_the_default_and_adds_nothing():
    chosen = strategy(compose([]))
    assert chosen.name == "ddp" and not chosen.sharded and chosen.training_arguments() == {}


def test_transformers_accepts_the_fsdp_settings():
    """The settings build a DPOConfig whose accelerate FSDP plugin is FSDP2 full shard (what the Trainer uses)."""
    from dpo_exp.schema import dpo_config

    cfg = compose([*FAST_MODEL, "distributed=fsdp_offload"])
    plugin = dpo_config(cfg, Path("."), "fp32", "cpu").fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["cpu_offload"] is True and plugin["reshard_after_forward"] is True


@pytest.mark.parametrize(("name", "stage"), [("zero2", 2), ("zero3", 3)])
def test_shipped_deepspeed_configs_are_valid(name, stage):
    """DeepSpeed cannot run here; its configs are checked for what DeepSpeed and transformers need: the ZeRO stage,
    and `auto` for every value transformers fills in from the trainer group."""
    chosen = strategy(compose([f"distributed={name}"]))
    config = chosen.training_arguments()["deepspeed"]
    assert chosen.backend == "deepspeed" and config["zero_optimization"]["stage"] == stage
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto"
    offloaded = deepspeed_config(strategy(compose([f"distributed={name}", "distributed.cpu_offload=true"])))
    assert offloaded["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ("offload_param" in offloaded["zero_optimization"]) is (stage == 3)
    broken = compose([f"distributed={name}", "distributed.deepspeed.zero_optimization.stage=5"])
    with pytest.raises(UserError, match="stage must be 1, 2 or 3"):
        deepspeed_config(strategy(broken))


def test_zero3_without_deepspeed_names_the_extra():
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("DeepSpeed is installed")
    with pytest.raises(UserError, match="needs DeepSpeed") as exc:
        check_strategy(compose(["distributed=zero3"]), 2, "dpo", "cuda")
    assert DEEPSPEED_EXTRA in str(exc.value)


@pytest.mark.parametrize(
    ("overrides", "world", "message"),
    [
        (["distributed=fsdp"], 1, "shards the model across processes, but this run has one and no launcher"),
        (["distributed=fsdp", "method=rloo"], 2, "method=rloo cannot run with distributed=fsdp"),
        (["distributed=fsdp", "on_nonfinite=skip"], 2, "on_nonfinite=skip cannot run with"),
        (["distributed=fsdp_offload"], 2, "distributed=fsdp_offload needs a GPU, but this run's device is cpu"),
    ],
)
def test_what_a_strategy_cannot_run_is_refused(overrides, world, message):
    cfg = compose([*FAST_MODEL, "lora=none", *overrides])
    with pytest.raises(UserError, match=message):
        check_strategy(cfg, world, str(cfg.method.name), "cpu")


def test_fsdp_with_one_process_is_one_error_line_before_any_model_loads(tmp_path):
    args = [
        *FAST_MODEL,
        *FAST_TRAINER,
        "lora=none",
        "distributed=fsdp",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: distributed=fsdp shards the model across processes"), proc.stderr[-2000:]
    assert not (tmp_path / "r" / "model").exists() and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- a 2-process FSDP run on CPU against DDP

PAIRS, PER_DEVICE, PROCESSES, KILL_AFTER = 24, 2, 2, 3  # 6 optimiser steps; a checkpoint every 2
TOLERANCE = 1e-5  # FSDP and DDP reduce the same fp32 gradients in another order: equal to float rounding


def _torchrun() -> str:
    torchrun = Path(sys.executable).with_name("torchrun")
    return str(torchrun) if torchrun.exists() else (shutil.which("torchrun") or "torchrun")


KILLING = f"""
import os, signal, sys
from dpo_exp.training import callbacks
logged = callbacks.MetricsRecorder.on_log
def on_log(self, args, state, control, logs=None, **kwargs):
    logged(self, args, state, control, logs=logs, **kwargs)
    if state.global_step >= {KILL_AFTER} and logs and "loss" in logs:
        os.kill(os.getpid(), signal.SIGKILL)  # every process dies at once, as a node lost to the scheduler
callbacks.MetricsRecorder.on_log = on_log
from dpo_exp.__main__ import main
sys.argv = ["dpo_exp", *sys.argv[1:]]
main()
"""


def _args(data: Path, run_dir: Path, distributed: str, logger: tuple[str, ...] = ("logger=none",)) -> list[str]:
    return [
        *FAST_MODEL,
        "model.tiny.n_layer=2",
        "lora=none",
        *FAST_TRAINER,
        f"trainer.per_device_train_batch_size={PER_DEVICE}",
        "trainer.save_strategy=steps",
        "trainer.save_steps=2",
        "dataset=preference_files",
        f"dataset.path={data}",
        f"data_size={PAIRS}",
        "dataset.eval_size=4",
        "epochs=1",
        "eval.num_prompts=4",
        "eval.num_samples=1",
        "eval.num_pairs=4",
        "eval.bootstrap=10",
        "eval.max_new_tokens=4",
        "eval.best_of_n=[1]",
        "eval/reward=vader",
        *logger,
        f"distributed={distributed}",
        f"hydra.run.dir={run_dir}",
    ]


WANDB_OFFLINE = ("logger=wandb", "logger.mode=offline")  # never prompts, never reaches the network


def _launch(cwd: Path, target: list[str], args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "DPO_EXP_CACHE": str(cwd / ".cache"), "OMP_NUM_THREADS": "1"}
    cmd = [_torchrun(), "--nproc_per_node", str(PROCESSES), *target, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def fsdp_and_ddp(tmp_path_factory) -> tuple[Path, Path]:
    """The same 2-process run under DDP and under FSDP; the FSDP one, logging to W&B offline, killed (SIGKILL, every
    process) after step 3, then resumed by the same command from its checkpoint at step 2."""
    ultrafeedback_file = shared_file("ultrafeedback/sample.jsonl")
    cwd = tmp_path_factory.mktemp("sharded")
    ddp, fsdp = cwd / "ddp", cwd / "fsdp"
    done = _launch(cwd, ["-m", "dpo_exp"], _args(ultrafeedback_file, ddp, "ddp"))
    assert done.returncode == 0, done.stderr[-3000:]
    script = cwd / "killing.py"
    script.write_text(KILLING)
    fsdp_args = _args(ultrafeedback_file, fsdp, "fsdp", WANDB_OFFLINE)
    killed = _launch(cwd, [str(script)], fsdp_args)
    assert killed.returncode != 0 and str(signal.SIGKILL.value) in killed.stderr + killed.stdout
    assert json.loads((fsdp / "summary.json").read_text())["status"] == "running"  # died without a word
    resumed = _launch(cwd, ["-m", "dpo_exp"], fsdp_args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("[dpo_exp] completed") == 1
    return ddp, fsdp


def _wandb_train_steps(offline_run: Path) -> list[int]:
    """The train/global_step of each train/loss row of a W&B offline run, as W&B's own reader returns them."""
    return [int(row[STEP_METRIC]) for row in history(offline_run) if "train/loss" in row]


def _train_losses(run_dir: Path) -> dict[int, float]:
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "train"]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps))  # each step once: the resumed run does not log a step twice
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.slow
def test_fsdp_run_resumes_after_a_kill_and_matches_ddp(fsdp_and_ddp):
    ddp, fsdp = fsdp_and_ddp
    summary = json.loads((fsdp / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"].endswith("checkpoint-2")
    assert summary["distributed"]["strategy"] == "fsdp" and summary["distributed"]["world_size"] == PROCESSES
    # the checkpoint was written sharded: one file per process, no gathered copy
    shards = sorted(p.name for p in (fsdp / "checkpoints").glob("checkpoint-*/pytorch_model_fsdp_0/*.distcp"))
    assert shards and len(shards) % PROCESSES == 0
    ddp_losses, fsdp_losses = _train_losses(ddp), _train_losses(fsdp)
    steps = PAIRS // (PROCESSES * PER_DEVICE)
    assert sorted(fsdp_losses) == sorted(ddp_losses) == list(range(1, steps + 1))
    for step, loss in ddp_losses.items():  # the resumed steps too: the resume is exact
        assert abs(fsdp_losses[step] - loss) <= TOLERANCE, (step, fsdp_losses[step], loss)
    ddp_summary = json.loads((ddp / "summary.json").read_text())
    assert abs(summary["eval_loss"] - ddp_summary["eval_loss"]) <= TOLERANCE


@pytest.mark.slow
def test_fsdp_kill_and_resume_logs_each_step_to_wandb_once_from_process_0(fsdp_and_ddp):
    """One W&B run (process 0 only: one offline folder per attempt, both of the run's id); every train/global_step
    once across the kill and the resume. What a SIGKILLed offline attempt holds is what W&B's local service had
    written when it died (its buffered records are lost with it; online, the server keeps what it received): the
    resume logs what it lacks, from metrics.jsonl up to the checkpoint and by training after it, and nothing twice."""
    _, fsdp = fsdp_and_ddp
    summary = json.loads((fsdp / "summary.json").read_text())
    attempts = offline_runs(fsdp)
    assert len(attempts) == 2, attempts  # the killed attempt's and the resumed one's; none from process 1
    assert all(run.name.endswith(f"-{summary['wandb_id']}") for run in attempts)  # one W&B run, two attempts
    assert run_record(attempts[-1])["run_id"] == summary["wandb_id"]  # the resumed attempt continues it
    killed, resumed = (_wandb_train_steps(run) for run in attempts)
    assert set(killed) <= {1, 2, 3}  # the kill came right after step 3
    logged = killed + resumed
    assert len(logged) == len(set(logged)), (killed, resumed)  # each step once across the resume
    steps = PAIRS // (PROCESSES * PER_DEVICE)
    assert sorted(logged) == list(range(1, steps + 1))  # none missing: the killed attempt's gap is filled
    assert summary["wandb_step"] == steps  # what the W&B run holds now, for a later rerun


@pytest.mark.slow
def test_fsdp_holds_half_the_parameters_per_process(fsdp_and_ddp):
    ddp, fsdp = fsdp_and_ddp
    held = {run.name: json.loads((run / "summary.json").read_text())["distributed"] for run in (ddp, fsdp)}
    assert held["ddp"]["sharded"] is False and held["fsdp"]["sharded"] is True
    ratio = held["fsdp"]["param_bytes_per_process"] / held["ddp"]["param_bytes_per_process"]
    assert 0.45 <= ratio <= 0.55, ratio  # each of 2 processes holds its half (rows padded to equal shards)


@pytest.mark.slow
def test_fsdp_saves_one_consolidated_model_equal_to_ddp(fsdp_and_ddp):
    import torch
    from transformers import AutoModelForCausalLM

    ddp, fsdp = fsdp_and_ddp
    sharded = AutoModelForCausalLM.from_pretrained(fsdp / "model")  # plain transformers, no accelerate
    plain = AutoModelForCausalLM.from_pretrained(ddp / "model")
    for (name, a), (_, b) in zip(sharded.state_dict().items(), plain.state_dict().items()):
        torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=0, msg=name)


@pytest.mark.slow
def test_fsdp_evaluation_matches_a_single_process_evaluation_of_the_saved_model(fsdp_and_ddp, tmp_path):
    _, fsdp = fsdp_and_ddp
    during = json.loads((fsdp / "summary.json").read_text())
    copy = tmp_path / "fsdp"
    shutil.copytree(fsdp, copy, ignore=shutil.ignore_patterns("checkpoints"))
    proc = run_cli([f"run_dir={copy}", "wandb=false"], tmp_path, module="dpo_exp.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((copy / "summary.json").read_text())
    keys = [k for k in during if k.startswith("eval/") and isinstance(during[k], (int, float))]
    assert "eval/kl" in keys and "eval/reward_delta" in keys
    for key in keys:
        assert after[key] == pytest.approx(during[key], abs=1e-6), key


@pytest.mark.slow
def test_memory_estimate_matches_the_parameters_each_process_held(fsdp_and_ddp):
    """dpo_exp.memory's parameter term against what the 2-process runs held (summary.json `distributed`): the whole
    model under ddp, half of it under fsdp (plus, in the estimate, the two gathered blocks in flight)."""
    from dpo_exp.lora import model_config
    from dpo_exp.memory import Batch, count_parameters, estimate

    ddp, fsdp = fsdp_and_ddp
    config = model_config(compose([*FAST_MODEL, "model.tiny.n_layer=2"]).model)
    batch = Batch(token_slots=1, device="cpu")
    held = {run.name: json.loads((run / "summary.json").read_text())["distributed"] for run in (ddp, fsdp)}
    assert estimate(config, "ddp", PROCESSES, batch).params == held["ddp"]["param_bytes_per_process"]
    block = count_parameters(config)[2]
    sharded = estimate(config, "fsdp", PROCESSES, batch).params - 2 * block * 4  # the shards alone
    assert sharded == pytest.approx(held["fsdp"]["param_bytes_per_process"], rel=0.01)  # shards padded to equal rows


def test_docs_memory_table_is_the_estimators_output():
    """The memory tables of docs/clusters.md and README.md are what scripts/memory_table.py computes now
    (`make docs-memory`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import memory_table
    finally:
        sys.path.pop(0)
    for path in memory_table.PAGES:
        page = path.read_text(encoding="utf-8")
        assert memory_table.BEGIN in page and memory_table.render(page) == page, f"run make docs-memory ({path})"
        assert "| 7 B (Qwen2.5-7B) | 7.62 B | fsdp |" in page


@pytest.mark.slow
def test_a_sweep_over_distributed_runs_each_strategy_as_a_submitit_job_of_2_tasks(tmp_path, ultrafeedback_file):
    """`-m distributed=ddp,fsdp` through submitit with 2 tasks per job (what Slurm runs): the sweep composes, each
    job is one run of 2 processes under its strategy, recorded in its run folder; the fsdp job holds half the
    parameters per process and saves one consolidated model."""
    from transformers import AutoModelForCausalLM

    args = [
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        *FAST_MODEL,
        "lora=none",
        *FAST_TRAINER,
        f"trainer.per_device_train_batch_size={PER_DEVICE}",
        "dataset=preference_files",
        f"dataset.path={ultrafeedback_file}",
        "data_size=8",
        "epochs=1",
        "eval.enabled=false",
        "logger=none",
        "distributed=ddp,fsdp",
        "hydra.sweep.dir=multirun/strategies",
    ]
    proc = run_cli(args, tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "multirun" / "strategies"
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1"]  # one run per strategy
    held = {}
    for job, name in (("0", "ddp"), ("1", "fsdp")):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["sweep"] == {"distributed": name}
        recorded = summary["distributed"]
        assert (recorded["strategy"], recorded["world_size"], recorded["sharded"]) == (name, 2, name == "fsdp")
        assert summary["num_processes"] == 2
        held[name] = recorded["param_bytes_per_process"]
    model = AutoModelForCausalLM.from_pretrained(sweep / "1" / "model")
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    assert held["ddp"] == whole and held["fsdp"] == pytest.approx(whole / 2, rel=0.01)


def _guard_on_two_processes(rank: int, port: int, out: str) -> None:
    """One of 2 gloo processes: only process 1 sees a non-finite loss, only process 0 a non-finite gradient shard."""
    import torch
    import torch.distributed as dist

    from dpo_exp.training.nonfinite import nonfinite_gradients, nonfinite_step

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.full((2, 2), float("nan") if rank == 0 else 1.0)
    model.bias.grad = torch.ones(2)
    loss_finite = torch.tensor(rank == 0)
    decided = [nonfinite_step(loss_finite, None, model, check_gradients=False), nonfinite_gradients(model)]
    Path(out, f"rank{rank}.json").write_text(json.dumps(decided))
    dist.destroy_process_group()


@pytest.mark.slow  # ~30 s on 2 busy cores: two spawned processes import torch and the test module
def test_the_nonfinite_guard_decides_alike_on_every_process(tmp_path):
    """A NaN seen by one process stops every process (not one alone, which would leave the other hanging)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_guard_on_two_processes, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == ["loss", True]


@pytest.mark.slow
def test_lora_with_fsdp_matches_ddp_and_saves_the_usual_folders(tmp_path, ultrafeedback_file):
    """LoRA under FSDP (the frozen base sharded too): the same losses and merged model as under DDP, and RUN/model
    laid out as in an unsharded LoRA run (merged policy, adapter/, base/)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def lora_run(distributed: str) -> Path:
        run_dir = tmp_path / distributed
        args = _args(ultrafeedback_file, run_dir, distributed)
        args = [a for a in args if not a.startswith(("model.tiny.n_layer=2", "trainer.save_"))]
        args += ["lora=gpt2_attn", "lr=1e-3", "data_size=8", "eval.enabled=false", "trainer.save_strategy=no"]
        done = _launch(tmp_path, ["-m", "dpo_exp"], args)
        assert done.returncode == 0, done.stderr[-3000:]
        return run_dir

    ddp, fsdp = lora_run("ddp"), lora_run("fsdp")
    summary = json.loads((fsdp / "summary.json").read_text())
    assert summary["saved_model"]["kind"] == "lora-merged" and summary["distributed"]["sharded"] is True
    ddp_losses, fsdp_losses = _train_losses(ddp), _train_losses(fsdp)
    assert sorted(fsdp_losses) == sorted(ddp_losses) and len(ddp_losses) == 2
    for step, loss in ddp_losses.items():
        assert abs(fsdp_losses[step] - loss) <= TOLERANCE, (step, fsdp_losses[step], loss)
    merged = AutoModelForCausalLM.from_pretrained(fsdp / "model")
    plain = AutoModelForCausalLM.from_pretrained(ddp / "model")
    rebuilt = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(fsdp / "model" / "base"), fsdp / "model" / "adapter"
    ).merge_and_unload()
    for (name, a), b, c in zip(merged.state_dict().items(), plain.state_dict().values(), rebuilt.state_dict().values()):
        torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=0, msg=name)
        torch.testing.assert_close(a, c, atol=TOLERANCE, rtol=0, msg=name)
