"""Bad input through the real CLI: one clear `error:` line naming the field/file/line, non-zero exit, no traceback,
and no model loaded (checked in the child process itself: a sitecustomize probe records the modules it imported,
and GPT-2's modeling code and TRL's trainer must not be among them)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from dpo_exp.errors import UserError

from .conftest import FAST_MODEL, FAST_TRAINER, compose, run_cli, shared_file

# Modules that only a model build or the trainer imports: seeing none of them proves no model was loaded. (TRL's
# DPOConfig, and PEFT, which transformers' TrainingArguments import, are loaded by the validation itself: it builds
# the run's trl.DPOConfig to let TRL check the `trainer` settings.)
MODEL_MODULES = {"transformers.models.gpt2.modeling_gpt2", "trl.trainer.dpo_trainer"}
# Imported by the CLI child at start-up (PYTHONPATH): writes the names of all imported modules at exit.
PROBE = """import atexit, os, sys

def _dump_modules():
    with open(os.environ["DPO_EXP_TEST_MODULES"], "w", encoding="utf-8") as handle:
        handle.write("\\n".join(sorted(sys.modules)))

atexit.register(_dump_modules)
"""


def sample_rows(n: int = 12) -> list[dict]:
    """The first n UltraFeedback rows as flat prompt/chosen/rejected (+ nested scores)."""
    path = shared_file("ultrafeedback/sample.jsonl")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def flat(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]


# ---------------------------------------------------------------- bad files, each written by a maker(tmp_path)


def good_jsonl(tmp: Path) -> Path:
    return write_jsonl(tmp / "good.jsonl", flat(sample_rows()))


def malformed_line(tmp: Path) -> Path:
    lines = good_jsonl(tmp).read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2][:50]  # line 3 cut mid-string
    (tmp / "bad.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp / "bad.jsonl"


def wrong_type_jsonl(tmp: Path) -> Path:
    rows = flat(sample_rows())
    rows[1]["chosen"] = {"text": rows[1]["chosen"]}  # line 2: an object where text belongs
    return write_jsonl(tmp / "bad.jsonl", rows)


def all_empty_jsonl(tmp: Path) -> Path:
    return write_jsonl(tmp / "bad.jsonl", [dict(r, chosen=" ", rejected="") for r in flat(sample_rows())])


def identical_jsonl(tmp: Path) -> Path:
    return write_jsonl(tmp / "bad.jsonl", [dict(r, rejected=r["chosen"]) for r in flat(sample_rows())])


def missing_column_jsonl(tmp: Path) -> Path:
    return write_jsonl(tmp / "bad.jsonl", [{"question": r["prompt"], "chosen": r["chosen"]} for r in sample_rows()])


def non_utf8_jsonl(tmp: Path) -> Path:
    lines = good_jsonl(tmp).read_bytes().split(b"\n")
    lines[3] = lines[3][:20] + b"\xff\xfe" + lines[3][20:]  # line 4
    (tmp / "bad.jsonl").write_bytes(b"\n".join(lines))
    return tmp / "bad.jsonl"


def empty_file(tmp: Path) -> Path:
    (tmp / "bad.jsonl").write_text("\n\n", encoding="utf-8")
    return tmp / "bad.jsonl"


def non_utf8_csv(tmp: Path) -> Path:
    pd.DataFrame(flat(sample_rows())).to_csv(tmp / "good.csv", index=False)
    raw = (tmp / "good.csv").read_bytes()
    (tmp / "bad.csv").write_bytes(raw[:200] + b"\xe9t\xe9" + raw[200:])  # latin-1 bytes
    return tmp / "bad.csv"


def missing_column_csv(tmp: Path) -> Path:
    pd.DataFrame([{"prompt": r["prompt"], "answer": r["chosen"]} for r in sample_rows()]).to_csv(
        tmp / "bad.csv", index=False
    )
    return tmp / "bad.csv"


def numeric_column_csv(tmp: Path) -> Path:  # a mis-mapped score column where the rejected text belongs
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": i} for i, r in enumerate(sample_rows())]
    pd.DataFrame(rows).to_csv(tmp / "bad.csv", index=False)
    return tmp / "bad.csv"


def missing_column_parquet(tmp: Path) -> Path:
    pd.DataFrame([{"prompt": r["prompt"], "chosen": r["chosen"]} for r in sample_rows()]).to_parquet(tmp / "b.parquet")
    return tmp / "b.parquet"


def wrong_type_parquet(tmp: Path) -> Path:
    rows = [{"prompt": r["prompt"], "chosen": float(i), "rejected": r["rejected"]} for i, r in enumerate(sample_rows())]
    pd.DataFrame(rows).to_parquet(tmp / "b.parquet")
    return tmp / "b.parquet"


def only_validation_folder(tmp: Path) -> Path:
    folder = tmp / "data"
    folder.mkdir()
    write_jsonl(folder / "validation.jsonl", flat(sample_rows()))
    return folder


def hub_repo_two_configs(tmp: Path) -> Path:
    """A local copy of a hub dataset repository (tmp/hub) declaring configs a and b; dataset.path's file unused."""
    for name in ("a", "b"):
        (tmp / "hub" / name).mkdir(parents=True)
        write_jsonl(tmp / "hub" / name / "train.jsonl", flat(sample_rows()))
    configs = "".join(f"- config_name: {n}\n  data_files: {n}/train.jsonl\n" for n in ("a", "b"))
    (tmp / "hub" / "README.md").write_text(f"---\nconfigs:\n{configs}---\n", encoding="utf-8")
    return good_jsonl(tmp)


# (id, file maker, extra overrides, substrings the error must contain)
CASES: list[tuple[str, Callable[[Path], Path], list[str], list[str]]] = [
    ("beta_zero", good_jsonl, ["beta=0"], ["beta must be > 0"]),
    ("beta_negative", good_jsonl, ["beta=-0.1"], ["beta must be > 0"]),
    ("lr_zero", good_jsonl, ["lr=0"], ["lr (trainer.learning_rate) must be > 0"]),
    ("lr_negative", good_jsonl, ["lr=-1e-4"], ["lr (trainer.learning_rate)"]),
    ("data_size_zero", good_jsonl, ["data_size=0"], ["data_size must be > 0"]),
    ("data_size_negative", good_jsonl, ["data_size=-5"], ["data_size must be > 0"]),
    ("data_size_beyond_data", good_jsonl, ["data_size=500"], ["data_size=500", "training pairs are available"]),
    ("max_length_below_every_prompt", good_jsonl, ["trainer.max_length=3"], ["trainer.max_length=3 is too small"]),
    ("missing_dataset_path", lambda tmp: tmp / "nowhere.jsonl", [], ["dataset.path=", "does not exist"]),
    ("missing_model_path", good_jsonl, ["model.path=/no/such/model"], ["model.path=/no/such/model does not exist"]),
    ("model_path_not_a_model", good_jsonl, ["model.path=."], ["model.path=.", "no config.json"]),
    ("unknown_loss_type", good_jsonl, ["trainer.loss_type=dpo_plus"], ["trainer.loss_type='dpo_plus'", "sigmoid"]),
    ("train_batch_zero", good_jsonl, ["trainer.per_device_train_batch_size=0"], ["per_device_train_batch_size"]),
    ("train_batch_negative", good_jsonl, ["trainer.per_device_train_batch_size=-4"], ["per_device_train_batch_size"]),
    ("eval_batch_zero", good_jsonl, ["trainer.per_device_eval_batch_size=0"], ["per_device_eval_batch_size"]),
    ("grad_accum_zero", good_jsonl, ["trainer.gradient_accumulation_steps=0"], ["gradient_accumulation_steps"]),
    (
        "lora_target_unknown",
        good_jsonl,
        ["lora=gpt2_attn", "lora.target_modules=[q_proj,c_attn]"],
        ["lora.target_modules", "q_proj", "available: ['c_attn', 'c_fc', 'c_proj', 'lm_head', 'wpe', 'wte']"],
    ),
    # dotted names need the meta-device build: one unknown, one a block LoRA cannot wrap (one run checks both)
    (
        "lora_target_dotted",
        good_jsonl,
        ["lora=gpt2_attn", "lora.target_modules=[attn.q_proj,h.0.attn,attn.c_attn]"],
        [
            "'attn.q_proj' is not a module of the model",
            "'h.0.attn' is a GPT2Attention, which LoRA cannot wrap",
            "available: ['c_attn', 'c_fc', 'c_proj', 'lm_head', 'wpe', 'wte']",
        ],
    ),
    ("missing_columns_jsonl", missing_column_jsonl, [], ["missing column(s) ['prompt', 'rejected']"]),
    ("missing_columns_csv", missing_column_csv, [], ["bad.csv", "missing column(s) ['chosen', 'rejected']"]),
    ("missing_columns_parquet", missing_column_parquet, [], ["b.parquet", "missing column(s) ['rejected']"]),
    ("zero_pairs_after_filtering", identical_jsonl, [], ["0 pairs left after filtering", "'identical': 12"]),
    ("all_empty_texts", all_empty_jsonl, [], ["0 pairs left after filtering", "'empty': 12"]),
    ("malformed_jsonl_line", malformed_line, [], ["bad.jsonl: line 3 is not valid JSON"]),
    ("wrong_type_jsonl", wrong_type_jsonl, [], ["bad.jsonl line 2: column 'chosen' must be text, got dict"]),
    ("wrong_type_csv", numeric_column_csv, [], ["bad.csv row 1: column 'rejected' must be text, got int"]),
    ("wrong_type_parquet", wrong_type_parquet, [], ["b.parquet row 1: column 'chosen' must be text, got float"]),
    ("non_utf8_jsonl", non_utf8_jsonl, [], ["bad.jsonl: line 4 is not valid UTF-8"]),
    ("non_utf8_csv", non_utf8_csv, [], ["bad.csv: line", "is not valid UTF-8"]),
    ("empty_file", empty_file, [], ["bad.jsonl: no rows"]),
    # careless values (issue 12): not numbers, not finite, too small, used where they mean nothing
    ("seed_not_a_number", good_jsonl, ["seed=abc"], ["seed must be a whole number, got 'abc'"]),
    ("seed_negative", good_jsonl, ["seed=-1"], ["seed must be in [0, 4294967295], got -1"]),
    ("beta_nan", good_jsonl, ["beta=nan"], ["beta must be finite, got nan"]),
    ("lr_inf", good_jsonl, ["lr=inf"], ["lr (trainer.learning_rate) must be finite, got inf"]),
    ("lr_not_a_number", good_jsonl, ["lr=abc"], ["lr (trainer.learning_rate) must be a number, got 'abc'"]),
    ("data_size_not_a_number", good_jsonl, ["data_size=abc"], ["data_size must be a whole number, got 'abc'"]),
    ("data_size_one", good_jsonl, ["data_size=1"], ["data_size must be >= 2", "got 1"]),
    ("folder_without_train_file", only_validation_folder, [], ["no train file", "validation.jsonl"]),
    (
        "unknown_hub_config",
        hub_repo_two_configs,
        ["dataset.path=null", "dataset.hub_id=hub", "dataset.hub_config=c"],
        ["dataset.hub_config=c: hub dataset hub has no config 'c' (its configs: a, b)", "dataset.hub_data_dir=c"],
    ),
    (
        "reward_on_preference_data",
        good_jsonl,
        ["reward=tfidf_logreg"],
        ["reward=tfidf_logreg builds pairs for dataset=imdb_sentiment only", "eval/reward=tfidf_logreg"],
    ),
    (
        "judge_share_out_of_range",
        good_jsonl,
        ["reward=trained_rm", "reward.share=1.5"],
        ["reward.share=1.5 must be in (0, 1)"],
    ),
    (
        "fp16_on_cpu",
        good_jsonl,
        ["train.precision=fp16", "model.device=cpu"],
        ["train.precision=fp16 needs a GPU", "device is cpu"],
    ),
    ("bf16_model_dtype_on_cpu", good_jsonl, ["model.dtype=bf16", "model.device=cpu"], ["model.dtype=bf16 needs a GPU"]),
    ("best_of_n_zero", good_jsonl, ["eval.enabled=true", "eval.best_of_n=[0,4]"], ["eval.best_of_n must be a list"]),
    *(  # the LLM judge on vLLM where vLLM is not installed (checked by name, before any model or vLLM import)
        [
            (
                "llm_judge_vllm_not_installed",
                good_jsonl,
                [
                    "eval.enabled=true",
                    "eval.llm_judge.enabled=true",
                    "eval.llm_judge.model.path=/no/such/judge",
                    "eval.llm_judge.model.backend=vllm",
                ],
                ["eval.llm_judge.model.backend=vllm needs vLLM, which is not installed: pip install vllm"],
            )
        ]
        if importlib.util.find_spec("vllm") is None
        else []
    ),
    # typed blocks (dpo_exp.schema): a wrong type or an unknown key names the field (issue 10)
    ("eval_wrong_type", good_jsonl, ["eval.num_prompts=many"], ["eval.num_prompts", "'many'", "Integer"]),
    ("eval_unknown_key", good_jsonl, ["+eval.num_promts=8"], ["eval.num_promts", "not in 'EvalSchema'"]),
    ("eval_reward_as_a_name", good_jsonl, ["eval.reward=vader"], ["eval.reward='vader'", "eval/reward=vader"]),
    ("generation_wrong_type", good_jsonl, ["generation.top_k=1.5"], ["generation.top_k", "Integer"]),
    ("generation_unknown_key", good_jsonl, ["+generation.beams=4"], ["generation.beams", "not in 'GenerationSchema'"]),
    ("sft_wrong_type", good_jsonl, ["sft.packing=maybe"], ["sft.packing", "'maybe' is not a valid bool"]),
    ("sft_unknown_key", good_jsonl, ["+sft.epochs=2"], ["sft.epochs", "not in 'SFTSchema'"]),
    ("train_wrong_type", good_jsonl, ["train.min_prompt_tokens=few"], ["train.min_prompt_tokens", "Integer"]),
    # TRL's own validation of the `trainer` group (trl.DPOConfig built before any model)
    (
        "trainer_bad_strategy",
        good_jsonl,
        ["trainer.eval_strategy=sometimes"],
        ["trainer (trl.DPOConfig): sometimes is not a valid IntervalStrategy", "'epoch'"],
    ),
    ("trainer_not_a_trl_field", good_jsonl, ["+trainer.warmup_ratio=0.1"], ["trainer.warmup_ratio is not a field"]),
]


def base_args(path: Path, tmp_path: Path) -> list[str]:
    return [
        *FAST_MODEL,
        *FAST_TRAINER,
        "dataset=preference_files",
        f"dataset.path={path}",
        "logger=none",
        "eval.enabled=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]


def run_probed(args: list[str], tmp_path: Path):
    """run_cli with the import probe; returns (CompletedProcess, set of modules the child imported)."""
    probe_dir, modules_file = tmp_path / "probe", tmp_path / "modules.txt"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "sitecustomize.py").write_text(PROBE, encoding="utf-8")
    python_path = os.pathsep.join(p for p in (str(probe_dir), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": python_path, "DPO_EXP_TEST_MODULES": str(modules_file)}
    proc = run_cli(args, tmp_path, timeout=120, env=env)
    assert modules_file.exists(), "the import probe did not run"
    return proc, set(modules_file.read_text(encoding="utf-8").split())


@pytest.fixture(scope="module")
def zygote():
    """tests/cli_zygote.py: forks a child per CLI check from one process that has imported what every run imports
    (never a model's code: checked here), so each case costs its validation, not the interpreter's start."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("cli_zygote.py"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    preloaded = set(json.loads(proc.stdout.readline())["ready"])
    assert not preloaded & MODEL_MODULES, sorted(preloaded & MODEL_MODULES)
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)


def run_forked(zygote, args: list[str], tmp_path: Path):
    """`python -m dpo_exp args` in `tmp_path`, forked from the zygote: (CompletedProcess, the modules it imported)."""
    files = {name: str(tmp_path / f"cli.{name}") for name in ("stdout", "stderr", "modules")}
    env = {"DPO_EXP_CACHE": str(tmp_path / ".cache"), "PYTHONUNBUFFERED": "1"}
    request = {"module": "dpo_exp", "args": args, "cwd": str(tmp_path), "env": env, **files}
    zygote.stdin.write(json.dumps(request) + "\n")
    zygote.stdin.flush()
    code = json.loads(zygote.stdout.readline())["returncode"]
    out, err = (Path(files[name]).read_text(encoding="utf-8") for name in ("stdout", "stderr"))
    proc = subprocess.CompletedProcess(["python", "-m", "dpo_exp", *args], code, out, err)
    return proc, set(Path(files["modules"]).read_text(encoding="utf-8").split())


def assert_clean_error(proc, needles: list[str], imported: set[str] | None = None, allowed: set[str] = frozenset()):
    """Exit 2, exactly one `error:` line (the last one) containing every needle, no traceback, no model imported."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert proc.returncode == 2, (proc.returncode, lines[-5:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    if imported is not None:
        assert not imported & (MODEL_MODULES - allowed), sorted(imported & MODEL_MODULES)
    return errors[0]


@pytest.mark.parametrize("name,make,overrides,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_before_any_model(zygote, tmp_path, name, make, overrides, needles):
    path = make(tmp_path)
    proc, imported = run_forked(zygote, [*base_args(path, tmp_path), *overrides], tmp_path)
    # Dotted LoRA names are checked on a weightless meta-device GPT-2, which needs GPT-2's modeling code.
    allowed = {"transformers.models.gpt2.modeling_gpt2"} if any("." in o for o in overrides if "lora" in o) else set()
    assert_clean_error(proc, needles, imported, allowed)


def test_data_size_error_says_how_many_are_available(zygote, tmp_path):
    """12 rows, 1 tie dropped -> 11 pairs; 10% held out for eval -> 10 available for training."""
    rows = sample_rows()
    ties = sum(r["metadata"]["score_chosen"] == r["metadata"]["score_rejected"] for r in rows)
    path = write_jsonl(tmp_path / "d.jsonl", [{**flat([r])[0], **r["metadata"]} for r in rows])
    proc, imported = run_forked(
        zygote,
        [*base_args(path, tmp_path), "data_size=99", "trainer.max_length=1024", "model.tiny.n_positions=1024"],
        tmp_path,
    )
    pairs = len(rows) - ties
    available = pairs - max(1, round(pairs * 0.1))
    assert_clean_error(proc, [f"only {available} training pairs are available", f"from {len(rows)} rows"], imported)


def test_unknown_group_option_uses_hydras_message(zygote, tmp_path):
    proc, _ = run_forked(zygote, ["dataset=no_such_dataset", "logger=none"], tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'dataset/no_such_dataset'" in proc.stderr and "ultrafeedback" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_hh_rlhf_with_non_text_dialogue_names_the_column(zygote, tmp_path, hh_file):
    with hh_file.open(encoding="utf-8") as handle:
        rows = [json.loads(next(handle)) for _ in range(6)]
    rows[4]["rejected"] = ["not", "a", "dialogue"]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    args = [
        *FAST_MODEL,
        *FAST_TRAINER,
        "dataset=hh_rlhf",
        f"dataset.path={path}",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc, imported = run_forked(zygote, args, tmp_path)
    assert_clean_error(proc, imported=imported, needles=["hh.jsonl line 5: column 'rejected' must be text, got list"])


def test_ultrafeedback_non_numeric_score_names_the_line(zygote, tmp_path):
    rows = sample_rows()
    rows[6]["metadata"]["score_chosen"] = "high"
    path = write_jsonl(tmp_path / "uf.jsonl", rows)
    args = [
        *FAST_MODEL,
        *FAST_TRAINER,
        "dataset=ultrafeedback",
        f"dataset.path={path}",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc, imported = run_forked(zygote, args, tmp_path)
    needle = "uf.jsonl line 7: column 'score_chosen' must be a number, got 'high'"
    assert_clean_error(proc, imported=imported, needles=[needle])


def test_imdb_labels_outside_0_1_are_rejected(zygote, tmp_path):
    pytest.importorskip("dpo_exp.data.imdb")
    rows = [{"text": f"This film was fine number {i}, really.", "label": i % 2} for i in range(20)]
    rows[5]["label"] = 3
    path = write_jsonl(tmp_path / "imdb.jsonl", rows)
    args = [
        *FAST_MODEL,
        *FAST_TRAINER,
        "dataset=imdb_sentiment",
        f"dataset.path={path}",
        "logger=none",
        "reward=vader",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc, imported = run_forked(zygote, args, tmp_path)
    assert_clean_error(proc, ["imdb.jsonl", "'label'", "got 3"], imported)


def test_imdb_with_one_sample_per_prompt_is_caught_in_validation(zygote, tmp_path):
    rows = [{"text": f"This film was fine number {i}, really.", "label": i % 2} for i in range(20)]
    path = write_jsonl(tmp_path / "imdb.jsonl", rows)
    args = [
        *FAST_MODEL,
        *FAST_TRAINER,
        "dataset=imdb_sentiment",
        f"dataset.path={path}",
        "logger=none",
        "reward=vader",
        "generation.num_samples=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc, imported = run_forked(zygote, args, tmp_path)
    assert_clean_error(proc, ["generation.num_samples=1", "needs >= 2 samples per prompt"], imported)


def test_unwritable_output_folder_is_one_line(zygote, tmp_path):
    """A run folder under a regular file cannot be created (for root too): Hydra's mkdir never runs."""
    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    args = [*FAST_MODEL, "logger=none", f"hydra.run.dir={tmp_path / 'a_file' / 'run'}"]
    proc, _ = run_forked(zygote, args, tmp_path)
    assert_clean_error(proc, ["hydra.run.dir=", "cannot be used as the output folder"])
    sweep, _ = run_forked(zygote, ["-m", *args[:-1], f"hydra.sweep.dir={tmp_path / 'a_file' / 'sweep'}"], tmp_path)
    assert_clean_error(sweep, ["hydra.sweep.dir=", "cannot be used as the output folder"])


@pytest.mark.parametrize(
    "overrides,needles",
    [
        (
            [*FAST_MODEL, *FAST_TRAINER],
            ["dataset 'trl-lib/ultrafeedback_binarized'", "HF_HUB_OFFLINE=1", "dataset.path=PATH"],
        ),
        (["model=gpt2"], ["model 'gpt2'", "HF_HUB_OFFLINE=1", "model.path=PATH"]),
    ],
    ids=["dataset", "model"],
)
def test_hub_defaults_offline_are_one_line_naming_the_local_alternative(zygote, tmp_path, overrides, needles):
    """The default hub dataset / model with the offline flags (conftest sets them): one line, no traceback."""
    args = [*overrides, "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    proc, imported = run_forked(zygote, args, tmp_path)
    assert_clean_error(proc, needles, imported)


# ---------------------------------------------------------------- the LoRA pre-check itself, in-process


def test_gpt2_lora_names_match_a_meta_device_gpt2():
    """The no-torch shortcut list equals what a (weightless) GPT-2 actually offers LoRA."""
    from dpo_exp.lora import GPT2_LORA_NAMES, LORA_LAYER_TYPES, architecture_modules

    modules = architecture_modules(compose(FAST_MODEL).model)
    assert modules is not None and "transformer.h.0.attn.c_attn" in modules
    assert {n.rsplit(".", 1)[-1] for n, kind in modules.items() if n and kind in LORA_LAYER_TYPES} == GPT2_LORA_NAMES


@pytest.mark.parametrize("targets", ["[c_attn,c_proj]", "[attn.c_attn]", "[transformer.h.0.mlp.c_fc]", "all-linear"])
def test_valid_lora_targets_pass_the_precheck(targets):
    from dpo_exp.lora import check_lora_targets

    cfg = compose([*FAST_MODEL, f"lora.target_modules={targets}"])
    check_lora_targets(cfg.lora, cfg.model)  # no error


def test_lora_precheck_reads_a_local_models_architecture(tmp_path):
    """A local save_pretrained folder: the check uses its config.json (meta build), not the weights."""
    from transformers import GPT2Config

    from dpo_exp.lora import check_lora_targets

    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path)
    cfg = compose(["model=gpt2", f"model.path={tmp_path}", "lora.target_modules=[attn.q_proj]"])
    with pytest.raises(UserError, match=r"attn.q_proj.*available: \['c_attn'"):
        check_lora_targets(cfg.lora, cfg.model)


def test_lora_post_load_check_names_available_modules():
    """Models unknown before loading are still checked once built."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from dpo_exp.lora import lora_config

    cfg = compose(["lora.target_modules=[q_proj]"])
    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2))
    with pytest.raises(UserError, match=r"'q_proj' is not a module of the model; available: \['c_attn'"):
        lora_config(cfg.lora, model)
