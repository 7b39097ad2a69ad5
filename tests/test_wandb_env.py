"""W&B's own environment variables win over conf/logger/wandb.yaml's defaults; command-line overrides win over them."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from dpo_exp.infra.tracking import start_tracker

from .conftest import compose
from .wandb_records import offline_runs, run_record


@pytest.mark.parametrize(
    "env,key,default",
    [
        ("WANDB_PROJECT", "project", "dpo_exp"),
        ("WANDB_ENTITY", "entity", None),
        ("WANDB_DIR", "dir", None),
        ("WANDB_MODE", "mode", "auto"),
    ],
)
def test_env_beats_default_and_command_line_beats_env(monkeypatch, env, key, default):
    monkeypatch.delenv(env, raising=False)
    assert compose([]).logger[key] == default
    monkeypatch.setenv(env, "offline" if key == "mode" else "from_env")
    assert compose([]).logger[key] == ("offline" if key == "mode" else "from_env")
    assert compose([f"logger.{key}=disabled" if key == "mode" else f"logger.{key}=from_cli"]).logger[key] in (
        "disabled",
        "from_cli",
    )


def test_wandb_project_from_the_environment_reaches_the_run(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_PROJECT", "foo")
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = OmegaConf.to_container(compose([]).logger, resolve=True)
    tracker = start_tracker(OmegaConf.create(logger), tmp_path, "t", "g", [], {"a": 1})
    assert tracker.active and tracker.mode == "offline"
    tracker.finish()
    (run,) = offline_runs(tmp_path)
    assert run_record(run)["project"] == "foo"


def test_explicit_mode_beats_wandb_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = OmegaConf.to_container(compose(["logger.mode=disabled"]).logger, resolve=True)
    assert not start_tracker(OmegaConf.create(logger), tmp_path, "t", "g", [], {}).active
