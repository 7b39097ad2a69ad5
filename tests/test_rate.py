"""People as judges in the app (issue 21), on a real tiny run: the Rate tab in a headless browser, two
gradio_client sessions voting at once, the export training a new run, and the votes of a sweep."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from dpo_exp.human.store import RATINGS_FILE

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli, shared_file
from .test_app import APP_EVAL, _textarea_value, headless_chrome, serve_app

# Full fine-tuning at a high learning rate: the policy moves far enough (KL ~1 nat) that its samples differ from
# the reference's under the same seed, so there is something to rate.
RUN_ARGS = [
    *FAST_MODEL,
    "lora=none",
    *FAST_TRAINER,
    "dataset=hh_rlhf",
    "data_size=8",
    "epochs=3",
    "lr=1e-1",
    *APP_EVAL,
]


@pytest.fixture(scope="module")
def rated_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("rate_run")
    hh = shared_file("hh_rlhf/test.jsonl")
    proc = run_cli([*RUN_ARGS, f"dataset.path={hh}", f"hydra.run.dir={cwd / 'run'}"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "run"


@pytest.fixture(scope="module")
def app_url(rated_run: Path, tmp_path_factory):
    """`python -m dpo_exp.app RUN --rate-seed 3` until it answers over HTTP."""
    with serve_app(rated_run, tmp_path_factory.mktemp("rate_log") / "app.log", "--rate-seed", "3") as url:
        yield url


def ratings(run: Path) -> list[dict]:
    path = run / RATINGS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def recomputed_win_rate(records: list[dict]) -> float:
    """The policy's share of each prompt's decided votes (tie 1/2), averaged over prompts: from the file alone."""
    by_prompt = defaultdict(list)
    for r in records:
        if r["choice"] in ("left", "right", "tie"):
            policy_side = "left" if r["left"]["model"] == "policy" else "right"
            by_prompt[r["prompt"]].append(1.0 if r["choice"] == policy_side else 0.5 if r["choice"] == "tie" else 0.0)
    return sum(sum(v) / len(v) for v in by_prompt.values()) / len(by_prompt)


# ---------------------------------------------------------------- a real browser


def _browser():
    return headless_chrome()


def _open_tab(driver, wait, name: str) -> None:
    """Click a tab's button (its elem_id + "-button"); gradio renders a tab's content once it is opened."""
    from selenium.webdriver.common.by import By

    wait.until(lambda d: d.find_elements(By.ID, f"tab-{name}-button"))[0].click()


def _cast_vote(driver, wait, number: int, choice: str, by_key: bool) -> dict:
    """One vote on the shown pair, by a click or a key; returns what the page showed and then revealed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    tally = driver.find_element(By.ID, "rate-tally")
    shown = {"left": _textarea_value(driver, "rate-left"), "right": _textarea_value(driver, "rate-right")}
    if by_key:
        key = {"left": "1", "right": Keys.ARROW_RIGHT, "tie": "t", "skip": "s"}[choice]
        driver.find_element(By.TAG_NAME, "body").send_keys(key)
    else:
        driver.find_element(By.ID, f"vote-{choice}").click()
    wait.until(lambda d: f"{number} votes" in tally.text)  # the tally moved on
    revealed = re.search(r"the left was (\S+), the right was (\S+)", tally.text)
    return {**shown, "choice": choice, "left_model": revealed.group(1), "right_model": revealed.group(2)}


@pytest.mark.slow
def test_browser_rates_8_pairs_by_click_and_key_and_the_evaluation_tab_shows_the_files_win_rate(
    app_url: str, rated_run: Path, tmp_path_factory
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    before = len(ratings(rated_run))
    driver = _browser()
    try:
        driver.get(app_url)
        wait = WebDriverWait(driver, 300)
        _open_tab(driver, wait, "rate")
        wait.until(lambda d: d.find_elements(By.ID, "rate-left") and _textarea_value(d, "rate-left").strip())
        rater = driver.find_element(By.CSS_SELECTOR, "#rater textarea, #rater input")
        rater.send_keys("alice")
        driver.find_element(By.ID, "rate-prompt").click()  # the focus leaves the text box: keys now vote
        screenshot = tmp_path_factory.mktemp("screenshots") / "rate_tab.png"
        assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        print(f"screenshot: {screenshot}")
        plan = [
            ("left", 0),
            ("right", 0),
            ("left", 0),
            ("tie", 0),
            ("right", 0),
            ("skip", 0),
            ("left", 1),
            ("right", 1),
        ]
        seen = [_cast_vote(driver, wait, before + i + 1, choice, bool(key)) for i, (choice, key) in enumerate(plan)]
        _open_tab(driver, wait, "evaluation")
        wait.until(lambda d: "human/win_rate" in d.find_element(By.ID, "human-metrics").text)
        page = driver.find_element(By.ID, "human-metrics").text
    finally:
        driver.quit()
    records = ratings(rated_run)
    new = records[before:]
    assert len(new) == 8
    for record, shown in zip(new, seen):
        assert record["choice"] == shown["choice"] and record["rater"] == "alice"
        for side in ("left", "right"):
            assert record[side]["text"].strip() == shown[side].strip()  # the texts the page showed ...
            assert record[side]["model"] == shown[f"{side}_model"]  # ... written by the models it revealed
        assert {record["left"]["model"], record["right"]["model"]} == {"policy", "reference"}
        assert record["seed"] is not None and record["sampling"]["max_new_tokens"] == 12 and record["version"]["runs"]
    assert len({r["left"]["model"] for r in new}) == 2  # the sides were randomised
    shown_rate = float(re.search(r"human/win_rate\s+([-0-9.]+)", page).group(1))
    assert shown_rate == pytest.approx(recomputed_win_rate(records), abs=1e-4)


# ---------------------------------------------------------------- two sessions at once


@pytest.fixture(scope="module")
def concurrent_votes(app_url: str, rated_run: Path) -> list[dict]:
    """Two gradio_client sessions vote 50 times each, at the same time; returns the records they added."""
    from gradio_client import Client

    before = len(ratings(rated_run))
    plan = ["left", "right", "right", "left", "tie", "left", "right", "skip", "left", "right"]
    errors = []

    def session(name: str) -> None:
        try:
            client = Client(app_url, verbose=False)
            pair = client.predict(api_name="/rate_pair")[3]
            for i in range(50):
                pair = client.predict(name, pair, api_name=f"/vote_{plan[i % len(plan)]}")[3]
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(name,)) for name in ("bob", "carol")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not errors, errors
    lines = (rated_run / RATINGS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines[before:]]  # every line is valid JSON


@pytest.mark.slow
def test_two_sessions_voting_50_times_each_at_once_leave_100_whole_records(concurrent_votes, rated_run: Path):
    assert len(concurrent_votes) == 100
    assert len({r["pair_id"] for r in concurrent_votes}) == 100
    by_rater = defaultdict(int)
    for r in concurrent_votes:
        by_rater[r["rater"]] += 1
    assert by_rater == {"bob": 50, "carol": 50}
    left = sum(r["left"]["model"] == "policy" for r in concurrent_votes)
    assert 25 <= left <= 75  # random sides: about half each way
    deadline = time.time() + 60  # the human/* summary keys are refreshed in the background
    while json.loads((rated_run / "summary.json").read_text()).get("human/ratings") != len(ratings(rated_run)):
        assert time.time() < deadline, "summary.json's human/* keys did not catch up with the ratings"
        time.sleep(0.5)
    summary = json.loads((rated_run / "summary.json").read_text())
    assert summary["status"] == "completed" and "eval/win_rate" in summary  # the run's own keys are kept
    assert summary["human/win_rate"] == pytest.approx(recomputed_win_rate(ratings(rated_run)))
    assert summary["human/rater/bob/votes"] == sum(
        r["choice"] != "skip" for r in concurrent_votes if r["rater"] == "bob"
    )
    assert 0 <= summary["human/judge_agreement"] <= 100 and summary["human/judge"] == "vader"


# ---------------------------------------------------------------- ratings train the next round


@pytest.mark.slow
def test_exported_votes_train_a_one_epoch_dpo_run_from_the_rated_policy(concurrent_votes, rated_run: Path, tmp_path):
    out = tmp_path / "human_pairs.jsonl"
    proc = run_cli(["export", str(rated_run), "--out", str(out)], tmp_path, module="dpo_exp.human", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    decided = [
        r for r in ratings(rated_run) if r["choice"] in ("left", "right") and r["left"]["text"] != r["right"]["text"]
    ]
    assert len(rows) == len(decided) > 20 and all(r["chosen"] != r["rejected"] for r in rows)
    args = [
        *FAST_MODEL,
        f"model.path={rated_run / 'model'}",  # start from the rated policy
        *FAST_TRAINER,
        "dataset=preference_files",
        f"dataset.path={out}",
        "dataset.eval_fraction=0.25",
        "epochs=1",
        "trainer.eval_strategy=no",
        "eval.enabled=false",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'next'}",
    ]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "next" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["data"]["train_pairs"] > 0
    assert summary["data"]["source"].endswith("human_pairs.jsonl")


# ---------------------------------------------------------------- a sweep: two policies, one leaderboard


@pytest.mark.slow
def test_a_sweep_rates_policies_against_each_other_and_fits_one_leaderboard(rated_run: Path, tmp_path: Path):
    from dpo_exp.app.models import load_models
    from dpo_exp.app.pairs import PairMaker
    from dpo_exp.app.rate import Rating
    from dpo_exp.app.runs import find_runs
    from dpo_exp.compare.table import compare

    for job in ("0", "1"):
        shutil.copytree(rated_run, tmp_path / job, ignore=shutil.ignore_patterns("human"))
    runs = find_runs([tmp_path])
    rating = Rating(runs, PairMaker(runs, load_models(runs, "cpu"), side_seed=0))
    for i in range(12):
        pair = rating.pair_for("s")
        rating.record("s", "left" if i % 3 else "right", "dana")
        rating.advance("s")
        assert pair.left.model != pair.right.model
    rating.refresher.request().result()
    between = [r for r in ratings(tmp_path / "0") if "reference" not in (r["left"]["model"], r["right"]["model"])]
    assert between and all(r in ratings(tmp_path / "1") for r in between)  # a vote of both policies: in both files
    for job in ("0", "1"):
        summary = json.loads((tmp_path / job / "summary.json").read_text())
        assert "human/bt_strength" in summary and summary["human/bt_strength_ci_low"] <= summary["human/bt_strength"]
    compare([tmp_path], console=False, plots=False)
    board = (tmp_path / "human_leaderboard.csv").read_text()
    assert all(model in board for model in ("reference", "0", "1"))
    assert "Human leaderboard" in (tmp_path / "comparison.md").read_text()
