"""`make gpu-check`: dpo_exp's GPU path end to end, one table; under ~8 minutes on one modern GPU, no hub access.

    python benchmarks/gpu_check.py [--smoke] [--out FILE]

Rows (each ok / FAIL / skip, seconds, what was seen):
- full fine-tuning: `python -m dpo_exp` on a GPT-2-medium-shaped model built from config (model=tiny_gpt2 at 24
  layers x 1024, 16 heads, 355 M parameters, random weights), the package's demo preference pairs, bf16 autocast
  (fp16 on a GPU without bf16), the reference log-probs precomputed, then the evaluation (sampling with the paired
  sampler, vader scores, KL, best-of-N). summary.json must say completed on cuda in that precision, the loss and
  the evaluation's numbers finite, the reference log-probs built, the saved weights fp32 (master weights).
- LoRA, same model: the reference is the adapter switched off (not precomputed); the adapter is saved in fp32.
- samplers: `InverseCdfSampler` and `ExponentialRaceSampler` (dpo_exp/sampler.py) on CUDA draw a known
  distribution over GPT-2's vocabulary: frequencies within a total-variation tolerance, never a token of
  probability 0, and the same seed gives the same draws.
- fsdp on one device: the full fine-tuning row under `distributed=fsdp`, launched as the project requires a sharded
  run to be launched (`torchrun --nproc_per_node 1`: one process, FSDP2 over a one-device mesh), a checkpoint saved
  sharded mid-run, then consolidated into one plain transformers folder of fp32 weights.
- zero3 on one device: the same under `distributed=zero3` (DeepSpeed ZeRO-3 through accelerate). Without DeepSpeed
  installed (`pip install 'dpo_exp[deepspeed]'`) the row says "skipped" and does not fail the check; DeepSpeed
  needs a GPU, so under --smoke it is skipped too.
- throughput: benchmarks/bench_gpu.py --quick (its own gpt2-medium-shaped bf16 run): tokens/s and MFU. It reads
  UltraFeedback pairs from ../shared/data (DPO_EXP_SHARED_DATA); without them the row fails and says so.

Without a GPU it says so and exits 0. `--smoke` runs the same rows on CPU at tiny scale in fp32: the script's own
test (tests/test_gpu_check.py), which proves nothing about GPUs. Exit status 1 when a row fails. Results:
benchmarks/results/gpu_check.json (GPU) or --out, rewritten after each row (a timeout keeps what finished).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
OFFLINE["HYDRA_FULL_ERROR"] = "1"  # a failing run's last stderr line (the row's detail) is then its exception


@dataclass
class Scale:
    device: str
    precision: str  # the run's train.precision
    shape: dict  # model.tiny.*
    max_length: int
    batch: int
    new_tokens: int  # evaluation completion length
    draws: int  # sampler draws per sampler
    tv_tolerance: float  # total variation allowed between drawn frequencies and the distribution
    timeout_s: int  # per subprocess
    bench_args: tuple[str, ...] = ("--quick",)  # bench_gpu.py's arguments


def gpu_scale(precision: str) -> Scale:
    medium = {"n_layer": 24, "n_embd": 1024, "n_head": 16, "n_positions": 1024}
    return Scale("cuda", precision, medium, 256, 8, 32, 400_000, 0.005, 300)  # expected TV ~0.001


TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 128}
SMOKE = Scale("cpu", "fp32", TINY, 64, 4, 4, 4000, 0.05, 600, ("--quick", "--batch", "2", "--max-length", "128"))


class CheckFailed(Exception):
    """A row's check did not hold; the message says what was seen."""


class Skipped(Exception):
    """A row that cannot run on this machine (a missing optional dependency); the message says why."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def one_process_launcher() -> list[str]:
    """torchrun with one process: how a sharded strategy runs on one device (dpo_exp refuses one without a
    launcher, where accelerate would not shard)."""
    import shutil

    torchrun = Path(sys.executable).with_name("torchrun")
    return [
        str(torchrun) if torchrun.exists() else (shutil.which("torchrun") or "torchrun"),
        "--standalone",
        "--nproc_per_node",
        "1",
    ]


def run_dpo(scale: Scale, run_dir: Path, extra: list[str], launcher: list[str] | None = None) -> dict:
    """`python -m dpo_exp` (or `launcher -m dpo_exp`) at this scale on the demo pairs, evaluation on; returns its
    summary.json."""
    from dpo_exp import DEMO_DIR

    args = [
        "model=tiny_gpt2",
        *(f"model.tiny.{k}={v}" for k, v in scale.shape.items()),
        "dataset=preference_files",
        f"dataset.path={DEMO_DIR / 'preferences.jsonl'}",
        "dataset.eval_size=8",
        "epochs=1",
        f"batch_size={scale.batch}",
        f"trainer.max_length={scale.max_length}",
        "trainer.save_strategy=no",
        f"train.precision={scale.precision}",
        "logger=none",
        "eval/reward=vader",
        "eval.num_prompts=8",
        "eval.num_samples=2",
        f"eval.max_new_tokens={scale.new_tokens}",
        "eval.best_of_n=[1,2,4]",
        "eval.best_of_n_prompts=4",
        "eval.num_pairs=8",
        "eval.bootstrap=200",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    env = {**os.environ, **OFFLINE, "DPO_EXP_CACHE": str(run_dir.parent / ".cache")}
    proc = subprocess.run(
        [*(launcher or [sys.executable]), "-m", "dpo_exp", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=scale.timeout_s,
    )
    expect(proc.returncode == 0, f"exit {proc.returncode}: {failure_line(proc.stderr)}")
    return json.loads((run_dir / "summary.json").read_text())


def failure_line(stderr: str) -> str:
    """The exception a failed run ended with: its last `...Error: ...` line, a launched process's own (`[rank0]: ...`)
    ahead of torchrun's ChildFailedError summary; else its last line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    raised = [line for line in lines if re.search(r"\w(Error|Exception)\b.*:", line)]
    ranked = [line for line in raised if line.startswith("[rank")]
    return (ranked or raised or lines or ["no output"])[-1]


def saved_dtypes(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {str(handle.get_slice(name).get_dtype()) for name in handle.keys()}


def check_run(summary: dict, scale: Scale, weights: Path) -> list[str]:
    """The checks both training rows share; returns what was seen."""
    expect(summary.get("status") == "completed", f"status {summary.get('status')}: {summary.get('error')}")
    model = summary.get("model") or {}
    expect(model.get("device") == scale.device, f"trained on {model.get('device')}, not {scale.device}")
    expect(model.get("precision") == scale.precision, f"precision {model.get('precision')}, not {scale.precision}")
    expect(finite(summary.get("loss")), f"training loss {summary.get('loss')}")
    evaluated = {k: summary.get(k) for k in ("eval/kl", "eval/reward_delta", "eval/bon_delta_4", "eval_loss")}
    expect(all(finite(v) for v in evaluated.values()), f"evaluation not finite: {evaluated}")
    dtypes = saved_dtypes(weights)
    expect(dtypes == {"F32"}, f"saved weights {sorted(dtypes)}: master weights must stay fp32")
    return [
        f"{model.get('precision')} on {model.get('device')}, weights F32",
        f"loss {summary['loss']:.4f}",
        f"eval KL {evaluated['eval/kl']:.4f}, reward delta {evaluated['eval/reward_delta']:+.4f}",
    ]


def row_full_finetune(scale: Scale, work: Path) -> str:
    summary = run_dpo(scale, work / "full", ["lora=none", "trainer.precompute_ref_log_probs=true"])
    seen = check_run(summary, scale, work / "full" / "model" / "model.safetensors")
    cache = (summary.get("ref_logps") or {}).get("cache")
    expect(cache == "built", f"reference log-probs: {cache!r}, not built")
    return "; ".join([*seen, "reference precomputed"])


def row_lora(scale: Scale, work: Path) -> str:
    summary = run_dpo(scale, work / "lora", ["lora=gpt2_attn", "lr=1e-3", "trainer.precompute_ref_log_probs=false"])
    seen = check_run(summary, scale, work / "lora" / "model" / "adapter" / "adapter_model.safetensors")
    return "; ".join(seen)


SHARDED_RUN = ["lora=none", "trainer.save_strategy=steps", "trainer.save_steps=2", "trainer.save_total_limit=1"]


def row_fsdp(scale: Scale, work: Path) -> str:
    summary = run_dpo(scale, work / "fsdp", [*SHARDED_RUN, "distributed=fsdp"], one_process_launcher())
    seen = check_run(summary, scale, work / "fsdp" / "model" / "model.safetensors")
    recorded = summary.get("distributed") or {}
    expect(recorded.get("strategy") == "fsdp" and recorded.get("world_size") == 1, f"distributed {recorded}")
    shards = sorted((work / "fsdp" / "checkpoints").glob("checkpoint-*/pytorch_model_fsdp_0/*.distcp"))
    expect(bool(shards), "no sharded checkpoint (checkpoint-*/pytorch_model_fsdp_0/*.distcp): FSDP did not engage")
    return "; ".join([*seen, f"fsdp, 1 process, sharded checkpoint ({len(shards)} file(s)), consolidated model"])


def row_zero3(scale: Scale, work: Path) -> str:
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise Skipped("deepspeed not installed (pip install 'dpo_exp[deepspeed]')")
    if scale.device != "cuda":
        raise Skipped("DeepSpeed needs a GPU (--smoke runs on CPU)")
    summary = run_dpo(scale, work / "zero3", [*SHARDED_RUN, "distributed=zero3"], one_process_launcher())
    seen = check_run(summary, scale, work / "zero3" / "model" / "model.safetensors")
    recorded = summary.get("distributed") or {}
    expect(recorded.get("strategy") == "zero3" and recorded.get("world_size") == 1, f"distributed {recorded}")
    return "; ".join([*seen, "zero3, 1 process, consolidated model"])


def draw_tokens(sampler, scores, draws: int, chunk: int):
    import torch

    rows = [min(chunk, draws - done) for done in range(0, draws, chunk)]
    return torch.cat([sampler(None, scores.repeat(n, 1)).argmax(-1) for n in rows])


def row_samplers(scale: Scale, work: Path) -> str:
    import torch

    from dpo_exp.sampler import ExponentialRaceSampler, InverseCdfSampler

    vocab = 50257
    probs = torch.zeros(vocab, device=scale.device)
    support = torch.tensor([3, 1500, 20000, 40000, 50256], device=scale.device)
    probs[support] = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], device=scale.device)
    scores = probs.log()[None]  # -inf outside the support
    chunk = 2000 if scale.device == "cuda" else 250  # rows per call: [rows, 50257] floats each
    seen = []
    for sampler in (InverseCdfSampler(), ExponentialRaceSampler()):
        name = type(sampler).__name__
        torch.manual_seed(0)
        tokens = draw_tokens(sampler, scores, scale.draws, chunk)
        expect(tokens.device.type == scale.device, f"{name} drew on {tokens.device}")
        counts = torch.bincount(tokens, minlength=vocab).double()
        expect(int(counts.sum() - counts[support].sum()) == 0, f"{name} drew a token of probability 0")
        tv = 0.5 * float((counts / scale.draws - probs.double()).abs().sum())
        expect(tv <= scale.tv_tolerance, f"{name}: total variation {tv:.4f} > {scale.tv_tolerance}")
        torch.manual_seed(0)
        again = draw_tokens(sampler, scores, min(scale.draws, 2 * chunk), chunk)
        expect(torch.equal(again, tokens[: again.numel()]), f"{name}: the same seed drew other tokens")
        seen.append(f"{name} TV {tv:.4f}")
    return f"{scale.draws:,} draws each on {scale.device}: " + ", ".join(seen) + "; seeded repeat identical"


def row_throughput(scale: Scale, work: Path) -> str:
    out = work / "bench_gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), *scale.bench_args, "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
        timeout=scale.timeout_s,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    expect(proc.returncode == 0, f"bench_gpu.py exit {proc.returncode}: {lines[-1] if lines else 'no output'}")
    result = json.loads(out.read_text())
    expect(finite(result.get("tokens_per_s")), f"tokens/s {result.get('tokens_per_s')}")
    mfu = result.get("mfu")
    shown = f"MFU {mfu:.1%} of {result['peak_tflops']:.3g} TFLOP/s" if finite(mfu) else "MFU unknown (peak)"
    return f"{result['model']}, {result['precision']}: {result['tokens_per_s']:,.0f} tokens/s, {shown}"


ROWS: list[tuple[str, Callable[[Scale, Path], str]]] = [
    ("full fine-tuning + precomputed reference + evaluation", row_full_finetune),
    ("LoRA fine-tuning + evaluation", row_lora),
    ("distributed=fsdp on one device (torchrun, 1 process)", row_fsdp),
    ("distributed=zero3 on one device (torchrun, 1 process)", row_zero3),
    ("samplers (dpo_exp/sampler.py)", row_samplers),
    ("throughput (bench_gpu.py --quick)", row_throughput),
]


def run_rows(scale: Scale, work: Path, written: Callable[[list[dict]], None]) -> list[dict]:
    """Every row in turn; `written` gets the rows so far after each one (so a timeout keeps what finished)."""
    results: list[dict] = []
    for name, check in ROWS:
        start = time.perf_counter()
        try:
            detail, ok = check(scale, work), True
        except Skipped as exc:
            detail, ok = f"skipped: {exc}", None
        except Exception as exc:  # noqa: BLE001 - a row that breaks is a FAIL row; the others still run
            detail, ok = f"{type(exc).__name__}: {exc}", False
        results.append({"check": name, "ok": ok, "seconds": round(time.perf_counter() - start, 1), "detail": detail})
        print(f"  {shown(ok):4} {name} ({results[-1]['seconds']:.0f} s)", flush=True)
        written(results)
    return results


def shown(ok: bool | None) -> str:
    return "skip" if ok is None else ("ok" if ok else "FAIL")


def print_table(results: list[dict]) -> None:
    width = max(len(r["check"]) for r in results)
    print(f"\n{'check'.ljust(width)}  result  seconds  detail")
    for r in results:
        print(f"{r['check'].ljust(width)}  {shown(r['ok']):6}  {r['seconds']:7.1f}  {r['detail']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same rows on CPU, tiny model, fp32 (no GPU claim)")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default with a GPU: {RESULTS})")
    args = parser.parse_args()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("no GPU here (torch.cuda.is_available() is False): the GPU check needs one; nothing was run")
        return 0
    from dpo_exp.models import resolve_precision

    scale = SMOKE if args.smoke else gpu_scale(resolve_precision("auto", "cuda"))
    gpu = torch.cuda.get_device_name() if scale.device == "cuda" else None
    print(f"GPU check on {gpu or 'CPU (--smoke: tiny model, fp32; says nothing about GPUs)'}:", flush=True)
    out = args.out or (None if args.smoke else RESULTS)
    record = {"gpu": gpu, "torch": torch.__version__, "platform": platform.platform(), "scale": asdict(scale)}
    start = time.perf_counter()

    def written(rows: list[dict]) -> None:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            total_s = round(time.perf_counter() - start, 1)
            out.write_text(json.dumps({**record, "total_s": total_s, "rows": rows}, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        results = run_rows(scale, Path(tmp), written)
    print_table(results)
    print(f"total {time.perf_counter() - start:.0f} s")
    if out is not None:
        print(f"written to {out}")
    return 0 if all(r["ok"] is not False for r in results) else 1  # a skipped row is not a failure


if __name__ == "__main__":
    sys.exit(main())
