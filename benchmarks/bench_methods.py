"""The DPO paper's comparison on one reward-KL frontier (issue 24): every training method at 3 settings of its KL
knob on the IMDb test reviews, the tiny IMDb preset's scale, with best-of-N beside them.

    python benchmarks/bench_methods.py [--quick] [--only dpo,rloo,...] [--data FILE] [--work DIR]

Each method is one sweep of `python -m dpo_exp -m experiment=imdb_tiny method=<m> <knob>=a,b,c` (the warm start and
the task's pairs are built once and reused from the shared cache); the script draws one frontier line per sweep with
best-of-N from the reference beside them (`python -m dpo_exp.compare WORK/multirun/*` gives the full table).
Written to benchmarks/results/methods.json (per run: gain with 95% CI, independent-draw and per-prompt win rates with
CIs, KL, minutes) and benchmarks/results/methods_frontier.png. `--quick` (make bench): 32 prompts, a few steps, one
setting per method: a smoke run of the whole comparison, written to methods_quick.json / methods_quick_frontier.png
(not the README's figures). A finished run directory is skipped on a rerun with the same --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from bench_sentiment_effect import run  # one CLI runner for the benchmarks (offline, W&B off)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DPO_EXP_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"  # methods.json + methods_frontier.png (--quick: methods_quick.*)

# sweep name -> (method, its swept knob as Hydra overrides, extra overrides). beta is the KL knob of dpo, online_dpo and
# rloo; Preferred-FT has none (epochs stand in); iterative DPO is one run of 3 rounds at the default beta, each
# round's policy evaluated (rounds 1, 2, 3 are its 3 points; round 1 is plain DPO at beta 0.1). `rloo_tuned` is RLOO
# at the setting chosen on the *train* reviews (an H200 probe, benchmarks/results/methods_gpu.json: lr 5e-4 and 4
# epochs moved the policy far more than DPO's lr 1e-4 and 1 epoch); its betas were not tuned on these test reviews.
SWEEPS = {
    "dpo": ("dpo", ["beta=0.05,0.1,0.5"], []),
    "dpo_ipo": ("dpo", ["beta=0.05,0.1,0.5"], ["trainer.loss_type=ipo"]),
    "preferred_ft": ("preferred_ft", ["epochs=1,2,4"], ["~hydra.sweeper.params.beta"]),  # not imdb_tiny's beta sweep
    "rloo": ("rloo", ["beta=0.01,0.05,0.2"], []),
    "rloo_tuned": ("rloo", ["beta=0.01,0.02,0.05"], ["lr=5e-4", "method.args.num_train_epochs=4"]),
    "online_dpo": ("online_dpo", ["beta=0.05,0.1,0.5"], []),
    "iterative_dpo": ("iterative_dpo", ["method.rounds=3"], ["beta=0.1"]),
    # issue 32: the methods current papers compare DPO with. KTO on each pair split into a desirable and an
    # undesirable row (beta its KL knob); ORPO's beta is its lambda (odds-ratio weight, paper 0.1-0.25) and SimPO's its
    # reward scale (paper 2-2.5): reference-free, they move the policy as the knob grows, and are measured against the
    # same warm-start reference; GRPO's beta is the KL coefficient, as RLOO's.
    "kto": ("kto", ["beta=0.05,0.1,0.5"], []),
    "orpo": ("orpo", ["beta=0.1,0.25,0.5"], []),
    "simpo": ("simpo", ["beta=1.0,2.0,2.5"], []),
    "grpo": ("grpo", ["beta=0.01,0.05,0.2"], []),
    # issue 32's done-when command as it stands: `-m experiment=imdb_tiny method=dpo,kto,orpo,simpo,grpo`, every
    # method at the preset's own beta sweep (0.05, 0.1, 0.5, 1) with one judge; its rows are named by method.
    "five": ("dpo,kto,orpo,simpo,grpo", [], []),
}
QUICK = ["data_size=32", "trainer.max_steps=4", "sft.max_steps=20", "eval.num_prompts=16", "eval.best_of_n_prompts=8"]
KEYS = [  # eval/<key> of summary.json; win_rate: P(policy sample beats reference sample), independent draws, ties 1/2
    *(f"{k}{ci}" for k in ("reward_delta", "win_rate", "kl_rb") for ci in ("", "_ci_low", "_ci_high")),
    *(f"{k}{ci}" for k in ("win_rate_coupled", "win_rate_prompt_coupled") for ci in ("", "_ci_low", "_ci_high")),
    "reward_policy",
    "reward_reference",
    "tie_rate",
]


def figures(run_dir: Path) -> list[dict]:
    """One run's figures from its summary.json: one entry, or one per round of an iterative DPO run (earlier rounds'
    eval/ keys are in summary["rounds"]; the last round's are the run's own; minutes are the whole run's)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    out = {"run": str(run_dir), "sweep": summary.get("sweep"), "method": (summary.get("method") or {}).get("name")}
    out["torch_threads"] = (summary.get("environment") or {}).get("torch_threads")  # CPU rounding depends on it
    out.update({k: summary.get(f"eval/{k}") for k in KEYS})
    wall = float(summary.get("wall_time_s") or 0)
    shared = sum(float(summary.get(f"timing/{k}_s") or 0) for k in ("sft", "pairs"))  # built once per sweep
    out["wall_minutes"] = round(wall / 60, 2)
    out["minutes"] = round((wall - shared) / 60, 2)  # the run itself, the warm start and task pairs cached
    out["train_minutes"] = round(float(summary.get("timing/train_s") or 0) / 60, 2)
    out["best_of_n"] = {k: v for k, v in summary.items() if k.startswith(("eval/bon_", "eval/reward_reference"))}
    rounds = summary.get("rounds") or []
    earlier = [{**out, **{k: r.get(f"eval/{k}") for k in KEYS}, "round": r["round"]} for r in rounds[:-1]]
    return [*earlier, {**out, "round": len(rounds)} if rounds else out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke scale: one setting per method, a few steps")
    parser.add_argument("--only", default=",".join(SWEEPS), help="comma-separated subset of " + ",".join(SWEEPS))
    parser.add_argument("--data", default=str(DATA / "imdb" / "test.jsonl"), help="labelled reviews {text, label}")
    parser.add_argument("--work", default=None, help="work folder (default: a fresh temporary one)")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: read the finished runs of WORK/multirun/<sweep>/ (and --also), then judge, plot, tabulate",
    )
    parser.add_argument(
        "--also",
        default="",
        help="comma list of more folders under WORK/multirun whose runs join the (one) --only sweep: a sweep split "
        "over two processes by its knob's values (e.g. five_b for `beta=0.5,1` run beside five)",
    )
    parser.add_argument("--out", default=None, help="results file stem (default: methods, --quick: methods_quick)")
    parser.add_argument(
        "--second-judge",
        default="vader",
        help="an eval/reward option that re-scores a copy of each sweep's highest-reward run ('' = none): does the "
        "gain hold under a judge the policy was not trained on?",
    )
    args = parser.parse_args()
    stem = args.out or ("methods_quick" if args.quick else "methods")  # a smoke run keeps the README's figures
    out = RESULTS / f"{stem}.json"
    work = Path(args.work or f"/tmp/bench_methods_{int(time.time())}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    threads = os.environ.get("OMP_NUM_THREADS", "torch default")  # each run's own count: its torch_threads
    results: dict = {"quick": args.quick, "data": args.data, "machine": platform.platform(), "threads": threads}
    results["runs"] = []
    sweeps = []
    for name in args.only.split(","):
        method, knob, extra = SWEEPS[name]
        if args.quick:
            knob = ["method.rounds=2"] if name == "iterative_dpo" else [knob[0].split(",")[0]] if knob else ["beta=0.1"]
        sweep_dir = work / "multirun" / name
        sweeps.append(sweep_dir)
        common = ["-m", "experiment=imdb_tiny", f"dataset.path={args.data}", "logger=none", f"method={method}"]
        started = time.time()
        if not args.collect:
            run(
                [*common, *knob, *extra, *(QUICK if args.quick else []), f"hydra.sweep.dir={sweep_dir}"],
                work,
                work / ".cache",
            )
            print(f"{name}: {(time.time() - started) / 60:.1f} min", flush=True)
        parts = [sweep_dir, *(work / "multirun" / extra_dir for extra_dir in args.also.split(",") if extra_dir)]
        finished = [p.parent for d in parts for p in d.glob("*/summary.json")]
        results["runs"] += [
            {"name": entry["method"] if "," in method else name, **entry}  # a sweep over methods: a line each
            for d in sorted(finished, key=lambda d: (d.parent.name, int(d.name) if d.name.isdigit() else 0))
            if json.loads((d / "summary.json").read_text()).get("status") == "completed"
            for entry in figures(d)
        ]
        save(results, out)
    if args.second_judge:
        results["second_judge"] = second_judge(results["runs"], args.second_judge, work)
    results["load_average_at_end"] = os.getloadavg()
    plot(results["runs"], out.with_name(out.stem + "_frontier.png"))
    save(results, out)
    out.with_suffix(".md").write_text(table(results))
    print(table(results))
    print(f"wrote {out} and {out.with_suffix('.md').name}")


def table(results: dict) -> str:
    """The README's table: one row per run (per round of an iterative run), then the second judge's rows."""

    def ci(r: dict, key: str, fmt: str) -> str:
        value, low, high = (r.get(f"{key}{s}") for s in ("", "_ci_low", "_ci_high"))
        if value is None:
            return "-"
        return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]" if low is not None else f"{value:{fmt}}"

    lines = [
        "| sweep | setting | reward delta [95% CI] | win rate, independent draws [95% CI] | same-seed per-sample win "
        "rate | KL_RB nats [95% CI] | minutes* |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        setting = " ".join(f"{k}={v}" for k, v in (r.get("sweep") or {}).items() if k != "method") + (
            f" round {r['round']}" if r.get("round") else ""
        )
        lines.append(
            f"| {r['name']} | {setting} | {ci(r, 'reward_delta', '+.3f')} | {ci(r, 'win_rate', '.2f')} | "
            f"{ci(r, 'win_rate_coupled', '.2f')} | {ci(r, 'kl_rb', '.1f')} | {r['minutes']:.1f} |"
        )
    lines.append("\n*per run, with the sweep's shared warm start and task pairs cached (the first run builds them)")
    if results.get("second_judge"):
        lines += [
            "",
            "| sweep (its highest-reward run) | trained judge's delta | second judge | its delta [95% CI] | "
            "its win rate [95% CI] |",
            "|---|---|---|---|---|",
        ]
        for name, r in results["second_judge"].items():
            lines.append(
                f"| {name} ({Path(r['run']).name}) | {r['trained_judge_reward_delta']:+.3f} | {r['judge']} | "
                f"{ci(r, 'reward_delta', '+.3f')} | {ci(r, 'win_rate', '.2f')} |"
            )
    return "\n".join(lines) + "\n"


def second_judge(runs: list[dict], judge: str, work: Path) -> dict:
    """Each sweep's highest-reward run re-evaluated, on a copy of its folder, with the `judge` eval/reward option
    (the same held-out prompts, seed and sampling, so the same samples): its reward delta and win rate under a judge
    it was not trained on. An iterative run is judged at its last round (the policy its folder holds)."""
    import shutil

    keys = ("reward_delta", "reward_delta_ci_low", "reward_delta_ci_high", "win_rate", "win_rate_ci_low")
    out = {}
    for name in dict.fromkeys(r["name"] for r in runs):
        finals = {r["run"]: r for r in runs if r["name"] == name}  # the last entry per folder: its final policy
        best = max(finals.values(), key=lambda r: r["reward_delta"] if r["reward_delta"] is not None else -1e9)
        copy, done = work / "second_judge" / name, work / "second_judge" / f"{name}.{judge}.done"
        if not done.exists() or done.read_text() != best["run"]:
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(best["run"], copy)
            run([f"run_dir={copy}", f"eval/reward={judge}", "wandb=false"], work, work / ".cache", "dpo_exp.evaluate")
            done.write_text(best["run"])
        summary = json.loads((copy / "summary.json").read_text())
        out[name] = {"run": best["run"], "judge": judge, "trained_judge_reward_delta": best["reward_delta"]}
        out[name].update({k: summary.get(f"eval/{k}") for k in (*keys, "win_rate_ci_high", "kl_rb")})
    return out


def plot(runs: list[dict], path: Path) -> None:
    """One reward-KL line per benchmarked sweep (KL_RB with 95% CIs), best-of-N from the reference beside them."""
    import pandas as pd

    from dpo_exp.compare.plots import plot_best_of_n
    from dpo_exp.infra.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, group) in enumerate(pd.DataFrame(runs).groupby("name", sort=False)):
        group = group.dropna(subset=["kl_rb", "reward_policy"]).sort_values("kl_rb")
        xerr = [group["kl_rb"] - group["kl_rb_ci_low"], group["kl_rb_ci_high"] - group["kl_rb"]]
        label = f"{name} (rounds)" if "round" in group and group["round"].notna().any() else name
        ax.errorbar(group["kl_rb"], group["reward_policy"], xerr=xerr, fmt="o-", capsize=3, color=f"C{i}", label=label)
    plot_best_of_n(ax, pd.DataFrame([{**r["best_of_n"], "eval/kl": r["kl_rb"]} for r in runs]))
    ax.set_xscale("symlog", linthresh=1.0)  # linear below 1 nat (best-of-N, the online methods), log above (IPO)
    ax.set_xlabel("KL(policy || reference), nats (eval/kl_rb; linear below 1, log above)")
    ax.set_ylabel("reward of policy samples")
    ax.set_title("methods on one reward-KL frontier (IMDb test reviews, tiny GPT-2)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def save(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
