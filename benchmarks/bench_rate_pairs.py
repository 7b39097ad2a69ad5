"""How long the Rate tab takes to make a blind pair, on a finished run (the quickstart's, in the README).

    python -m dpo_exp experiment=quickstart hydra.run.dir=outputs/quickstart
    python benchmarks/bench_rate_pairs.py outputs/quickstart [--pairs 20]

Loads the run as `python -m dpo_exp.app` does and times `PairMaker.make` (both sides sampled under one seed with the
run's settings, scored by the run's judge; identical texts drawn again) for `--pairs` pairs after one warm-up pair,
made one after another (the app makes the next pair while the rater reads, so a rater who reads each pair for
longer than that waits for nothing), with torch's default threads and again with one thread. Writes benchmarks/results/rate_pairs.json with the load average: on a
shared machine absolute times vary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from machine_info import machine

from dpo_exp.app.models import load_models
from dpo_exp.app.pairs import PairMaker
from dpo_exp.app.runs import find_runs

RESULTS = Path(__file__).resolve().parent / "results" / "rate_pairs.json"


def timed_pairs(maker: PairMaker, count: int) -> dict:
    maker.make()  # warm-up: first-call costs (kernels, the scorer)
    pairs = [maker.make() for _ in range(count)]
    seconds = sorted(p.seconds for p in pairs)
    return {
        "torch_threads": torch.get_num_threads(),
        "pair_s_median": round(statistics.median(seconds), 3),
        "pair_s_p90": round(seconds[int(0.9 * (len(seconds) - 1))], 3),
        "pair_s_max": round(seconds[-1], 3),
        "pairs_total_s": round(sum(seconds), 2),
        "redraws": sum(p.redraws for p in pairs),
        "identical_after_redraws": sum(p.left.text == p.right.text for p in pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a completed run folder")
    parser.add_argument("--pairs", type=int, default=20)
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    runs = find_runs([args.run])
    maker = PairMaker(runs, load_models(runs, "cpu"), side_seed=0)
    load_s = time.perf_counter() - started
    timings = [timed_pairs(maker, args.pairs)]  # torch's default threads (the app's)
    if torch.get_num_threads() > 1:
        torch.set_num_threads(1)  # one pair is too small to share across threads on a busy machine
        timings.append(timed_pairs(maker, args.pairs))
    result = {
        "run": args.run.name,  # the folder name only: no machine-specific path in the results
        "run_name": runs[0].summary.get("name"),
        "pairs": args.pairs,
        "max_new_tokens": maker.sampling.max_new_tokens,
        "load_models_s": round(load_s, 2),
        "timings": timings,
        "machine": machine(load_average_before=load_before, load_average_after=os.getloadavg()),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
