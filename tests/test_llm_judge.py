"""The pairwise LLM judge (issue 31): both orders asked, parse failures counted, the cache, the estimators' coverage
and length control in seeded simulations, a real OpenAI-compatible server (`transformers serve`), bad input.

The judges are tiny chat models (dpo_exp.models.tiny, chatml) whose last layer is set so that greedy decoding
always answers one fixed token: "B" (a judge with a pure position bias: it prefers whatever is shown second) or
"Maybe" (an answer without a verdict). Real models, real generation, real parsing; known answers.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from dpo_exp.errors import UserError
from dpo_exp.evaluation.llm_judge import RECORDS_FILE, estimate, length_controlled
from dpo_exp.judges.llm import answer_texts, build_llm_judge, chat_prompt_ids, check_llm_judge, check_llm_judge_settings
from dpo_exp.judges.pairwise import PairVerdict, load_template, parse_verdict, render

from .conftest import FAST_MODEL, FAST_TRAINER, compose, run_cli, shared_file


def _judge_folder(path: Path, answer: str | None, chat: bool = True, positions: int = 4096) -> Path:
    """A tiny GPT-2 chat model saved to `path` that greedily answers `answer` at every step (None: untouched)."""
    import torch

    from dpo_exp.models.tiny import build_tiny, tiny_tokenizer

    tiny = OmegaConf.create(
        {"architecture": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": positions}
        | ({"chat_template": "chatml"} if chat else {})
    )
    model, tokenizer = build_tiny(tiny, 0), tiny_tokenizer(tiny)
    if answer is not None:
        token = tokenizer.convert_tokens_to_ids(answer)
        with torch.no_grad():  # the final hidden state is a constant e_0; only `token` has weight on it
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.zero_()
            model.transformer.ln_f.bias[0] = 1.0
            model.transformer.wte.weight[:, 0] = 0.0
            model.transformer.wte.weight[token, 0] = 10.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    root = tmp_path_factory.mktemp("judges")
    return {
        "second": _judge_folder(root / "second", "B"),
        "unparsed": _judge_folder(root / "unparsed", "Maybe"),
        "no_chat": _judge_folder(root / "no_chat", None, chat=False),
    }


def _block(**model) -> OmegaConf:
    base = {"path": None, "base_url": None, "name": None, "api_key_env": "DPO_EXP_TEST_KEY", "timeout_s": 5}
    return OmegaConf.create(
        {
            "enabled": True,
            "model": {**base, **model},
            "template": "dpo_pairwise",
            "max_pairs": 50,
            "batch_size": 4,
            "max_new_tokens": 1,
            "vs_chosen": True,
        }
    )


# ---------------------------------------------------------------- parsing and templates


def test_verdicts_parse_from_both_shipped_formats_and_failures_stay_none():
    assert parse_verdict("Comparison: A is vague, B answers.\nMore helpful: B") == "B"
    assert parse_verdict("Output: (a)") == "A" and parse_verdict(' "B" ') == "B"
    assert parse_verdict("More helpful: A ... on reflection, More helpful: B") == "B"  # the last one counts
    assert parse_verdict("Both are fine.") is None and parse_verdict("") is None and parse_verdict("AB") is None
    for name in ("dpo_pairwise", "alpaca_eval"):
        text = render(load_template(name), "Q?", "first answer", "second answer")
        assert "Q?" in text and text.index("first answer") < text.index("second answer") and "{" not in text


def test_score_is_a_win_only_when_both_orders_agree():
    assert PairVerdict("", "", "a", "a").score == 1.0 and PairVerdict("", "", "b", "b").score == 0.0
    assert PairVerdict("", "", "a", "b").score == 0.5 and PairVerdict("", "", "a", None).score == 0.5
    assert not PairVerdict("", "", None, None).consistent


# ---------------------------------------------------------------- the estimators, simulated


def test_win_rate_interval_covers_the_true_rate_about_95_percent_of_the_time():
    """Prompts with their own P(both orders prefer the policy) and P(both prefer the other), 2 pairs each; the
    true win rate is the population mean of q + (1 - q - r) / 2. The prompt-bootstrap 95% interval covers it in
    about 95% of 300 seeded replications."""
    rng = np.random.default_rng(0)
    q_mean, r_mean = 0.5, 0.2  # the truth is 0.5 + 0.3 / 2 = 0.65
    truth = q_mean + (1 - q_mean - r_mean) / 2
    covered, reps, n_prompts = 0, 200, 40
    for rep in range(reps):
        q = rng.beta(5, 5, n_prompts)  # mean 0.5
        r = (1 - q) * rng.beta(2, 3, n_prompts)  # mean 0.5 x 0.4 = 0.2, and q + r <= 1
        verdicts, ids = [], []
        for i in range(n_prompts):
            for _ in range(2):
                u = rng.random()
                ab, ba = ("a", "a") if u < q[i] else ("b", "b") if u < q[i] + r[i] else ("a", "b")
                verdicts.append(PairVerdict("", "", ab, ba))
                ids.append(i)
        found = estimate(verdicts, ids, np.zeros(len(ids)), 300, rep)
        covered += found["win_rate_ci_low"] <= truth <= found["win_rate_ci_high"]
    assert 0.90 <= covered / reps <= 0.985, covered / reps


def test_length_controlled_win_rate_removes_a_planted_length_bias():
    """A judge that is indifferent at equal length (logit 0) but favours the longer response (logit + 2 tanh(d/s)),
    facing a policy that writes longer: the raw win rate is inflated, the length-controlled one is back near 1/2.
    With no length effect and a real preference of 0.7, both stay near 0.7."""
    rng = np.random.default_rng(1)
    diff = rng.normal(80.0, 100.0, 4000)  # policy length - other length, in characters
    x = np.tanh(diff / diff.std())
    biased = (rng.random(4000) < 1 / (1 + np.exp(-2.0 * x))).astype(float)
    assert biased.mean() > 0.65
    assert length_controlled(biased, diff) == pytest.approx(0.5, abs=0.04)
    fair = (rng.random(4000) < 0.7).astype(float)
    assert length_controlled(fair, diff) == pytest.approx(0.7, abs=0.03)


# ---------------------------------------------------------------- end to end with tiny chat judges


@pytest.fixture(scope="module")
def evaluation(judges, tmp_path_factory):
    """The evaluation of a tiny GPT-2 against itself on 3 held-out HH prompts x 2 samples, judged by the
    position-biased tiny chat judge, run twice on one cache (the second must make no call), with eval.harness off
    and lm_eval made unimportable."""
    from dpo_exp.evaluation.inputs import EvalInputs
    from dpo_exp.evaluation.orchestrator import evaluate_models, publish
    from dpo_exp.evaluation.policy_ref import PolicyReference
    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.models import build_model, load_tokenizer
    from dpo_exp.tasks import build_task

    cache = tmp_path_factory.mktemp("judge_cache")
    cfg = compose(
        [
            *FAST_MODEL,
            *FAST_TRAINER,
            "dataset=hh_rlhf",
            f"dataset.path={shared_file('hh_rlhf/test.jsonl')}",
            "data_size=8",
            "logger=none",
            f"cache_dir={cache}",
            "eval.num_prompts=3",
            "eval.num_samples=2",
            "eval.num_pairs=0",
            "eval.max_new_tokens=6",
            "eval.bootstrap=100",
            "eval.best_of_n=[]",
            "eval.llm_judge.enabled=true",
            f"eval.llm_judge.model.path={judges['second']}",
            "eval.llm_judge.max_new_tokens=1",
        ]
    )
    tokenizer = load_tokenizer(cfg.model)
    inputs = EvalInputs.from_data(build_task(cfg).load(cfg, tokenizer))
    model = build_model(cfg.model, 0)
    pair = PolicyReference(model, model)
    blocked = sys.modules.get("lm_eval", False)
    sys.modules["lm_eval"] = None  # eval.harness is off: importing lm_eval now would raise
    try:
        first = evaluate_models(cfg, pair, tokenizer, inputs)
        second = evaluate_models(cfg, pair, tokenizer, inputs)
    finally:
        if blocked is False:
            del sys.modules["lm_eval"]
        else:
            sys.modules["lm_eval"] = blocked
    run_dir = tmp_path_factory.mktemp("run")
    results = publish(run_dir, second, Tracker(), "run", cfg)
    return {"cfg": cfg, "first": first, "second": second, "results": results, "run_dir": run_dir, "inputs": inputs}


def test_every_pair_is_asked_in_both_orders_and_a_position_bias_scores_a_tie(evaluation):
    metrics = evaluation["first"].metrics
    assert metrics["llm_judge/pairs"] == 6  # 3 prompts x 2 samples against the reference's samples
    assert metrics["llm_judge/vs_chosen/pairs"] == 3  # each prompt's first sample against the chosen response
    assert metrics["llm_judge/calls"] == 2 * (6 + 3) and metrics["llm_judge/cached_calls"] == 0
    records = evaluation["first"].judged_pairs
    assert len(records) == 9 and all(r["raw_ab"] == "B" and r["raw_ba"] == "B" for r in records)
    # "B" is the other completion when the policy is shown first, the policy when it is shown second
    assert all(r["verdict_ab"] == "b" and r["verdict_ba"] == "a" and r["score"] == 0.5 for r in records)
    assert metrics["llm_judge/win_rate"] == 0.5 and metrics["llm_judge/tie_rate"] == 1.0
    assert metrics["llm_judge/position_consistency"] == 0.0 and metrics["llm_judge/parse_failure_rate"] == 0.0
    assert metrics["llm_judge/win_rate_ci_low"] == metrics["llm_judge/win_rate_ci_high"] == 0.5


def test_a_rerun_answers_every_question_from_the_cache(evaluation):
    first, second = evaluation["first"].metrics, evaluation["second"].metrics
    assert second["llm_judge/calls"] == 0 and second["llm_judge/cached_calls"] == first["llm_judge/calls"]
    assert second["llm_judge/win_rate"] == first["llm_judge/win_rate"]
    assert evaluation["second"].judged_pairs == evaluation["first"].judged_pairs


def test_results_reach_the_summary_keys_and_the_records_file(evaluation):
    results = evaluation["results"]
    for key in ("win_rate", "win_rate_ci_low", "win_rate_ci_high", "win_rate_lc", "position_consistency"):
        assert isinstance(results[f"eval/llm_judge/{key}"], float), key
    assert results["eval/llm_judge/pairs"] == 6 and results["eval/llm_judge/tie_rate"] == 1.0
    assert "eval/llm_judge/parse_failure_rate" in results and "eval/llm_judge/vs_chosen/win_rate" in results
    from dpo_exp.evaluation.report import headline

    lines = [line for line in headline(results) if line.startswith("LLM judge: ")]
    assert lines[0].startswith("LLM judge: policy vs reference 0.500 [95% CI 0.500, 0.500]") and len(lines) == 2
    rows = [json.loads(line) for line in (evaluation["run_dir"] / RECORDS_FILE).read_text().splitlines()]
    assert [r["comparison"] for r in rows] == ["reference"] * 6 + ["chosen"] * 3
    assert all(r["policy"] is not None and r["other"] is not None and r["prompt"] for r in rows)


def test_unparseable_answers_are_counted_as_failures_and_ties(judges, tmp_path):
    judge = build_llm_judge(_block(path=str(judges["unparsed"])), tmp_path)
    verdicts = judge.compare(["Q1", "Q2", "Q3"], ["a1", "a2", "a3"], ["b1", "b2", "b3"])
    assert all(v.raw_ab == "Maybe" and v.verdict_ab is None and v.verdict_ba is None for v in verdicts)
    found = estimate(verdicts, [0, 1, 2], [0.0, 1.0, -1.0], 50, 0)
    assert found["parse_failures"] == 6 and found["parse_failure_rate"] == 1.0
    assert found["win_rate"] == 0.5 and found["tie_rate"] == 1.0 and found["position_consistency"] == 0.0
    assert judge.calls == 6


def test_a_question_longer_than_the_judges_context_keeps_its_end(tmp_path, caplog):
    """A judge with 128 positions and a 2,000-word prompt: the question's start is cut (with a warning), the
    verdict instructions at its end are kept, and the judge still answers."""
    judge = build_llm_judge(_block(path=str(_judge_folder(tmp_path / "short", "B", positions=128))), None)
    with caplog.at_level("WARNING"):
        verdicts = judge.compare(["word " * 2000], ["a"], ["b"])
    assert verdicts[0].raw_ab == "B" and "their start is cut" in caplog.text


# ---------------------------------------------------------------- the vLLM backend's adapter (vLLM is not installed here)


def test_both_local_backends_prompt_with_the_chat_templates_own_token_ids_cut_from_the_left(judges, caplog):
    """`chat_prompt_ids` (what LocalChat and VLLMChat generate from): each question as the tokenizer's own
    chat-templated ids, ready for the answer (the ids vLLM's `LLM.chat` would build), cut from the left past the
    budget with a warning; `answer_texts` keeps what the parser reads."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(judges["second"])
    questions = ["Which is better? A or B", "Q " * 50 + "More helpful:"]
    ids = chat_prompt_ids(tokenizer, questions, budget=1000)
    for question, got in zip(questions, ids):
        messages = [{"role": "user", "content": question}]
        assert got == list(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
    assert tokenizer.decode(ids[0]).endswith("<|im_start|>assistant\n")  # the answer comes next
    with caplog.at_level("WARNING"):
        cut = chat_prompt_ids(tokenizer, questions, budget=20)
    assert cut[0] == ids[0] and cut[1] == ids[1][-20:] and "1 judge question(s) longer" in caplog.text
    assert answer_texts([" More helpful: A\n", "B"]) == ["More helpful: A", "B"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed: the refusal is moot")
def test_the_vllm_backend_without_vllm_is_one_line_naming_pip_install_before_any_model(judges, tmp_path):
    block = _block(path=str(judges["second"]), backend="vllm", gpu_memory_utilization=0.5)
    with pytest.raises(UserError, match=r"backend=vllm needs vLLM, which is not installed: pip install vllm"):
        check_llm_judge_settings(block)
    with pytest.raises(UserError, match=r"backend=vllm needs vLLM"):
        build_llm_judge(block, tmp_path)  # the builder checks first: no model loads
    with pytest.raises(UserError, match=r"is not one of \['transformers', 'vllm'\]"):
        check_llm_judge_settings(_block(path=str(judges["second"]), backend="tgi"))
    with pytest.raises(UserError, match=r"backend=vllm runs model.path in this process"):
        check_llm_judge_settings(_block(base_url="http://127.0.0.1:1/v1", backend="vllm", gpu_memory_utilization=0.5))
    assert "vllm" not in sys.modules


# ---------------------------------------------------------------- a real OpenAI-compatible server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~30 s on 2 cores: the server's start dominates
def test_the_judge_through_transformers_serve_on_localhost(judges, tmp_path):
    """`transformers serve` (the OpenAI-compatible server that ships with transformers) serving the position-biased
    tiny judge: the same verdicts as the local model, cached on a second ask."""
    port = _free_port()
    exe = Path(sys.executable).parent / "transformers"
    server = subprocess.Popen(
        [str(exe), "serve", str(judges["second"]), "--port", str(port), "--device", "cpu", "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{base}/models", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        block = _block(base_url=base)
        assert check_llm_judge(block) == str(judges["second"])  # the model /models lists
        judge = build_llm_judge(block, tmp_path)
        verdicts = judge.compare(["Q1", "Q2"], ["a1", "a2"], ["b1", "b2"])
        assert [(v.raw_ab, v.verdict_ab, v.raw_ba, v.verdict_ba) for v in verdicts] == [("B", "b", "B", "a")] * 2
        assert judge.calls == 4
        again = build_llm_judge(block, tmp_path)
        again.compare(["Q1", "Q2"], ["a1", "a2"], ["b1", "b2"])
        assert again.calls == 0 and again.cached == 4
        blocked = sys.modules.get("openai", False)
        sys.modules["openai"] = None  # without the openai client: the same requests over plain HTTP
        try:
            plain = build_llm_judge(block, tmp_path / "plain")
            assert [v.verdict_ba for v in plain.compare(["Q3"], ["a3"], ["b3"])] == ["a"] and plain.calls == 2
        finally:
            if blocked is False:
                del sys.modules["openai"]
            else:
                sys.modules["openai"] = blocked
        with pytest.raises(UserError, match="answered HTTP 404"):
            check_llm_judge(_block(base_url=f"http://127.0.0.1:{port}/no/such/path"))
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---------------------------------------------------------------- bad input


def test_bad_judge_settings_are_one_line_each(judges, tmp_path):
    template = tmp_path / "mine.txt"
    template.write_text("Which is better, {response_a} or {response_b}? Answer A or B.")
    bad = _block(path=str(judges["second"]))
    bad.template = str(template)
    with pytest.raises(UserError, match=r"lacks the placeholders \{prompt\}"):
        check_llm_judge_settings(bad)
    with pytest.raises(UserError, match="has no chat template"):
        check_llm_judge(_block(path=str(judges["no_chat"])))
    with pytest.raises(UserError, match="set exactly one of model.path"):
        check_llm_judge_settings(_block(path=str(judges["second"]), base_url="http://127.0.0.1:1/v1"))
    template.write_text("Q: {prompt}\nA: {response_a}\nB: {response_b}\nMore helpful:")
    check_llm_judge_settings(bad)  # a complete user template passes


def test_a_silent_endpoint_stops_the_check_after_the_stated_wait():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        started = time.time()
        with pytest.raises(UserError, match=r"/models gave no answer within 1 s"):
            check_llm_judge(_block(base_url=url, timeout_s=1))
        assert time.time() - started < 10


@pytest.mark.slow  # ~15 s: a whole `python -m dpo_exp` start
def test_a_silent_endpoint_is_one_error_line_after_the_stated_wait(tmp_path):
    """A server that accepts connections and never answers: the run stops before any model loads with one
    `error:` line naming the wait (eval.llm_judge.model.timeout_s=1)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        started = time.time()
        proc = run_cli(
            [
                *FAST_MODEL,
                *FAST_TRAINER,
                "logger=none",
                "dataset=hh_rlhf",
                f"dataset.path={shared_file('hh_rlhf/test.jsonl')}",
                "data_size=8",
                "eval.llm_judge.enabled=true",
                f"eval.llm_judge.model.base_url={url}",
                "eval.llm_judge.model.timeout_s=1",
            ],
            tmp_path,
        )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "gave no answer within 1 s" in errors[0] and url in errors[0]
    assert time.time() - started < 60


def test_compare_shows_the_judge_columns_and_the_app_shows_the_judges_reasoning(evaluation, tmp_path):
    from dpo_exp.app.report import judge_sections, metrics_rows
    from dpo_exp.app.runs import RunInfo
    from dpo_exp.compare.table import compare

    results = {k: v for k, v in evaluation["results"].items() if isinstance(v, (int, float, str))}
    run = RunInfo(evaluation["run_dir"], "run", evaluation["cfg"], {"status": "completed", **results})
    sections = judge_sections(run)
    assert len(sections) == 9 and sections[0][0] == "1. policy vs reference: tie (1/2)"
    body = sections[0][1]
    assert "**Judge, policy shown first** (verdict: the other)" in body
    assert "**Judge, policy shown second** (verdict: the policy)" in body and "```\nB\n```" in body
    keys = [row[0] for row in metrics_rows(run)]
    assert keys.index("eval/llm_judge/win_rate") < keys.index("eval/kl")  # in the headline block
    for i in range(2):
        folder = tmp_path / str(i)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(f"- beta={i + 1}\n")
        (folder / "summary.json").write_text(json.dumps({"status": "completed", **results}))
    table = compare([tmp_path], console=False, plots=False)
    assert table["eval/llm_judge/win_rate"].tolist() == [0.5, 0.5]
    header = next(line for line in (tmp_path / "comparison.md").read_text().splitlines() if "eval/llm_judge" in line)
    assert "eval/llm_judge/win_rate_lc" in header and "eval/llm_judge/position_consistency" in header
