"""Any causal LM, any conversation: tiny Llama / Qwen2 / GPT-NeoX models with a ChatML template (built offline with
the GPT-2 BPE), LoRA targets per architecture, and multi-turn conversations through training and sampling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_exp.errors import UserError

from .conftest import FAST_TRAINER, compose, run_cli, shared_file

CHAT_ARCHITECTURES = ["llama", "qwen2", "gpt_neox"]
TINY_SIZES = ["model.tiny.n_layer=1", "model.tiny.n_embd=32", "model.tiny.n_head=2", "model.tiny.n_positions=128"]


def tiny(arch: str) -> list[str]:
    return [f"model=tiny_{arch}", *TINY_SIZES]


def two_turn_hh_row() -> dict:
    """The first HH-RLHF test row whose prompt has two human turns (an earlier exchange, then the question)."""
    with shared_file("hh_rlhf/test.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["chosen"].count("\n\nHuman:") == 2 and len(row["chosen"]) < 600:
                return row
    raise AssertionError("no two-turn row in the sample")


# ---------------------------------------------------------------- LoRA targets per architecture


@pytest.mark.parametrize("arch", ["gpt2", "gptj", *CHAT_ARCHITECTURES])
def test_lora_defaults_resolve_to_existing_modules(arch):
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    from dpo_exp.lora import architecture_modules, check_lora_targets, model_type, resolve_targets

    overrides = FAST_TRAINER if arch == "gpt2" else []
    cfg = compose(["model=tiny_gpt2", *TINY_SIZES, f"model.tiny.architecture={arch}", "lora=auto", *overrides])
    check_lora_targets(cfg.lora, cfg.model)  # no error
    targets = resolve_targets(cfg.lora.target_modules, model_type(cfg.model))
    assert targets == (["c_attn", "c_proj"] if arch == "gpt2" else PEFT_TARGETS[arch])
    modules = architecture_modules(cfg.model)
    for target in targets:
        hits = [kind for name, kind in modules.items() if name.endswith("." + target)]
        assert hits and set(hits) <= {"Linear", "Conv1D"}, (target, hits)


def test_a_wrong_target_is_one_error_line_naming_the_modules_before_any_model_loads(tmp_path):
    """Exit 2, one `error:` line naming Llama's modules; the trainer (and with it any weight loading) never starts."""
    from .test_bad_input import assert_clean_error, run_probed

    args = [*tiny("llama"), *FAST_TRAINER, "lora=auto", "lora.target_modules=[c_attn]", "logger=none"]
    proc, imported = run_probed([*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    needles = ["'c_attn' is not a module of the model", "available:", "'q_proj'", "'gate_proj'"]
    assert_clean_error(proc, needles, imported)
    assert "trl.trainer.dpo_trainer" not in imported and not list(tmp_path.rglob("*.safetensors"))


def test_the_precheck_reads_a_config_only_folder_so_no_weights_are_needed(tmp_path):
    """A folder holding only config.json (no weight file at all): the check builds the architecture on the meta
    device, so it can run before (and without) any weights, for any architecture transformers knows."""
    from transformers import Qwen2Config

    from dpo_exp.lora import check_lora_targets

    Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2).save_pretrained(
        tmp_path
    )
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    cfg = compose(["model=hub", f"model.path={tmp_path}", "lora.target_modules=[c_attn]"])
    with pytest.raises(UserError, match=r"'c_attn' is not a module of the model; available: \[.*'q_proj'"):
        check_lora_targets(cfg.lora, cfg.model)
    auto = compose(["model=hub", f"model.path={tmp_path}"])
    assert auto.lora.target_modules == "auto"
    check_lora_targets(auto.lora, auto.model)  # q_proj, v_proj: PEFT's Qwen2 default exists


# ---------------------------------------------------------------- conversations through training and sampling


def _chat_setup(tmp_path: Path, arch: str = "llama"):
    """A tiny chat model, its tokenizer and a one-row HH dataset (a two-turn conversation) loaded by the task."""
    from dpo_exp.models import build_policy, load_tokenizer
    from dpo_exp.tasks import build_task

    data_dir = tmp_path / "hh"
    data_dir.mkdir()
    row = two_turn_hh_row()
    lines = shared_file("hh_rlhf/test.jsonl").read_text(encoding="utf-8").splitlines()
    other = next(r for r in map(json.loads, lines) if len(r["chosen"]) < 300 and r["chosen"] != row["chosen"])
    (data_dir / "train.jsonl").write_text(json.dumps(other) + "\n", encoding="utf-8")
    (data_dir / "test.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    cfg = compose(
        [
            *tiny(arch),
            *FAST_TRAINER,
            "dataset=hh_rlhf",
            f"dataset.path={data_dir}",
            "trainer.max_length=128",
            "trainer.precompute_ref_log_probs=false",
            "trainer.eval_strategy=no",
            "dataset.eval_size=1",
        ]
    )
    tokenizer = load_tokenizer(cfg.model, cfg.dataset.get("chat_template"))
    pair = build_task(cfg).load(cfg, tokenizer).eval[0]  # the test file's pair
    return cfg, build_policy(cfg.model, 0), tokenizer, pair, row


def _find(sequence: list[int], part: list[int]) -> int:
    return next((i for i in range(len(sequence) - len(part) + 1) if sequence[i : i + len(part)] == part), -1)


def test_a_two_turn_hh_conversation_reaches_the_trainer_as_messages(tmp_path):
    from datasets import Dataset

    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.training.trainer import build_trainer

    cfg, model, tokenizer, pair, row = _chat_setup(tmp_path)
    assert [m["role"] for m in pair["prompt"]] == ["user", "assistant", "user"]  # every earlier turn, as messages
    assert pair["chosen"][0]["role"] == "assistant"
    trainer = build_trainer(cfg, model, tokenizer, Dataset.from_list([pair]), None, tmp_path, Tracker(), "fp32", "cpu")
    held = trainer.train_dataset[0]
    prompt_ids, chosen_ids = held["prompt_ids"], held["chosen_ids"]
    first_question = tokenizer(pair["prompt"][0]["content"], add_special_tokens=False).input_ids
    first_answer = tokenizer(pair["prompt"][1]["content"], add_special_tokens=False).input_ids
    assert _find(prompt_ids, first_question) >= 0 and _find(prompt_ids, first_answer) >= 0  # earlier turns present
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert prompt_ids.count(start) == 4  # user, assistant, user, then the generation prompt
    marker = [start, *tokenizer("assistant\n", add_special_tokens=False).input_ids]
    assert prompt_ids[-len(marker) :] == marker  # the template's assistant marker right before the completion
    assert chosen_ids[0] not in (start, end) and end in chosen_ids  # the answer, closed by the turn's end
    assert tokenizer.decode(chosen_ids).startswith(pair["chosen"][0]["content"][:20])


def test_sampling_renders_the_conversation_as_training_does(tmp_path):
    from trl.trainer.dpo_trainer import _tokenize

    from dpo_exp.generation import generate_samples, sample_sequences
    from dpo_exp.trl_compat import pair_token_ids

    cfg, model, tokenizer, pair, _ = _chat_setup(tmp_path, "qwen2")
    samples = generate_samples(model, tokenizer, [pair["prompt"]], cfg.generation, 0, num_samples=2, max_new_tokens=4)
    sampled_prompt_ids = sample_sequences(tokenizer, samples, 4, 128)[0][0]
    trained_prompt_ids = _tokenize(tokenizer, pair["prompt"], add_generation_prompt=True)["input_ids"]
    assert sampled_prompt_ids == trained_prompt_ids  # the chat template with the generation prompt, no extra BOS
    assert pair_token_ids(tokenizer, pair)["prompt_ids"] == trained_prompt_ids  # held-out pairs' implicit reward


def test_plain_text_models_keep_plain_text_pairs(tmp_path, hh_file):
    """GPT-2 (no chat template): HH stays its Human:/Assistant: text, as before."""
    from dpo_exp.models import load_tokenizer
    from dpo_exp.tasks import build_task

    cfg = compose(["model=tiny_gpt2", *TINY_SIZES, *FAST_TRAINER, "dataset=hh_rlhf", f"dataset.path={hh_file}"])
    tokenizer = load_tokenizer(cfg.model, cfg.dataset.get("chat_template"))
    data = build_task(cfg).load(cfg, tokenizer)
    assert all(isinstance(r["prompt"], str) and r["prompt"].endswith("\n\nAssistant:") for r in data.train[:20])


def test_dataset_chat_template_turns_a_plain_model_conversational(tmp_path, ultrafeedback_file):
    """`dataset.chat_template=chatml` on GPT-2: UltraFeedback becomes user/assistant messages, not a text template;
    the held-out prompts are conversations none of which is a training prompt."""
    from dpo_exp.data.conversation import prompt_key
    from dpo_exp.models import load_tokenizer
    from dpo_exp.tasks import build_task

    cfg = compose(
        [
            "model=tiny_gpt2",
            *TINY_SIZES,
            *FAST_TRAINER,
            f"dataset.path={ultrafeedback_file}",
            "dataset.chat_template=chatml",
        ]
    )
    tokenizer = load_tokenizer(cfg.model, cfg.dataset.chat_template)
    task = build_task(cfg)
    data = task.load(cfg, tokenizer)
    row = data.train[0]
    assert row["prompt"][0]["role"] == "user" and "Human:" not in row["prompt"][0]["content"]
    assert row["chosen"][0]["role"] == "assistant"
    heldout = task.heldout(cfg, tokenizer)
    trained = {prompt_key(r["prompt"]) for r in data.train}
    assert heldout.prompts and all(isinstance(p, list) and prompt_key(p) not in trained for p in heldout.prompts)


# ---------------------------------------------------------------- one offline run per architecture


@pytest.mark.slow
@pytest.mark.parametrize("arch", CHAT_ARCHITECTURES)
def test_a_preference_run_per_architecture(tmp_path, hh_file, arch):
    """Training (LoRA on the architecture's default targets), evaluation on multi-turn HH prompts, the run folder
    loading with plain transformers and PEFT, and `compare`."""
    run_dir = tmp_path / "run"
    args = [
        *tiny(arch),
        *FAST_TRAINER,
        "trainer.max_length=128",
        "dataset=hh_rlhf",
        f"dataset.path={hh_file}",
        "data_size=8",
        "dataset.eval_size=4",
        "epochs=1",
        "lora=auto",
        "lr=1e-3",
        "logger=none",
        "eval/reward=vader",
        "eval.num_prompts=4",
        "eval.num_samples=2",
        "eval.max_new_tokens=8",
        "eval.best_of_n=[]",
        f"hydra.run.dir={run_dir}",
    ]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["model"]["source"].startswith(f"tiny:{arch}:")
    assert "eval/kl" in summary and "eval/reward_delta" in summary
    samples_md = (run_dir / "samples.md").read_text()
    assert "User:" in samples_md and "Assistant:" in samples_md  # multi-turn prompts shown turn by turn
    inputs = json.loads((run_dir / "eval_inputs.json").read_text())
    assert all(isinstance(p, list) for p in inputs["prompts"])

    loader = f"""
import sys
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
run = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(run + "/model")
assert tokenizer.chat_template and tokenizer.pad_token == "<|im_end|>", tokenizer.pad_token
merged = AutoModelForCausalLM.from_pretrained(run + "/model")
assert merged.config.model_type == "{arch}", merged.config.model_type
base = AutoModelForCausalLM.from_pretrained(run + "/model/base")
adapted = PeftModel.from_pretrained(base, run + "/model/adapter")
ids = tokenizer.apply_chat_template([{{"role": "user", "content": "Hi"}}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
print("generated", adapted.generate(**ids, max_new_tokens=3, do_sample=False).shape)
"""
    loaded = subprocess.run([sys.executable, "-c", loader, str(run_dir)], capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0 and "generated" in loaded.stdout, loaded.stderr[-2000:]

    # re-evaluation rebuilds the held-out conversations from the config (more prompts than the run saved)
    again = run_cli([f"run_dir={run_dir}", "wandb=false", "eval.num_prompts=6"], tmp_path, module="dpo_exp.evaluate")
    assert again.returncode == 0, again.stderr[-2000:]
    redone = json.loads((run_dir / "summary.json").read_text())
    assert "evaluated_at" in redone and redone["eval/num_prompts"] == len(
        inputs["prompts"]
    )  # the 4 held-out pairs' prompts
    assert "User:" in (run_dir / "samples.md").read_text()

    compared = run_cli([str(run_dir), "--out", str(tmp_path / "cmp"), "--no-plots"], tmp_path, module="dpo_exp.compare")
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert any((tmp_path / "cmp").iterdir())


def test_the_chat_template_is_part_of_the_pair_cache_key():
    from dpo_exp.models import load_tokenizer
    from dpo_exp.tasks.sentiment import reference_identity

    cfg = compose(["model=tiny_gpt2", *TINY_SIZES, "dataset=imdb_sentiment"])
    plain = reference_identity(cfg, load_tokenizer(cfg.model), None)
    assert "chat_template" not in plain  # plain-text runs keep their keys
    chatml = reference_identity(cfg, load_tokenizer(cfg.model, "chatml"), None)
    other = reference_identity(cfg, load_tokenizer(cfg.model, "{{ messages[0]['content'] }}"), None)
    assert len({json.dumps(x, sort_keys=True) for x in (plain, chatml, other)}) == 3


def test_the_app_offers_held_out_conversations_with_their_turns():
    from dpo_exp.app.runs import RunInfo
    from dpo_exp.app.ui import heldout_prompts

    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    conversation += [{"role": "user", "content": "Tell me more"}]
    run = RunInfo(Path("run"), "run", None, {}, prompts=[conversation, "plain text prompt"])
    offered = heldout_prompts([run])
    text = "User: Hi\n\nAssistant: Hello\n\nUser: Tell me more\n\nAssistant:"
    assert offered == {text: conversation, "plain text prompt": "plain text prompt"}  # picked text -> its messages


def test_conversational_rows_keep_every_turn():
    """UltraFeedback's hub format (message lists) keeps the earlier turns; an HH pair whose dialogues diverge before
    the last turn keeps its later turns as messages; flat strings become one user turn."""
    from omegaconf import OmegaConf

    from dpo_exp.data.conversation import conversational_row
    from dpo_exp.data.preference import normalize_hh, normalize_ultrafeedback

    columns = OmegaConf.create({"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"})
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    raw = {
        "chosen": [*earlier, {"role": "user", "content": "A poem?"}, {"role": "assistant", "content": "Roses..."}],
        "rejected": [*earlier, {"role": "user", "content": "A poem?"}, {"role": "assistant", "content": "No."}],
    }
    row = conversational_row(raw, normalize_ultrafeedback(raw, columns), "ultrafeedback", columns)
    assert row["prompt"] == [*earlier, {"role": "user", "content": "A poem?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Roses..."}]
    assert row["rejected"] == [{"role": "assistant", "content": "No."}]

    hh = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Bye!",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Go away",
    }
    row = conversational_row(hh, normalize_hh(hh, columns), "hh_rlhf", columns)
    assert row["prompt"] == [{"role": "user", "content": "Hi"}]
    assert [m["role"] for m in row["chosen"]] == ["assistant", "user", "assistant"]
    assert row["rejected"] == [{"role": "assistant", "content": "Go away"}]

    flat = {"prompt": "How?", "chosen": " Like this.", "rejected": "No."}
    row = conversational_row(flat, normalize_ultrafeedback(flat, columns), "ultrafeedback", columns)
    assert row["prompt"] == [{"role": "user", "content": "How?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Like this."}]


def test_gradient_checkpointing_is_a_model_setting():
    assert compose(["model=gpt_j"]).trainer.gradient_checkpointing is True
    assert compose(["model=hub", "model.gradient_checkpointing=true"]).trainer.gradient_checkpointing is True
    assert compose(["model=gpt2"]).trainer.gradient_checkpointing is False


def test_plain_text_prompts_are_not_templated_even_for_a_chat_model():
    """IMDb's review prefixes (plain strings) are continued as text; only conversations go through the template."""
    from dpo_exp.models import load_tokenizer
    from dpo_exp.models.chat import encode_prompts

    tokenizer = load_tokenizer(compose(tiny("llama")).model)
    assert encode_prompts(tokenizer, ["A great film"]).input_ids[0] == tokenizer("A great film").input_ids
    templated = encode_prompts(tokenizer, [[{"role": "user", "content": "A great film"}]]).input_ids[0]
    assert templated[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
