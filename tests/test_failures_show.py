"""Failures that show (issue 23): an unusable cache_dir, sampling settings that silently decode greedily, and a
learning-rate schedule under which no step trains are each one clear `error:` line with exit code 2; the app says
when it cuts a prompt."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dpo_exp.config import validate
from dpo_exp.errors import UserError

from .conftest import FAST_MODEL, FAST_TRAINER, compose, run_cli
from .test_bad_input import assert_clean_error, base_args, good_jsonl, run_probed

# ---------------------------------------------------------------- cache_dir


def test_a_file_where_the_cache_folder_should_be_is_one_line_before_any_model(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    for cache_dir in (blocker, blocker / "nested" / "cache"):  # the folder itself, or a folder above it
        proc, imported = run_probed([*base_args(good_jsonl(tmp_path), tmp_path), f"cache_dir={cache_dir}"], tmp_path)
        assert_clean_error(proc, [f"cache_dir={cache_dir}", f"{blocker} is a file, not a folder"], imported)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder whatever its mode: nothing to refuse")
def test_a_folder_the_user_cannot_write_is_one_line_before_any_model(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        proc, imported = run_probed([*base_args(good_jsonl(tmp_path), tmp_path), f"cache_dir={locked}/c"], tmp_path)
    finally:
        locked.chmod(0o700)
    assert_clean_error(proc, [f"cache_dir={locked}/c", "not writable"], imported)


def test_the_cache_check_creates_nothing_and_accepts_a_usable_folder(tmp_path):
    cfg = compose([*FAST_MODEL, *FAST_TRAINER, f"cache_dir={tmp_path / 'new' / 'cache'}"])
    validate(cfg)
    assert list(tmp_path.iterdir()) == []  # nothing created, no probe left behind


# ---------------------------------------------------------------- sampling settings: one validator everywhere

TOP_P_ZERO = "top_p must be in (0, 1]"


@pytest.mark.parametrize(
    "override,needle",
    [
        ("generation.top_p=0", "generation.top_p must be in (0, 1]"),
        ("generation.top_p=1.5", "generation.top_p must be in (0, 1]"),
        ("generation.top_k=-1", "generation.top_k must be >= 0"),
        ("generation.temperature=0", "generation.temperature must be > 0"),
    ],
)
def test_sampling_settings_are_refused_by_the_run(override, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace("]", r"\]")):
        validate(compose([*FAST_MODEL, *FAST_TRAINER, override]))


def test_top_p_zero_is_one_line_on_the_command_line(tmp_path):
    proc, imported = run_probed([*base_args(good_jsonl(tmp_path), tmp_path), "generation.top_p=0"], tmp_path)
    assert_clean_error(proc, [f"generation.{TOP_P_ZERO}", "greedy"], imported)


def test_top_p_zero_is_one_line_in_evaluate(tmp_path):
    """`python -m dpo_exp.evaluate run_dir=RUN generation.top_p=0`: the same line, before any model loads."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    cfg = compose([*FAST_MODEL, *FAST_TRAINER, "logger=none", f"cache_dir={tmp_path / 'cache'}"])
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
    proc = run_cli([f"run_dir={run_dir}", "generation.top_p=0", "wandb=false"], tmp_path, module="dpo_exp.evaluate")
    assert_clean_error(proc, [f"generation.{TOP_P_ZERO}", "greedy"])


def _app_parts(tmp_path: Path):
    """The app's generate handler on a real tiny model (the reference and one full fine-tuned 'policy')."""
    from dpo_exp.app.models import Models
    from dpo_exp.app.runs import RunInfo
    from dpo_exp.app.ui import make_generate_fn
    from dpo_exp.evaluation.policy_ref import PolicyReference
    from dpo_exp.models import build_model, offline_gpt2_tokenizer

    cfg = compose([*FAST_MODEL, *FAST_TRAINER, "logger=none"])
    model = build_model(cfg.model, 0, "fp32", "cpu").eval()
    models = Models(offline_gpt2_tokenizer(), PolicyReference(model, model), {"policy": model})
    run = RunInfo(tmp_path, "policy", cfg, {"status": "completed"})
    return make_generate_fn([run], models)


def test_top_p_zero_is_refused_by_the_app_with_the_same_message(tmp_path):
    import gradio as gr

    from dpo_exp.app.generate import Sampling

    generate = _app_parts(tmp_path)
    with pytest.raises(gr.Error) as caught:
        list(generate("The movie was", ["policy"], 1.0, 0, 0.0, 8, 1, "none"))
    assert str(caught.value.message).startswith(TOP_P_ZERO) and "greedy" in caught.value.message
    with pytest.raises(UserError, match=r"^top_p must be in"):
        Sampling(1.0, 0, 0.0, 8, 1).check()


def test_the_app_tells_the_user_when_it_cuts_a_long_prompt(tmp_path):
    generate = _app_parts(tmp_path)
    long_prompt = "the film was long " * 1200  # ~20,000 characters, far beyond the tiny model's 128 tokens
    with pytest.warns(UserWarning, match=r"the models read only its (first|last) 120 tokens"):
        steps = list(generate(long_prompt, ["policy"], 1.0, 0, 1.0, 8, 1, "none"))
    assert steps  # the completions still come, for the cut prompt
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(generate("The movie was", ["policy"], 1.0, 0, 1.0, 8, 1, "none"))
    assert not [w for w in caught if "read only" in str(w.message)]  # a prompt that fits: no notice


# ---------------------------------------------------------------- a schedule under which no step trains


def test_step_learning_rates_follow_transformers_warm_up(tmp_path):
    from dpo_exp.schema import dpo_config
    from dpo_exp.training.schedule import step_learning_rates

    args = dpo_config(compose([*FAST_MODEL, *FAST_TRAINER, "lr=1e-3"]), tmp_path, "fp32", "cpu")  # warm-up 0.1, cosine
    assert step_learning_rates(args, 1) == [0.0]  # one step, rounded up to one warm-up step: lr 0
    rates = step_learning_rates(args, 10)
    assert rates[0] == 0.0 and all(rate > 0 for rate in rates[1:]) and max(rates) == pytest.approx(1e-3)


def test_a_run_whose_only_step_has_learning_rate_0_is_refused(tmp_path):
    """4 pairs at batch 4, one epoch: one step, which the default 10 % warm-up runs at lr 0."""
    args = [*base_args(good_jsonl(tmp_path), tmp_path), "data_size=4", "epochs=1", "trainer.eval_strategy=no"]
    proc = run_cli(args, tmp_path, timeout=300)
    assert_clean_error(proc, ["no optimisation step would train", "trainer.warmup_steps=0.1", "warmup_steps=0"])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


# ---------------------------------------------------------------- smaller: samples.md bytes, file modes


def test_samples_md_writes_control_characters_as_escapes(tmp_path):
    from dpo_exp.evaluation.report import write_samples_md

    row = {
        "prompt": "a\x00b\rc\td",
        "reference": "ok\x1b[2J",
        "reference_score": 0.1,
        "policy": "",
        "policy_score": 0.2,
    }
    raw = write_samples_md(tmp_path / "samples.md", [row], {}, "vader").read_bytes()
    assert b"\x00" not in raw and b"\r" not in raw and b"\x1b" not in raw
    text = raw.decode("utf-8")
    assert "a\\x00b\\x0dc\td" in text and "ok\\x1b[2J" in text


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask):
    """summary.json (atomic_write_json), metrics rewrites (write_jsonl) and every other atomic write: 0666 less the
    umask, like a file made with open() -- not mkstemp's 0600."""
    from dpo_exp.infra.storage import atomic_write_json, write_jsonl

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "summary.json", {"status": "completed"})
        write_jsonl(tmp_path / "metrics.jsonl", [{"step": 1}])
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(old)
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ("summary.json", "metrics.jsonl", "plain.txt")}
    assert set(modes.values()) == {0o666 & ~umask}, modes
