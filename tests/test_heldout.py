"""Held-out data and comparisons: the held-out pool is what evaluation uses and every pair is counted; compare shows
what each run was judged on and draws one best-of-N curve per reference."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from .conftest import compose

PLACES = [  # where every raw pair of a single preference file ends up
    "train_dropped_empty",
    "train_dropped_identical",
    "train_dropped_ties",
    "train_dropped_too_long",
    "train_pairs",
    "train_unused_pairs",
    "eval_pairs",
    "eval_prompt_only_pairs",
    "eval_unused_pairs",
]


@pytest.mark.parametrize(
    "dataset,fixture,prompts",
    [("ultrafeedback", "ultrafeedback_file", 100), ("hh_rlhf", "hh_file", 100), ("hh_rlhf", "hh_file", 20)],
)
def test_heldout_pool_is_what_evaluation_samples_and_every_pair_is_counted(dataset, fixture, prompts, request):
    from dpo_exp.models import offline_gpt2_tokenizer
    from dpo_exp.tasks import build_task

    path = request.getfixturevalue(fixture)
    cfg = compose([f"dataset={dataset}", f"dataset.path={path}", "model=tiny_gpt2", f"eval.num_prompts={prompts}"])
    data = build_task(cfg).load(cfg, offline_gpt2_tokenizer())
    counts = data.counts
    assert sum(counts[k] for k in PLACES) == counts["train_raw"]  # nothing goes missing without a word
    distinct = len({r["prompt"] for r in data.train}) + len(data.eval_prompts)
    assert counts["eval_prompts"] == len(data.eval_prompts) <= max(prompts, 64)
    # every held-out prompt is sampled by evaluation (the tiny model's sampling cap is eval.num_prompts) ...
    assert counts["eval_unused_pairs"] == 0 and len(data.eval_prompts) >= min(prompts, len(data.eval))
    # ... and evaluation gets as many prompts as it asks for when the file holds them (not only eval_size's 64)
    expected = min(prompts if prompts > 64 else 64, round(0.1 * distinct))
    assert len(data.eval_prompts) == pytest.approx(expected, abs=2)
    assert len(data.eval) == min(64, counts["eval_pairs"])
    assert set(data.eval_references) == set(data.eval_prompts)  # the chosen response of each, for win_rate_vs_chosen
    assert not {r["prompt"] for r in data.train} & set(data.eval_prompts)


def test_ultrafeedback_sample_evaluates_on_the_24_pairs_that_were_dropped(ultrafeedback_file):
    """The issue's count: 24 of 1000 UltraFeedback pairs were held out but neither trained nor evaluated."""
    from dpo_exp.models import offline_gpt2_tokenizer
    from dpo_exp.tasks import build_task

    cfg = compose(["dataset=ultrafeedback", f"dataset.path={ultrafeedback_file}", "model=tiny_gpt2"])
    data = build_task(cfg).load(cfg, offline_gpt2_tokenizer())
    assert len(data.eval) == 64 and counts_sampled(data) == len(data.eval_prompts) > 64
    assert data.counts["eval_prompt_only_pairs"] == len(data.eval_prompts) - 64


def counts_sampled(data) -> int:
    return data.counts["eval_pairs"] + data.counts["eval_prompt_only_pairs"]


def write_run(run_dir: Path, overrides: dict[str, str], summary: dict) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {k}={v}\n" for k, v in overrides.items()))
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", **summary}))


def bon(ref: float, gain: float) -> dict:
    from dpo_exp.evaluation.best_of_n import analytic_kl

    out = {"eval/reward_reference": ref}
    for n in (1, 4):
        out.update({f"eval/bon_delta_{n}": gain * (n > 1), f"eval/bon_kl_{n}": analytic_kl(n)})
    return out


def test_compare_names_heldout_sets_and_judges_and_warns_when_they_differ(tmp_path: Path):
    from dpo_exp.compare.table import compare

    for i, (held, judge) in enumerate((("aaaa", "tfidf_logreg:k1"), ("bbbb", "tfidf_logreg:k2"))):
        summary = {
            "heldout": {"eval_prompts": held * 4, "eval_pairs": "p" * 16},
            "eval/judge_identity": judge,
            "eval/reward_scorer": "tfidf_logreg",
            "eval/reward_policy": 0.6,
            "eval/kl": 1.0,
        }
        write_run(tmp_path / str(i), {"seed": str(i + 1)}, summary)
    df = compare([tmp_path], console=False, plots=False)
    assert df["heldout"].nunique() == 2 and df["judge"].nunique() == 2 and df["judge"].str.startswith("tfidf").all()
    md = (tmp_path / "comparison.md").read_text()
    assert "2 different held-out sets" in md and "2 different judges" in md
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    assert "| heldout |" in header and "| judge |" in header  # both shown in the table


def test_compare_is_quiet_when_runs_share_heldout_set_and_judge(tmp_path: Path):
    from dpo_exp.compare.table import compare

    for i in range(2):
        summary = {"heldout": {"eval_prompts": "a" * 16, "eval_pairs": "b" * 16}, "eval/judge_identity": "j"}
        write_run(tmp_path / str(i), {"beta": str(0.1 * (i + 1))}, summary)
    compare([tmp_path], console=False, plots=False)
    assert "different" not in (tmp_path / "comparison.md").read_text()


@pytest.mark.parametrize("other,curves", [("seed", 2), ("lr", 1), ("model", 2), ("sft.max_steps", 2)])
def test_one_best_of_n_curve_per_reference(other: str, curves: int):
    """Lines whose reference differs (model, sft.*, seed) each get their own best-of-N; otherwise one, pooled."""
    from dpo_exp.compare.plots import plot_best_of_n_lines
    from dpo_exp.infra.plots import plt

    lines = [
        ("a", pd.DataFrame([{**bon(0.2, 0.1), "beta": 0.1}])),
        ("b", pd.DataFrame([{**bon(0.6, 0.3), "beta": 0.1}])),
    ]
    fig, ax = plt.subplots()
    plot_best_of_n_lines(ax, lines, [other])
    drawn = [line for line in ax.get_lines() if str(line.get_label()).startswith("best-of-N")]
    assert len(drawn) == curves
    tops = sorted(float(line.get_ydata()[-1]) for line in drawn)
    assert tops == (pytest.approx([0.3, 0.9]) if curves == 2 else pytest.approx([0.6]))  # not averaged across refs
    plt.close(fig)
