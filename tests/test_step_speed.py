"""The DPO step at the GPU's pace (issue 29), checked on CPU: host syncs per optimiser step, the sync-free loss and
metrics against TRL's own, metrics.jsonl without an fsync per step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

WORDS = ["the", "film", "was", "good", "bad", "long", "short", "dull", "bright"]


def tiny_pairs(n: int = 16) -> list[dict]:
    return [
        {
            "prompt": " ".join(WORDS[: 2 + i % 5]),
            "chosen": " " + " ".join(WORDS[i % 3 :][: 3 + i % 7]),
            "rejected": " " + " ".join(WORDS[::-1][: 2 + i % 4]),
        }
        for i in range(n)
    ]


def tiny_trainer(tmp_path: Path, pairs: list[dict] | None = None, train: dict | None = None, **trainer: object):
    """dpo_exp's DPO trainer (build_trainer) on a 2-layer GPT-2 and a few short pairs."""
    from datasets import Dataset

    from dpo_exp import CONF_DIR
    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.models import build_model, offline_gpt2_tokenizer
    from dpo_exp.training.trainer import build_trainer

    trainer_cfg = OmegaConf.load(CONF_DIR / "trainer" / "dpo.yaml")
    trainer_cfg.merge_with(
        {
            "beta": 0.1,
            "learning_rate": 1e-3,
            "num_train_epochs": 1,
            "max_steps": 8,
            "max_length": 48,
            "per_device_train_batch_size": 2,
            "eval_strategy": "no",
            "save_strategy": "no",
            "precompute_ref_log_probs": False,
            "logging_steps": 4,
            "logging_first_step": False,
            **trainer,
        }
    )
    train_cfg = OmegaConf.load(CONF_DIR / "config.yaml").train
    train_cfg.merge_with(train or {})
    cfg = OmegaConf.create(
        {
            "trainer": trainer_cfg,
            "train": train_cfg,
            "lora": {"enabled": False},
            "on_nonfinite": "stop",
            "seed": 0,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    model = build_model(
        OmegaConf.create({"tiny": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}}), seed=0
    )
    data = Dataset.from_list(pairs or tiny_pairs())
    return build_trainer(cfg, model, offline_gpt2_tokenizer(), data, None, tmp_path, Tracker(), "fp32", "cpu")


def test_at_most_ten_host_syncs_per_optimiser_step(tmp_path):
    """A real training run of 8 optimiser steps (reference forward each step, metrics logged every 4 steps, the fused
    AdamW that dpo_config picks on CUDA): every read of a tensor value on the host, counted below the dispatcher,
    is at most 10 per step (TRL's own step makes ~15 per micro-batch, the old guard one per parameter)."""
    from transformers import TrainerCallback

    from dpo_exp.throughput import HostSyncCounter

    trainer = tiny_trainer(tmp_path, optim="adamw_torch_fused")
    assert trainer.sync_free
    counter = HostSyncCounter(cpu=True)

    class Count(TrainerCallback):  # from the first step's start to the end of training (logging included)
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                counter.__enter__()

    trainer.add_callback(Count())
    try:
        trainer.train()
    finally:
        counter.__exit__(None, None, None)
    steps = trainer.state.global_step
    assert steps == 8
    assert counter.count / steps <= 10, counter.count / steps
    rows = [r for r in trainer.state.log_history if "loss" in r and "train_runtime" not in r]
    assert [r["step"] for r in rows] == [4, 8] and all("rewards/margins" in r for r in rows)


def test_the_old_per_parameter_check_counted_by_the_same_counter(tmp_path):
    """The counter sees the syncs the issue measured: the per-parameter finite check makes one per parameter."""
    from dpo_exp.throughput import HostSyncCounter
    from dpo_exp.training.nonfinite import nonfinite_gradients, nonfinite_step

    model = torch.nn.Sequential(*[torch.nn.Linear(3, 3) for _ in range(5)])
    model(torch.ones(2, 3)).sum().backward()
    with HostSyncCounter(cpu=True) as old:  # the old check, one bool per parameter
        assert not any(not torch.isfinite(p.grad).all() for p in model.parameters())
    with HostSyncCounter(cpu=True) as fallback:  # the fallback without a norm: one read for every parameter
        assert not nonfinite_gradients(model)
    assert fallback.count == 1
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    with HostSyncCounter(cpu=True) as new:
        assert nonfinite_step(torch.tensor(True), norm, model, check_gradients=True) is None
    assert old.count == 10 and new.count == 1
    model[2].weight.grad[0, 0] = float("nan")
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    assert nonfinite_step(torch.tensor(True), norm, model, check_gradients=True) == "gradients"
    assert nonfinite_step(torch.tensor(False), norm, model, check_gradients=True) == "loss"


def _our_step_and_trls(tmp_path, row_groups: int):
    trainer = tiny_trainer(tmp_path, train={"row_groups": row_groups})
    model = trainer.model
    model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert "row_lengths" in batch  # right-padded by TRL's collator: the step runs without a mask

    def run(loss_fn):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    trainer.train_metrics.clear()
    ours, our_grads = run(lambda: trainer.compute_loss(model, batch))
    assert not trainer.train_metrics  # nothing read back yet
    trainer.log({})
    our_metrics = {k: v for k, v in trainer.state.log_history[-1].items() if k != "step"}
    trl_batch = {k: v for k, v in batch.items() if k != "row_lengths"}
    theirs, their_grads = run(lambda: trainer._trl_loss(model, trl_batch, False, None))  # TRL's _compute_loss
    their_metrics = {k: sum(v) / len(v) for k, v in trainer.train_metrics.items()}
    assert set(their_metrics) <= set(our_metrics)
    assert their_metrics.pop("num_tokens") == 2 * our_metrics["num_tokens"]  # a running total: the batch twice
    for name, value in their_metrics.items():
        assert abs(our_metrics[name] - value) <= 1e-6 * max(1.0, abs(value)), name
    return (ours, our_grads), (theirs, their_grads), batch["row_lengths"]


def test_sync_free_step_gives_trls_loss_gradients_and_metrics(tmp_path):
    """On the same batch, the sync-free step (dpo_exp.training.step: no attention mask, metrics on the device) and
    TRL's `_compute_loss` (with the mask) give exactly the same loss and gradients, and the same logged metrics."""
    (ours, our_grads), (theirs, their_grads), _ = _our_step_and_trls(tmp_path, row_groups=1)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, their_grads[name], rtol=0, atol=0)


def test_row_groups_give_the_same_loss_and_gradients_up_to_summation_order(tmp_path):
    """Several forwards of rows of similar length (train.row_groups) give the same loss, and gradients that differ
    from TRL's single forward only by float summation order (|diff| <= 1e-6 on gradients of norm ~1)."""
    from dpo_exp.training.batching import row_groups

    (ours, our_grads), (theirs, their_grads), lengths = _our_step_and_trls(tmp_path, row_groups=3)
    assert len(row_groups(lengths, None, 3)) > 1, lengths  # this batch did run as several forwards
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, their_grads[name], rtol=1e-5, atol=1e-6)


def test_metrics_rows_are_fsynced_at_checkpoints_and_at_the_end_not_every_step(tmp_path, monkeypatch):
    import os

    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.training.callbacks import MetricsRecorder

    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))

    class State:
        is_world_process_zero = True
        global_step = 1
        epoch = 0.1

    recorder = MetricsRecorder(tmp_path / "metrics.jsonl", Tracker())
    for step in range(1, 4):
        State.global_step = step
        recorder.on_log(None, State, None, logs={"loss": 0.5})
    assert calls == [] and len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # written, not fsynced
    recorder.on_save(None, State, None)
    assert len(calls) == 1
    recorder.on_train_end(None, State, None)
    assert len(calls) == 2


def _ultrafeedback_row_lengths(path, max_length: int = 512) -> list[tuple[int, int]]:
    """(prompt+chosen, prompt+rejected) tokens of each UltraFeedback sample pair, tokenised as TRL does, cut to
    max_length as TRL's collator cuts them."""
    import json

    from dpo_exp.models import offline_gpt2_tokenizer
    from dpo_exp.trl_compat import pair_token_ids

    tokenizer = offline_gpt2_tokenizer()
    out = []
    for line in path.read_text().splitlines():
        ids = pair_token_ids(tokenizer, json.loads(line))
        prompt = len(ids["prompt_ids"])
        out.append(tuple(min(max_length, prompt + len(ids[k])) for k in ("chosen_ids", "rejected_ids")))
    return out


def test_token_budgets_leave_under_5_percent_padding_on_ultrafeedback(ultrafeedback_file):
    """On the 1000 UltraFeedback sample pairs (up to 512 tokens): token-budget batches run in row groups leave under
    5 % of the token slots as padding; today's length-grouped batches of 16 pairs in one forward leave > 10 %
    (a pair's two rows share a width, so one forward per batch cannot go below the pairs' own length gap)."""
    from dpo_exp.throughput import LengthGroupedPairSampler
    from dpo_exp.training.batching import padding_share, token_budget_batches

    rows = _ultrafeedback_row_lengths(ultrafeedback_file)
    pair_lengths = [max(r) for r in rows]
    today = list(LengthGroupedPairSampler(pair_lengths, batch_size=16, seed=0))
    today_batches = [today[i : i + 16] for i in range(0, len(today), 16)]
    budget = token_budget_batches(pair_lengths, max_tokens=16384, multiple=8)
    assert sorted(i for b in budget for i in b) == list(range(len(rows)))
    assert all(2 * len(b) * -(-max(pair_lengths[i] for i in b) // 8) * 8 <= 16384 for b in budget)
    assert padding_share(today_batches, rows) > 0.10
    assert padding_share(budget, rows, multiple=8, max_groups=3) < 0.05
    assert padding_share(budget, rows, multiple=8, max_groups=1) > 0.10  # the row groups are what get it there


def test_token_budget_sampler_is_seeded_split_across_processes_and_drives_the_trainer(tmp_path):
    from dpo_exp.training.batching import TokenBudgetBatchSampler

    lengths = [((i * 37) % 97) + 3 for i in range(64)]
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=400, seed=1)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first  # same seed and epoch: a resumed run replays its epoch
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert sorted(i for b in first for i in b) == list(range(64))
    assert len({len(b) for b in first}) > 1  # short pairs travel in bigger batches
    assert all(2 * len(b) * max(lengths[i] for i in b) <= 400 for b in first)
    ranks = [list(TokenBudgetBatchSampler(lengths, 400, seed=1, world_size=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(first) // 2
    assert not {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}

    trainer = tiny_trainer(tmp_path, train={"max_tokens_per_batch": 160})
    batches = list(trainer.get_train_dataloader())
    assert sum(len(b["input_ids"]) // 2 for b in batches) == 16
    assert len({len(b["input_ids"]) for b in batches}) > 1
    assert all(b["input_ids"].numel() <= 160 or len(b["input_ids"]) == 2 for b in batches)


def test_fused_tanh_gelu_gives_the_same_log_probs_and_gradients_and_is_undone():
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.activations import GELUTanh, NewGELUActivation

    from dpo_exp.throughput import swap_tanh_gelu

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=64,
            n_head=2,
            vocab_size=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    ids = torch.randint(0, 128, (3, 24))

    def logps_and_grads():
        model.zero_grad()
        logps = torch.log_softmax(model(input_ids=ids).logits, -1)
        logps.gather(-1, ids[..., None]).sum().backward()
        return logps.detach(), [p.grad.clone() for p in model.parameters()]

    eager, eager_grads = logps_and_grads()
    assert swap_tanh_gelu(model) == 2
    assert sum(isinstance(m, GELUTanh) for m in model.modules()) == 2
    fused, fused_grads = logps_and_grads()
    assert not torch.equal(fused, eager)  # another kernel really ran
    torch.testing.assert_close(fused, eager, rtol=1e-6, atol=1e-6)
    for a, b in zip(fused_grads, eager_grads):  # float rounding: 1e-6 of each gradient's norm
        assert (a - b).norm() <= 1e-6 * b.norm()
    assert swap_tanh_gelu(model, fused=False) == 2
    assert sum(isinstance(m, NewGELUActivation) for m in model.modules()) == 2
    assert model.config.activation_function == "gelu_new"


def _two_step_losses(tmp_path, **kwargs) -> tuple[list[float], object]:
    trainer = tiny_trainer(tmp_path, max_steps=2, logging_steps=1, **kwargs)
    trainer.train()
    return [r["loss"] for r in trainer.state.log_history if "loss" in r and "train_runtime" not in r], trainer


@pytest.mark.slow  # compiling takes a minute or more on 2 CPU cores
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_train_compile_compiles_the_policy_and_changes_no_value(tmp_path, backend):
    """train.compile=true: the Trainer trains a torch.compile'd policy and logs the same losses as eager (aot_eager:
    dynamo capture and AOT autograd; inductor: generated C++ kernels, skipped without a C compiler)."""
    import shutil

    if backend == "inductor" and not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("inductor needs a C compiler on CPU")
    eager, _ = _two_step_losses(tmp_path / "eager")
    compiled, trainer = _two_step_losses(tmp_path / "compiled", train={"compile": True}, torch_compile_backend=backend)
    assert trainer.args.torch_compile
    assert hasattr(trainer.model_wrapped, "_orig_mod") or hasattr(trainer.model, "_orig_mod")
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # three contender processes: about a minute on 2 CPU cores
def test_gpu_profile_smoke_writes_each_contenders_measurements(tmp_path):
    """`python benchmarks/gpu_profile.py --smoke --out DIR` on CPU: DIR/gpu_profile.json holds, for trl, floor and
    dpo_exp, measured tokens_per_s, mfu, peak_memory_bytes and syncs_per_step; dpo_exp's step makes few syncs."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "gpu_profile.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_profile.json").read_text())
    assert set(report["contenders"]) == {"trl", "floor", "dpo_exp"}
    for name, entry in report["contenders"].items():
        assert "error" not in entry, (name, entry)
        assert entry["tokens_per_s"] > 0 and 0 < entry["mfu"] < 1, name
        assert entry["peak_memory_bytes"] > 2**20 and entry["top_kernels"], name
        assert entry["syncs_per_step"] >= 0, name
    assert report["contenders"]["dpo_exp"]["syncs_per_step"] <= 10
    assert report["contenders"]["trl"]["syncs_per_step"] > report["contenders"]["dpo_exp"]["syncs_per_step"]


def test_on_cuda_the_trainer_arguments_ask_for_fused_adamw_and_non_blocking_batches(tmp_path):
    """dpo_config for a CUDA run: AdamW in one fused kernel, and batches (pinned by the Trainer's loader) copied to
    the GPU without blocking; a CPU run keeps plain AdamW and blocking copies; a user's own accelerator_config wins."""
    from dpo_exp.schema import dpo_config

    from .conftest import FAST_MODEL, compose

    cfg = compose([*FAST_MODEL])
    cuda = dpo_config(cfg, tmp_path, "fp32", "cuda")
    assert cuda.optim == "adamw_torch_fused" and cuda.dataloader_pin_memory
    assert cuda.accelerator_config.non_blocking is True
    cpu = dpo_config(cfg, tmp_path, "fp32", "cpu")
    assert cpu.optim == "adamw_torch" and cpu.accelerator_config.non_blocking is False
    own = compose([*FAST_MODEL, "+trainer.accelerator_config={non_blocking: false, split_batches: true}"])
    mine = dpo_config(own, tmp_path, "fp32", "cuda").accelerator_config
    assert mine.non_blocking is False and mine.split_batches is True


@pytest.mark.slow  # one contender process: about half a minute on 2 CPU cores
def test_gpu_profile_fit_run_trains_with_checkpointing_and_reports_the_estimate(tmp_path):
    """gpu_kit's fit step (`--contenders dpo_exp --gradient-checkpointing`, here at smoke scale): the contender's own
    process trains with gradient checkpointing, and its row holds the memory estimate beside the measured peak."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, str(root / "benchmarks" / "gpu_profile.py"), "--smoke", "--contenders", "dpo_exp"]
    command += ["--gradient-checkpointing", "--batch", "8", "--out", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = json.loads((tmp_path / "gpu_profile.json").read_text())["contenders"]["dpo_exp"]
    assert entry["gradient_checkpointing"] is True and entry["peak_memory_bytes"] > 0
    assert entry["memory_estimate_bytes"] > 0 and entry["memory_estimate"].startswith("memory estimate per device")
