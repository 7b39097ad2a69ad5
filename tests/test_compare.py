"""`python -m dpo_exp.compare` on synthetic run directories (fast): tables, swept columns, plots, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from .conftest import run_cli

from dpo_exp.compare import compare, find_run_dirs, swept_params, load_run
from dpo_exp.errors import UserError


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
        rows.append({"split": "train", "step": step, "epoch": step / 2, "loss": 0.7 - 0.05 * step * beta,
                     "rewards/accuracies": 0.5 + 0.1 * step, "rewards/margins": 0.1 * step * beta})
    rows.append({"split": "eval", "step": 4, "epoch": 2, "loss": 0.65, "rewards/accuracies": 0.6,
                 "rewards/margins": 0.2})
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
                summary = {"status": "failed", "error": "NonFiniteError: non-finite loss at step 3",
                           "sweep": {"beta": beta, "lr": lr}}
                write_run(root / str(job), overrides, summary)
            else:
                b = float(beta)
                summary = {
                    "status": "completed", "sweep": {"beta": beta, "lr": lr}, "loss": 0.7 - 0.2 * b,
                    "eval_loss": 0.66 - b / 10, "rewards/accuracies": 0.9, "eval_rewards/accuracies": 0.6 + b / 10,
                    "rewards/margins": 0.4 * b, "eval_rewards/margins": 0.2 * b,
                    "eval/reward_policy": 0.55 + 0.05 / b, "eval/reward_reference": 0.5, "eval/kl": 1 / b,
                    "eval/kl_ci_low": 0.8 / b, "eval/kl_ci_high": 1.2 / b, "eval/win_rate": 0.6,
                    "eval/notes": "text is not a metric", "ref_logps": {"cache": "reused" if job else "built"},
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
    assert ok.loc[(0.5, 1e-4), "eval/loss"] == pytest.approx(0.61)          # W&B's name for TRL's eval_loss
    assert ok.loc[(0.1, 1e-4), "eval/rewards/accuracies"] == pytest.approx(0.61)
    assert ok.loc[(0.1, 1e-3), "eval/kl"] == pytest.approx(10.0)
    assert "eval/notes" not in csv.columns
    assert list(csv["ref_logps_cache"].fillna("-")) == ["built", "reused", "reused", "-"]

    md = (sweep / "comparison.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| run | beta | lr | status | train/loss | eval/loss |")
    assert "eval/win_rate" in table[0] and "eval/kl" in table[0]
    assert len(table) == 1 + 4
    assert any("| 0.5 | 0.001 | failed |" in line for line in table)
    assert "NonFiniteError: non-finite loss at step 3" in md

    for png in ("learning_curves.png", "metrics_vs_beta.png", "metrics_vs_lr.png", "reward_kl_frontier.png"):
        assert (sweep / "plots" / png).stat().st_size > 5000, png
        assert f"plots/{png}" in md
    out = capsys.readouterr().out
    assert "failed" in out and "eval/loss" in out  # the console table


def test_frontier_is_skipped_with_a_note_without_eval_metrics(tmp_path: Path):
    for i, beta in enumerate(("0.1", "1.0")):
        write_run(tmp_path / str(i), {"beta": beta}, {"status": "completed", "loss": 0.6, "eval_loss": 0.7},
                  curves(float(beta)))
    compare([tmp_path], console=False)
    assert not (tmp_path / "plots" / "reward_kl_frontier.png").exists()
    assert "reward-KL frontier skipped" in (tmp_path / "comparison.md").read_text()
    assert (tmp_path / "plots" / "metrics_vs_beta.png").is_file()


def test_cli_accepts_several_run_dirs_and_an_output_folder(sweep: Path, tmp_path: Path):
    out = tmp_path / "report"
    proc = run_cli([str(sweep / "0"), str(sweep / "2"), "--out", str(out), "--no-plots"], tmp_path,
                   module="dpo_exp.compare")
    assert proc.returncode == 0, proc.stderr
    csv = pd.read_csv(out / "comparison.csv")
    assert list(csv["beta"]) == [0.1, 0.5] and list(csv["lr"]) == [1e-4, 1e-4]  # the recorded sweep keys


def test_no_runs_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="no run directories"):
        compare([tmp_path])
    proc = run_cli([str(tmp_path)], tmp_path, module="dpo_exp.compare")
    assert proc.returncode == 2 and "no run directories" in proc.stderr and "Traceback" not in proc.stderr


def test_frontier_draws_the_best_of_n_curve_beside_the_runs():
    """plot_best_of_n: (analytic KL, reference reward + best-of-N gain), averaged over the runs that report it."""
    from dpo_exp.compare import plot_best_of_n
    from dpo_exp.evaluation.best_of_n import analytic_kl
    from dpo_exp.plots import plt

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
    assert not plot_best_of_n(ax2, pd.DataFrame([{"eval/kl": 1.0, "eval/reward_policy": 0.6,
                                                   "eval/reward_reference": 0.5}]))  # no best-of-N: nothing drawn
    plt.close(fig)
    plt.close(fig2)
