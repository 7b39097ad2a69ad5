"""`python -m dpo_exp.compare` on synthetic run directories (fast): tables, swept columns, plots, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dpo_exp.compare.plots import frontier_lines, frontier_x, frontier_xlabel
from dpo_exp.compare.runs import find_run_dirs, load_run, swept_params
from dpo_exp.compare.table import compare, last_epoch_means
from dpo_exp.errors import UserError

from .conftest import run_cli


def write_run(run_dir: Path, overrides: dict[str, str], summary: dict, metrics: list[dict] | None = None) -> Path:
    """A run directory as the pipeline writes it: .hydra/overrides.yaml, summary.json, metrics.jsonl."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {k}={v}\n" for k, v in overrides.items()))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if metrics is not None:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (run_dir / "wandb").mkdir()  # must not be mistaken for a run
    return run_dir


def curves(beta: float) -> list[dict]:
    rows = []
    for step in (1, 2, 3, 4):
        rows.append(
            {
                "split": "train",
                "step": step,
                "epoch": step / 2,
                "loss": 0.7 - 0.05 * step * beta,
                "rewards/accuracies": 0.5 + 0.1 * step,
                "rewards/margins": 0.1 * step * beta,
            }
        )
    rows.append(
        {"split": "eval", "step": 4, "epoch": 2, "loss": 0.65, "rewards/accuracies": 0.6, "rewards/margins": 0.2}
    )
    return rows


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A 2x2 beta x lr sweep (one failed job) plus an extra fixed override and a W&B-style eval block."""
    root = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    job = 0
    for beta in ("0.1", "0.5"):
        for lr in ("1e-4", "1e-3"):
            overrides = {"model": "tiny_gpt2", "data_size": "8", "beta": beta, "lr": lr}
            if (beta, lr) == ("0.5", "1e-3"):
                summary = {
                    "status": "failed",
                    "error": "NonFiniteError: non-finite loss at step 3",
                    "sweep": {"beta": beta, "lr": lr},
                }
                write_run(root / str(job), overrides, summary)
            else:
                b = float(beta)
                summary = {
                    "status": "completed",
                    "sweep": {"beta": beta, "lr": lr},
                    "loss": 0.7 - 0.2 * b,
                    "eval_loss": 0.66 - b / 10,
                    "rewards/accuracies": 0.9,
                    "eval_rewards/accuracies": 0.6 + b / 10,
                    "rewards/margins": 0.4 * b,
                    "eval_rewards/margins": 0.2 * b,
                    "eval/reward_policy": 0.55 + 0.05 / b,
                    "eval/reward_reference": 0.5,
                    "eval/kl": 1 / b,
                    "eval/kl_ci_low": 0.8 / b,
                    "eval/kl_ci_high": 1.2 / b,
                    "eval/win_rate": 0.6,
                    "eval/notes": "text is not a metric",
                    "ref_logps": {"cache": "reused" if job else "built"},
                }
                write_run(root / str(job), overrides, summary, curves(b))
            job += 1
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_finds_every_run_dir_and_the_swept_parameters(sweep: Path):
    dirs = find_run_dirs([sweep.parent.parent])  # searched recursively, wandb/ folders skipped
    assert [d.name for d in dirs] == ["0", "1", "2", "3"]
    assert swept_params([load_run(d) for d in dirs]) == ["beta", "lr"]  # model / data_size were not swept


def test_swept_parameters_come_from_differing_overrides_without_a_recorded_sweep(tmp_path: Path):
    a = write_run(tmp_path / "a", {"beta": "0.1", "lr": "1e-4", "seed": "1"}, {"status": "completed"})
    b = write_run(tmp_path / "b", {"beta": "0.1", "lr": "1e-4", "seed": "2"}, {"status": "completed"})
    assert swept_params([load_run(a), load_run(b)]) == ["seed"]


def test_compare_writes_csv_md_and_plots(sweep: Path, capsys):
    df = compare([sweep])
    csv = pd.read_csv(sweep / "comparison.csv")
    assert len(csv) == len(df) == 4
    assert list(csv.columns[:4]) == ["run", "beta", "lr", "status"]
    assert sorted(zip(csv["beta"], csv["lr"])) == [(0.1, 1e-4), (0.1, 1e-3), (0.5, 1e-4), (0.5, 1e-3)]
    ok = csv[csv["status"] == "completed"].set_index(["beta", "lr"])
    assert ok.loc[(0.5, 1e-4), "eval/loss"] == pytest.approx(0.61)  # W&B's name for TRL's eval_loss
    assert ok.loc[(0.1, 1e-4), "eval/rewards/accuracies"] == pytest.approx(0.61)
    assert ok.loc[(0.1, 1e-3), "eval/kl"] == pytest.approx(10.0)
    assert "eval/notes" not in csv.columns
    assert list(csv["ref_logps_cache"].fillna("-")) == ["built", "reused", "reused", "-"]

    md = (sweep / "comparison.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| run | beta | lr | status | train/loss (last-epoch mean) | eval/loss |")
    assert "eval/win_rate" in table[0] and "eval/kl" in table[0]
    assert len(table) == 1 + 4
    assert any("| 0.5 | 0.001 | failed |" in line for line in table)
    assert "NonFiniteError: non-finite loss at step 3" in md

    for png in ("learning_curves.png", "metrics_vs_beta.png", "metrics_vs_lr.png", "reward_kl_frontier.png"):
        assert (sweep / "plots" / png).stat().st_size > 5000, png
        assert f"plots/{png}" in md
    out = capsys.readouterr().out
    assert "failed" in out and "eval/loss" in out  # the console table


def test_runs_computed_with_other_cpu_threads_or_versions_are_noted(tmp_path: Path):
    """Another thread count or library version rounds differently (1 thread instead of 2 moved the IMDb headline's
    KL by 1.1 nats): compare says so, and keeps quiet when every run was computed alike."""
    from dpo_exp.infra.runinfo import environment

    env = environment()  # the record every run writes into summary.json

    def runs(root: Path, *variants: dict) -> Path:
        for i, variant in enumerate(variants):
            summary = {"status": "completed", "eval/kl": 1.0 + i, "environment": {**env, **variant}}
            write_run(root / str(i), {"seed": str(i)}, summary)
        return root

    alike = runs(tmp_path / "alike", {"torch_threads": 2, "gpu": None}, {"torch_threads": 2, "gpu": None})
    compare([alike], console=False, plots=False)
    assert "computed with" not in (alike / "comparison.md").read_text()
    assert set(pd.read_csv(alike / "comparison.csv")["computed_on"]) == {"cpu, 2 threads"}

    versions = {**env["versions"], "trl": "0.0.1"}
    mixed = runs(
        tmp_path / "mixed",
        {"torch_threads": 1, "gpu": None},
        {"torch_threads": 2, "gpu": None},
        {"torch_threads": 2, "gpu": None, "versions": versions},
    )
    compare([mixed], console=False, plots=False)
    md = (mixed / "comparison.md").read_text()
    assert "2 different devices or CPU thread counts (column `computed_on`: cpu, 1 thread; cpu, 2 threads)" in md
    assert "2 different library versions (column `software`:" in md and "trl 0.0.1" in md


def test_frontier_is_skipped_with_a_note_without_eval_metrics(tmp_path: Path):
    for i, beta in enumerate(("0.1", "1.0")):
        write_run(
            tmp_path / str(i),
            {"beta": beta},
            {"status": "completed", "loss": 0.6, "eval_loss": 0.7},
            curves(float(beta)),
        )
    compare([tmp_path], console=False)
    assert not (tmp_path / "plots" / "reward_kl_frontier.png").exists()
    assert "reward-KL frontier skipped" in (tmp_path / "comparison.md").read_text()
    assert (tmp_path / "plots" / "metrics_vs_beta.png").is_file()


def test_cli_accepts_several_run_dirs_and_an_output_folder(sweep: Path, tmp_path: Path):
    out = tmp_path / "report"
    proc = run_cli(
        [str(sweep / "0"), str(sweep / "2"), "--out", str(out), "--no-plots"], tmp_path, module="dpo_exp.compare"
    )
    assert proc.returncode == 0, proc.stderr
    csv = pd.read_csv(out / "comparison.csv")
    assert list(csv["beta"]) == [0.1, 0.5] and list(csv["lr"]) == [1e-4, 1e-4]  # the recorded sweep keys


def test_no_runs_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="no run directories"):
        compare([tmp_path])
    proc = run_cli([str(tmp_path)], tmp_path, module="dpo_exp.compare")
    assert proc.returncode == 2 and "no run directories" in proc.stderr and "Traceback" not in proc.stderr


def test_train_columns_are_the_mean_over_the_last_epoch(tmp_path: Path):
    """Two epochs of 3 logged steps each: the table shows the mean of epoch 2's steps, not the last step alone."""
    rows = [
        {"split": "train", "step": k, "epoch": k / 3, "loss": loss, "rewards/accuracies": acc}
        for k, (loss, acc) in enumerate(
            [(0.9, 0.1), (0.8, 0.2), (0.7, 0.3), (0.6, 0.4), (0.2, 1.0), (0.4, 0.7)], start=1
        )
    ]
    rows.append({"split": "eval", "step": 6, "epoch": 2.0, "loss": 5.0})  # eval rows never count
    run = write_run(tmp_path / "0", {"beta": "0.1"}, {"status": "completed", "loss": 0.4}, rows)
    assert last_epoch_means(load_run(run).metrics) == pytest.approx({"loss": 0.4, "rewards/accuracies": 0.7})
    # a run stopped mid-epoch (max_steps): the partial last epoch's steps
    assert last_epoch_means(rows[:4])["loss"] == pytest.approx(0.6)
    df = compare([tmp_path], console=False, plots=False)
    assert df.loc[0, "train/loss (last-epoch mean)"] == pytest.approx(0.4)
    assert df.loc[0, "train/rewards/accuracies (last-epoch mean)"] == pytest.approx(0.7)
    md = (tmp_path / "comparison.md").read_text()
    assert "train/loss (last-epoch mean)" in md and "mean over the logged steps of each run's last epoch" in md


def _frontier_run(root: Path, job: int, beta: str, lr: str, data_size: str, with_rb: bool = True) -> None:
    b, scale = float(beta), float(lr) * 1e4
    summary = {
        "status": "completed",
        "sweep": {"beta": beta, "lr": lr, "data_size": data_size},
        "eval/reward_policy": 0.5 + scale * 0.1 / b,
        "eval/reward_reference": 0.4 + 0.01 * int(data_size),
        "eval/kl": scale / b,
        "eval/kl_ci_low": 0.5 * scale / b,
        "eval/kl_ci_high": 1.5 * scale / b,
    }
    if with_rb:
        summary |= {
            "eval/kl_rb": 0.9 * scale / b,
            "eval/kl_rb_ci_low": 0.8 * scale / b,
            "eval/kl_rb_ci_high": scale / b,
        }
    write_run(root / str(job), {"beta": beta, "lr": lr, "data_size": data_size}, summary)


def test_reward_kl_frontier_is_one_line_per_combination_of_the_other_swept_keys(tmp_path: Path):
    """beta x lr x data_size: a frontier runs along beta only, one per (data_size, lr); x is eval/kl_rb, labelled."""
    job = 0
    for beta in ("0.5", "0.1", "1.0"):
        for lr in ("1e-4", "3e-4"):
            for data_size in ("8", "16"):
                _frontier_run(tmp_path, job, beta, lr, data_size)
                job += 1
    df = compare([tmp_path], console=False)
    assert frontier_x(df) == "eval/kl_rb"
    along, lines = frontier_lines(df, ["beta", "lr", "data_size"], "eval/kl_rb")
    assert along == "beta" and len(lines) == 4
    for _label, points in lines:
        assert len(points) == 3 and points["beta"].nunique() == 3  # each line: the three betas ...
        assert points["lr"].nunique() == 1 and points["data_size"].nunique() == 1  # ... and nothing else varies
        assert list(points["eval/kl_rb"]) == sorted(points["eval/kl_rb"])
    assert {label for label, _ in lines} == {
        "lr=0.0001,data_size=8",
        "lr=0.0003,data_size=8",
        "lr=0.0001,data_size=16",
        "lr=0.0003,data_size=16",
    }
    assert "eval/kl_rb" in frontier_xlabel("eval/kl_rb") and "Rao-Blackwell" in frontier_xlabel("eval/kl_rb")
    md = (tmp_path / "comparison.md").read_text()
    assert "x = eval/kl_rb" in md and "4 line(s)" in md
    assert (tmp_path / "plots" / "reward_kl_frontier.png").stat().st_size > 5000


def test_frontier_falls_back_to_the_monte_carlo_kl_and_says_so(tmp_path: Path):
    _frontier_run(tmp_path, 0, "0.1", "1e-4", "8", with_rb=True)
    _frontier_run(tmp_path, 1, "0.5", "1e-4", "8", with_rb=False)  # an older run without eval/kl_rb
    compare([tmp_path], console=False)
    md = (tmp_path / "comparison.md").read_text()
    assert "x = eval/kl (Monte-Carlo" in md and "1 line(s)" in md


def test_evaluation_reports_a_bootstrap_ci_for_kl_rb():
    """The frontier's x error bars: eval/kl_rb_ci_low/high, a percentile bootstrap over prompts like eval/kl's."""
    import numpy as np

    from dpo_exp.evaluation.metrics import SampleEval, reward_kl_metrics

    rng = np.random.default_rng(0)
    kl_rb = rng.gamma(2.0, 0.5, size=(40, 2))  # 40 prompts x 2 samples
    result = SampleEval(None, None, None, None, kl=kl_rb + rng.normal(0, 1, size=(40, 2)), kl_rb=kl_rb)
    out = reward_kl_metrics(result, resamples=500, seed=0)
    assert out["kl_rb_ci_low"] < out["kl_rb"] < out["kl_rb_ci_high"]
    half_width = 1.96 * kl_rb.mean(axis=1).std(ddof=1) / np.sqrt(40)  # the normal-theory interval, for scale
    assert out["kl_rb_ci_high"] - out["kl_rb_ci_low"] == pytest.approx(2 * half_width, rel=0.25)
    assert out["kl_rb_ci_high"] - out["kl_rb_ci_low"] < out["kl_ci_high"] - out["kl_ci_low"]  # lower variance


def test_frontier_draws_the_best_of_n_curve_beside_the_runs():
    """plot_best_of_n: (analytic KL, reference reward + best-of-N gain), averaged over the runs that report it."""
    from dpo_exp.compare.plots import plot_best_of_n
    from dpo_exp.evaluation.best_of_n import analytic_kl
    from dpo_exp.infra.plots import plt

    rows = []
    for ref in (0.50, 0.52):
        row = {"eval/kl": 1.0, "eval/reward_policy": 0.6, "eval/reward_reference": ref}
        for n, gain in ((1, 0.0), (4, 0.05), (16, 0.1)):
            row.update({f"eval/bon_delta_{n}": gain, f"eval/bon_kl_{n}": analytic_kl(n), f"eval/bon_reward_{n}": 0.0})
        rows.append(row)
    fig, ax = plt.subplots()
    assert plot_best_of_n(ax, pd.DataFrame(rows))
    line = ax.get_lines()[-1]
    assert list(line.get_xdata()) == pytest.approx([analytic_kl(1), analytic_kl(4), analytic_kl(16)])
    assert list(line.get_ydata()) == pytest.approx([0.51, 0.56, 0.61])
    fig2, ax2 = plt.subplots()
    assert not plot_best_of_n(
        ax2, pd.DataFrame([{"eval/kl": 1.0, "eval/reward_policy": 0.6, "eval/reward_reference": 0.5}])
    )  # no best-of-N: nothing drawn
    plt.close(fig)
    plt.close(fig2)
