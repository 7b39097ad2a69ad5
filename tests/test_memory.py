"""The memory estimate (dpo_exp.memory) against what a real training step holds on CPU, and the refusal of a run that
cannot fit, before any model loads."""

from __future__ import annotations

import pytest
import torch


def _measured_step(config, batch_size: int = 4, length: int = 64) -> dict[str, int]:
    """Bytes a real CPU training step holds, by part: fp32 weights, gradients, AdamW state, and the activations
    autograd saves in the forward (the project's LM head, every position scored)."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from dpo_exp.memory import saved_activation_bytes
    from dpo_exp.throughput import compact_lm_head

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    ids = torch.randint(0, config.vocab_size, (batch_size, length))
    out = {}

    def forward():
        out["logps"] = model(input_ids=ids, labels=ids, fused_lm_head=True, use_cache=False).log_probs

    with compact_lm_head():
        activations = saved_activation_bytes(forward, model)
        out["logps"].sum().backward()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.step()
    unique = {id(p): p for p in model.parameters()}.values()
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    return {
        "params": sum(p.nbytes for p in unique),
        "grads": sum(p.grad.nbytes for p in unique),
        "optimizer": sum(t.nbytes for t in state),
        "activations": activations,
    }


@pytest.mark.parametrize(
    "family,activation",
    [("gpt2", "gelu_new"), ("gpt2", "gelu_pytorch_tanh"), ("llama", None)],
)
def test_estimate_matches_a_measured_cpu_step_within_10_percent(family, activation):
    from transformers import AutoConfig, GPT2Config

    from dpo_exp.memory import Batch, estimate

    if family == "gpt2":
        config = GPT2Config(
            n_layer=3,
            n_embd=96,
            n_head=4,
            vocab_size=512,
            activation_function=activation,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    else:
        config = AutoConfig.for_model(
            "llama",
            hidden_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=256,
            vocab_size=512,
            bos_token_id=0,
            eos_token_id=0,
        )
    measured = _measured_step(config)
    estimated = estimate(config, "ddp", 1, Batch(token_slots=4 * 64, precision="fp32", device="cpu")).parts()
    for part, value in measured.items():
        assert abs(estimated[part] - value) <= 0.10 * value, (part, estimated[part], value)


def test_sharding_divides_what_it_shards_and_lora_trains_few_parameters():
    from transformers import GPT2Config

    from dpo_exp.memory import Batch, estimate

    config = GPT2Config(n_layer=24, n_embd=1024, n_head=16)  # GPT-2 medium, 355 M
    batch = Batch(token_slots=64 * 2 * 512, precision="bf16")
    ddp = estimate(config, "ddp", 8, batch)
    assert 350e6 < ddp.parameters < 360e6
    assert ddp.params == 4 * ddp.parameters and ddp.optimizer == 8 * ddp.parameters
    assert 1.8e6 < ddp.activations_per_token < 2.4e6  # the issue's ~2 MB per token slot for this shape
    zero2 = estimate(config, "zero2", 8, batch)
    assert zero2.params == ddp.params and zero2.optimizer == pytest.approx(ddp.optimizer / 8, abs=1)
    fsdp = estimate(config, "fsdp", 8, batch)
    assert fsdp.params < ddp.params / 4 and fsdp.grads == pytest.approx(ddp.grads / 8, abs=1)
    assert estimate(config, "fsdp_offload", 8, batch).optimizer == 0
    lora = estimate(config, "ddp", 1, Batch(token_slots=1024, lora_r=8, lora_targets=("c_attn",)))
    assert lora.trainable == 24 * 8 * (1024 + 3072) and lora.grads == 4 * lora.trainable


def test_a_run_that_cannot_fit_is_refused_before_loading_naming_what_would_fit(monkeypatch):
    """A budget whose activations exceed the (here: 64 GiB) GPU is one error line naming a token budget that fits
    and the other ways out; auto_batch picks that budget instead; on CPU the same run only warns."""
    from dpo_exp import memory_check
    from dpo_exp.errors import UserError

    from .conftest import FAST_MODEL, compose

    monkeypatch.setattr(memory_check, "device_memory_bytes", lambda device: 64 * 2**30)
    cfg = compose([*FAST_MODEL, "train.max_tokens_per_batch=100000000", "logger=none"])
    with pytest.raises(UserError) as refused:
        memory_check.check_memory(cfg, "bf16", "cuda:0")
    message = str(refused.value)
    assert "\n" not in message and "exceeds" in message and "train.max_tokens_per_batch=" in message
    assert memory_check.check_memory(cfg, "fp32", "cpu").total > 64 * 2**30  # CPU: estimated, not refused
    fitting = int(message.split("train.max_tokens_per_batch=")[1].split()[0].rstrip(",;"))
    cfg.train.max_tokens_per_batch = fitting
    assert memory_check.check_memory(cfg, "bf16", "cuda:0").total <= 64 * 2**30
    cfg.train.max_tokens_per_batch = None
    cfg.train.auto_batch = True
    chosen = memory_check.check_memory(cfg, "bf16", "cuda:0")
    assert cfg.train.max_tokens_per_batch == fitting and chosen.token_slots == fitting


@pytest.mark.slow  # ~45 s on 2 busy cores: two 2-process runs
def test_whole_estimate_matches_the_measured_peak_of_2_process_ddp_and_fsdp_runs(tmp_path, ultrafeedback_file):
    """benchmarks/bench_memory_check.py --quick: real `python -m dpo_exp` runs under torchrun (2 processes, gloo),
    ddp and fsdp; each process's peak tensor memory during `trainer.train()` (torch's MemTracker) against the whole
    estimate the run printed (params + grads + optimizer + reference + activations): within the stated 20 %."""
    import json
    import os
    import subprocess
    import sys

    from .conftest import ROOT, SHARED_DATA

    out = tmp_path / "memory_check.json"
    script = ROOT / "benchmarks" / "bench_memory_check.py"
    env = {**os.environ, "DPO_EXP_SHARED_DATA": str(SHARED_DATA), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tolerance"] == 0.20
    rows = {row["strategy"]: row for row in result["rows"]}
    assert sorted(rows) == ["ddp", "fsdp"]
    for row in rows.values():
        assert len(row["measured_peak_per_process"]) == 2 and row["estimate"]["activations"] > 0
        peak = max(row["measured_peak_per_process"])
        assert abs(row["estimate"]["total"] - peak) <= 0.20 * peak, row
    # sharding shows in the measurement too, not only in the estimate
    assert max(rows["fsdp"]["measured_peak_per_process"]) < max(rows["ddp"]["measured_peak_per_process"])
    assert rows["fsdp"]["estimate"]["params"] < rows["ddp"]["estimate"]["params"]
