"""The Gradio app (issue 14) on a real tiny run: bad paths, the API through gradio_client, a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli, shared_file

PROMPT = "The movie was"


def _tiny_run_args(run_dir: Path) -> list[str]:
    hh = shared_file("hh_rlhf/test.jsonl")
    return [
        *FAST_MODEL,
        "lora=gpt2_attn",  # a LoRA run: the app loads one base model and an adapter per job
        *FAST_TRAINER,
        "dataset=hh_rlhf",
        f"dataset.path={hh}",
        "data_size=8",
        "epochs=1",
        "lr=5e-3",
        *APP_EVAL,
        f"hydra.run.dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A real completed LoRA run of the tiny GPT-2 (8 HH-RLHF pairs, one epoch, evaluated with VADER)."""
    cwd = tmp_path_factory.mktemp("app_run")
    proc = run_cli(_tiny_run_args(cwd / "run"), cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cwd / CLI_OUTPUT).write_text(proc.stdout + proc.stderr)  # what the user saw (test_a_run_prints_no_...)
    return cwd / "run"


CLI_OUTPUT = "cli_output.txt"


# the app tests' small evaluation (shared with tests/test_rate.py)
APP_EVAL = [
    "trainer.eval_strategy=no",
    "logger=none",
    "eval/reward=vader",
    "eval.num_prompts=4",
    "eval.num_samples=1",
    "eval.num_pairs=4",
    "eval.max_new_tokens=12",
    "eval.bootstrap=50",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(run: Path, log: Path, *extra: str) -> Iterator[str]:
    """`python -m dpo_exp.app RUN --server-port PORT [extra]` in a subprocess; yields its URL once it answers over
    HTTP, and stops it afterwards."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "dpo_exp.app", str(run), "--server-port", str(port), *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 400
    try:
        while True:
            assert proc.poll() is None, f"the app exited: {log.read_text()[-3000:]}"
            assert time.time() < deadline, f"the app did not answer in time: {log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def app_url(tiny_run: Path, tmp_path_factory):
    """The app on the tiny run, until the module's tests are done."""
    with serve_app(tiny_run, tmp_path_factory.mktemp("app_log") / "app.log") as url:
        yield url


# ---------------------------------------------------------------- bad input (fast: no model loads)


def test_a_path_that_is_not_a_completed_run_is_one_error_line_and_exit_2(tmp_path: Path):
    failed = tmp_path / "failed"
    (failed / "model").mkdir(parents=True)
    (failed / "summary.json").write_text(json.dumps({"status": "failed"}))
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    (no_model / "summary.json").write_text(json.dumps({"status": "completed"}))
    for path, message in (
        (failed, "status='failed'"),
        (no_model, "no model/ folder"),
        (tmp_path / "missing", "does not exist"),
        (tmp_path, "holds no completed run"),
    ):
        proc = run_cli([str(path)], tmp_path, module="dpo_exp.app", timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr
        assert "Traceback" not in proc.stderr and "loading" not in proc.stdout


# ---------------------------------------------------------------- the API, as a script would call it


@pytest.mark.slow
def test_client_gets_reference_and_policy_completions_with_scores_same_for_the_same_seed(app_url: str):
    from gradio_client import Client

    client = Client(app_url, verbose=False)

    def generate(seed: int, scorer: str = "run's scorer"):
        return client.predict(PROMPT, ["policy"], 1.0, 0, 1.0, 12, seed, scorer, api_name="/generate")

    reference, policy, scores = generate(7)
    assert reference.strip() and policy.strip()
    rows = {row[0]: row[1:] for row in scores["data"]}
    assert set(rows) == {"reference", "policy"}
    for model in ("reference", "policy"):
        assert isinstance(rows[model][0], float)  # the VADER score of that completion
    assert rows["reference"][1] == "n/a" and isinstance(rows["policy"][1], float)  # log pi - log pi_ref
    assert generate(7) == (reference, policy, scores)  # same seed: the very same completions and numbers
    assert generate(8)[0] != reference  # the seed is used
    unscored = generate(7, "none")  # a scorer picked in the UI: here none
    assert unscored[:2] == (reference, policy) and [r[1] for r in unscored[2]["data"]] == ["n/a", "n/a"]


# ---------------------------------------------------------------- a real browser


def _chromium() -> tuple[str, str]:
    """Debian's chromium and chromium-driver; CI fails loudly without them, elsewhere the test skips."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        message = (
            "headless browser test needs Debian's chromium and chromium-driver (apt-get install -y chromium "
            "chromium-driver; .ci/run installs them)"
        )
        if os.environ.get("CI") or os.environ.get("DPO_EXP_REQUIRE_SHARED_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    return browser, driver


def headless_chrome(height: int = 1000):
    """Debian's chromium through chromedriver, headless, with a 1400 x `height` window."""
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--window-size=1400,{height}")
    return webdriver.Chrome(service=Service(driver_path), options=options)


def _textarea_value(driver, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea").get_attribute("value") or ""


@pytest.mark.slow
def test_browser_types_a_prompt_clicks_generate_and_sees_both_completions(app_url: str, tmp_path_factory):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chrome(height=1100)
    try:
        driver.get(app_url)
        wait = WebDriverWait(driver, 300)
        prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        prompt.send_keys(PROMPT)
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda d: "policy" in d.find_element(By.ID, "scores").text)  # scored once the policy finished
        texts = [_textarea_value(driver, e) for e in ("out-reference", "out-policy-0")]
        assert all(t.strip() for t in texts)
        screenshot = tmp_path_factory.mktemp("screenshots") / "app.png"
        assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        print(f"screenshot: {screenshot}")
    finally:
        driver.quit()


# ---------------------------------------------------------------- a sweep folder: one reference, one adapter per job


@pytest.mark.slow
def test_a_sweep_folder_loads_every_completed_job_on_one_reference(tiny_run: Path, tmp_path: Path):
    from dpo_exp.app.generate import Sampling, compare_completions
    from dpo_exp.app.models import load_models
    from dpo_exp.app.runs import find_runs

    for job in ("0", "1"):
        shutil.copytree(tiny_run, tmp_path / job)
    (tmp_path / "2" / ".hydra").mkdir(parents=True)  # a job that failed: skipped, not an error
    (tmp_path / "2" / "summary.json").write_text(json.dumps({"status": "failed"}))
    runs = find_runs([tmp_path])
    assert [r.label for r in runs] == ["0", "1"] and all(r.prompts for r in runs)
    models = load_models(runs, "cpu")
    assert sorted(models.policies.values()) == ["default", "run1"]  # two adapters on one base model
    sampling = Sampling.defaults(runs[0].cfg)
    steps = list(compare_completions(models, runs[0].cfg, PROMPT, ["0", "1"], sampling))
    done = steps[-1]
    assert [c.model for c in done] == ["reference", "0", "1"] and all(c.finished for c in done)
    streamed = [step[-1].text for step in steps if not step[-1].finished and step[-1].model == "reference"]
    assert len(streamed) > 1 and streamed[-1] == done[0].text  # the text streamed in, ending as the completion
    assert done[1].text == done[2].text and done[1].log_ratio == pytest.approx(done[2].log_ratio)  # same weights
    assert done[1].log_ratio != 0.0  # the adapter is active when the policy is scored


# ---------------------------------------------------------------- issue 28: one line, not a traceback; what a user sees


def test_a_run_prints_no_checkpointing_future_warning_nor_wandb_offline_notice(tiny_run: Path):
    """The fixture's LoRA run, under WANDB_MODE=offline (conftest) with logger=none."""
    output = (tiny_run.parent / CLI_OUTPUT).read_text()
    assert "[dpo_exp] completed" in output
    for notice in ("gradient_checkpointing", "FutureWarning", "Running in WANDB offline mode"):
        assert notice not in output, notice


def test_a_run_the_app_cannot_load_is_one_error_line_before_any_model(tiny_run: Path, tmp_path: Path):
    from dpo_exp.app.runs import find_runs
    from dpo_exp.errors import UserError

    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_run, no_weights)
    (no_weights / "model" / "adapter" / "adapter_model.safetensors").unlink()
    started = time.perf_counter()
    proc = run_cli([str(no_weights)], tmp_path, module="dpo_exp.app", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "loading" not in proc.stdout, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "holds no adapter weights" in proc.stderr
    print(f"refused in {time.perf_counter() - started:.1f} s")
    sweep = tmp_path / "sweep"
    for job in ("0", "1", "2"):
        shutil.copytree(tiny_run, sweep / job)
    (sweep / "1" / ".hydra" / "config.yaml").write_text("model: [unclosed\n")
    (sweep / "2" / "summary.json").write_text('{"status": "completed", "eval/rew')  # cut short by a crash
    for job, needle in (("1", "config.yaml is unreadable"), ("2", "summary.json is unreadable: truncated")):
        with pytest.raises(UserError, match=needle):
            find_runs([sweep / job])
    assert [run.path.name for run in find_runs([sweep])] == ["0"]  # the sweep shows the readable job


def test_the_evaluation_table_leads_with_reward_delta_win_rate_kl_and_the_judge(tiny_run: Path):
    from dpo_exp.app.report import metrics_rows
    from dpo_exp.app.runs import find_runs

    keys = [key for key, _ in metrics_rows(find_runs([tiny_run])[0])]
    headline = [k for k in keys if k in ("eval/reward_delta", "eval/win_rate", "eval/kl", "eval/reward_scorer")]
    assert keys[:3] == ["eval/reward_delta", "eval/reward_delta_ci_low", "eval/reward_delta_ci_high"], keys[:6]
    assert headline == ["eval/reward_delta", "eval/win_rate", "eval/kl", "eval/reward_scorer"]
    assert keys.index("eval/reward_scorer") < 15 and any(k.startswith("eval/bon_") for k in keys)
    assert all(k.startswith("eval/bon_") for k in keys[keys.index(next(k for k in keys if "bon_" in k)) :])


@pytest.fixture(scope="module")
def unprompted(tiny_run: Path, tmp_path_factory):
    """The tiny run without its held-out prompts (eval_inputs.json), its runs and models loaded in-process."""
    from dpo_exp.app.models import load_models
    from dpo_exp.app.runs import find_runs

    run = tmp_path_factory.mktemp("unprompted") / "run"
    shutil.copytree(tiny_run, run)
    (run / "eval_inputs.json").unlink()
    runs = find_runs([run])
    assert runs[0].prompts == []
    return runs, load_models(runs, "cpu")


def test_the_rate_tab_without_held_out_prompts_says_so_in_the_page_and_records_nothing(unprompted):
    import gradio as gr

    from dpo_exp.app.pairs import PairMaker
    from dpo_exp.app.rate import Rating
    from dpo_exp.human.store import read_ratings

    runs, models = unprompted
    rating = Rating(runs, PairMaker(runs, models, 0))
    shown = rating.show("s")  # the page's first load: a message where the pair would be, no error
    assert "no held-out prompts" in shown[0] and "type a prompt" in shown[0] and shown[3] == ""
    with pytest.raises(gr.Error) as caught:
        rating.vote("s", "left", "ann", shown[3])
    assert "no held-out prompts" in caught.value.message and caught.value.print_exception is False
    assert read_ratings(runs[0].path) == []  # nothing recorded
    outputs, notice = rating.rate_own("s", "word " * 4000)  # 20,000 characters: far over the tiny context
    assert notice is not None and "its beginning was cut" in notice
    after = rating.vote("s", "left", "ann", outputs[3])
    assert len(read_ratings(runs[0].path)) == 1 and "no held-out prompts" in after[0]  # recorded, then no pair
    tally = after[4]
    assert "[95% CI" not in tally and "a 95% interval needs votes on 5 prompts: 4 more" in tally, tally
    rating.refresher.last.result()  # the human/* summary keys are written before the folder goes


def test_app_errors_reach_the_page_as_one_terminal_line(unprompted):
    import gradio as gr

    from dpo_exp.app.ui import make_generate_fn

    runs, models = unprompted
    generate = make_generate_fn(runs, models)
    for prompt, top_p, needle in (("", 0.9, "type a prompt"), ("Hello", 1.5, "top_p")):
        with pytest.raises(gr.Error) as caught:
            next(generate(prompt, ["policy"], 1.0, 0, top_p, 8, 0, "none"))
        assert needle in caught.value.message and caught.value.print_exception is False
