"""The capability tax through lm-evaluation-harness (issue 31): the shipped IMDb multiple-choice task scored by
log-likelihood on a reference and a policy (two tiny GPT-2s), keys and standard errors, a task that does not
exist, and no lm-eval import when the harness is off."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from dpo_exp.errors import UserError

from .conftest import shared_file

pytest.importorskip("lm_eval")  # the optional extra dpo_exp[harness]


def _block(**extra):
    base = {
        "enabled": True,
        "tasks": ["imdb_sentiment_mc"],
        "include_path": None,
        "data_dir": str(shared_file("imdb/test.jsonl").parent.parent),
        "limit": 12,
        "batch_size": 8,
        "bootstrap_iters": 100,
    }
    return OmegaConf.create({**base, **extra})


@pytest.fixture(scope="module")
def scored():
    """The shipped task on 12 reviews, scored on two different tiny GPT-2s (policy and reference)."""
    from dpo_exp.evaluation.harness import harness_metrics
    from dpo_exp.evaluation.policy_ref import PolicyReference
    from dpo_exp.models.tiny import build_tiny, tiny_tokenizer

    tiny = OmegaConf.create({"architecture": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 256})
    tokenizer = tiny_tokenizer(tiny)
    tokenizer.pad_token = tokenizer.eos_token
    pair = PolicyReference(build_tiny(tiny, 1), build_tiny(tiny, 0))  # two different models
    return harness_metrics(pair, tokenizer, _block(), 8)


def test_reference_and_policy_are_both_scored_with_standard_errors(scored):
    found = scored
    base = "harness/imdb_sentiment_mc/acc"
    for side in ("policy", "reference"):
        assert 0.0 <= found[f"{base}_{side}"] <= 1.0
        assert found[f"{base}_{side}"] * 12 == pytest.approx(round(found[f"{base}_{side}"] * 12))  # 12 reviews
        assert 0.0 < found[f"{base}_{side}_stderr"] < 0.5
    assert found[f"{base}_delta"] == pytest.approx(found[f"{base}_policy"] - found[f"{base}_reference"])
    assert found[f"{base}_delta_stderr_paired"] is True  # acc is a mean over documents: the paired error
    assert 0.0 <= found[f"{base}_delta_stderr"] < 1.0
    assert not any("sample_len" in key for key in found)


def test_the_paired_standard_error_is_that_of_the_per_document_differences():
    from dpo_exp.evaluation.harness import paired_stderr

    policy = {0: 1.0, 1: 1.0, 2: 0.0, 3: 1.0}
    reference = {0: 1.0, 1: 0.0, 2: 0.0, 3: 0.0, 9: 1.0}  # document 9 has no policy value: left out
    assert paired_stderr(policy, reference) == pytest.approx(0.5773502691896258 / 2)  # std(0,1,0,1; ddof 1)/sqrt(4)
    assert paired_stderr(policy, dict(policy)) == 0.0  # the same answers: no uncertainty in the difference
    assert paired_stderr({0: 1.0}, {0: 0.0}) is None


def test_the_keys_reach_the_summary_beside_eval_and_the_comparison(scored, tmp_path):
    import json

    from dpo_exp.compare.table import compare
    from dpo_exp.evaluation.orchestrator import Evaluation, publish
    from dpo_exp.infra.tracking import Tracker

    from .conftest import FAST_MODEL, compose

    cfg = compose([*FAST_MODEL, "logger=none"])
    results = publish(tmp_path / "run", Evaluation(metrics={"num_prompts": 0, **scored}), Tracker(), "run", cfg)
    assert results["harness/imdb_sentiment_mc/acc_policy"] == scored["harness/imdb_sentiment_mc/acc_policy"]
    assert not any(k.startswith("eval/harness") for k in results) and "eval/num_prompts" in results
    from dpo_exp.evaluation.report import headline

    assert any(line.startswith("harness/imdb_sentiment_mc/acc: ") for line in headline(results))
    run = tmp_path / "runs" / "0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- beta=0.1\n")
    (run / "summary.json").write_text(json.dumps({"status": "completed", **results}))
    table = compare([tmp_path / "runs"], console=False, plots=False)
    assert (
        table["harness/imdb_sentiment_mc/acc_delta_stderr"].iloc[0]
        == scored["harness/imdb_sentiment_mc/acc_delta_stderr"]
    )


def test_bad_harness_settings_are_one_line_each(tmp_path):
    from dpo_exp.evaluation.harness import check_harness

    with pytest.raises(UserError, match="set eval.harness.data_dir"):
        check_harness(_block(data_dir=None))
    with pytest.raises(UserError, match="has no imdb/test.jsonl"):
        check_harness(_block(data_dir=str(tmp_path)))
    check_harness(_block())  # the shipped task with its data: known


@pytest.mark.slow  # ~20 s: a name that is not shipped makes the harness index its thousands of own tasks
def test_a_task_that_does_not_exist_is_one_error_line():
    from dpo_exp.evaluation.harness import check_harness

    with pytest.raises(UserError, match="no harness task named no_such_task"):
        check_harness(_block(tasks=["imdb_sentiment_mc", "no_such_task"]))


def test_the_harness_is_not_imported_when_off():
    """The pipeline's and evaluation's modules and the pre-training check, with eval.harness off, leave lm_eval
    unimported (the judge's end-to-end evaluation with the harness off runs with lm_eval blocked:
    tests/test_llm_judge.py)."""
    code = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "import dpo_exp.pipeline, dpo_exp.evaluation.orchestrator, dpo_exp.evaluate\n"
        "from dpo_exp.evaluation.harness import check_harness\n"
        "check_harness(OmegaConf.create({'enabled': False, 'tasks': ['x']}))\n"
        "assert 'lm_eval' not in sys.modules, 'lm_eval imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
