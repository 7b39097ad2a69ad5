"""Issue 28, sections 3 and 4 outside the app: careless input is one `error:` line with nothing half-written, a
corrupt file in a sweep is one unreadable job, and no library notice reaches the user (all fast)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from dpo_exp.errors import UserError
from dpo_exp.human.store import RATINGS_FILE

from .conftest import FAST_MODEL, FAST_TRAINER, compose, run_cli
from .test_bad_input import assert_clean_error, base_args, run_probed, write_jsonl
from .test_compare import write_run
from .test_human import vote

# ---------------------------------------------------------------- chat messages in the data


def conversations(n: int = 12) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"question {i}: what is worth knowing here?"}],
            "chosen": [{"role": "assistant", "content": f"a careful answer {i}"}],
            "rejected": [{"role": "assistant", "content": f"no idea {i}"}],
        }
        for i in range(n)
    ]


def test_conversations_on_a_model_without_a_chat_template_are_one_line_before_any_model(tmp_path: Path):
    path = write_jsonl(tmp_path / "chat.jsonl", conversations())
    proc, imported = run_probed(base_args(path, tmp_path), tmp_path)  # tiny GPT-2: no chat template
    line = assert_clean_error(proc, ["chat.jsonl line 1: column 'prompt' holds chat messages"], imported)
    assert "no chat template" in line and "dataset.chat_template=chatml" in line
    for name in ("gradient_checkpointing", "Running in WANDB offline mode"):  # issue 28 section 4: no noise either
        assert name not in proc.stderr and name not in proc.stdout, name


@pytest.mark.parametrize(
    "value,needle",
    [
        ([{"content": "hi"}], "column 'prompt' holds chat messages, but message 1 has no 'role'"),
        ([{"role": "user", "content": "a"}, {"role": "user"}], "message 2 has no 'content'"),
        (["hi", "there"], "got list (chat messages are {role, content} dicts: item 1 is a str)"),
        ([], "got list (an empty list of chat messages)"),
    ],
    ids=["no_role", "no_content", "strings", "empty"],
)
def test_message_lists_that_are_not_chat_messages_say_what_is_wrong(value, needle):
    from dpo_exp.data.splits import filter_pairs

    with pytest.raises(UserError) as caught:
        filter_pairs([{"prompt": value, "chosen": "a", "rejected": "b"}], drop_ties=True, where="f.jsonl")
    assert needle in str(caught.value)


# ---------------------------------------------------------------- human export


def _export(tmp_path: Path, *args: str):
    return run_cli(["export", *args], tmp_path, module="dpo_exp.human", timeout=120)


def test_export_of_an_incomplete_rating_or_to_an_unwritable_path_is_one_line_and_writes_nothing(tmp_path: Path):
    run = tmp_path / "rated"
    good = vote("p1", "policy", "reference", "left")
    broken = vote("p2", "policy", "reference", "right")
    del broken["right"]["text"]  # valid JSON, yet no text for the chosen side
    (run / "human").mkdir(parents=True)
    (run / RATINGS_FILE).write_text(json.dumps(good) + "\n" + json.dumps(broken) + "\n")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folder.jsonl").mkdir()
    cases = [
        ("out.jsonl", [f"{run / RATINGS_FILE} line 2", "'right' has no 'text'"]),
        ("a_file/out.jsonl", ["--out a_file/out.jsonl cannot be written", "a_file is a file, not a folder"]),
        ("folder.jsonl", ["--out folder.jsonl is a folder"]),
    ]
    for out, needles in cases:
        assert_clean_error(_export(tmp_path, str(run), "--out", out), needles)
    assert not (tmp_path / "out.jsonl").exists() and list((tmp_path / "folder.jsonl").iterdir()) == []
    tie = vote("p3", "policy", "reference", "tie")
    del tie["left"]["text"], tie["right"]
    (run / RATINGS_FILE).write_text(json.dumps(good) + "\n" + json.dumps(tie) + "\n")
    proc = _export(tmp_path, str(run), "--out", "out.parquet")  # a tie needs no texts: the rest exports
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no temporary file left


# ---------------------------------------------------------------- compare: a corrupt file is one unreadable job


def _job(root: Path, name: str, overrides: dict[str, str], delta: float) -> Path:
    run = write_run(root / name, overrides, {"status": "completed", "eval/reward_delta": delta})
    (run / ".hydra" / "config.yaml").write_text("model: {name: tiny}\ndataset: {name: d}\nseed: 0\nlr: 0.001\n")
    return run


def test_compare_shows_a_corrupt_config_and_a_truncated_summary_as_unreadable_and_compares_the_rest(tmp_path):
    from dpo_exp.compare.table import compare

    sweep = tmp_path / "sweep"
    _job(sweep, "0", {"lr": "1e-4"}, 0.1)
    _job(sweep, "1", {"lr": "1e-2"}, 0.3)
    corrupt = _job(sweep, "2", {}, 0.2)  # ran at the default lr: compare reads it from its saved config
    (corrupt / ".hydra" / "config.yaml").write_text("model: [unclosed\n")
    truncated = _job(sweep, "3", {"lr": "1e-3"}, 0.4)
    (truncated / "summary.json").write_text('{"status": "completed", "eval/rew')
    df = compare([sweep], console=False, plots=False).set_index("run")
    assert df.loc["0", "status"] == df.loc["1", "status"] == "completed"
    assert list(df.loc[["0", "1"], "eval/reward_delta"]) == [0.1, 0.3]
    assert df.loc["2", "status"] == "unreadable" and "config.yaml is unreadable" in df.loc["2", "error"]
    assert df.loc["3", "status"] == "unreadable" and "summary.json is unreadable: truncated" in df.loc["3", "error"]
    markdown = (sweep / "comparison.md").read_text()
    assert "`2` (unreadable):" in markdown and "`3` (unreadable):" in markdown


# ---------------------------------------------------------------- section 4: library notices


def test_trl_configs_are_built_without_transformers_checkpointing_future_warning():
    from dpo_exp.methods.base import trl_args
    from dpo_exp.schema import dpo_config

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = dpo_config(compose([*FAST_MODEL, *FAST_TRAINER]), Path("."), "fp32", "cpu")
        on = dpo_config(compose([*FAST_MODEL, "trainer.gradient_checkpointing=true"]), Path("."), "fp32", "cpu")
        rloo = trl_args(compose([*FAST_MODEL, "method=rloo"]), Path("."), "fp32", "cpu")
    assert not [w for w in caught if "checkpointing" in str(w.message)], [str(w.message) for w in caught]
    assert (args.gradient_checkpointing, on.gradient_checkpointing, rloo.gradient_checkpointing) == (False, True, False)
