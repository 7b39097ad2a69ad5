"""`objective: auto`: the number a job returns to a sweeper is comparable across beta (not eval_loss)."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import compose


def test_auto_objective_is_reward_delta_with_a_scorer_else_reward_accuracy():
    from dpo_exp.objective import objective_key

    assert compose([]).objective == "auto"  # the default
    # ultrafeedback, reward=none, no eval.reward: the exact per-pair accuracy (TRL's per-batch mean when eval is off)
    assert objective_key(compose([])) == "eval/implicit_accuracy"
    assert objective_key(compose(["eval.enabled=false"])) == "eval_rewards/accuracies"
    assert objective_key(compose(["eval.num_pairs=0"])) == "eval_rewards/accuracies"
    assert objective_key(compose(["eval/reward=vader"])) == "eval/reward_delta"
    assert objective_key(compose(["dataset=imdb_sentiment"])) == "eval/reward_delta"  # its reward: sst2
    assert objective_key(compose(["dataset=imdb_sentiment", "eval.enabled=false"])) == "eval_rewards/accuracies"
    assert objective_key(compose(["objective=eval_loss", "eval/reward=vader"])) == "eval_loss"  # explicit wins


def test_a_completed_job_returns_the_resolved_objective(tmp_path: Path):
    """The value a sweeper receives (here from a completed run that is skipped) is the auto-resolved key's."""
    from dpo_exp.pipeline import run

    summary = {
        "status": "completed",
        "eval_loss": 0.69,
        "eval_rewards/accuracies": 0.7,  # TRL's per-batch mean: not what auto returns when evaluation ran
        "eval/implicit_accuracy": 0.75,
        "eval/reward_delta": 0.125,
    }
    for overrides, expected in (([], 0.75), (["eval/reward=vader"], 0.125)):
        run_dir = tmp_path / str(expected)
        run_dir.mkdir()
        (run_dir / "summary.json").write_text(json.dumps(summary))
        assert run(compose(["model=tiny_gpt2", "logger=none", *overrides]), run_dir) == expected


def test_optuna_preset_maximises_the_auto_objective():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dpo_exp import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["hparams_search=optuna_beta_lr"], return_hydra_config=True)
    assert cfg.objective == "auto" and cfg.hydra.sweeper.direction == "maximize"
