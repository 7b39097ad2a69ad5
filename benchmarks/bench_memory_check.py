"""The memory estimate (dpo_exp.memory) against the measured peak of real runs on CPU: the README's memory table is
that estimator's output, and this is where it was checked against runs.

    python benchmarks/bench_memory_check.py [--quick] [--out FILE]

Each row is one `python -m dpo_exp` run under `torchrun --nproc_per_node 2` (gloo), ddp and fsdp, full fine-tuning of
a tiny GPT-2 built from config, fp32, precomputed reference log-probs, on the UltraFeedback sample (long pairs, so
every micro-batch is padded to trainer.max_length, as the estimate assumes). Measured: the peak bytes of tensor
storage each process held during `trainer.train()` (torch's MemTracker through `dpo_exp.memory.peak_tensor_bytes`:
every storage an op creates, until it is freed), the larger of the two processes. Estimated: `check_memory`, the
estimate the run printed before loading (params + grads + optimizer + reference + activations). Without --quick a
wider model (--quick is the test's size, tests/test_memory.py). Results: benchmarks/results/memory_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "memory_check.json"
SHARED_DATA = Path(os.environ.get("DPO_EXP_SHARED_DATA", ROOT.parent / "shared" / "data"))
PROCESSES = 2
TOLERANCE = 0.20  # |estimate - measured peak| <= 20 % of the measured peak (see docs/clusters.md#memory-per-device)

EVAL_NOTE = (
    "not estimated: the evaluation inside train() (trainer.eval_strategy) scores per_device_eval_batch_size pairs "
    "with the full logits while the training state is held; the estimate covers the training step only"
)

# torchrun runs this in every process: `trainer.train()` under the tracker, each process's peak into MEMORY_PEAK_DIR
MEASURING = """
import json, os, sys
from pathlib import Path
import transformers
from dpo_exp.memory import peak_tensor_bytes
train = transformers.Trainer.train
def measured(self, *args, **kwargs):
    out = {}
    held = [m for m in (self.model, getattr(self, "ref_model", None)) if m is not None]  # made before train()
    peak = peak_tensor_bytes(lambda: out.setdefault("result", train(self, *args, **kwargs)), *held)
    Path(os.environ["MEMORY_PEAK_DIR"], f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(peak))
    return out["result"]
transformers.Trainer.train = measured
from dpo_exp.__main__ import main
sys.argv = ["dpo_exp", *sys.argv[1:]]
main()
"""


def shape(quick: bool) -> list[str]:
    """The tiny model and batch: --quick is the test's (a few seconds a step on 2 busy cores)."""
    width, layers, length = (64, 2, 64) if quick else (256, 4, 128)
    return [
        "model=tiny_gpt2",
        f"model.tiny.n_layer={layers}",
        f"model.tiny.n_embd={width}",
        "model.tiny.n_head=2",
        "model.tiny.n_positions=256",
        f"trainer.max_length={length}",
        "trainer.per_device_train_batch_size=2",
    ]


def overrides(quick: bool, distributed: str, data: Path, run_dir: Path) -> list[str]:
    return [
        *shape(quick),
        "lora=none",
        "trainer.save_strategy=no",
        "trainer.eval_strategy=no",  # the estimate is the training step's (an evaluation row below shows why)
        "trainer.precompute_ref_log_probs=true",
        "train.precision=fp32",
        "dataset=preference_files",
        f"dataset.path={data}",
        "data_size=12",
        "dataset.eval_size=4",
        "epochs=1",
        "eval.enabled=false",
        "logger=none",
        f"distributed={distributed}",
        f"hydra.run.dir={run_dir}",
    ]


def estimated(args: list[str]) -> dict[str, int]:
    """What `python -m dpo_exp args` estimates per device for PROCESSES processes (dpo_exp.memory_check)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from dpo_exp import CONF_DIR
    from dpo_exp.memory_check import check_memory

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    saved = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = str(PROCESSES)  # the launch the estimate is for
    try:
        return check_memory(cfg, "fp32", "cpu").parts()
    finally:
        os.environ.pop("WORLD_SIZE") if saved is None else os.environ.__setitem__("WORLD_SIZE", saved)


def measure(distributed: str, quick: bool, work: Path, data: Path, extra: tuple[str, ...] = ()) -> dict:
    """One row: the run under torchrun with the tracker, its peak per process, and the estimate."""
    name = "_".join([distributed, *(e.split("=")[-1] for e in extra)])
    peaks, run_dir = work / f"peaks_{name}", work / name
    peaks.mkdir(parents=True)
    script = work / "measuring.py"
    script.write_text(MEASURING)
    args = [*overrides(quick, distributed, data, run_dir), *extra]
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "MEMORY_PEAK_DIR": str(peaks), "DPO_EXP_CACHE": str(work / ".cache"), "OMP_NUM_THREADS": "1"}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    command = [str(torchrun), "--nproc_per_node", str(PROCESSES), str(script), *args]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{distributed} run failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    measured = [json.loads(p.read_text())["cpu"] for p in sorted(peaks.glob("rank*.json"))]
    estimate = estimated(args)
    peak = max(measured)
    error = (estimate["total"] - peak) / peak
    return {
        "strategy": distributed,
        "overrides": list(extra),
        "processes": PROCESSES,
        "measured_peak_per_process": measured,
        "estimate": estimate,
        "error": round(error, 4),
        "within_tolerance": abs(error) <= TOLERANCE,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the test's size (tests/test_memory.py)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    data = SHARED_DATA / "ultrafeedback" / "sample.jsonl"
    if not data.exists():
        print(f"error: {data} is missing (set DPO_EXP_SHARED_DATA to the shared data folder)", file=sys.stderr)
        return 2
    import torch

    with tempfile.TemporaryDirectory(prefix="memory_check_") as tmp:
        rows = [measure(name, args.quick, Path(tmp), data) for name in ("ddp", "fsdp")]
        if not args.quick:  # the evaluation pass inside train() (eval_strategy=epoch) is not in the estimate: shown
            evaluated = measure("ddp", False, Path(tmp), data, ("trainer.eval_strategy=epoch",))
            rows.append({**evaluated, "within_tolerance": None, "note": EVAL_NOTE})
    for row in rows:
        mib = {k: v / 2**20 for k, v in row["estimate"].items()}
        print(
            f"{' '.join([row['strategy'], *row['overrides']]):35} estimate {mib['total']:7.1f} MiB (params {mib['params']:.1f}, grads {mib['grads']:.1f}"
            f", optimizer {mib['optimizer']:.1f}, activations {mib['activations']:.1f}) measured peak "
            f"{max(row['measured_peak_per_process']) / 2**20:7.1f} MiB: {row['error']:+.1%}"
        )
    result = {
        "model": dict(a.split("=", 1) for a in shape(args.quick)),
        "device": "cpu",
        "precision": "fp32",
        "tolerance": TOLERANCE,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0 if all(r["within_tolerance"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
