"""Three DPO trainers on the same captured batches of real UltraFeedback pairs, one JSON: `make gpu-profile`.

    python benchmarks/gpu_profile.py [--smoke] [--out DIR] [--steps 12] [--warmup 3] [--batch 16] [--max-length 512]

Contenders, each in its own process (so its peak memory is its own), on the same batches in the same order (pairs
length-grouped once with dpo_exp's sampler, then fed sequentially to everyone):

- `trl`: plain TRL `DPOTrainer` as its documentation recommends for speed: precomputed reference log-probs, bf16
  autocast over fp32 weights, fused AdamW (TRL's padding_free is unavailable in TRL 1.x, Liger is not installed);
- `floor`: a hand-written plain-PyTorch DPO loop: fp32 master weights under bf16 autocast, SDPA's causal kernel
  without a mask, torch's one-op tanh GELU, the LM head on completion positions only, fused AdamW, each block
  torch.compile'd (on a GPU), no host reads in the step; reference log-probs precomputed like the others;
- `dpo_exp`: the project's `build_trainer` with the default config (precomputed reference, fp32 masters under
  bf16 autocast, sync-free step, fused GELU on CUDA).

Per contender: `tokens_per_s` (real, non-padding tokens of the timed steps / their wall time, the device
synchronised at both ends only), `mfu` = tokens_per_s x FLOPs per token / peak, with FLOPs per token = 6 N + 12 L d T
(policy forward + backward, recomputation under gradient checkpointing not counted: N parameters counted once with
the tied LM head, L layers, width d, T the timed rows' length weighted by length, sum T^2 / sum T; the reference is
precomputed, so it costs nothing per step), peak = datasheet dense bf16 (H100/H200 989 TFLOP/s) or, on CPU, the fp32
matmul rate measured on the spot; `peak_memory_bytes` (torch.cuda.max_memory_allocated; on CPU the process's peak
resident memory); `syncs_per_step` over 2 steps (on CUDA the synchronising operations CUDA's sync debug mode reports,
which include those inside ops such as boolean-mask indexing, with `value_reads_per_step` the host's value reads
counted below the dispatcher by dpo_exp.throughput.HostSyncCounter, the only count on CPU); `busy_share` (device
kernel time / wall time over 2 profiled steps, torch.profiler's kernel events only) and `top_kernels`; for dpo_exp,
`memory_estimate_bytes` (dpo_exp.memory's estimate for the longest batch run) beside the measured peak. The JSON is
rewritten after each contender, so a timeout keeps what finished. `--smoke`: a 2-layer GPT-2 and 3 steps (on CPU
without a GPU). `--batch 64 --gradient-checkpointing --contenders dpo_exp`: issue 29's 64 pairs (gpu_kit's fit step).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONTENDERS = ("trl", "floor", "dpo_exp")
MEDIUM = {"n_layer": 24, "n_embd": 1024, "n_head": 16, "n_positions": 1024}  # gpt2-medium's shape, 355 M
TINY = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 512}
COUNTED_STEPS = 2  # steps under the sync counter, then steps under the profiler (after the timed ones)
PROFILED_STEPS = 2


# ---- setup shared by the contenders ------------------------------------------------------------------------------


def settings(args) -> dict:
    gpu = torch.cuda.is_available()
    smoke = args.smoke
    return {
        "device": "cuda" if gpu else "cpu",
        "precision": "bf16" if gpu else "fp32",
        "shape": TINY if smoke or not gpu else MEDIUM,
        "batch": args.batch or (4 if smoke else 16),
        "max_length": args.max_length or (128 if smoke else 512),
        "warmup": 1 if smoke else args.warmup,
        "steps": 2 if smoke else args.steps,
        "compile": gpu and not smoke,
        "gradient_checkpointing": args.gradient_checkpointing,  # dpo_exp's contender only (the 64-pair fit)
    }


def capture_batches(s: dict, path: Path) -> None:
    """Tokenised UltraFeedback pairs, length-grouped into batches by dpo_exp's sampler, in the order to run."""
    from bench_dpo_step import load_pairs

    from dpo_exp.models import offline_gpt2_tokenizer
    from dpo_exp.throughput import LengthGroupedPairSampler
    from dpo_exp.trl_compat import pair_token_ids

    steps = s["warmup"] + s["steps"] + COUNTED_STEPS + PROFILED_STEPS
    n = s["batch"] * steps
    tokenizer = offline_gpt2_tokenizer()
    pairs = load_pairs(tokenizer, n, s["max_length"])
    while len(pairs) < n:
        pairs += pairs[: n - len(pairs)]
    ids = [pair_token_ids(tokenizer, p) for p in pairs]
    lengths = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in ids]
    order = list(LengthGroupedPairSampler(lengths, s["batch"], seed=0))
    path.write_text(json.dumps({"pairs": [pairs[i] for i in order], "ids": [ids[i] for i in order]}))


def build_model(s: dict):
    from omegaconf import OmegaConf

    from dpo_exp.models import build_model as build

    return build(OmegaConf.create({"tiny": s["shape"]}), seed=0, precision="fp32", device=s["device"])


def parameter_count(s: dict) -> int:
    """The policy's parameters from its config (the tied LM head once: it is one matmul each way); no model built."""
    from omegaconf import OmegaConf

    from dpo_exp.memory import count_parameters
    from dpo_exp.models import offline_gpt2_tokenizer
    from dpo_exp.models.tiny import tiny_config

    return count_parameters(tiny_config(OmegaConf.create(s["shape"]), offline_gpt2_tokenizer()))[0]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_tflops(device: str) -> tuple[float, str]:
    from bench_gpu import peak_tflops as peak

    return peak(device, None)


def profile_window(device: str, run_steps) -> dict:
    """Device-busy share and top kernels (or CPU ops) over `run_steps()`, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        synchronize(device)  # the window opens once the profiler runs (its start-up is not the steps' time)
        start = time.perf_counter()
        run_steps()
        synchronize(device)
        wall = time.perf_counter() - start
    return profile_summary(prof, wall, device)


def profile_summary(prof, wall: float, device: str) -> dict:
    """busy_share = the device's kernel time / the window's wall time, and the top kernels. Only the device's own
    kernel events count: a CPU op's event, and a user annotation's device span, also carry the time of the kernels
    inside them (counted twice else)."""
    events = prof.key_averages()
    if device == "cuda":
        from torch.autograd import DeviceType

        kernels = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
        # record_function ranges (optimizer.step, compiled regions) appear on the device too, spanning their kernels
        kernels = [e for e in kernels if e.self_device_time_total > 0 and not getattr(e, "is_user_annotation", False)]
        top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:10]
        return {
            "busy_share": sum(e.self_device_time_total for e in kernels) / 1e6 / wall,
            "profiled_seconds": wall,
            "top_kernels": [{"name": e.key[:120], "ms": e.self_device_time_total / 1e3, "calls": e.count} for e in top],
        }
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]
    return {
        "busy_share": None,  # no device on a CPU run
        "profiled_seconds": wall,
        "top_kernels": [{"name": e.key[:120], "ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in top],
    }


class SyncCount:
    """Host syncs over the counted steps. dpo_exp's HostSyncCounter sees the host's reads of values (below the
    dispatcher; on CPU the only count there is). On CUDA, CUDA's own sync debug mode also sees the syncs inside ops
    (boolean-mask indexing's nonzero, a blocking copy to the device), which a dispatcher count misses: `syncs_per_step`
    is that count there, `value_reads_per_step` the dispatcher's."""

    def __init__(self, device: str):
        from dpo_exp.throughput import HostSyncCounter

        self.counter = HostSyncCounter(cpu=device == "cpu")
        self.cuda = device == "cuda"
        self.caught: list = []

    def __enter__(self) -> SyncCount:
        self.counter.__enter__()
        if self.cuda:
            import warnings

            self._recording = warnings.catch_warnings(record=True)
            self.caught = self._recording.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
            self._recording.__exit__(*exc)
        self.counter.__exit__(*exc)

    def per_step(self) -> dict:
        reads = self.counter.count / COUNTED_STEPS
        if not self.cuda:
            return {"syncs_per_step": reads}
        syncs = sum("synchronizing CUDA operation" in str(w.message) for w in self.caught)
        return {"syncs_per_step": syncs / COUNTED_STEPS, "value_reads_per_step": reads}


def peak_memory(device: str) -> int:
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


# ---- Trainer-based contenders (trl, dpo_exp): timing, sync count and profile through callbacks ---------------------


def run_trainer_windows(trainer, s: dict) -> dict:
    """Train warmup + timed + counted + profiled steps; callbacks mark the windows."""
    from transformers import TrainerCallback

    device = s["device"]
    timed_end = s["warmup"] + s["steps"]
    count_end = timed_end + COUNTED_STEPS
    marks: dict[str, float] = {}
    syncs = SyncCount(device)
    profiler_box: dict = {}

    class Windows(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            step = state.global_step
            if step == s["warmup"]:
                synchronize(device)
                marks["start"] = time.perf_counter()
            if step == timed_end:
                synchronize(device)
                marks["end"] = time.perf_counter()
                syncs.__enter__()
            if step == count_end:
                syncs.__exit__(None, None, None)
                from torch.profiler import ProfilerActivity, profile

                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
                profiler_box["prof"] = profile(activities=activities)
                profiler_box["prof"].__enter__()
                synchronize(device)  # the window opens once the profiler runs
                profiler_box["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == count_end + PROFILED_STEPS and "prof" in profiler_box:
                synchronize(device)  # the window closes with the last profiled step, before the Trainer's wrap-up
                profiler_box["wall"] = time.perf_counter() - profiler_box["start"]
                profiler_box["prof"].__exit__(None, None, None)

    trainer.add_callback(Windows())
    trainer.train()
    return {
        "seconds": marks["end"] - marks["start"],
        **syncs.per_step(),
        **profile_summary(profiler_box["prof"], profiler_box["wall"], device),
    }


def sequential(trainer) -> None:
    """Feed the captured batches in their order (the capture did the length grouping)."""
    from torch.utils.data import SequentialSampler

    trainer._get_train_sampler = lambda *a, **k: SequentialSampler(trainer.train_dataset)


def contender_trl(s: dict, data: dict, workdir: Path) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from dpo_exp.models import offline_gpt2_tokenizer

    model = build_model(s)
    total = s["warmup"] + s["steps"] + COUNTED_STEPS + PROFILED_STEPS
    config = DPOConfig(
        output_dir=str(workdir / "trl"),
        beta=0.1,
        learning_rate=1e-6,
        max_steps=total,
        per_device_train_batch_size=s["batch"],
        max_length=s["max_length"],
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
        use_cpu=s["device"] == "cpu",
        bf16=s["precision"] == "bf16",
        gradient_checkpointing=False,
        precompute_ref_log_probs=True,
        optim="adamw_torch_fused",
        seed=0,
        logging_steps=10,
        disable_dropout=True,
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(data["pairs"]),
        processing_class=offline_gpt2_tokenizer(),
    )
    sequential(trainer)
    return run_trainer_windows(trainer, s)


def contender_dpo_exp(s: dict, data: dict, workdir: Path) -> dict:
    from omegaconf import OmegaConf

    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.models import offline_gpt2_tokenizer
    from dpo_exp.training.ref_logps import RefLogpsCache
    from dpo_exp.training.trainer import build_trainer

    trainer_cfg = OmegaConf.load(ROOT / "conf" / "trainer" / "dpo.yaml")
    total = s["warmup"] + s["steps"] + COUNTED_STEPS + PROFILED_STEPS
    trainer_cfg.merge_with(
        {
            "beta": 0.1,
            "learning_rate": 1e-6,
            "num_train_epochs": 1,
            "max_steps": total,
            "max_length": s["max_length"],
            "per_device_train_batch_size": s["batch"],
            "eval_strategy": "no",
            "save_strategy": "no",
            "optim": "adamw_torch_fused",  # what dpo_config picks on CUDA; the same on CPU for a like-for-like count
            "gradient_checkpointing": s["gradient_checkpointing"],
        }
    )
    train = OmegaConf.load(ROOT / "conf" / "config.yaml").train
    train.group_by_length = False  # the captured order is already length-grouped by the same sampler
    cfg = OmegaConf.create(
        {
            "trainer": trainer_cfg,
            "train": train,
            "lora": {"enabled": False},
            "on_nonfinite": "stop",
            "seed": 0,
            "cache_dir": str(workdir / "cache"),
        }
    )
    model = build_model(s)
    trainer = build_trainer(
        cfg,
        model,
        offline_gpt2_tokenizer(),
        RefLogpsCache.from_config(cfg).dataset(data["pairs"]),
        None,
        workdir / "dpo_exp",
        Tracker(),
        s["precision"],
        s["device"],
    )
    sequential(trainer)
    windows = run_trainer_windows(trainer, s)
    checkpointing = {"gradient_checkpointing": bool(trainer.args.gradient_checkpointing)}  # what the run did
    return {**windows, **checkpointing, **memory_estimate(s, data["ids"], train, model.config)}


def memory_estimate(s: dict, ids: list[dict], train, config) -> dict:
    """dpo_exp's estimate (dpo_exp.memory, from the model config alone) for the longest batch these steps ran, to set
    beside the measured peak."""
    from dpo_exp.memory import Batch, estimate, fused_gelu_on

    size = s["batch"]
    widths = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in ids]
    widest = max(min(s["max_length"], max(widths[i : i + size])) for i in range(0, len(widths), size))
    checkpointing, fused = s["gradient_checkpointing"], fused_gelu_on(train.fused_gelu, s["device"])
    batch = Batch(
        2 * size * widest, s["precision"], s["device"], gradient_checkpointing=checkpointing, fused_gelu=fused
    )
    memory = estimate(config, "ddp", 1, batch)
    return {"memory_estimate_bytes": memory.total, "memory_estimate": memory.line()}


# ---- the floor: hand-written -------------------------------------------------------------------------------------


def contender_floor(s: dict, data: dict, workdir: Path) -> dict:
    import torch.nn.functional as F

    from dpo_exp.models import offline_gpt2_tokenizer
    from dpo_exp.throughput import swap_tanh_gelu

    device, batch = s["device"], s["batch"]
    pad = offline_gpt2_tokenizer().eos_token_id
    model = build_model(s)
    swap_tanh_gelu(model)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=s["precision"] == "bf16")
    blocks = model.transformer.h
    if s["compile"]:
        for i in range(len(blocks)):
            blocks[i] = torch.compile(blocks[i])
    head = model.lm_head.weight  # tied with the embeddings

    def collate(rows_ids):
        rows = [(r["prompt_ids"], r["chosen_ids"]) for r in rows_ids] + [
            (r["prompt_ids"], r["rejected_ids"]) for r in rows_ids
        ]
        rows = [(p, c[: max(0, s["max_length"] - len(p))]) for p, c in rows]
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        target_rows, target_cols = [], []
        for i, (p, c) in enumerate(rows):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            target_rows += [i] * len(c)
            target_cols += list(range(len(p) - 1, len(p) + len(c) - 1))  # position t predicts token t+1
        real = sum(len(p) + len(c) for p, c in rows)
        return (
            ids.to(device, non_blocking=True),
            torch.tensor(target_rows, device=device),
            torch.tensor(target_cols, device=device),
            len(rows),
            real,
        )

    def sequence_logps(ids, rows, cols, n_rows):
        hidden = model.transformer(input_ids=ids, use_cache=False).last_hidden_state  # no mask: causal SDPA
        h = hidden[rows, cols]  # completion positions only
        logits = (h @ head.t()).float()
        targets = ids[rows, cols + 1]
        logp = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(1)
        return torch.zeros(n_rows, device=ids.device, dtype=logp.dtype).index_add(0, rows, logp)

    batches = [
        collate(data["ids"][i : i + batch]) for i in range(0, len(data["ids"]) - batch + 1, batch)
    ]  # on the host, before any timing
    with torch.no_grad(), autocast:
        refs = [sequence_logps(ids, r, c, n) for ids, r, c, n, _ in batches]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)

    def step(k: int) -> None:
        ids, rows, cols, n, _ = batches[k]
        with autocast:
            logps = sequence_logps(ids, rows, cols, n)
        chosen, rejected = (logps - refs[k]).chunk(2)
        loss = -F.logsigmoid(0.1 * (chosen - rejected)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    k = 0
    for _ in range(s["warmup"]):
        step(k)
        k += 1
    synchronize(device)
    start = time.perf_counter()
    for _ in range(s["steps"]):
        step(k)
        k += 1
    synchronize(device)
    seconds = time.perf_counter() - start
    with SyncCount(device) as syncs:
        for _ in range(COUNTED_STEPS):
            step(k)
            k += 1
    first_profiled = k

    def profiled():
        for j in range(PROFILED_STEPS):
            step(first_profiled + j)

    return {"seconds": seconds, **syncs.per_step(), **profile_window(device, profiled)}


# ---- one contender per process; the parent merges ------------------------------------------------------------------


def run_one(name: str, s: dict, batches: Path, out: Path) -> None:
    data = json.loads(batches.read_text())
    workdir = Path(tempfile.mkdtemp(prefix=f"gpu_profile_{name}_"))
    if s["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = {"trl": contender_trl, "floor": contender_floor, "dpo_exp": contender_dpo_exp}[name](s, data, workdir)
    peak_memory_bytes = peak_memory(s["device"])
    ids = data["ids"]
    first = s["warmup"] * s["batch"]
    timed = ids[first : first + s["steps"] * s["batch"]]
    cut = s["max_length"]
    rows = [min(cut, len(r["prompt_ids"]) + len(r[k])) for r in timed for k in ("chosen_ids", "rejected_ids")]
    tokens = sum(rows)
    n_params = parameter_count(s)
    layers, width = s["shape"]["n_layer"], s["shape"]["n_embd"]
    # attention costs 12 L d T per token of a row of T tokens: per token of the timed rows, T weighted by length
    flops_per_token = 6 * n_params + 12 * layers * width * sum(r * r for r in rows) / tokens
    peak, source = peak_tflops(s["device"])
    tokens_per_s = tokens / result["seconds"]
    result.update(
        {
            "tokens_per_s": tokens_per_s,
            "timed_tokens": tokens,
            "flops_per_token": flops_per_token,
            "mfu": tokens_per_s * flops_per_token / (peak * 1e12),
            "peak_tflops": peak,
            "peak_source": source,
            "peak_memory_bytes": peak_memory_bytes,
        }
    )
    out.write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a 2-layer GPT-2 and 2 timed steps (CPU without GPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="pairs per step (16; --smoke 4)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per row (512; --smoke 128)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="dpo_exp's contender recomputes activations (64 pairs)"
    )
    parser.add_argument("--timeout", type=int, default=200, help="seconds per contender")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one contender
    parser.add_argument("--batches", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    s = settings(args)
    if args.one:
        run_one(args.one, s, args.batches, args.result)
        return

    from machine_info import machine

    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "gpu_profile.json"
    work = Path(tempfile.mkdtemp(prefix="gpu_profile_"))
    batches = work / "batches.json"
    capture_batches(s, batches)
    report = {
        "machine": machine(),
        "gpu": torch.cuda.get_device_name() if s["device"] == "cuda" else None,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {k: v for k, v in s.items()},
        "flop_formula": "6 N + 12 L d T per real token, T = sum T^2 / sum T over the timed rows (policy forward + backward; reference precomputed)",
        "contenders": {},
    }
    if not s["device"] == "cuda":
        print("no GPU here: a 2-layer GPT-2 on CPU in fp32; the GPU figures need `make gpu-profile` on a GPU")
    for name in args.contenders.split(","):
        result_file = work / f"{name}.json"
        command = [sys.executable, __file__, "--one", name, "--batches", str(batches), "--result", str(result_file)]
        command += ["--smoke"] * args.smoke + ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        command += ["--batch", str(s["batch"]), "--max-length", str(s["max_length"])]
        command += ["--gradient-checkpointing"] * s["gradient_checkpointing"]
        started = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            if proc.returncode == 0 and result_file.exists():
                entry = json.loads(result_file.read_text())
            else:
                entry = {"error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}
        except subprocess.TimeoutExpired:
            entry = {"error": f"timed out after {args.timeout} s"}
        entry["wall_seconds"] = time.perf_counter() - started
        report["contenders"][name] = entry
        target.write_text(json.dumps(report, indent=2) + "\n")  # as it goes: a timeout keeps what finished
        shown = {k: entry.get(k) for k in ("tokens_per_s", "mfu", "peak_memory_bytes", "syncs_per_step", "busy_share")}
        print(f"{name}: {shown if 'error' not in entry else entry['error']}")
    print(f"written to {target}")


if __name__ == "__main__":
    main()
