"""Shared test helpers: the real data samples in ../shared/data, a fast tiny GPT-2, CLI and compose runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("DPO_EXP_SHARED_DATA", ROOT.parent / "shared" / "data"))

# A tiny GPT-2 that trains in seconds on 2 CPU cores (the 50k-token vocabulary dominates the cost).
FAST_MODEL = [
    "model=tiny_gpt2",
    "model.tiny.n_layer=1",
    "model.tiny.n_embd=32",
    "model.tiny.n_head=2",
    "model.tiny.n_positions=128",
]
FAST_TRAINER = [
    "trainer.max_length=64",
    "trainer.per_device_train_batch_size=4",
    "trainer.per_device_eval_batch_size=8",
    "trainer.save_strategy=no",
    "generation.batch_size=16",
    "generation.num_samples=4",  # the tests' sampling budget (tiny_gpt2's own default is 8)
]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")


def shared_file(relative: str) -> Path:
    """A file of ../shared/data; skip (or fail under CI, DPO_EXP_REQUIRE_SHARED_DATA=1) when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"shared data sample {path} is missing (see the README: tests read ../shared/data)"
        if os.environ.get("DPO_EXP_REQUIRE_SHARED_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def ultrafeedback_file() -> Path:
    return shared_file("ultrafeedback/sample.jsonl")


@pytest.fixture
def hh_file() -> Path:
    return shared_file("hh_rlhf/test.jsonl")


@pytest.fixture
def imdb_dir() -> Path:
    shared_file("imdb/train.jsonl")
    return shared_file("imdb/test.jsonl").parent


def run_cli(args: list[str], cwd: Path, module: str = "dpo_exp", timeout: int = 600, env: dict | None = None):
    """`python -m <module> args` in `cwd` (caches under cwd/.cache); returns the CompletedProcess."""
    full_env = {**os.environ, "DPO_EXP_CACHE": str(cwd / ".cache"), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def compose(overrides: list[str]):
    """The job config for `overrides`, as `python -m dpo_exp` builds it: no `hydra` node, but HydraConfig set
    (so `${hydra:...}` resolves and `HydraConfig.get().runtime.choices` names the chosen options)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from dpo_exp import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
