"""Human ratings without a model (issue 21): the store's atomic appends, the statistics, the export (all fast)."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pytest

from dpo_exp.evaluation.llm_judge import estimate
from dpo_exp.evaluation.stats import bootstrap_indices, mean_ci
from dpo_exp.human.bradley_terry import leaderboard
from dpo_exp.human.export import preference_rows
from dpo_exp.human.stats import judge_agreement, win_rate
from dpo_exp.human.store import RATINGS_FILE, RatingStore, read_many, read_ratings
from dpo_exp.human.summary import human_metrics
from dpo_exp.infra.storage import update_json
from dpo_exp.judges.human_votes import NO_VOTE, HumanVotes

from .conftest import run_cli


def vote(prompt: str, left: str, right: str, choice: str, rater: str = "ann", pair_id: str | None = None, **judge):
    pair_id = pair_id or f"{prompt}|{left}|{right}|{choice}|{rater}|{np.random.default_rng().integers(1 << 62)}"
    return {
        "vote_id": pair_id,
        "pair_id": pair_id,
        "rater": rater,
        "choice": choice,
        "prompt": prompt,
        "left": {"model": left, "text": f"{left} on {prompt}", "judge_score": judge.get("left_score")},
        "right": {"model": right, "text": f"{right} on {prompt}", "judge_score": judge.get("right_score")},
    }


# ---------------------------------------------------------------- the store


def _append_many(run_dir: str, worker: int, count: int) -> None:
    store = RatingStore(run_dir)
    for i in range(count):
        record = vote(f"prompt {i}", "reference", "policy", "left", rater=f"w{worker}", pair_id=f"{worker}-{i}")
        record["left"]["text"] = "x" * 20_000  # far over PIPE_BUF: a non-atomic writer would interleave
        assert store.append(record)
        assert not store.append(record)  # the same pair again: recorded once
        assert not RatingStore(run_dir).append({**record, "vote_id": "other"})  # even from another store


def test_four_processes_appending_at_once_lose_and_duplicate_nothing(tmp_path: Path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(tmp_path), w, 40)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    lines = (tmp_path / RATINGS_FILE).read_text().splitlines()
    assert len(lines) == 160
    records = [json.loads(line) for line in lines]  # every line is one whole JSON record
    assert len({r["pair_id"] for r in records}) == 160
    assert all(r["left"]["text"] == "x" * 20_000 for r in records)


def test_a_write_torn_by_a_crash_leaves_a_readable_file_and_the_next_vote_whole(tmp_path: Path):
    store = RatingStore(tmp_path)
    assert store.append(vote("p1", "reference", "policy", "left", pair_id="a"))
    whole = json.dumps(vote("p2", "reference", "policy", "right", pair_id="b")).encode()
    with open(tmp_path / RATINGS_FILE, "ab") as handle:
        handle.write(whole[: len(whole) // 2])  # the process died in the middle of this line
    assert [r["pair_id"] for r in read_ratings(tmp_path)] == ["a"]
    assert RatingStore(tmp_path).append(vote("p3", "policy", "reference", "tie", pair_id="c"))
    assert [r["pair_id"] for r in read_ratings(tmp_path)] == ["a", "c"]


def test_a_vote_between_two_policies_in_both_files_counts_once(tmp_path: Path):
    record = vote("p", "beta=0.1", "beta=0.5", "left")
    for run in ("a", "b"):
        RatingStore(tmp_path / run).append(record)
    assert len(read_many([tmp_path / "a", tmp_path / "b"])) == 1


def test_concurrent_summary_updates_keep_every_key(tmp_path: Path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"status": "completed", "human/stale": 1}))

    def update(i: int) -> None:
        for j in range(10):
            update_json(path, {f"k{i}_{j}": j})

    threads = [threading.Thread(target=update, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = update_json(path, {"human/win_rate": 0.5}, drop_prefix="human/")
    assert result["status"] == "completed" and "human/stale" not in result and result["human/win_rate"] == 0.5
    assert all(f"k{i}_{j}" in result for i in range(4) for j in range(10))


# ---------------------------------------------------------------- statistics


def test_win_rate_is_the_mean_over_prompts_of_the_policy_share_whichever_side_it_was_on():
    records = [
        vote("p1", "reference", "policy", "right"),  # policy wins
        vote("p1", "policy", "reference", "right"),  # policy loses
        vote("p2", "policy", "reference", "tie"),  # half
        vote("p2", "reference", "policy", "skip"),  # not counted
        vote("p3", "policy", "reference", "left"),  # policy wins
    ]
    result = win_rate(records, resamples=200)
    assert result.rate == pytest.approx((0.5 + 0.5 + 1.0) / 3) and result.votes == 4 and result.prompts == 3
    assert result.low <= result.rate <= result.high
    metrics = human_metrics(records)
    assert metrics["human/votes"] == 4 and metrics["human/skips"] == 1 and metrics["human/rater/ann/votes"] == 4


def test_win_rate_intervals_cover_the_true_value_at_about_the_nominal_rate():
    """300 simulated rating sessions (30 prompts x 3 votes, prompts of varying difficulty, 10 % ties): the 95 %
    bootstrap interval over prompts holds the true expected win rate in about 95 % of them."""
    rng = np.random.default_rng(0)
    truth = 0.1 * 0.5 + 0.9 * 0.65  # ties score 1/2; otherwise the policy wins with the prompt's p (mean 0.65)
    covered = 0
    for sim in range(300):
        records = []
        for prompt in range(30):
            p = rng.beta(6.5, 3.5)
            for _ in range(3):
                choice = "tie" if rng.random() < 0.1 else ("left" if rng.random() < p else "right")
                records.append(vote(f"p{prompt}", "policy", "reference", choice))
        result = win_rate(records, resamples=400, seed=sim)
        covered += result.low <= truth <= result.high
    assert 0.90 <= covered / 300 <= 0.99, covered / 300


def simulated_votes(strengths: dict[str, float], n: int, seed: int, prompts: int = 60) -> list[dict]:
    rng = np.random.default_rng(seed)
    names = sorted(strengths)
    records = []
    for i in range(n):
        a, b = rng.choice(names, size=2, replace=False)
        p_left = 1 / (1 + np.exp(strengths[b] - strengths[a]))
        records.append(vote(f"p{i % prompts}", a, b, "left" if rng.random() < p_left else "right"))
    return records


def test_bradley_terry_recovers_the_order_and_size_of_known_strengths():
    strengths = {"reference": 0.0, "weak": -0.8, "good": 0.6, "best": 1.4}
    board = leaderboard(simulated_votes(strengths, 1200, seed=1), resamples=30)
    assert [row.model for row in board] == ["best", "good", "reference", "weak"]
    for row in board:
        assert row.strength == pytest.approx(strengths[row.model], abs=0.3)
        assert row.low <= row.strength <= row.high
    assert next(r for r in board if r.model == "reference").strength == 0.0  # the anchor


def test_bradley_terry_intervals_cover_the_true_strength_at_about_the_nominal_rate():
    """60 simulated vote sets (240 votes on 60 prompts, three models): each non-anchor strength's 95 % interval
    holds the truth in about 95 % of them (seen: 0.87-0.97), and the intervals are not trivially wide."""
    strengths = {"reference": 0.0, "policy": 0.7, "other": -0.4}
    covered = {m: 0 for m in strengths if m != "reference"}
    widths = []
    sims = 60
    for sim in range(sims):
        board = {row.model: row for row in leaderboard(simulated_votes(strengths, 240, seed=100 + sim), resamples=50)}
        for model in covered:
            covered[model] += board[model].low <= strengths[model] <= board[model].high
            widths.append(board[model].high - board[model].low)
    for model, hits in covered.items():
        assert 0.85 <= hits / sims <= 1.0, (model, hits / sims)
    assert float(np.mean(widths)) < 1.0


def test_agreement_with_the_judge_in_percent_and_cohens_kappa():
    agree = [
        vote(f"p{i}", "policy", "reference", c, left_score=s[0], right_score=s[1])
        for i, (c, s) in enumerate(
            [("left", (0.9, 0.1)), ("right", (0.1, 0.5)), ("tie", (0.3, 0.3)), ("left", (0.4, 0.2))]
        )
    ]
    result = judge_agreement(agree)
    assert result.percent == 100.0 and result.kappa == pytest.approx(1.0) and result.votes == 4
    disagree = [
        vote(f"p{i}", "policy", "reference", c, left_score=s[0], right_score=s[1])
        for i, (c, s) in enumerate(
            [("left", (0.1, 0.9)), ("right", (0.5, 0.1)), ("left", (0.9, 0.1)), ("right", (0.1, 0.9))]
        )
    ]
    result = judge_agreement(disagree)
    assert result.percent == 50.0 and result.kappa == pytest.approx(0.0)
    assert judge_agreement([vote("p", "policy", "reference", "left")]) is None  # no judge scores stored


# ---------------------------------------------------------------- people through the pairwise-judge interface


def test_votes_read_as_a_pairwise_judge_in_both_orders_and_an_unvoted_pair_says_so(tmp_path: Path):
    store = RatingStore(tmp_path)
    for left, right, choice in (
        ("policy", "reference", "left"),  # a (the policy's text) shown left and preferred
        ("reference", "policy", "tie"),
        ("reference", "policy", "right"),  # a shown right and preferred
        ("policy", "reference", "skip"),  # counts nowhere
    ):
        assert store.append(vote("p1", left, right, choice, rater=f"{left}-{choice}"))
    judge = HumanVotes.from_runs([tmp_path])
    a, b = "policy on p1", "reference on p1"
    (forward,) = judge.compare(["p1"], [a], [b])
    assert sorted((v["order"], v["answer"]) for v in forward.votes) == [("ab", "a"), ("ba", "a"), ("ba", "tie")]
    assert forward.scores == (1.0, 0.5, 1.0) and forward.score == pytest.approx(2.5 / 3)
    assert (forward.verdict_ab, forward.verdict_ba) == ("a", None)  # "ba" holds a tie and a win: no one verdict
    assert forward.raw_ab == "policy-left: a" and forward.failures == 0
    (backward,) = judge.compare(["p1"], [b], [a])  # the same pair asked the other way round: mirrored
    assert sorted((v["order"], v["answer"]) for v in backward.votes) == [("ab", "b"), ("ab", "tie"), ("ba", "b")]
    assert backward.score == pytest.approx(1 - forward.score) and (backward.verdict_ab, backward.verdict_ba) == (
        None,
        "b",
    )
    (nobody,) = judge.compare(["p1"], [a], ["an unrated text"])
    assert nobody.votes == [] and nobody.raw_ab == nobody.raw_ba == NO_VOTE and nobody.failures == 2
    found = estimate([forward, nobody], [0, 1], [0.0, 0.0], 50, 0)  # counted, not dropped
    assert (
        found["pairs"] == 2 and found["parse_failures"] == 2 and found["win_rate"] == pytest.approx((2.5 / 3 + 0.5) / 2)
    )
    before = judge.identity()
    store.append(vote("p2", "policy", "reference", "left"))
    assert HumanVotes.from_runs([tmp_path]).identity() != before  # a new vote: a new identity


def _old_win_rate(records: list[dict], resamples: int, seed: int) -> tuple[float, float, float, int, int]:
    """The human win rate as dpo_exp computed it before the judge interface: per prompt, in first-vote order."""
    by_prompt: dict[str, list[float]] = {}
    for r in records:
        models = (r["left"]["model"], r["right"]["model"])
        if r["choice"] in ("left", "right", "tie") and models.count("reference") == 1:
            score = {"left": 1.0, "right": 0.0, "tie": 0.5}[r["choice"]]
            by_prompt.setdefault(r["prompt"], []).append(score if models[1] == "reference" else 1.0 - score)
    per_prompt = np.array([np.mean(v) for v in by_prompt.values()])
    rate, low, high = mean_ci(per_prompt, bootstrap_indices(len(per_prompt), resamples, seed))
    return rate, low, high, sum(map(len, by_prompt.values())), len(per_prompt)


def test_the_summary_win_rate_through_the_judge_equals_the_old_estimate(tmp_path: Path):
    """Votes recorded through the store (repeat votes on a pair, second samples, a vote between two policies, skips,
    and votes on two identical texts, told apart by the model names): the human summary, now read through
    HumanVotes and the LLM judge's estimator, reports exactly what the per-vote code did."""
    rng = np.random.default_rng(3)
    store = RatingStore(tmp_path)
    for i in range(240):
        left, right = rng.choice(["policy", "reference", "other"], size=2, replace=False)
        record = vote(
            f"p{rng.integers(20)}", left, right, str(rng.choice(["left", "right", "tie", "skip"])), pair_id=str(i)
        )
        sample = f" (sample {rng.integers(2)})"  # several votes on one pair, and a prompt's second pair
        record["left"]["text"] += sample
        record["right"]["text"] += sample
        if i % 40 == 0:
            record["left"]["text"] = record["right"]["text"] = "the same text"
        store.append(record)
    records = read_ratings(tmp_path)
    metrics = human_metrics(records)
    rate, low, high, votes, prompts = _old_win_rate(records, 1000, 0)
    assert (metrics["human/win_rate"], metrics["human/win_rate_ci_low"], metrics["human/win_rate_ci_high"]) == (
        rate,
        low,
        high,
    )
    assert (metrics["human/votes"], metrics["human/prompts"]) == (votes, prompts)
    assert win_rate(records, resamples=300, seed=4).low == _old_win_rate(records, 300, 4)[1]


# ---------------------------------------------------------------- export


def test_export_keeps_decided_votes_as_chosen_rejected_and_drops_ties_skips_and_identical_pairs():
    same = vote("p4", "policy", "reference", "left")
    same["right"]["text"] = same["left"]["text"]
    rows, counts = preference_rows(
        [
            vote("p1", "policy", "reference", "left"),
            vote("p2", "policy", "reference", "right"),
            vote("p3", "policy", "reference", "tie"),
            vote("p3", "policy", "reference", "skip"),
            same,
        ]
    )
    assert [(r["prompt"], r["chosen_model"], r["rejected_model"]) for r in rows] == [
        ("p1", "policy", "reference"),
        ("p2", "reference", "policy"),
    ]
    assert rows[0]["chosen"] == "policy on p1" and rows[0]["rejected"] == "reference on p1"
    assert (counts.ties, counts.skips, counts.identical) == (1, 1, 1)


def test_export_cli_bad_input_is_one_error_line_and_exit_2(tmp_path: Path):
    RatingStore(tmp_path / "rated").append(vote("p", "policy", "reference", "tie"))
    for args, message in (
        ([str(tmp_path / "missing"), "--out", "x.jsonl"], "is not a folder"),
        ([str(tmp_path), "--out", "x.txt"], "use one of"),
        ([str(tmp_path), "--out", "x.jsonl"], "no decided votes"),
    ):
        proc = run_cli(["export", *args], tmp_path, module="dpo_exp.human", timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and message in proc.stderr


# ---------------------------------------------------------------- compare and the W&B sweep summary


def test_compare_and_the_wandb_sweep_summary_show_human_numbers_and_the_leaderboard(tmp_path: Path):
    from .test_compare import write_run
    from .wandb_records import offline_runs, records

    root = tmp_path / "sweep"
    strengths = {"reference": 0.0, "beta=0.1": 0.8, "beta=0.5": 0.2}
    votes = simulated_votes(strengths, 90, seed=5, prompts=30)
    for job, beta in enumerate(("0.1", "0.5")):
        label = f"beta={beta}"
        mine = [r for r in votes if label in (r["left"]["model"], r["right"]["model"])]
        run = write_run(root / str(job), {"beta": beta}, {"status": "completed", "group": "g", "sweep": {"beta": beta}})
        for record in mine:
            RatingStore(run).append(record)
        (run / "summary.json").write_text(
            json.dumps({**json.loads((run / "summary.json").read_text()), **human_metrics(mine)})
        )
    proc = run_cli([str(root), "--wandb"], root, module="dpo_exp.compare", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pandas as pd

    table = pd.read_csv(root / "comparison.csv")
    for job in (0, 1):
        summary = json.loads((root / str(job) / "summary.json").read_text())
        assert table.loc[job, "human/win_rate"] == pytest.approx(summary["human/win_rate"])
        assert table.loc[job, "human/votes"] == summary["human/votes"]
    assert "human/win_rate" in (root / "comparison.md").read_text()  # a shown column
    board = pd.read_csv(root / "human_leaderboard.csv")
    assert list(board["model"]) == ["beta=0.1", "beta=0.5", "reference"]  # the known order
    (offline,) = offline_runs(root)
    history = next(r["history"]["item"] for r in records(offline) if r.get("type") == "history")
    assert history["sweep/human_leaderboard._type"] == "table-file"
    assert history["sweep/human_leaderboard.nrows"] == 3
