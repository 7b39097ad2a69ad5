"""Shared sweep caches vs none: the same 4-job beta sweep twice, on the same machine, in the same invocation.

    python benchmarks/bench_sweep_cache.py [--betas 0.05,0.1,0.5,1.0] [--setup imdb|preference]

- cached: every job uses one `cache_dir`, so the first job builds what the sweep shares (SFT warm start,
  reward model, generated preference pairs, reference log-probs) and the other jobs reuse it;
- uncached: `cache_dir=<folder>/${hydra:job.num}`, a fresh cache per job, so every job builds everything.

Both sweeps run the default basic launcher (jobs one after another in one process), offline, no W&B, no
sampling-based evaluation. Prints both wall times and the ratio and writes benchmarks/results/sweep_cache.json
with each job's cache statuses and final losses (the two sweeps must train to the same numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DPO_EXP_SHARED_DATA", ROOT.parent / "shared" / "data"))

COMMON = [
    "model=tiny_gpt2",
    "lora=none",
    "epochs=1",
    "logger=none",
    "eval.enabled=false",
    "trainer.save_strategy=no",
    "trainer.per_device_train_batch_size=8",
    "trainer.per_device_eval_batch_size=16",
    "trainer.precompute_ref_log_probs=true",  # the reference log-probs are one of the shared caches
]
SETUPS = {
    # The DPO paper's IMDb pipeline in miniature: SFT warm start -> 4 samples per prompt -> TF-IDF reward -> pairs.
    "imdb": [
        "dataset=imdb_sentiment",
        f"dataset.path={DATA / 'imdb'}",
        "reward=tfidf_logreg",
        "data_size=48",
        "dataset.eval_size=16",
        "sft.enabled=true",
        "sft.max_steps=15",
        "sft.batch_size=16",
        "sft.num_texts=480",
        "sft.max_length=64",
        "generation.max_new_tokens=24",
        "generation.batch_size=48",
        "trainer.max_length=64",
    ],
    # Fixed preference pairs: only the reference log-probs are shared.
    "preference": [
        "dataset=hh_rlhf",
        f"dataset.path={DATA / 'hh_rlhf' / 'test.jsonl'}",
        "data_size=64",
        "dataset.eval_size=32",
        "trainer.max_length=128",
    ],
}


def run_sweep(folder: Path, cache_dir: str, overrides: list[str], betas: str) -> tuple[float, list[dict]]:
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TQDM_DISABLE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "dpo_exp",
        "-m",
        *COMMON,
        *overrides,
        f"beta={betas}",
        f"cache_dir={cache_dir}",
        f"hydra.sweep.dir={folder}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder.parent, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"sweep failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    jobs = []
    for job in sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        s = json.loads((job / "summary.json").read_text())
        jobs.append(
            {
                "job": int(job.name),
                "beta": (s.get("sweep") or {}).get("beta"),
                "status": s.get("status"),
                "wall_time_s": s.get("wall_time_s"),
                "loss": s.get("loss"),
                "eval_loss": s.get("eval_loss"),
                "caches": {
                    name: (s.get(name) or {}).get("cache")
                    for name in ("sft", "pairs", "ref_logps")
                    if isinstance(s.get(name), dict)
                },
                "reward_cache": (s.get("reward") or {}).get("cache") if isinstance(s.get("reward"), dict) else None,
            }
        )
    if any(j["status"] != "completed" for j in jobs):
        sys.exit(f"not every job completed: {jobs}")
    return wall, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betas", default="0.05,0.1,0.5,1.0")
    parser.add_argument("--setup", choices=sorted(SETUPS), default="imdb")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep_cache.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_sweep_cache_") as tmp:
        tmp = Path(tmp)
        overrides = SETUPS[args.setup]
        # Uncached first: the cached sweep then cannot profit from anything the first one left behind except the
        # OS page cache, which both share after this warm-up import.
        subprocess.run([sys.executable, "-c", "import dpo_exp.training.trainer, dpo_exp.pipeline"], check=True)
        uncached_wall, uncached = run_sweep(
            tmp / "uncached", str(tmp / "nocache") + "/${hydra:job.num}", overrides, args.betas
        )
        cached_wall, cached = run_sweep(tmp / "cached", str(tmp / "cache"), overrides, args.betas)

    same = all(a["loss"] == b["loss"] and a["eval_loss"] == b["eval_loss"] for a, b in zip(cached, uncached))
    result = {
        "benchmark": "sweep_cache",
        "setup": args.setup,
        "overrides": COMMON + SETUPS[args.setup],
        "betas": args.betas.split(","),
        "jobs": len(cached),
        "cached_wall_s": round(cached_wall, 1),
        "uncached_wall_s": round(uncached_wall, 1),
        "speedup": round(uncached_wall / cached_wall, 2),
        "same_final_losses": same,
        "cached_jobs": cached,
        "uncached_jobs": uncached,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{len(cached)}-job beta sweep ({args.setup}): shared caches {cached_wall:.1f} s, "
        f"no caches {uncached_wall:.1f} s, ratio {uncached_wall / cached_wall:.2f}x; "
        f"same final losses: {same}"
    )
    for a, b in zip(cached, uncached):
        print(f"  beta={a['beta']}: cached job {a['wall_time_s']} s {a['caches']} | uncached job {b['wall_time_s']} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
