"""Every shipped preset and every option of every config group passes the run's own validation (typed schemas,
ranges, the task's checks, LoRA targets on a meta-device model, trl.DPOConfig built from the `trainer` group) --
no model loaded; each job of a preset's sweep too. Both quickstarts also run end to end at test scale (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class

from dpo_exp import CONF_DIR, PACKAGE_DIR
from dpo_exp.config import validate

from .conftest import FAST_MODEL, FAST_TRAINER, compose, run_cli, shared_file

PRESETS = sorted(p.stem for p in (CONF_DIR.parent / "experiments").glob("*.yaml"))
GROUPS = ["model", "dataset", "reward", "trainer", "lora", "logger", "eval", "generation", "eval/reward"]
DEMO_PAIRS = "dataset.path=${dpo_exp.demo:preferences.jsonl}"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def companions(group: str, option: str, tmp_path: Path) -> list[str]:
    """What an option needs beside it to make a valid run."""
    if (group, option) == ("dataset", "feedback"):  # binary feedback trains KTO only
        from .test_data_sources import feedback_file

        return ["method=kto", f"dataset.path={feedback_file(tmp_path / 'feedback.jsonl')}"]
    if (group, option) == ("dataset", "mixture"):
        demo = PACKAGE_DIR / "demo" / "preferences.jsonl"
        other = shared_file("ultrafeedback/sample.jsonl")
        return [f"dataset.sources=[{{path: {demo}, weight: 1}}, {{path: {other}, weight: 1}}]"]
    if (group, option) == ("reward", "trained_rm"):
        return ["dataset=preference_files", DEMO_PAIRS]  # a trained judge learns from a share of preference pairs
    if group == "reward" and option != "none":
        return ["dataset=imdb_sentiment"]  # a pair-building scorer needs a task that scores samples into pairs
    return [DEMO_PAIRS] if (group, option) == ("dataset", "preference_files") else []


def sweep_jobs(preset: str) -> list[list[str]]:
    """The overrides of each job a preset's basic-sweeper grid launches (one empty job for a preset without one)."""
    full = compose_with_hydra([f"experiment={preset}"])
    params = full.hydra.sweeper.get("params") or {}
    if not params or "optuna" in str(full.hydra.sweeper.get("_target_", "")).lower():
        return [[]]
    jobs: list[list[str]] = [[]]
    for override in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()]):
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        jobs = [[*job, f"{override.key_or_group}={value}"] for job in jobs for value in values]
    return jobs


def compose_with_hydra(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_passes_the_runs_validation(preset):
    """`python -m dpo_exp experiment=<preset>` (every job of its sweep) gets past validation: no preset ships a key
    the schemas reject (quickstart_pairs shipped `eval.reward: vader` after eval/reward became a group)."""
    jobs = sweep_jobs(preset)
    assert jobs
    for job in jobs:
        validate(compose([f"experiment={preset}", *job]))


def test_sweep_presets_expand_to_their_grids():
    assert len(sweep_jobs("sweep_beta")) == 5 and ["beta=0.05"] in sweep_jobs("sweep_beta")
    assert len(sweep_jobs("sweep_data_size")) == 4


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_passes_the_runs_validation(group, option, tmp_path):
    validate(compose([f"{group}={option}", *companions(group, option, tmp_path)]))


@pytest.mark.parametrize(
    "override", [f"hydra/launcher={o}" for o in options("hydra/launcher")] + ["hparams_search=optuna_beta_lr"]
)
def test_launcher_and_search_options_name_classes_that_exist(override):
    """The hydra launcher / sweeper options compose, and the classes they instantiate import; the run config they
    carry validates."""
    full = compose_with_hydra([override])
    assert get_class(full.hydra.launcher._target_) and get_class(full.hydra.sweeper._target_)
    validate(compose([override]))


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


# Test scale: the fast tiny model, one short epoch, a small evaluation; everything else is the preset's own.
SMALL_EVAL = ["eval.num_prompts=4", "eval.num_samples=2", "eval.bootstrap=20", "eval.best_of_n=[1,2]"]
SMALL_EVAL += ["eval.best_of_n_prompts=2", "eval.num_pairs=4", "logger=none", "epochs=2"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset,extra",
    [
        ("quickstart", ["data_size=8", "sft.max_steps=2", "sft.num_texts=32", "generation.max_new_tokens=8"]),
        ("quickstart_pairs", ["data_size=8"]),
    ],
)
def test_quickstarts_run_end_to_end(tmp_path, preset, extra):
    run_dir = tmp_path / "run"
    overrides = [f"experiment={preset}", *FAST_MODEL, *FAST_TRAINER, *SMALL_EVAL, *extra, f"hydra.run.dir={run_dir}"]
    result = run_cli(overrides, tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _summary(run_dir)
    assert summary["status"] == "completed"
    assert summary["eval/reward_delta"] is not None  # scored by VADER: the preset's scorer reached the evaluation
    assert (run_dir / "samples.md").is_file()
    from huggingface_hub import ModelCard

    for card in ("model/README.md", "model/adapter/README.md"):  # both presets train LoRA: the adapter has its own
        results = {r.metric_type: r.metric_value for r in ModelCard.load(run_dir / card).data.eval_results}
        assert results["reward_delta"] == pytest.approx(summary["eval/reward_delta"], abs=1e-6)


def test_imdb_tiny_preset_is_the_readme_headline_command():
    """README: `experiment=imdb_tiny` is the headline command's configuration (dataset=imdb_sentiment
    model=tiny_gpt2 reward=tfidf_logreg sft.enabled=true data_size=256): the composed configs differ in the name only."""
    from omegaconf import OmegaConf

    data = "dataset.path=../shared/data/imdb/test.jsonl"
    headline = ["dataset=imdb_sentiment", "model=tiny_gpt2", "reward=tfidf_logreg", "sft.enabled=true", "data_size=256"]
    one = OmegaConf.to_container(compose([*headline, data, "logger=none"]), resolve=True)
    two = OmegaConf.to_container(compose(["experiment=imdb_tiny", data, "logger=none"]), resolve=True)
    assert one.pop("name") == "dpo" and two.pop("name") == "imdb_tiny"
    assert one == two
