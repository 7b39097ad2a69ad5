"""Config composition: every group option composes, shorthands flow into the groups, presets apply."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from dpo_exp import CONF_DIR
from dpo_exp.config import validate
from dpo_exp.errors import UserError

from .conftest import compose

GROUPS = ["model", "dataset", "reward", "trainer", "lora", "logger", "eval", "generation", "eval/reward"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_has_its_required_options():
    assert {"gpt2", "gpt2_medium", "tiny_gpt2"} <= set(options("model"))
    assert {"ultrafeedback", "hh_rlhf", "preference_files", "imdb_sentiment"} <= set(options("dataset"))
    assert {"dpo"} <= set(options("trainer"))
    assert {"gpt2_attn", "none"} <= set(options("lora"))
    assert {"wandb", "none"} <= set(options("logger"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_each_group_option_composes_and_resolves(group, option):
    overrides = [f"{group}={option}"]
    if option == "preference_files":
        overrides.append("dataset.path=x.jsonl")
    cfg = compose(overrides)
    from hydra.core.hydra_config import HydraConfig

    OmegaConf.to_container(cfg, resolve=True)
    assert OmegaConf.select(cfg, group.replace("/", ".")) is not None
    assert HydraConfig.get().runtime.choices[group] == option


def test_shorthands_flow_into_groups():
    cfg = compose(["beta=0.3", "lr=2e-5", "epochs=7", "data_size=50", "seed=3"])
    assert cfg.trainer.beta == 0.3
    assert cfg.trainer.learning_rate == 2e-5
    assert cfg.trainer.num_train_epochs == 7
    assert cfg.dataset.data_size == 50
    assert cfg.seed == 3


def test_imdb_sentiment_defaults_to_a_sentiment_reward_but_cli_wins():
    assert compose(["dataset=imdb_sentiment"]).reward.kind != "none"
    assert compose(["dataset=imdb_sentiment", "reward=vader"]).reward.kind == "vader"


def test_experiment_presets_compose():
    presets = sorted(p.stem for p in (CONF_DIR.parent / "experiments").glob("*.yaml"))
    assert {"seed_ultrafeedback", "quickstart"} <= set(presets)
    for name in presets:
        cfg = compose([f"experiment={name}"])
        OmegaConf.to_container(cfg, resolve=False)  # composes


def test_seed_preset_is_the_original_projects_run():
    cfg = compose(["experiment=seed_ultrafeedback"])
    assert cfg.model.hub_id == "gpt2" and cfg.dataset.name == "ultrafeedback"
    assert cfg.lora.enabled and list(cfg.lora.target_modules) == ["c_attn", "c_proj"]
    assert cfg.dataset.data_size == 50 and cfg.trainer.learning_rate == 1e-4 and cfg.trainer.num_train_epochs == 5
    assert cfg.trainer.optim == "adamw_torch" and cfg.trainer.eval_strategy == "epoch"


def test_dpo_paper_preset_matches_the_papers_appendix(tmp_path):
    """Rafailov et al. 2023, appendices B and C.1: gpt2-large, SiEBERT, full fine-tuning, RMSprop at lr 1e-6 with 150
    warm-up steps, batch 64, beta 0.1 (swept 0.05/0.1/1/5), 25,000 prefixes of 2-8 tokens, 4 samples -> 6 pairs."""
    import torch
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from transformers import Trainer

    from dpo_exp.training.trainer import dpo_config

    cfg = compose(["experiment=dpo_paper_imdb"])
    assert cfg.model.hub_id == "gpt2-large" and cfg.reward.kind == "siebert" and not cfg.lora.enabled
    assert cfg.sft.enabled and cfg.dataset.data_size == 25000 and cfg.generation.num_samples == 4
    assert (cfg.dataset.prompt_tokens_min, cfg.dataset.prompt_tokens_max) == (2, 8)
    assert cfg.dataset.pairs.strategy == "all_pairs"
    args = dpo_config(cfg, tmp_path, "fp32", "cpu")
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert optimizer_cls is torch.optim.RMSprop and kwargs["lr"] == 1e-6
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 64
    assert args.get_warmup_steps(10_000) == 150 and args.lr_scheduler_type == "constant_with_warmup"
    assert args.beta == 0.1 and args.learning_rate == 1e-6
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        full = hydra_compose(config_name="config", overrides=["experiment=dpo_paper_imdb"], return_hydra_config=True)
    assert str(full.hydra.sweeper.params.beta) == "0.05,0.1,1,5"


@pytest.mark.parametrize(
    "override,total,expected",
    [
        ([], 100, 10),  # the default: 10% of the steps
        (["trainer.warmup_steps=0.25"], 40, 10),  # a value < 1 is a fraction of the total steps
        (["trainer.warmup_steps=7"], 100, 7),  # >= 1: a number of steps
        (["trainer.warmup_steps=0"], 100, 0),
    ],
)
def test_warmup_reaches_dpo_config(tmp_path, override, total, expected):
    """trainer.warmup_steps is TRL's own field: the built DPOConfig warms up over that fraction or number of steps,
    and the LR schedule the Trainer makes from it really peaks after them."""
    import torch
    from transformers import get_scheduler

    from dpo_exp.training.trainer import dpo_config

    args = dpo_config(compose(["model=tiny_gpt2", *override]), tmp_path, "fp32", "cpu")
    assert args.get_warmup_steps(total) == expected
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    schedule = get_scheduler(args.lr_scheduler_type, optimizer, args.get_warmup_steps(total), total)
    lrs = []
    for _ in range(total):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert max(range(total), key=lrs.__getitem__) == expected  # rises for `expected` steps, then decays


def test_trainer_group_is_trls_dpo_config(tmp_path):
    """conf/trainer/dpo.yaml is instantiated as trl.DPOConfig; only TRL's own field names are in it, and a valid
    non-default TRL loss type (and any extra DPOConfig field) reaches the built config."""
    import dataclasses

    from trl import DPOConfig

    from dpo_exp.config import validate
    from dpo_exp.training.trainer import dpo_config

    cfg = compose(["model=tiny_gpt2", "trainer.loss_type=ipo", "+trainer.label_smoothing=0.05"])
    assert cfg.trainer._target_ == "trl.DPOConfig"
    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    assert set(cfg.trainer) - {"_target_"} <= fields
    validate(cfg)
    args = dpo_config(cfg, tmp_path, "fp32", "cpu")
    assert isinstance(args, DPOConfig) and args.loss_type == ["ipo"] and args.label_smoothing == 0.05
    assert args.output_dir == str(tmp_path / "checkpoints") and args.seed == args.data_seed == cfg.seed
    mixed = dpo_config(compose(["model=tiny_gpt2", "trainer.loss_type=[sigmoid,sft]", "+trainer.loss_weights=[1,0.5]"]),
                       tmp_path, "fp32", "cpu")  # fmt: skip
    assert mixed.loss_type == ["sigmoid", "sft"] and mixed.loss_weights == [1, 0.5]


def test_unknown_loss_type_is_refused_with_trls_list():
    from dpo_exp.schema import trl_loss_types

    with pytest.raises(UserError) as info:
        validate(compose(["model=tiny_gpt2", "trainer.max_length=128", "trainer.loss_type=dpo_plus"]))
    message = str(info.value)
    assert "\n" not in message and "trainer.loss_type='dpo_plus'" in message
    assert str(trl_loss_types()) in message and {"sigmoid", "ipo", "hinge", "sft"} <= set(trl_loss_types())


def test_trl_loss_types_are_the_ones_trls_trainer_implements(tmp_path, ultrafeedback_file):
    """The list read from trl.DPOConfig's documentation is the one in the trainer's own error for an unknown loss
    type (raised at the first loss computation): pinned to the installed TRL."""
    import ast
    import re

    from dpo_exp.data.preference import load_preference_data
    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.models import build_model, load_tokenizer
    from dpo_exp.schema import trl_loss_types
    from dpo_exp.training.ref_logps import pairs_dataset
    from dpo_exp.training.trainer import build_trainer

    cfg = compose(
        ["model=tiny_gpt2", "model.tiny.n_layer=1", "model.tiny.n_embd=32", "model.tiny.n_head=2", "lora=none"]
        + ["dataset=ultrafeedback", f"dataset.path={ultrafeedback_file}", "data_size=4", "trainer.max_length=64"]
        + ["trainer.max_steps=1", "trainer.eval_strategy=no", "trainer.save_strategy=no", "trainer.loss_type=nope"]
        + ["trainer.precompute_ref_log_probs=false", "trainer.per_device_train_batch_size=2"]
    )
    data = load_preference_data(cfg.dataset, int(cfg.seed), None, 64)
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model, 0)
    trainer = build_trainer(cfg, model, tokenizer, pairs_dataset(data.train), None, tmp_path, Tracker(), "fp32", "cpu")
    with pytest.raises(ValueError, match="Unknown loss type: nope") as info:
        trainer.train()
    listed = ast.literal_eval(re.search(r"Should be one of (\[.*?\])", str(info.value)).group(1))
    assert listed == trl_loss_types()


def test_eval_reward_is_a_config_group():
    """eval/reward=vader puts conf/reward/vader.yaml's content under eval.reward, and the evaluation scores with
    it; unset, eval.reward is null and the run's own `reward` scores."""
    from dpo_exp.evaluation.inputs import build_eval_scorer
    from dpo_exp.judges import SCORERS

    cfg = compose(["eval/reward=vader"])
    assert OmegaConf.to_container(cfg.eval.reward) == OmegaConf.to_container(
        OmegaConf.load(CONF_DIR / "reward" / "vader.yaml")
    )
    assert cfg.reward.kind == "none"  # the run's own reward is untouched
    scorer, name, skipped = build_eval_scorer(cfg)
    assert name == "vader" and skipped is None and isinstance(scorer, SCORERS["vader"])
    assert scorer.score(["What a wonderful, great film."])[0] > scorer.score(["A terrible, awful film."])[0]
    plain = compose(["dataset=imdb_sentiment", "reward=vader"])
    assert plain.eval.reward is None and build_eval_scorer(plain)[1] == "vader"  # the run's reward


def test_evaluate_config_composes_the_same_eval_and_generation_blocks():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        standalone = hydra_compose(config_name="evaluate", overrides=["run_dir=x", "eval/reward=vader"])
    run = compose(["eval/reward=vader"])
    assert OmegaConf.to_container(standalone.eval, resolve=True) == OmegaConf.to_container(run.eval, resolve=True)
    assert standalone.generation == run.generation


def test_trl_defaults_are_overridden_explicitly(tmp_path):
    """TRL's DPOConfig defaults (lr 1e-6, bf16 on, gradient checkpointing on) must not leak into a CPU run."""
    from dpo_exp.training.trainer import dpo_config

    cfg = compose(["model=tiny_gpt2", "lr=3e-4"])
    args = dpo_config(cfg, tmp_path, "fp32", "cpu")
    assert args.learning_rate == 3e-4
    assert not args.bf16 and not args.fp16
    assert not args.gradient_checkpointing
    assert args.report_to in ([], "none", ["none"])
    assert args.beta == cfg.beta


@pytest.mark.parametrize(
    "override,field",
    [
        ("beta=0", "beta"),
        ("beta=-1", "beta"),
        ("lr=0", "lr"),
        ("data_size=0", "data_size"),
        ("trainer.loss_type=nope", "trainer.loss_type"),
        ("trainer.per_device_train_batch_size=0", "batch_size"),
    ],
)
def test_validate_names_the_bad_field(override, field):
    with pytest.raises(UserError, match=field):
        validate(compose([override]))


def _model_default(option: str, key: str):
    return OmegaConf.load(CONF_DIR / "model" / f"{option}.yaml")[key]


def test_model_options_carry_their_own_learning_rate_and_the_cli_wins():
    """Per-model defaults: tiny_gpt2 brings full fine-tuning at the lr that moves a random tiny model (and more
    epochs), gpt2 the seed project's LoRA at 1e-4."""
    tiny = compose(["model=tiny_gpt2"])
    assert tiny.lr == tiny.trainer.learning_rate == _model_default("tiny_gpt2", "lr") == 1e-4
    assert not tiny.lora.enabled and tiny.trainer.num_train_epochs == _model_default("tiny_gpt2", "epochs") == 4
    assert compose(["model=tiny_gpt2", "lora=gpt2_attn"]).lora.enabled  # the adapter is one override away
    assert compose(["lora=gpt2_attn", "model=tiny_gpt2"]).lora.enabled
    assert tiny.sft.max_steps == _model_default("tiny_gpt2", "sft").max_steps
    # batch size (through the `batch_size` shorthand) and pair-building samples: the model option wins over the
    # trainer and generation groups' defaults
    assert tiny.trainer.per_device_train_batch_size == _model_default("tiny_gpt2", "batch_size") == 16
    assert tiny.generation.num_samples == _model_default("tiny_gpt2", "generation").num_samples == 8
    assert compose([]).trainer.per_device_train_batch_size == 8 and compose([]).generation.num_samples == 4
    assert compose(["model=tiny_gpt2", "batch_size=4"]).trainer.per_device_train_batch_size == 4
    assert compose(["model=tiny_gpt2", "generation.num_samples=3"]).generation.num_samples == 3
    assert tiny.model.tiny.n_layer == 4 and tiny.model.name == "tiny-gpt2"  # the model block is still `model`
    for option in ("gpt2", "gpt2_medium"):
        cfg = compose([f"model={option}"])
        assert cfg.trainer.learning_rate == 1e-4 and cfg.lora.enabled
    # command-line values win over the model option, in either order
    assert compose(["model=tiny_gpt2", "lr=5e-4"]).trainer.learning_rate == 5e-4
    assert compose(["lr=5e-4", "model=tiny_gpt2"]).trainer.learning_rate == 5e-4
    assert compose(["model=tiny_gpt2", "sft.max_steps=7"]).sft.max_steps == 7


def test_experiment_presets_override_the_model_defaults():
    quick = compose(["experiment=quickstart"])
    preset = OmegaConf.load(CONF_DIR.parent / "experiments" / "quickstart.yaml")
    assert quick.model.name == "tiny-gpt2"
    assert quick.trainer.learning_rate == preset.lr and quick.sft.max_steps == preset.sft.max_steps
    assert compose(["experiment=quickstart", "lr=7e-4"]).trainer.learning_rate == 7e-4  # and the CLI over both
    seed = compose(["experiment=seed_ultrafeedback", "model=tiny_gpt2"])  # a preset's lr beats the model's
    assert seed.trainer.learning_rate == 1e-4


def test_evaluation_defaults_resolve_the_effect():
    cfg = compose([])
    assert cfg.eval.num_prompts >= 100 and cfg.eval.num_samples >= 4
    assert list(cfg.eval.best_of_n) == [1, 2, 4, 8, 16] and cfg.eval.best_of_n_prompts > 0
    imdb = compose(["dataset=imdb_sentiment"])
    assert 500 * imdb.dataset.eval_fraction >= 100  # a 500-review file holds out enough reviews for ~100 prompts


def test_a_single_500_review_file_holds_out_about_100_evaluation_prompts():
    """The issue's command (one file of 500 reviews): dataset.eval_fraction leaves ~100 held-out prompts."""
    from dpo_exp.data.imdb import load_prompt_sets
    from dpo_exp.models import load_tokenizer

    from .conftest import shared_file

    path = shared_file("imdb/test.jsonl")
    cfg = compose(["experiment=imdb_tiny", f"dataset.path={path}"])
    counts = load_prompt_sets(cfg, load_tokenizer(cfg.model)).counts
    assert counts["test_reviews"] == 125 and counts["train_prompts"] == 256
    assert counts["eval_prompts"] == cfg.eval.num_prompts == 100


def test_a_run_saved_before_the_eval_reward_group_still_loads(tmp_path):
    """Runs saved with `eval.reward: vader` (a name) and without settings added since are re-evaluated with that
    scorer's config group content and today's defaults for the missing settings."""
    from dpo_exp.config import check_eval
    from dpo_exp.evaluation.inputs import load_run_config

    saved = OmegaConf.to_container(compose(["model=tiny_gpt2"]), resolve=False)
    saved["eval"]["reward"] = "vader"
    del saved["eval"]["best_of_n_prompts"], saved["generation"]["max_batch_tokens"]
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(saved), tmp_path / ".hydra" / "config.yaml")
    cfg = load_run_config(tmp_path)
    check_eval(cfg)
    assert cfg.eval.reward.kind == "vader" and cfg.eval.best_of_n_prompts == 32
    assert cfg.generation.max_batch_tokens is None
