"""How cost grows with data: wall time and peak RSS of whole `python -m dpo_exp` runs at growing data sizes (CPU).

    python benchmarks/bench_scaling.py [--quick] [--sentiment 64,256,1024] [--preference 256,1024,4096]

Two experiments, each run as a fresh process with a fresh cache, one size after the other:

- sentiment: `dataset=imdb_sentiment` on ../shared/data/imdb (prompts -> sampling -> vader scores -> best-vs-worst
  pairs -> DPO), SFT off, `data_size` = number of training prompts.
- preference: `dataset=preference_files` on a temporary file of N pairs built from ../shared/data/hh_rlhf/test.jsonl
  (cycled, each copy numbered so the pairs stay distinct), `data_size` = number of training pairs.

Both use a tiny GPT-2 (2 layers, width 64), 1 epoch, short sequences and a fixed-size evaluation, so what grows
with N is the per-pair work. Peak RSS is the largest resident set of the process tree (sampled every 0.2 s).
The table shows seconds per item; linear growth keeps it roughly flat (fixed start-up costs make it fall), and the
marginal cost of an extra item between consecutive sizes stays flat (it would rise with a quadratic step).
`--quick` runs the two smaller sizes of each. Results: benchmarks/results/scaling.json.
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

import psutil
from machine_info import machine

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DPO_EXP_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results" / "scaling.json"
COMMON = [
    "model=tiny_gpt2",
    "model.tiny.n_layer=2",
    "model.tiny.n_embd=64",
    "model.tiny.n_head=2",
    "model.tiny.n_positions=128",
    "logger=none",
    "epochs=1",
    "trainer.save_strategy=no",
    "trainer.per_device_train_batch_size=16",
    "trainer.eval_strategy=no",
    "lora=none",
    "lr=1e-4",
]
SENTIMENT = [
    "dataset=imdb_sentiment",
    "reward=vader",
    "sft.enabled=false",
    "generation.max_new_tokens=16",
    "generation.num_samples=4",
    "trainer.max_length=32",
    "eval.num_prompts=16",
    "eval.num_samples=2",
    "eval.num_pairs=16",
    "dataset.eval_size=16",
]
PREFERENCE = ["dataset=preference_files", "trainer.max_length=96", "dataset.eval_size=16", "eval.enabled=false"]


def preference_file(n: int, folder: Path) -> Path:
    """N distinct pairs from the hh_rlhf sample (cycled, numbered), as one jsonl the `files` loader reads."""
    from dpo_exp.data.preference import split_hh_dialogue

    rows = [json.loads(line) for line in (SHARED / "hh_rlhf" / "test.jsonl").read_text().splitlines()]
    pairs = []
    for i in range(n + n // 4 + 16):  # extra rows: the loader holds some out for evaluation and drops ties
        row = rows[i % len(rows)]
        pair = split_hh_dialogue(row["chosen"], row["rejected"])
        pairs.append(
            {
                "prompt": f"[{i}] " + pair["prompt"][-200:],
                "chosen": pair["chosen"][:200],
                "rejected": pair["rejected"][:200],
            }
        )
    path = folder / f"pairs_{n}.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def run(args: list[str], cwd: Path) -> dict:
    env = {
        **os.environ,
        "DPO_EXP_CACHE": str(cwd / ".cache"),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": str(ROOT),
        "TOKENIZERS_PARALLELISM": "false",
    }
    start = time.perf_counter()
    log = cwd / "output.log"  # a file, not a pipe: a pipe nobody drains fills up and blocks the run's progress bars
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dpo_exp", *args, f"hydra.run.dir={cwd / 'run'}"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        peak = 0
        parent = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = parent.memory_info().rss + sum(c.memory_info().rss for c in parent.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.2)
    output = log.read_text()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"seconds": seconds, "peak_rss_mb": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the two smaller sizes of each experiment")
    parser.add_argument("--sentiment", default="64,256,1024")
    parser.add_argument("--preference", default="256,1024,4096")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--merge", action="store_true", help="keep the runs of --out not repeated now")
    args = parser.parse_args()
    sizes = {
        "sentiment": [int(x) for x in args.sentiment.split(",") if x],
        "preference": [int(x) for x in args.preference.split(",") if x],
    }
    if args.quick:
        sizes = {k: v[:2] for k, v in sizes.items()}
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        tmp = Path(tmp)
        for experiment, ns in sizes.items():
            for n in ns:
                cwd = tmp / f"{experiment}_{n}"
                cwd.mkdir()
                if experiment == "sentiment":
                    overrides = [*COMMON, *SENTIMENT, f"dataset.path={SHARED / 'imdb'}", f"data_size={n}"]
                else:
                    overrides = [*COMMON, *PREFERENCE, f"dataset.path={preference_file(n, cwd)}", f"data_size={n}"]
                out = run(overrides, cwd)
                row = {"experiment": experiment, "data_size": n, **out, "seconds_per_item": out["seconds"] / n}
                rows.append(row)
                print(f"  {experiment:10s} {n:5d}  {out['seconds']:7.1f} s  {out['peak_rss_mb']:7.0f} MB", flush=True)
    if args.merge and args.out.is_file():
        done = {(r["experiment"], r["data_size"]) for r in rows}
        old = [r for r in json.loads(args.out.read_text())["runs"] if (r["experiment"], r["data_size"]) not in done]
        rows = sorted(old + rows, key=lambda r: (r["experiment"] != "sentiment", r["data_size"]))
        sizes = {e: sorted({r["data_size"] for r in rows if r["experiment"] == e}) for e in ("sentiment", "preference")}
    growth = {}
    for experiment in sizes:
        mine = [r for r in rows if r["experiment"] == experiment]
        if len(mine) >= 2:
            a, b = mine[0], mine[-1]
            growth[experiment] = {
                "size_ratio": b["data_size"] / a["data_size"],
                "time_ratio": b["seconds"] / a["seconds"],
                "rss_ratio": b["peak_rss_mb"] / a["peak_rss_mb"],
                # the cost of each extra item between consecutive sizes: flat = linear, rising = super-linear
                "marginal_s_per_item": [
                    (y["seconds"] - x["seconds"]) / (y["data_size"] - x["data_size"]) for x, y in zip(mine, mine[1:])
                ],
            }

    result = {
        "machine": machine(load_average_before=load_before, load_average_after=os.getloadavg()[0]),
        "settings": {"common": COMMON, "sentiment": SENTIMENT, "preference": PREFERENCE},
        "runs": rows,
        "growth_first_to_last": growth,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n  {'experiment':10s} {'size':>5s} {'wall s':>8s} {'s/item':>8s} {'peak RSS MB':>12s}")
    for r in rows:
        print(
            f"  {r['experiment']:10s} {r['data_size']:5d} {r['seconds']:8.1f} {r['seconds_per_item']:8.3f} "
            f"{r['peak_rss_mb']:12.0f}"
        )
    for experiment, g in growth.items():
        print(
            f"  {experiment}: {g['size_ratio']:.0f}x the data -> {g['time_ratio']:.1f}x the time, "
            f"{g['rss_ratio']:.2f}x the peak RSS; marginal s/item between sizes: "
            + ", ".join(f"{m:.3f}" for m in g["marginal_s_per_item"])
        )
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; written to {args.out}")


if __name__ == "__main__":
    main()
