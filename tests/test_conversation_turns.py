"""Conversations whose chosen and rejected answers differ before their last turn: every turn after the shared prompt
reaches the trainer's token ids (TRL's conversational format); a plain-text model refuses them, with their count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_exp.errors import UserError

from .conftest import FAST_TRAINER, compose
from .test_architectures import _find, tiny


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# the two answers part at the first reply; the second question is the same
CHOSEN = [assistant("Hello there, friend."), user("Write me a poem?"), assistant("Roses are red.")]
REJECTED = [assistant("Go away, stranger."), user("Write me a poem?"), assistant("No poems today.")]
FILLER = [
    {"prompt": [user(f"Question {i}?")], "chosen": [assistant("Yes.")], "rejected": [assistant("No.")]}
    for i in range(3)
]


def write_split(folder: Path, test_rows: list[dict]) -> Path:
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FILLER), encoding="utf-8")
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows), encoding="utf-8")
    return folder


def trained_ids(tmp_path: Path, model: list[str], dataset: list[str], rows: list[dict]) -> tuple[dict, object, dict]:
    """The held-out pair as the task loads it, and its token ids as TRL's DPOTrainer prepared them."""
    from datasets import Dataset

    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.models import build_policy, load_tokenizer
    from dpo_exp.tasks import build_task
    from dpo_exp.training.trainer import build_trainer

    folder = write_split(tmp_path / "data", rows)
    cfg = compose(
        [*model, *FAST_TRAINER, *dataset, f"dataset.path={folder}", "trainer.max_length=128"]
        + ["trainer.precompute_ref_log_probs=false", "trainer.eval_strategy=no", "dataset.eval_size=1"]
    )
    tokenizer = load_tokenizer(cfg.model, cfg.dataset.get("chat_template"))
    pair = build_task(cfg).load(cfg, tokenizer).eval[0]
    trainer = build_trainer(
        cfg, build_policy(cfg.model, 0), tokenizer, Dataset.from_list([pair]), None, tmp_path, Tracker(), "fp32", "cpu"
    )
    return pair, tokenizer, trainer.train_dataset[0]


def contains(ids: list[int], tokenizer, text: str) -> bool:
    return _find(ids, tokenizer(text, add_special_tokens=False).input_ids) >= 0


@pytest.mark.parametrize(
    ("dataset", "row"),
    [
        # a prompt given, the responses only what follows it
        (["dataset=preference_files"], {"prompt": [user("Hi!")], "chosen": CHOSEN, "rejected": REJECTED}),
        # a prompt given as text, the responses whole dialogues that repeat it
        (
            ["dataset=preference_files"],
            {"prompt": "Hi!", "chosen": [user("Hi!"), *CHOSEN], "rejected": [user("Hi!"), *REJECTED]},
        ),
        # UltraFeedback's hub format: no prompt conversation, the shared turns of the two dialogues are the prompt
        (
            ["dataset=ultrafeedback", "dataset.hub_id=null", "dataset.train_split=train", "dataset.eval_split=test"],
            {"prompt": "Hi!", "chosen": [user("Hi!"), *CHOSEN], "rejected": [user("Hi!"), *REJECTED]},
        ),
    ],
)
def test_every_turn_after_the_shared_prompt_reaches_the_trainer(tmp_path, dataset, row):
    pair, tokenizer, ids = trained_ids(tmp_path, tiny("llama"), dataset, [row])
    assert pair["prompt"] == [user("Hi!")] and pair["chosen"] == CHOSEN and pair["rejected"] == REJECTED
    prompt, chosen, rejected = ids["prompt_ids"], ids["chosen_ids"], ids["rejected_ids"]
    assert contains(prompt, tokenizer, "Hi!") and not contains(prompt, tokenizer, "Hello there")
    for text in ("Hello there, friend.", "Write me a poem?", "Roses are red."):
        assert contains(chosen, tokenizer, text), text
    for text in ("Go away, stranger.", "Write me a poem?", "No poems today."):
        assert contains(rejected, tokenizer, text), text
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert chosen.count(start) == rejected.count(start) == 2  # the user turn and the second reply (the first
    #   reply's marker is the prompt's generation prompt)


def test_a_plain_text_model_refuses_such_rows_with_their_count(tmp_path):
    """GPT-2 without a chat template would keep only the last answers: one error line counting the rows."""
    from dpo_exp.models import load_tokenizer
    from dpo_exp.tasks import build_task

    rows = [
        {"prompt": "Hi!", "chosen": [user("Hi!"), *CHOSEN], "rejected": [user("Hi!"), *REJECTED]},
        {"prompt": "Hey", "chosen": [user("Hey"), assistant("Hello.")], "rejected": [user("Hey"), assistant("Go.")]},
    ]
    folder = write_split(tmp_path / "data", rows)
    dataset = ["dataset=ultrafeedback", "dataset.hub_id=null", "dataset.train_split=train", "dataset.eval_split=test"]
    cfg = compose(["model=tiny_gpt2", *FAST_TRAINER, *dataset, f"dataset.path={folder}"])
    with pytest.raises(UserError, match=r"test\.jsonl: 1 of 2 rows \(the first: line 1\) have chosen and rejected "):
        build_task(cfg).load(cfg, load_tokenizer(cfg.model))
