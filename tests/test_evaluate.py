"""Policy evaluation (issue 4): reward, win rate, KL, implicit-reward AUC, artifacts, standalone re-evaluation.

Offline with a tiny GPT-2 on the real HH-RLHF sample, scored with VADER (eval/reward=vader).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dpo_exp.evaluation.inputs import EvalInputs, build_eval_scorer, sample_settings
from dpo_exp.evaluation.metrics import implicit_reward_metrics, implicit_rewards, sample_and_score
from dpo_exp.evaluation.orchestrator import evaluate_models
from dpo_exp.evaluation.policy_ref import PolicyReference, from_trainer, load_reference
from dpo_exp.evaluation.stats import bootstrap_indices, mean_ci, paired_wins

from .conftest import FAST_MODEL, FAST_TRAINER, compose, run_cli, shared_file
from .wandb_records import offline_runs, run_info

REQUIRED_KEYS = [
    "eval/reward_policy",
    "eval/reward_reference",
    "eval/reward_policy_std",
    "eval/reward_reference_std",
    "eval/reward_policy_ci_low",
    "eval/reward_policy_ci_high",
    "eval/reward_reference_ci_low",
    "eval/reward_reference_ci_high",
    "eval/reward_delta",
    "eval/win_rate",
    "eval/win_rate_ci_low",
    "eval/win_rate_ci_high",
    "eval/kl",
    "eval/kl_std",
    "eval/implicit_accuracy",
    "eval/implicit_auc",
]


def _overrides(hh_file: Path, *extra: str) -> list[str]:
    return [
        *FAST_MODEL,
        *FAST_TRAINER,
        "dataset=hh_rlhf",
        f"dataset.path={hh_file}",
        "data_size=8",
        "logger=none",
        "eval/reward=vader",
        "eval.num_prompts=6",
        "eval.num_samples=2",
        "eval.num_pairs=8",
        "eval.max_new_tokens=12",
        "eval.bootstrap=200",
        *extra,
    ]


@pytest.fixture(scope="module")
def setup():
    """Config, tokenizer, data (8 training pairs) and the tiny model, built once for the module."""

    from dpo_exp.models import build_model, load_tokenizer
    from dpo_exp.tasks import build_task

    hh_file = shared_file("hh_rlhf/test.jsonl")
    cfg = compose(
        _overrides(
            hh_file,
            "lora=none",
            "lr=3e-3",
            "epochs=5",
            "trainer.eval_strategy=no",
            "trainer.per_device_train_batch_size=8",
            "trainer.warmup_steps=0",
            "trainer.logging_steps=50",
        )
    )
    tokenizer = load_tokenizer(cfg.model)
    data = build_task(cfg).load(cfg, tokenizer)  # as the pipeline: pairs whose prompt fits max_length
    scorer, name, skip = build_eval_scorer(cfg)
    return {
        "cfg": cfg,
        "tokenizer": tokenizer,
        "data": data,
        "scorer": scorer,
        "scorer_name": name,
        "model": build_model(cfg.model, int(cfg.seed)),
        "hh_file": hh_file,
    }


# ---------------------------------------------------------------- statistics


def test_paired_wins_counts_ties_as_half_and_bootstrap_is_seeded():
    wins = paired_wins(np.array([[1.0, 0.0], [0.5, 0.2]]), np.array([[0.0, 0.0], [0.7, 0.2]]))
    assert wins.tolist() == [[1.0, 0.5], [0.0, 0.5]]
    values = np.arange(20, dtype=float)
    mean, low, high = mean_ci(values, bootstrap_indices(20, 500, 3))
    assert mean == pytest.approx(9.5) and low < mean < high
    assert (low, high) == mean_ci(values, bootstrap_indices(20, 500, 3))[1:]  # same seed, same interval
    assert mean_ci(np.full(5, 0.5), bootstrap_indices(5, 100, 0)) == (0.5, 0.5, 0.5)


def test_implicit_metrics_perfect_and_reversed_classifier():
    good = implicit_reward_metrics(np.array([1.0, 2.0, 0.5]), np.array([-1.0, 0.0, 0.1]))
    assert good["implicit_accuracy"] == 1.0 and good["implicit_auc"] == 1.0
    bad = implicit_reward_metrics(np.array([-1.0, -2.0]), np.array([1.0, 0.0]))
    assert bad["implicit_accuracy"] == 0.0 and bad["implicit_auc"] == 0.0
    assert bad["implicit_margin_mean"] == pytest.approx(-2.0)


# ---------------------------------------------------------------- a model against itself


def test_model_against_itself_kl_zero_win_rate_exactly_half(setup):
    """Same model as policy and reference: identical seeded samples -> all ties, KL 0, implicit margins 0; the
    headline win rate (independent draws) is 0.5 up to sampling noise."""
    m = setup["model"]
    inputs = EvalInputs.from_data(setup["data"])
    ev = evaluate_models(setup["cfg"], PolicyReference(m, m), setup["tokenizer"], inputs, setup["scorer"], "vader")
    metrics = ev.metrics
    assert metrics["num_prompts"] == 6
    assert abs(metrics["kl"]) < 1e-6 and metrics["kl_std"] < 1e-6 and abs(metrics["kl_rb"]) < 1e-6
    assert metrics["win_rate_coupled"] == 0.5 and metrics["tie_rate_coupled"] == 1.0
    assert (metrics["win_rate_coupled_ci_low"], metrics["win_rate_coupled_ci_high"]) == (0.5, 0.5)
    assert metrics["win_rate_ci_low"] <= 0.5 <= metrics["win_rate_ci_high"] and metrics["tie_rate"] < 1.0
    assert metrics["reward_delta"] == 0.0 and metrics["reward_policy"] == metrics["reward_reference"]
    assert metrics["implicit_auc"] == 0.5 and abs(metrics["implicit_margin_mean"]) < 1e-6
    assert [r["policy"] for r in ev.side_by_side] == [r["reference"] for r in ev.side_by_side]
    # held-out prompts only: none of them is a training prompt
    assert not set(inputs.prompts) & {r["prompt"] for r in setup["data"].train}


def test_lora_reference_is_the_adapter_disabled(setup):
    """A fresh LoRA adapter (B = 0) changes nothing: KL 0; a perturbed one gives KL > 0 via disable_adapter."""
    from peft import get_peft_model

    from dpo_exp.lora import lora_config
    from dpo_exp.models import build_model

    cfg = setup["cfg"]
    base = build_model(cfg.model, int(cfg.seed))
    lora = compose(_overrides(setup["hh_file"], "lora=gpt2_attn")).lora
    peft_model = get_peft_model(base, lora_config(lora, base))
    pair = PolicyReference(peft_model)
    settings = sample_settings(cfg)
    prompts = EvalInputs.from_data(setup["data"]).prompts[:4]
    result = sample_and_score(pair, setup["tokenizer"], prompts, settings, with_reference=False)
    assert np.abs(result.kl).max() < 1e-6 and np.abs(result.kl_rb).max() < 1e-6
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    result = sample_and_score(pair, setup["tokenizer"], prompts, settings, with_reference=False)
    assert result.kl_rb.mean() > 0.01 and result.kl_rb.min() >= 0


def test_rebuilt_reference_equals_starting_model(setup):
    """With precompute_ref_log_probs TRL keeps no reference: the tiny model is rebuilt from the run's seed."""
    rebuilt = load_reference(setup["cfg"], {})
    for (name, a), (_, b) in zip(setup["model"].state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), name


def test_without_a_scorer_reward_metrics_are_skipped_and_said_so(setup, tmp_path):
    from dpo_exp.errors import UserError
    from dpo_exp.evaluation.orchestrator import publish
    from dpo_exp.infra.tracking import Tracker

    cfg = compose(_overrides(setup["hh_file"], "eval.reward=null", "eval.num_pairs=0"))
    scorer, name, reason = build_eval_scorer(cfg)
    assert scorer is None and name is None and "eval.reward" in reason
    m = setup["model"]
    ev = evaluate_models(
        cfg, PolicyReference(m, m), setup["tokenizer"], EvalInputs.from_data(setup["data"]), None, None, reason
    )
    assert "kl" in ev.metrics and "reward_policy" not in ev.metrics and "implicit_auc" not in ev.metrics
    results = publish(tmp_path, ev, Tracker(), "test", cfg)
    assert any("reward metrics skipped" in note for note in results["eval/notes"])
    assert (tmp_path / "samples.md").exists() and not (tmp_path / "plots" / "reward_kl.png").exists()
    with pytest.raises(UserError, match="eval.reward='nope'"):
        build_eval_scorer(compose(_overrides(setup["hh_file"], "eval.reward=nope")))


# ---------------------------------------------------------------- after training


def test_overtrained_policy_separates_its_pairs_and_drifts(setup, tmp_path):
    """Full fine-tuning at a high lr on 8 pairs: implicit-reward AUC ~1 on those pairs, KL(policy||ref) > 0."""
    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.models import build_model
    from dpo_exp.training.ref_logps import pairs_dataset
    from dpo_exp.training.trainer import build_trainer

    cfg, tokenizer, data = setup["cfg"].copy(), setup["tokenizer"], setup["data"]
    cfg.trainer.precompute_ref_log_probs = False  # TRL keeps its frozen reference copy (the path under test)
    model = build_model(cfg.model, int(cfg.seed))
    trainer = build_trainer(cfg, model, tokenizer, pairs_dataset(data.train), None, tmp_path, Tracker(), "fp32", "cpu")
    trainer.train()
    pair = from_trainer(trainer, cfg, {})
    with pair.reference() as reference:
        assert reference is trainer.ref_model and not pair.shares_weights  # full FT: TRL's frozen copy
    chosen, rejected = implicit_rewards(pair, tokenizer, data.train, float(cfg.trainer.beta), cfg.trainer.max_length)
    metrics = implicit_reward_metrics(chosen, rejected)
    assert metrics["implicit_accuracy"] == 1.0
    assert metrics["implicit_auc"] >= 0.9
    result = sample_and_score(
        pair, tokenizer, EvalInputs.from_data(data).prompts[:4], sample_settings(cfg), with_reference=False
    )
    # The plain Monte-Carlo KL is unbiased but noisy (per-sample std ~0.3 nats against a true KL of ~0.04 here);
    # its low-variance twin (exact per-token KL along the same samples) must be clearly positive.
    assert result.kl_rb.mean() > 0.01 and result.kl_rb.min() > 0
    assert np.isfinite(result.kl).all() and abs(result.kl.mean() - result.kl_rb.mean()) < 1.0


# ---------------------------------------------------------------- a whole run, then standalone re-evaluation


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, setup):
    """One CLI run (LoRA, W&B offline, reward-KL trace every step)."""
    cwd = tmp_path_factory.mktemp("evalrun")
    run_dir = cwd / "run"
    args = [
        a
        for a in _overrides(
            setup["hh_file"],
            "lr=5e-3",
            "epochs=1",
            "eval.every_n_steps=1",
            "eval.trace_prompts=3",
            "eval.num_side_by_side=3",
            "trainer.eval_strategy=no",
            "trainer.warmup_steps=0",
        )
        if a != "logger=none"
    ]
    proc = run_cli([*args, "logger=wandb", "logger.mode=offline", f"hydra.run.dir={run_dir}"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_run_writes_eval_summary_samples_trace_and_plot(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["status"] == "completed"
    for key in REQUIRED_KEYS:
        assert isinstance(summary.get(key), (int, float)) and math.isfinite(summary[key]), key
    assert 0.0 <= summary["eval/win_rate_ci_low"] <= summary["eval/win_rate"] <= summary["eval/win_rate_ci_high"] <= 1
    assert summary["eval/kl_rb"] > 0  # LoRA at lr 1e-3 moved the policy away from the adapter-disabled reference
    samples = (finished_run / "samples.md").read_text()
    assert samples.count("## Prompt ") == 3 and "**Policy** (score " in samples
    assert (finished_run / "plots" / "reward_kl.png").stat().st_size > 1000
    trace = [json.loads(line) for line in (finished_run / "eval_trace.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in trace]
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) >= 3  # start, every step, end
    assert trace[0]["kl"] == pytest.approx(0.0, abs=1e-6) and trace[-1]["kl_rb"] > 0
    logged = run_info(offline_runs(finished_run)[-1])["summary"]
    assert logged["eval/win_rate"] == pytest.approx(summary["eval/win_rate"])
    assert "eval/side_by_side" in logged and "eval_trace/kl" in logged


def test_standalone_evaluate_reproduces_the_run(finished_run):
    written = json.loads((finished_run / "summary.json").read_text())
    proc = run_cli([f"run_dir={finished_run}", "wandb=false"], finished_run.parent, module="dpo_exp.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((finished_run / "evaluation.json").read_text())
    assert again["source"] == "evaluate"
    for key in REQUIRED_KEYS + ["eval/kl_ci_low", "eval/implicit_margin_mean"]:
        assert again["metrics"][key] == pytest.approx(written[key], rel=1e-4, abs=1e-6), key
    assert (finished_run / ".hydra" / "config.yaml").exists()  # the run's saved config is left alone
    updated = json.loads((finished_run / "summary.json").read_text())
    assert updated["status"] == "completed" and "evaluated_at" in updated


def test_standalone_evaluate_replaces_only_the_settings_named(finished_run, tmp_path):
    """conf/evaluate.yaml composes the same eval/generation defaults as a run; only what the command line names
    (eval.num_prompts, eval/reward) replaces the run's values: eval.num_samples stays the run's 2, not the default 4."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    args = [f"run_dir={copy}", "wandb=false", "eval.num_prompts=3", "eval/reward=vader", "eval.best_of_n=[]"]
    proc = run_cli(args, tmp_path, module="dpo_exp.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = json.loads((copy / "evaluation.json").read_text())["settings"]["eval"]
    assert settings["num_prompts"] == 3 and settings["reward"] == {"kind": "vader"} and settings["best_of_n"] == []
    assert settings["num_samples"] == 2 and settings["bootstrap"] == 200  # the run's, not conf/eval/default.yaml's
    bad = run_cli([f"run_dir={copy}", "wandb=false", "eval.num_samples=two"], tmp_path, module="dpo_exp.evaluate")
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    assert bad.returncode == 2 and len(errors) == 1 and "eval.num_samples" in errors[0], bad.stderr[-2000:]


def test_standalone_evaluate_rejects_a_non_run_directory(tmp_path):
    proc = run_cli([f"run_dir={tmp_path}", "wandb=false"], tmp_path, module="dpo_exp.evaluate")
    assert proc.returncode == 2
    assert "config.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_run_model_card_parses_with_its_evaluation(finished_run):
    """RUN/model/README.md is a Hugging Face model card that huggingface_hub parses: base model, data, method,
    versions, the hyper-parameters that differ from conf/'s defaults, no licence chosen, and the run's evaluation
    (reward delta, win rate, KL with CIs and the judge) in model-index form. (The LoRA adapter's own card:
    tests/test_standalone_model.py.)"""
    from huggingface_hub import ModelCard

    summary = json.loads((finished_run / "summary.json").read_text())
    data = ModelCard.load(finished_run / "model" / "README.md").data
    assert data.library_name == "transformers" and data.datasets == ["test.jsonl"]
    assert data.base_model is None and data.base_model_local == {
        "name": "tiny-gpt2",
        "folder": None,
    }  # built from config
    assert data.method["name"] == "dpo" and data.library_versions["trl"] == summary["environment"]["versions"]["trl"]
    assert data.hyperparameters["lr"] == 5e-3 and data.hyperparameters["data_size"] == 8
    assert "beta" not in data.hyperparameters and "license" not in data.to_dict()  # default beta; licence: the user's
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"reward_delta", "win_rate", "kl", "kl_rb"}
    for key, result in results.items():
        assert result.metric_value == pytest.approx(summary[f"eval/{key}"], abs=1e-6), key
        assert result.metric_args["ci95_low"] == pytest.approx(summary[f"eval/{key}_ci_low"], abs=1e-6), key
        assert result.metric_args["ci95_high"] == pytest.approx(summary[f"eval/{key}_ci_high"], abs=1e-6), key
        assert result.metric_args["judge"] == "vader"
        assert result.metric_args["judge_identity"] == summary["eval/judge_identity"]
