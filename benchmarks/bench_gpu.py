"""DPO training tokens/s and MFU of the project's trainer: gpt2-medium in bf16 on a GPU, a tiny model on CPU.

    python benchmarks/bench_gpu.py [--quick] [--steps 20] [--batch 16] [--max-length 512] [--precompute]

On a GPU: a gpt2-medium-shaped GPT-2 (24 layers, width 1024, 16 heads, 355 M parameters; random weights, since
the hub is not reachable here; throughput does not depend on the weights), bf16 autocast over fp32 master weights
(the project's `train.precision: auto` on a bf16 GPU; before 2026-12-07 this script built bf16 weights), the
project's `build_trainer` on UltraFeedback pairs. Without a GPU the same script runs the tiny GPT-2 (2 layers,
width 64) on CPU and says so.

MFU = achieved model FLOP/s / the device's peak dense FLOP/s. Model FLOPs per trained token: 6 N (forward + backward
of the policy, N = parameters incl. the LM head) + 12 L d T (attention scores, T = mean sequence length weighted by
length, sum T^2 / sum T), plus 2 N + 4 L d T for the reference forward when it is not precomputed; tokens are the
timed batches' own real tokens. Peak: the datasheet dense bf16 figure for known GPUs (H100 SXM 989 TFLOP/s, H100
PCIe 756, H200 989, A100 312) or `--peak-tflops`; on CPU the fp32 matmul rate measured on the spot (so the CPU "MFU"
is relative to what this machine's BLAS reaches). Target on an H100 in bf16: MFU >= 40 %. Results:
benchmarks/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "gpu.json"
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
}


def peak_tflops(device: str, override: float | None) -> tuple[float, str]:
    if override:
        return override, "given with --peak-tflops"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, value in PEAK_BF16_TFLOPS.items():
            if key.replace(" ", "").lower() in name.replace(" ", "").lower():
                return value, f"datasheet dense bf16 for {key} ({name})"
        return float("nan"), f"unknown GPU {name}: pass --peak-tflops"
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        torch.mm(a, b)
    rate = 2 * n**3 * reps / (time.perf_counter() - start) / 1e12
    return rate, "fp32 1024x1024 matmul rate measured now on this CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (CPU: 3)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="steps excluded from the timing")
    parser.add_argument("--batch", type=int, default=None, help="pairs per step (GPU 16, CPU 8)")
    parser.add_argument("--max-length", type=int, default=None, help="GPU 512, CPU 384")
    parser.add_argument("--precompute", action="store_true", help="reference log-probs precomputed")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from bench_dpo_step import load_pairs, project_cfg
    from omegaconf import OmegaConf

    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.models import build_model, offline_gpt2_tokenizer, resolve_precision
    from dpo_exp.training.ref_logps import RefLogpsCache
    from dpo_exp.training.trainer import build_trainer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    if args.quick:
        args.steps, args.warmup = (10, 2) if gpu else (3, 1)
    batch = args.batch or (16 if gpu else 8)
    max_length = args.max_length or (512 if gpu else 384)
    precision = resolve_precision("auto", device)
    shape = (
        {"n_layer": 24, "n_embd": 1024, "n_head": 16, "n_positions": 1024}
        if gpu
        else {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 512}
    )
    if not gpu:
        print(
            "no GPU here: running the tiny GPT-2 (2 layers, width 64) on CPU in fp32; the gpt2-medium / bf16 "
            "figures need a GPU"
        )
    tokenizer = offline_gpt2_tokenizer()
    n_pairs = batch * (args.steps + args.warmup)
    pairs = load_pairs(tokenizer, n_pairs, max_length)
    while len(pairs) < n_pairs:  # few pairs fit: cycle them
        pairs += pairs[: n_pairs - len(pairs)]
    # fp32 master weights, as a user's run holds them (`precision` is the trainer's autocast below)
    model = build_model(OmegaConf.create({"tiny": shape}), seed=0, precision="fp32", device=device)
    n_params = sum(p.numel() for p in model.parameters())  # tied LM head counted once: it is one matmul each way

    ns = argparse.Namespace(beta=0.1, lr=1e-5, epochs=1, max_length=max_length, batch=batch, seed=0)
    workdir = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    cfg = project_cfg(ns, args.precompute, str(workdir / "cache"))
    cfg.trainer.max_steps = args.steps + args.warmup
    cfg.trainer.logging_steps = 1
    trainer = build_trainer(
        cfg,
        model,
        tokenizer,
        RefLogpsCache.from_config(cfg).dataset(pairs),
        None,
        workdir,
        Tracker(),
        precision,
        device,
    )
    marks: list[float] = []

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if gpu:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    trainer.add_callback(Clock())
    batch_rows: list[list[int]] = []  # each batch's real row lengths (chosen and rejected), in the loader's order
    collate = trainer.data_collator

    def counting(features):
        batch_rows.append([len(f["prompt_ids"]) + len(f[k]) for f in features for k in ("chosen_ids", "rejected_ids")])
        return collate(features)

    trainer.data_collator = counting
    trainer.train()
    first = args.warmup if args.warmup > 0 else 1  # the first mark ends step 1: without warmup it is the clock's start
    timed_steps = len(marks) - first
    seq_tokens = [n for rows in batch_rows[first : len(marks)] for n in rows]  # the timed steps' own rows
    seconds = marks[-1] - marks[first - 1]
    tokens_per_s = sum(seq_tokens) / seconds
    mean_len = sum(n * n for n in seq_tokens) / sum(seq_tokens)  # attention's T, weighted by row length
    layers, width = shape["n_layer"], shape["n_embd"]
    flops_per_token = 6 * n_params + 12 * layers * width * mean_len
    if not args.precompute:
        flops_per_token += 2 * n_params + 4 * layers * width * mean_len
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    achieved = tokens_per_s * flops_per_token / 1e12
    mfu = None if math.isnan(peak) else achieved / peak
    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": device,
            "gpu": torch.cuda.get_device_name() if gpu else None,
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "model": ("gpt2-medium shape (24x1024), random init" if gpu else "tiny GPT-2 (2x64), random init (no GPU)"),
        "parameters": n_params,
        "precision": precision if gpu else "fp32",
        "batch_pairs": batch,
        "max_length": max_length,
        "precompute_ref_log_probs": args.precompute,
        "timed_steps": timed_steps,
        "mean_sequence_tokens": mean_len,
        "tokens_per_s": tokens_per_s,
        "model_tflops_per_s": achieved,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "mfu": mfu,
        "mfu_target_h100_bf16": 0.40,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['model']}, {result['precision']}, batch {batch} pairs, {timed_steps} timed steps:")
    print(f"  tokens/s {tokens_per_s:,.0f}   model TFLOP/s {achieved:.3f}   peak {peak:.2f} ({peak_source})")
    print(
        f"  MFU {mfu:.1%}" if mfu is not None else "  MFU: unknown peak",
        "(target >= 40% on an H100 in bf16)"
        if gpu
        else "(CPU: relative to the measured matmul rate; the 40% target applies to an H100)",
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
