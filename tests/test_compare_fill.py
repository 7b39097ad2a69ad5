"""`compare` when a run did not override a swept key (issue 23): the value comes from the run's own saved config, and
a column mixing numbers, "null" and missing values sorts (numbers, then text, then missing) instead of raising."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from dpo_exp.compare.table import compare

from .test_compare import curves, write_run


def saved_run(run_dir: Path, overrides: dict[str, str], config: dict | None, beta: float, choices: dict | None = None):
    """A completed run with its .hydra/config.yaml (and hydra.yaml choices) as Hydra saves them."""
    summary = {
        "status": "completed",
        "loss": 0.6,
        "eval_loss": 0.6 - beta / 10,
        "eval_rewards/accuracies": 0.5 + beta / 10,
        "eval/reward_policy": 0.5 + beta,
        "eval/kl": 1 / beta,
    }
    write_run(run_dir, overrides, summary, curves(beta))
    if config is not None:
        OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    if choices is not None:
        OmegaConf.save(
            OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), run_dir / ".hydra" / "hydra.yaml"
        )
    return run_dir


def test_a_data_size_column_of_64_null_and_absent_sorts_and_fills_from_the_config(tmp_path: Path):
    """The probe's case: one run overrode data_size=64, one data_size=null, one nothing (its config: 32)."""
    config = {"beta": 0.1, "data_size": None, "trainer": {"beta": "${beta}"}}
    saved_run(tmp_path / "0", {"data_size": "null"}, config, 0.1)
    saved_run(tmp_path / "1", {"data_size": "64"}, {**config, "data_size": 64}, 0.1)
    saved_run(tmp_path / "2", {}, {**config, "data_size": 32}, 0.1)
    df = compare([tmp_path], console=False)
    assert list(df["data_size"]) == [32, 64, "null"]  # 32 read from the run's own config; numbers, then null
    assert "| 2 | 32 |" in (tmp_path / "comparison.md").read_text()


def test_a_beta_a_run_did_not_override_is_its_configs_and_sorts_and_plots_as_a_number(tmp_path: Path):
    config = {"beta": 0.1, "trainer": {"beta": "${beta}"}}
    saved_run(tmp_path / "0", {"beta": "1.0", "lr": "1e-3"}, {**config, "beta": 1.0}, 1.0)
    saved_run(tmp_path / "1", {"lr": "1e-3"}, config, 0.1)  # ran with the default beta=0.1: no override
    saved_run(tmp_path / "2", {"beta": "0.5", "lr": "1e-4"}, {**config, "beta": 0.5}, 0.5)
    df = compare([tmp_path], console=False)
    assert list(df["beta"]) == [0.1, 0.5, 1.0] and df["beta"].notna().all()  # not NaN: filled, then sorted
    assert (tmp_path / "plots" / "metrics_vs_beta.png").is_file()
    assert "nan" not in (tmp_path / "comparison.md").read_text()


def test_a_group_option_comes_from_the_runs_choices_and_a_run_without_config_sorts_last(tmp_path: Path):
    saved_run(tmp_path / "0", {"model": "gpt2"}, {"beta": 0.1}, 0.1, choices={"model": "gpt2"})
    saved_run(tmp_path / "1", {}, {"beta": 0.1}, 0.2, choices={"model": "tiny_gpt2"})
    saved_run(tmp_path / "2", {"model": "gpt2_medium"}, None, 0.3)  # no saved config at all
    saved_run(tmp_path / "3", {}, None, 0.4)  # no override, no config: nothing to fill with
    df = compare([tmp_path], console=False)
    assert list(df["model"])[:3] == ["gpt2", "gpt2_medium", "tiny_gpt2"] and df["model"].isna().tolist()[3]
    assert json.loads(json.dumps(list(df["run"]))) == ["0", "2", "1", "3"]
