"""The `method` config group (fast: composition, validation, TRL configs, the comparison's lines; no training)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dpo_exp import CONF_DIR
from dpo_exp.config import validate
from dpo_exp.errors import UserError
from dpo_exp.methods import build_method
from dpo_exp.methods.base import scorer_reward, trl_args

from .conftest import FAST_MODEL, FAST_TRAINER, compose

METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))


def imdb(imdb_dir: Path, *extra: str):
    return compose(
        ["dataset=imdb_sentiment", f"dataset.path={imdb_dir}", "reward=vader", *FAST_MODEL, *FAST_TRAINER, *extra]
    )


def test_the_method_group_offers_the_papers_comparison():
    assert {"dpo", "preferred_ft", "rloo", "online_dpo", "iterative_dpo", "kto", "orpo", "simpo", "grpo"} <= set(
        METHODS
    )


@pytest.mark.parametrize("name", METHODS)
def test_each_method_composes_validates_and_builds(imdb_dir, name):
    cfg = imdb(imdb_dir, f"method={name}")
    validate(cfg)
    method = build_method(cfg)
    assert method.name == name and type(method).__module__ == f"dpo_exp.methods.{name}"


def test_a_config_without_the_method_group_trains_dpo(imdb_dir):
    """Runs saved before the `method` group (no `method` key) are DPO runs."""
    from omegaconf import open_dict

    cfg = imdb(imdb_dir)
    with open_dict(cfg):
        del cfg["method"]
    assert type(build_method(cfg)).__name__ == "DPO"


def test_trl_config_takes_the_trainer_groups_shared_fields_then_the_methods_own(imdb_dir, tmp_path):
    """lr, logging, seed flow from the `trainer` group; beta is RLOO's KL coefficient; the method's own fields win."""
    from trl import RLOOConfig

    cfg = imdb(imdb_dir, "method=rloo", "lr=3e-4", "beta=0.2", "trainer.logging_steps=3", "seed=7")
    args = trl_args(cfg, tmp_path, "fp32", "cpu")
    assert isinstance(args, RLOOConfig)
    assert (args.learning_rate, args.beta, args.logging_steps, args.seed) == (3e-4, 0.2, 3, 7)
    assert args.num_generations == 4 and args.eval_strategy == "no" and args.report_to == []
    assert Path(args.output_dir) == tmp_path / "checkpoints"


def test_online_dpo_is_trls_experimental_trainer_pinned_in_trl_compat(imdb_dir, tmp_path):
    import trl.experimental.online_dpo as online

    from dpo_exp import trl_compat

    assert trl_compat.OnlineDPOTrainer is online.OnlineDPOTrainer
    # only transformers.TrainingArguments fields are shared: DPOConfig's loss_type (same name) is not copied over
    cfg = imdb(imdb_dir, "method=online_dpo", "beta=0.3", "trainer.loss_type=ipo", "generation.max_new_tokens=12")
    args = trl_args(cfg, tmp_path, "fp32", "cpu")
    assert isinstance(args, online.OnlineDPOConfig) and args.beta == 0.3 and args.max_new_tokens == 12
    assert args.loss_type == "sigmoid" and args.max_length == cfg.trainer.max_length == 64


def test_an_online_method_needs_a_task_with_a_scorer(ultrafeedback_file):
    cfg = compose(
        ["dataset=ultrafeedback", f"dataset.path={ultrafeedback_file}", *FAST_MODEL, *FAST_TRAINER, "method=rloo"]
    )
    with pytest.raises(UserError, match="method=rloo trains on a scorer's rewards"):
        validate(cfg)


def test_a_bad_trl_field_in_a_methods_args_is_one_error_line(imdb_dir):
    cfg = imdb(imdb_dir, "method=rloo", "+method.args.no_such_field=1")
    with pytest.raises(UserError, match=r"method.args \(trl.RLOOConfig\).*no_such_field"):
        validate(cfg)


@pytest.mark.parametrize("name", ["preferred_ft", "rloo", "online_dpo"])
def test_on_nonfinite_skip_is_refused_where_no_dpo_trainer_can_skip(imdb_dir, name):
    """Only dpo_exp's DPO trainer can drop a micro-batch; the other methods stop, and say so before anything loads."""
    validate(imdb(imdb_dir, "method=dpo", "on_nonfinite=skip"))
    with pytest.raises(UserError, match=f"on_nonfinite=skip needs a DPO-based method; method={name} stops"):
        validate(imdb(imdb_dir, f"method={name}", "on_nonfinite=skip"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.rounds=0", "method.rounds=0 must be a whole number >= 1"),
        ("method.reference=both", "method.reference='both' is not one of"),
        ("lora=gpt2_attn", "trains full fine-tuning: choose lora=none"),
    ],
)
def test_iterative_dpo_rejects_bad_settings(imdb_dir, override, message):
    with pytest.raises(UserError, match=message):
        validate(imdb(imdb_dir, "method=iterative_dpo", override))


def test_the_scorer_is_the_reward_function_on_prompt_plus_completion(imdb_dir):
    """What RLOO and Online DPO train on is what the evaluation scores (eval.score_with_prompt: the whole review)."""
    from dpo_exp.judges import build_scorer

    cfg = imdb(imdb_dir)
    reward = scorer_reward(cfg)
    scorer = build_scorer(cfg.reward, cfg)
    prompts, completions = ["This film was", "I hated"], [" wonderful and moving.", " every minute of it."]
    assert reward(prompts, completions) == scorer.score([p + c for p, c in zip(prompts, completions)])
    assert reward(prompts, completions) != scorer.score(completions)


def test_a_method_sweep_draws_one_frontier_line_per_method():
    """method x beta: a line per method along beta; method alone: a line per method, never one line across them."""
    from dpo_exp.compare.plots import frontier_lines

    rows = [
        {"run": f"{m}-{b}", "method": m, "beta": b, "eval/kl_rb": kl, "eval/reward_policy": r}
        for m, points in {
            "dpo": [(0.1, 5.0, 0.6), (0.5, 1.0, 0.55)],
            "rloo": [(0.1, 3.0, 0.7), (0.5, 0.5, 0.6)],
        }.items()
        for b, kl, r in points
    ]
    along, lines = frontier_lines(pd.DataFrame(rows), ["method", "beta"], "eval/kl_rb")
    assert along == "beta" and [label for label, _ in lines] == ["method=dpo", "method=rloo"]
    assert all(len(points) == 2 for _, points in lines)
    along, lines = frontier_lines(pd.DataFrame(rows[::2]), ["method"], "eval/kl_rb")
    assert along is None and [label for label, _ in lines] == ["method=dpo", "method=rloo"]


def test_iterative_dpos_rounds_sit_on_its_frontier_line(tmp_path):
    """A run's earlier rounds (summary.json "rounds") are drawn as a dotted path ending at the run's own point."""
    from dpo_exp.compare.plots import plot_frontier, plot_rounds, round_points
    from dpo_exp.compare.table import compare
    from dpo_exp.infra.plots import plt

    from .test_compare import write_run

    point = {"eval/kl_rb": 4.0, "eval/reward_policy": 0.7, "eval/reward_reference": 0.5}
    rounds = [{"round": 1, "eval/kl_rb": 2.0, "eval/reward_policy": 0.6}, {"round": 2}]
    write_run(tmp_path / "0", {"method": "iterative_dpo"}, {"status": "completed", "rounds": rounds, **point})
    write_run(tmp_path / "1", {"method": "dpo"}, {"status": "completed", **point, "eval/kl_rb": 3.0})
    df = compare([tmp_path], console=False, plots=False)
    assert (
        round_points(tmp_path / "0", "eval/kl_rb") == [(2.0, 0.6)] and round_points(tmp_path / "1", "eval/kl_rb") == []
    )
    png, note = plot_frontier(df, ["method"], tmp_path)
    assert png.stat().st_size > 5000 and "2 line(s)" in note
    fig, ax = plt.subplots()
    plot_rounds(ax, df[df["method"] == "iterative_dpo"], "eval/kl_rb", "C0")
    plot_rounds(ax, df[df["method"] == "dpo"], "eval/kl_rb", "C1")  # no rounds: nothing drawn
    assert len(ax.get_lines()) == 1
    assert list(ax.get_lines()[0].get_xdata()) == [2.0, 4.0] and list(ax.get_lines()[0].get_ydata()) == [0.6, 0.7]
    plt.close(fig)


# ---------------------------------------------------------------- what each method's TRL trainer is built with


@pytest.fixture(scope="module")
def tiny_policy():
    """The fast tiny GPT-2 and its tokenizer (built from its config: no download)."""
    from dpo_exp.models import build_policy, load_tokenizer

    cfg = compose([*FAST_MODEL, *FAST_TRAINER])
    return build_policy(cfg.model, 0), load_tokenizer(cfg.model)


def method_settings(cfg, tokenizer, run_dir: Path):
    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.methods import MethodSettings
    from dpo_exp.tasks.base import StageEnv

    return MethodSettings(cfg, tokenizer, run_dir, Tracker(), StageEnv())


def test_preferred_ft_trains_the_sampled_ids_with_eos_only_where_a_sample_ended(imdb_dir, tiny_policy, tmp_path):
    """SFTTrainer gets prompt + chosen ids exactly as sampled: a sample cut at max_new_tokens gets no EOS (from text,
    TRL appends one to every completion), one that ended keeps its EOS; the prompt is not trained on."""
    from dpo_exp.data.pairs import build_pairs
    from dpo_exp.data.schema import PreferenceData
    from dpo_exp.generation import Samples, sample_sequences
    from dpo_exp.methods.preferred_ft import preferred_ft_trainer

    policy, tokenizer = tiny_policy
    eos, max_new = tokenizer.eos_token_id, 4
    prompts = ["This film was", "I watched it and"]
    cut, ended, other = [262, 318, 257, 1049], [845, 922], [13, 13, 13, 13]  # 4 tokens = cut, 2 = ended on EOS
    samples = Samples(
        prompts,
        [[tokenizer.decode(cut), tokenizer.decode(other)], [tokenizer.decode(ended), tokenizer.decode(other)]],
        [[cut, other], [ended, other]],
    )
    sequences = sample_sequences(tokenizer, samples, max_new, 128)
    pairs, _ = build_pairs(samples, [[1.0, 0.0], [1.0, 0.0]], "best_vs_worst", 0.0, sequences)
    cfg = imdb(imdb_dir, "method=preferred_ft")
    trainer = preferred_ft_trainer(
        policy,
        PreferenceData(train=pairs, eval=pairs),
        method_settings(cfg, tokenizer, tmp_path),
        trl_args(cfg, tmp_path, "fp32", "cpu"),
        [],
    )
    rows = list(trainer.train_dataset)  # in any order (SFTTrainer may shuffle)
    by_prompt = {tuple(tokenizer(p).input_ids): p for p in prompts}
    seen = {}
    for row in rows:
        prompt_ids = next(k for k in by_prompt if tuple(row["input_ids"][: len(k)]) == k)
        completion = row["input_ids"][len(prompt_ids) :]
        assert row["labels"] == [-100] * len(prompt_ids) + completion  # completion-only loss
        seen[by_prompt[prompt_ids]] = completion
    assert seen == {"This film was": cut, "I watched it and": [*ended, eos]}


def test_online_dpo_samples_with_the_runs_top_k_and_top_p(imdb_dir, tiny_policy, tmp_path):
    """The online pairs are drawn from the distribution the evaluation samples: generation.top_k/top_p reach TRL."""
    from dpo_exp.data.schema import PreferenceData
    from dpo_exp.methods.online_dpo import online_dpo_trainer

    policy, tokenizer = tiny_policy
    cfg = imdb(
        imdb_dir, "method=online_dpo", "generation.top_k=7", "generation.top_p=0.8", "generation.temperature=0.7"
    )
    args = trl_args(cfg, tmp_path, "fp32", "cpu")
    assert (args.top_k, args.top_p, args.temperature) == (7, 0.8, 0.7)
    data = PreferenceData(train=[{"prompt": "This film was", "chosen": " good", "rejected": " bad"}], eval=[])
    trainer = online_dpo_trainer(policy, data, method_settings(cfg, tokenizer, tmp_path), args, [])
    generation = trainer.generation_config
    assert (generation.top_k, generation.top_p, generation.temperature) == (7, 0.8, 0.7)


def test_rloo_builds_its_kl_reference_at_the_pinned_hub_revision(imdb_dir, tiny_policy, tmp_path, monkeypatch):
    """Full fine-tuning of a hub model at model.revision: TRL's reference is loaded at that revision (not main)."""
    import copy

    import trl.trainer.rloo_trainer as rloo_module
    from omegaconf import open_dict

    from dpo_exp.data.schema import PreferenceData
    from dpo_exp.methods.rloo import rloo_trainer

    policy, tokenizer = tiny_policy
    policy = copy.deepcopy(policy)
    cfg = imdb(imdb_dir, "method=rloo", "lora=none")
    with open_dict(cfg):  # the tiny model standing in for a hub model: its weights are only ever read from the hub
        cfg.model.tiny = None
        cfg.model.hub_id, cfg.model.revision = "org/some-model", "0123abcd"
    loaded = []

    def from_hub(model_id, **kwargs):  # no hub here: record what TRL asks for and hand back the starting weights
        loaded.append((model_id, kwargs))
        return copy.deepcopy(policy)

    monkeypatch.setattr(rloo_module, "create_model_from_path", from_hub)
    data = PreferenceData(train=[{"prompt": "This film was", "chosen": " good", "rejected": " bad"}], eval=[])
    trainer = rloo_trainer(
        policy, None, data, method_settings(cfg, tokenizer, tmp_path), trl_args(cfg, tmp_path, "fp32", "cpu"), []
    )
    assert trainer.ref_model is not None
    assert [(model_id, kwargs.get("revision")) for model_id, kwargs in loaded] == [("org/some-model", "0123abcd")]


# ---------------------------------------------------------------- the shorthands each method reads


def trained_with(cfg, tmp_path: Path) -> dict:
    """What a method's training reads from the config: its TRL config (DPO's: the trainer group) and its data."""
    from omegaconf import OmegaConf

    from dpo_exp.schema import dpo_config

    method = cfg.method.name
    args = dpo_config(cfg, tmp_path, "fp32", "cpu") if method in ("dpo", "iterative_dpo") else None
    args = args or trl_args(cfg, tmp_path, "fp32", "cpu")
    fields = {k: v for k, v in args.to_dict().items() if k not in ("output_dir", "logging_dir")}
    return {"trl": fields, "data": OmegaConf.to_container(cfg.dataset, resolve=True), "seed": cfg.seed}


@pytest.mark.parametrize("name", METHODS)
def test_each_method_declares_exactly_the_shorthands_that_change_its_training(imdb_dir, tmp_path, name):
    """A shorthand is declared (conf/method `shorthands`) if and only if changing it changes the TRL config or the
    data the method trains with: beta does not reach Preferred-FT, epochs neither RLOO nor Online DPO (their
    args.num_train_epochs)."""
    from dpo_exp.shorthands import SHORTHANDS, method_shorthands

    cfg = imdb(imdb_dir, f"method={name}", "data_size=16")
    cfg.trainer.per_device_train_batch_size = "${batch_size}"  # as conf/trainer/dpo.yaml has it (FAST_TRAINER sets 4)
    base = trained_with(cfg, tmp_path)
    changes = {"beta": 0.37, "lr": 3e-3, "epochs": 7, "batch_size": 12, "data_size": 24, "seed": 5}
    assert set(changes) == set(SHORTHANDS)
    reads = set()
    for key, value in changes.items():
        changed = cfg.copy()
        changed[key] = value
        if trained_with(changed, tmp_path) != base:
            reads.add(key)
    assert set(method_shorthands(cfg.method)) == reads
    assert ("beta" in reads) == (name != "preferred_ft")
    assert ("epochs" in reads) == (name not in ("rloo", "online_dpo", "grpo"))


@pytest.mark.parametrize(("name", "override"), [("preferred_ft", "beta=0.5"), ("rloo", "epochs=2")])
def test_setting_a_shorthand_the_method_ignores_is_one_error_line(imdb_dir, name, override):
    validate(imdb(imdb_dir, f"method={name}", "lr=1e-3"))  # one it reads
    with pytest.raises(UserError, match=rf"method={name} ignores {override} \(it reads "):
        validate(imdb(imdb_dir, f"method={name}", override))


def test_a_sweep_over_a_shorthand_a_method_ignores_stops_before_any_job(tmp_path, imdb_dir):
    """`-m method=preferred_ft beta=0.1,0.5` would run two identical jobs: one `error:` line, exit 2, no job; a
    preset's sweep over beta (experiment=imdb_tiny) is refused too, unless removed."""
    from .conftest import run_cli

    args = ["-m", *FAST_MODEL, "dataset=imdb_sentiment", f"dataset.path={imdb_dir}", "reward=vader", "logger=none"]
    proc = run_cli([*args, "method=dpo,preferred_ft", "beta=0.1,0.5", "hydra.sweep.dir=m"], tmp_path)
    assert proc.returncode == 2 and not list((tmp_path / "m").glob("*"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in proc.stderr.splitlines() if "ignores" in line]
    assert len(errors) == 1 and "method=preferred_ft ignores beta=0.1,0.5 in this multirun" in errors[0]

    from omegaconf import open_dict

    from dpo_exp.shorthands import sweep_shorthand_problem

    def sweep(*overrides: str):
        from hydra import compose as hydra_compose
        from hydra import initialize_config_dir

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            config = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
        with open_dict(config):
            config.hydra.overrides.task = [o for o in overrides if not o.startswith(("~hydra", "hydra"))]
        return sweep_shorthand_problem(config)

    assert "ignores beta=0.05,0.1,0.5,1" in sweep("experiment=imdb_tiny", "method=preferred_ft")  # the preset's
    assert sweep("experiment=imdb_tiny", "method=preferred_ft", "~hydra.sweeper.params.beta") is None
    assert sweep("experiment=imdb_tiny", "method=rloo") is None  # RLOO reads beta


def test_compare_notes_a_shorthand_the_runs_method_ignores(tmp_path):
    """Runs recorded before the check (a beta sweep of Preferred-FT): compare says beta changed nothing."""
    from omegaconf import OmegaConf

    from dpo_exp.compare.table import compare

    from .test_compare import write_run

    method = OmegaConf.load(CONF_DIR / "method" / "preferred_ft.yaml")
    for i, beta in enumerate((0.1, 0.5)):
        run = write_run(tmp_path / str(i), {"method": "preferred_ft", "beta": str(beta)}, {"status": "completed"})
        OmegaConf.save(OmegaConf.create({"beta": beta, "method": method}), run / ".hydra" / "config.yaml")
    write_run(tmp_path / "2", {"method": "dpo", "beta": "0.5"}, {"status": "completed"})
    compare([tmp_path], console=False, plots=False)
    notes = (tmp_path / "comparison.md").read_text()
    assert "WARNING: method=preferred_ft ignores `beta` (2 run(s): 0, 1)" in notes
    assert "method=dpo ignores" not in notes


# ---------------------------------------------------------------- KTO, ORPO, SimPO, GRPO


def test_the_reference_free_and_online_methods_take_their_paper_settings(imdb_dir, tmp_path):
    """SimPO is CPO's simpo loss without the BC term; ORPO's beta is its lambda; GRPO's beta its KL coefficient; KTO's
    desirable/undesirable weights reach trl.KTOConfig."""
    from trl import GRPOConfig, KTOConfig

    from dpo_exp import trl_compat

    simpo = trl_args(imdb(imdb_dir, "method=simpo", "beta=2.0"), tmp_path, "fp32", "cpu")
    assert isinstance(simpo, trl_compat.CPOConfig)
    assert (simpo.loss_type, simpo.beta, simpo.simpo_gamma, simpo.cpo_alpha) == ("simpo", 2.0, 0.5, 0.0)
    orpo = trl_args(imdb(imdb_dir, "method=orpo", "beta=0.25"), tmp_path, "fp32", "cpu")
    assert isinstance(orpo, trl_compat.ORPOConfig) and orpo.beta == 0.25
    grpo = trl_args(
        imdb(imdb_dir, "method=grpo", "beta=0.04", "method.args.num_generations=2"), tmp_path, "fp32", "cpu"
    )
    assert isinstance(grpo, GRPOConfig) and (grpo.beta, grpo.num_generations) == (0.04, 2)
    kto_cfg = imdb(imdb_dir, "method=kto", "beta=0.3", "method.args.desirable_weight=1.33")
    kto = trl_args(kto_cfg, tmp_path, "fp32", "cpu")
    assert isinstance(kto, KTOConfig) and (kto.beta, kto.desirable_weight, kto.undesirable_weight) == (0.3, 1.33, 1.0)


@pytest.mark.parametrize(
    ("name", "override", "message"),
    [
        ("simpo", "method.args.loss_type=sigmoid", "method=simpo trains CPO's loss_type=simpo"),
        ("kto", "+method.args.no_such_field=1", r"method.args \(trl.KTOConfig\).*no_such_field"),
        ("grpo", "+method.args.no_such_field=1", r"method.args \(trl.GRPOConfig\).*no_such_field"),
    ],
)
def test_the_new_methods_refuse_bad_settings_in_one_line(imdb_dir, name, override, message):
    with pytest.raises(UserError, match=message):
        validate(imdb(imdb_dir, f"method={name}", override))


def test_grpo_needs_a_task_with_a_scorer(ultrafeedback_file):
    cfg = compose(
        ["dataset=ultrafeedback", f"dataset.path={ultrafeedback_file}", *FAST_MODEL, *FAST_TRAINER, "method=grpo"]
    )
    with pytest.raises(UserError, match="method=grpo trains on a scorer's rewards"):
        validate(cfg)
    simpo = ["dataset=ultrafeedback", f"dataset.path={ultrafeedback_file}", *FAST_MODEL, *FAST_TRAINER, "method=simpo"]
    validate(compose(simpo))  # reference-free SimPO needs no scorer


def test_kto_splits_each_pair_into_a_desirable_and_an_undesirable_row(imdb_dir, tiny_policy, tmp_path):
    """From pairs: chosen = desirable, rejected = undesirable (as TRL's unpaired format); feedback rows as given;
    the reference is a frozen copy of the starting weights (no reload by id)."""
    from dpo_exp.data.schema import PreferenceData
    from dpo_exp.methods.kto import kto_trainer, unpaired_rows

    pairs = [{"prompt": "This film was", "chosen": " great", "rejected": " dull"}]
    feedback = [{"prompt": "I watched", "completion": " it twice", "label": True}]
    assert unpaired_rows(pairs + feedback) == [
        {"prompt": "This film was", "completion": " great", "label": True},
        {"prompt": "This film was", "completion": " dull", "label": False},
        {"prompt": "I watched", "completion": " it twice", "label": True},
    ]
    policy, tokenizer = tiny_policy
    cfg = imdb(imdb_dir, "method=kto")
    args = trl_args(cfg, tmp_path, "fp32", "cpu")
    trainer = kto_trainer(
        policy, PreferenceData(train=pairs * 4, eval=[]), method_settings(cfg, tokenizer, tmp_path), args, []
    )
    assert sorted(trainer.train_dataset["label"]) == [False] * 4 + [True] * 4
    assert trainer.ref_model is not None and trainer.ref_model is not policy


def test_a_pair_method_refuses_binary_feedback_before_anything_loads(tmp_path):
    rows = tmp_path / "feedback.jsonl"
    rows.write_text('{"prompt": "p", "completion": "c", "label": true}\n')
    base = ["dataset=feedback", f"dataset.path={rows}", *FAST_MODEL, *FAST_TRAINER]
    validate(compose([*base, "method=kto"]))
    for name in ("dpo", "simpo"):
        with pytest.raises(UserError, match=f"dataset=feedback holds unpaired .* method={name} trains on pairs"):
            validate(compose([*base, f"method={name}"]))
