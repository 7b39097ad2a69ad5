"""How long the Rate tab takes to make a blind pair, on a finished run (the quickstart's, in the README).

    python -m dpo_exp experiment=quickstart hydra.run.dir=outputs/quickstart
    python benchmarks/bench_rate_pairs.py outputs/quickstart [--pairs 20]

Loads the run as `python -m dpo_exp.app` does and times `PairMaker.make` (both sides sampled under one seed with the
run's settings, scored by the run's judge; identical texts drawn again) for `--pairs` pairs after one warm-up pair,
then 20 pairs made one after another (the app makes the next pair while the rater reads, so a rater who reads each
pair for longer than that waits for nothing). Writes benchmarks/results/rate_pairs.json with the load average: on a
shared machine absolute times vary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from machine_info import machine

from dpo_exp.app.models import load_models
from dpo_exp.app.pairs import PairMaker
from dpo_exp.app.runs import find_runs

RESULTS = Path(__file__).resolve().parent / "results" / "rate_pairs.json"


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
    maker.make()  # warm-up: first-call costs (kernels, the scorer)
    pairs = [maker.make() for _ in range(args.pairs)]
    seconds = sorted(p.seconds for p in pairs)
    result = {
        "run": str(args.run),
        "run_name": runs[0].summary.get("name"),
        "pairs": len(pairs),
        "load_models_s": round(load_s, 2),
        "pair_s_median": round(statistics.median(seconds), 3),
        "pair_s_p90": round(seconds[int(0.9 * (len(seconds) - 1))], 3),
        "pair_s_max": round(seconds[-1], 3),
        "pairs_total_s": round(sum(seconds), 2),
        "redraws": sum(p.redraws for p in pairs),
        "identical_after_redraws": sum(p.left.text == p.right.text for p in pairs),
        "max_new_tokens": pairs[0].sampling["max_new_tokens"],
        "machine": machine(load_average_before=load_before, load_average_after=os.getloadavg()),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
