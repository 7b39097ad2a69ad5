"""A trained judge on human-preference data, and a beta sweep's reward-KL frontier under it (CPU, tiny model).

    python benchmarks/bench_preference_judge.py [--betas 0.1,0.5] [--data-size 64] [--prompts 32]

For each of the repository's samples (UltraFeedback sample.jsonl, HH-RLHF test.jsonl, one file each), one 2-job
beta sweep: `python -m dpo_exp -m dataset=<ds> model=tiny_gpt2 reward=trained_rm beta=...`, offline, no W&B. The
judge (conf/reward/trained_rm.yaml as shipped, a tiny GPT-2 reward model trained by RewardTrainer on 20% of the
training prompts, except reward.max_length=--judge-max-length) is trained by the first job and reused by the second; the DPO policy is the tiny GPT-2 built from its
seed (random weights, no warm start). Then `python -m dpo_exp.compare` draws the frontier. Records per dataset the
judge's held-out pair accuracy (on the run's held-out pairs, with a Wilson 95% interval) and per beta: reward
reference -> policy, delta with its bootstrap CI, KL, win rates (coupled and vs the dataset's chosen response),
implicit accuracy and wall time. Writes benchmarks/results/preference_judge.json and the frontier plots beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DPO_EXP_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {"ultrafeedback": DATA / "ultrafeedback" / "sample.jsonl", "hh_rlhf": DATA / "hh_rlhf" / "test.jsonl"}
KEYS = [
    "reward_reference",
    "reward_policy",
    "reward_delta",
    "reward_delta_ci_low",
    "reward_delta_ci_high",
    "significant",
    "kl",
    "kl_rb",
    "win_rate",
    "win_rate_ci_low",
    "win_rate_ci_high",
    "win_rate_vs_chosen",
    "win_rate_vs_chosen_ci_low",
    "win_rate_vs_chosen_ci_high",
    "reward_chosen",
    "implicit_accuracy",
    "num_prompts",
]

from machine_info import machine  # noqa: E402  (benchmarks/ is on sys.path when a script runs)


def wilson(p: float, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion p out of n."""
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def sweep(dataset: str, path: Path, args: argparse.Namespace, work: Path) -> dict:
    """One beta sweep with the trained judge; its summaries and compare's frontier."""
    out = work / dataset
    command = [
        sys.executable,
        "-m",
        "dpo_exp",
        "-m",
        f"dataset={dataset}",
        f"dataset.path={path}",
        "model=tiny_gpt2",
        "reward=trained_rm",
        f"beta={args.betas}",
        f"data_size={args.data_size}",
        f"epochs={args.epochs}",
        f"eval.num_prompts={args.prompts}",
        f"eval.num_samples={args.samples}",
        f"eval.max_new_tokens={args.new_tokens}",
        f"eval.best_of_n_prompts={args.bon_prompts}",
        "eval.best_of_n=[1,2,4]",
        "logger=none",
        "trainer.save_strategy=no",
        f"trainer.max_length={args.max_length}",
        f"reward.max_length={args.judge_max_length}",
        f"hydra.sweep.dir={out}",
        f"cache_dir={work / 'cache'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    started = time.time()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    seconds = time.time() - started
    subprocess.run([sys.executable, "-m", "dpo_exp.compare", str(out)], check=True, env=env, stdout=subprocess.DEVNULL)
    runs = []
    for job in sorted((p for p in out.iterdir() if (p / "summary.json").is_file()), key=lambda p: int(p.name)):
        s = json.loads((job / "summary.json").read_text())
        runs.append(
            {
                "beta": float(s["sweep"]["beta"]),
                **{k: s.get(f"eval/{k}") for k in KEYS},
                "wall_time_s": s.get("wall_time_s"),
            }
        )
    first = json.loads((out / "0" / "summary.json").read_text())
    accuracy, n = first["eval/judge_accuracy"], first["eval/judge_heldout"]
    low, high = wilson(accuracy, n)
    judge = first["eval/judge"]
    frontier = RESULTS / f"preference_judge_{dataset}_frontier.png"
    shutil.copyfile(out / "plots" / "reward_kl_frontier.png", frontier)
    return {
        "data": first["data"],
        "judge": {
            "heldout_accuracy": accuracy,
            "heldout_accuracy_ci95": [low, high],
            "heldout_pairs": n,
            "train_pairs": judge.get("train_pairs"),
            "train_loss": judge.get("train_loss"),
            "identity": first["eval/judge_identity"],
            "resolved": low > 0.5,
        },
        "runs": runs,
        "any_significant_delta": any(r["significant"] for r in runs),
        "frontier_plot": str(frontier.relative_to(ROOT)),
        "sweep_wall_time_s": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--betas", default="0.1,0.5")
    parser.add_argument("--data-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=128, help="trainer.max_length (prompt + response)")
    parser.add_argument("--judge-max-length", type=int, default=256, help="reward.max_length of the trained judge")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--bon-prompts", type=int, default=8)
    parser.add_argument("--datasets", default="ultrafeedback,hh_rlhf")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {"settings": vars(args), "machine": machine(), "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets.split(","):
            result = sweep(dataset, DATASETS[dataset], args, Path(tmp))
            results["datasets"][dataset] = result
            j = result["judge"]
            print(
                f"{dataset}: judge accuracy {j['heldout_accuracy']:.3f} [{j['heldout_accuracy_ci95'][0]:.3f}, "
                f"{j['heldout_accuracy_ci95'][1]:.3f}] on {j['heldout_pairs']} held-out pairs "
                f"({j['train_pairs']} training pairs); sweep {result['sweep_wall_time_s']:.0f} s"
            )
            (RESULTS / "preference_judge.json").write_text(json.dumps(results, indent=2) + "\n")  # after each
            for r in result["runs"]:
                print(
                    f"  beta {r['beta']}: reward {r['reward_reference']:.4f} -> {r['reward_policy']:.4f}, delta "
                    f"{r['reward_delta']:+.4f} [{r['reward_delta_ci_low']:+.4f}, {r['reward_delta_ci_high']:+.4f}]"
                    f" ({'significant' if r['significant'] else 'no resolved effect'}), KL {r['kl']:.2f}, "
                    f"win rate vs chosen {r['win_rate_vs_chosen']:.3f}"
                )
    (RESULTS / "preference_judge.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS / 'preference_judge.json'}")


if __name__ == "__main__":
    main()
