"""End to end with a judge on human-preference data (slow): the issue's command on the HH sample ends with the
IMDb-style headline plus the judge's accuracy and the win rate against the chosen responses; a 2-job beta sweep on
the UltraFeedback sample draws its reward-KL frontier in compare."""

from __future__ import annotations

import json

import pytest

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli

JUDGED = [
    "model=tiny_gpt2",
    "reward=trained_rm",
    *FAST_MODEL,
    *FAST_TRAINER,
    "logger=none",
    "data_size=12",
    "dataset.eval_size=8",
    "epochs=1",
    "eval.num_prompts=8",
    "eval.num_samples=2",
    "eval.max_new_tokens=8",
    "eval.best_of_n=[1,2,4]",
    "eval.best_of_n_prompts=4",
    "eval.bootstrap=100",
    "reward.max_pairs=32",
    "reward.max_length=128",
    "reward.tiny.n_layer=1",
    "reward.tiny.n_embd=32",
    "reward.tiny.n_positions=128",
]


@pytest.mark.slow
def test_hh_run_with_a_trained_judge_ends_with_the_headline(tmp_path, hh_file):
    result = run_cli(["dataset=hh_rlhf", f"dataset.path={hh_file}", *JUDGED, "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for line in (
        "reward (trained_rm)",
        "win rate ",
        "KL(policy || reference)",
        "best-of-N from the reference",
        "judge (trained_rm) held-out accuracy",  # on the run's held-out pairs
        "win rate vs the dataset's chosen response",
    ):
        assert f"[dpo_exp] {line}" in out, (line, out[-2000:])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["objective"] == "eval/reward_delta"  # objective: auto with a judge
    assert 0.0 <= summary["eval/judge_accuracy"] <= 1.0 and summary["eval/judge_heldout"] == 8
    assert summary["eval/win_rate_vs_chosen_ci_low"] <= summary["eval/win_rate_vs_chosen"]
    assert summary["eval/win_rate_vs_chosen"] <= summary["eval/win_rate_vs_chosen_ci_high"]
    assert summary["eval/judge_identity"].startswith("trained_rm:") and summary["eval/judge"]["cache"] == "built"
    assert (tmp_path / "run" / "plots" / "reward_kl.png").is_file()


@pytest.mark.slow
def test_ultrafeedback_beta_sweep_draws_its_frontier(tmp_path, ultrafeedback_file):
    args = ["dataset=ultrafeedback", f"dataset.path={ultrafeedback_file}", *JUDGED, "eval.best_of_n_prompts=0"]
    result = run_cli(["-m", *args, "beta=0.1,0.5", "hydra.sweep.dir=sweep"], tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads((tmp_path / "sweep" / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert summaries[0]["eval/judge"]["cache"] == "built"  # trained once for the sweep: one judge for both
    assert summaries[0]["eval/judge_identity"] == summaries[1]["eval/judge_identity"]
    compared = run_cli(["sweep"], tmp_path, module="dpo_exp.compare")
    assert compared.returncode == 0, compared.stderr[-3000:]
    md = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "reward_kl_frontier" in md and "one line along beta" in md and "different" not in md
    assert (tmp_path / "sweep" / "plots" / "reward_kl_frontier.png").stat().st_size > 5000
