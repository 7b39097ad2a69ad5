"""Conversations in preference data: TRL's conversational format (lists of `{"role", "content"}` messages).

With a chat model every pair becomes `{prompt: [the shared turns], chosen: [messages], rejected: [messages]}`, each
response everything its conversation says after the shared prompt (usually one assistant message; several turns when
the two conversations differ before their last turn): HH-RLHF's "Human:/Assistant:" dialogues are split into their
turns, message lists keep every turn, and flat strings become one user turn and one assistant answer.
Prompts are compared (held-out protocol, de-duplication) through `prompt_key`, which is the text itself for plain
prompts, so plain-text runs keep their keys and hashes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:  # files imports nothing from here, but the type is only needed for hints
    from .files import RawSplit

HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def is_conversation(value: Any) -> bool:
    """True for a non-empty list of chat messages (dicts with `role` and `content`)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value)
    )


def conversation_problem(value: list) -> str:
    """What keeps a list from being chat messages (for the error naming the column): its first bad item."""
    if not value:
        return "must be text, got list (an empty list of chat messages)"
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            kind = type(message).__name__
            return f"must be text, got list (chat messages are {{role, content}} dicts: item {number} is a {kind})"
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            return f"holds chat messages, but message {number} has no {' and no '.join(repr(k) for k in missing)}"
    return "is not a list of chat messages"


def prompt_key(prompt: Any) -> str:
    """A hashable, comparable key of a prompt: plain text as it is, a conversation as canonical JSON."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def unique_prompts(prompts: Iterable[Any]) -> list[Any]:
    """The prompts without repeats (by `prompt_key`), in first-seen order."""
    unique: dict[str, Any] = {}
    for prompt in prompts:
        unique.setdefault(prompt_key(prompt), prompt)
    return list(unique.values())


def message_text(value: Any) -> str | None:
    """The text of a response or prompt for emptiness checks: a string, or its messages' contents joined."""
    if is_conversation(value):
        return "".join(str(m.get("content") or "") for m in value)
    return value if isinstance(value, str) else None


def hh_turns(dialogue: str) -> list[dict]:
    """An HH-RLHF dialogue ("\\n\\nHuman: ...\\n\\nAssistant: ...") as messages; a trailing empty assistant turn (the
    generation prompt of a split-off prompt) is dropped."""
    parts = HH_TURN.split(dialogue)
    messages = []
    if parts[0].strip():  # text before the first tag: a user turn of its own
        messages.append({"role": "user", "content": parts[0].strip()})
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": HH_ROLES[speaker], "content": content.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def _same(a: dict, b: dict) -> bool:
    return a.get("role") == b.get("role") and a.get("content") == b.get("content")


def _starts_with(messages: list[dict], prefix: list[dict]) -> bool:
    return len(messages) >= len(prefix) and all(_same(m, p) for m, p in zip(messages, prefix))


def _answer(value: Any) -> Any:
    """A text response as a one-message assistant list."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value.strip()}]
    return value  # a wrong type: filter_pairs names it


def _completion(prompt: Any, value: Any) -> Any:
    """A response in TRL's conversational format: a conversation keeps every message after the shared prompt (all
    of them when it does not repeat the prompt), as TRL trains on everything the template renders after the prompt;
    None when nothing follows the prompt (filter_pairs counts it as empty)."""
    if not is_conversation(value):
        return _answer(value)
    skip = len(prompt) if is_conversation(prompt) and _starts_with(value, prompt) else 0
    return [dict(m) for m in value[skip:]] or None


def shared_turns(chosen: list[dict], rejected: list[dict]) -> int:
    """How many leading messages two conversations share as their prompt: their common prefix, cut back to where
    both continue with an assistant message (0: none)."""
    n = 0
    while n < min(len(chosen), len(rejected)) and _same(chosen[n], rejected[n]):
        n += 1
    while n > 0 and not (
        n < len(chosen) and n < len(rejected) and chosen[n].get("role") == rejected[n].get("role") == "assistant"
    ):
        n -= 1
    return n


def differs_before_last_turn(chosen: Any, rejected: Any) -> bool:
    """True for two conversations whose messages before their last one differ: their last answers alone (a
    plain-text model's view) lose what distinguishes them."""
    if not (is_conversation(chosen) and is_conversation(rejected)):
        return False
    before_c, before_r = chosen[:-1], rejected[:-1]
    return len(before_c) != len(before_r) or not _starts_with(before_c, before_r)


def _hh_answer(value: Any) -> Any:
    """An HH response as messages: usually one assistant turn; a pair whose dialogues diverge before the last turn
    has later Human/Assistant turns in its response, kept as turns."""
    if isinstance(value, str) and HH_TURN.search(value):
        return hh_turns("\n\nAssistant: " + value.lstrip())
    return _answer(value)


def _prompt(value: Any, loader: str) -> Any:
    if is_conversation(value) or not isinstance(value, str):
        return value
    if loader == "hh_rlhf" and HH_TURN.search(value):
        return hh_turns(value)
    return [{"role": "user", "content": value}]


def conversational_row(raw: dict, row: dict, loader: str, columns: Any) -> dict:
    """The normalised `row` in TRL's conversational format: the prompt's messages, then everything each response
    says after them (several turns where the two conversations differ before their last turn). `raw` is the source
    row: its message lists (flattened by the plain-text normaliser) give every turn. Without a prompt conversation,
    UltraFeedback's chosen and rejected dialogues share their common leading turns as the prompt."""
    out = dict(row)
    chosen_raw, rejected_raw, prompt_raw = (raw.get(columns[k]) for k in ("chosen", "rejected", "prompt"))
    if loader == "ultrafeedback" and is_conversation(chosen_raw) and not is_conversation(prompt_raw):
        if is_conversation(rejected_raw):
            cut = shared_turns(chosen_raw, rejected_raw)
        else:  # a text rejected answer: every turn before chosen's last answer is the prompt
            answers = [i for i, m in enumerate(chosen_raw) if m.get("role") == "assistant"]
            cut = answers[-1] if answers else 0
        if cut:
            out["prompt"] = [dict(m) for m in chosen_raw[:cut]]
            out["chosen"], out["rejected"] = (
                _completion(out["prompt"], chosen_raw),
                _completion(out["prompt"], rejected_raw),
            )
            return out
    out["prompt"] = _prompt(prompt_raw if is_conversation(prompt_raw) else row.get("prompt"), loader)
    answer = _hh_answer if loader == "hh_rlhf" else _answer
    for key, value in (("chosen", chosen_raw), ("rejected", rejected_raw)):
        out[key] = _completion(out["prompt"], value) if is_conversation(value) else answer(row.get(key))
    return out


def uses_chat(tokenizer) -> bool:
    """True when the tokenizer has a chat template: conversations then stay conversations end to end."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: Any) -> str:
    """The text the model continues: a conversation through the chat template with the assistant's generation
    prompt, plain text as it is."""
    if is_conversation(prompt):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


def encode_prompts(tokenizer, prompts: list[Any], **kwargs: Any):
    """`tokenizer(...)` of the prompts as the model sees them. A rendered conversation already holds the template's
    special tokens (e.g. BOS), so none are added again: the ids equal `apply_chat_template(tokenize=True)`'s, which
    is how TRL tokenises conversational pairs."""
    conversational = any(is_conversation(p) for p in prompts)
    texts = [render_prompt(tokenizer, p) for p in prompts]
    return tokenizer(texts, add_special_tokens=not conversational, **kwargs)


def check_last_turns(raw: RawSplit, ds_cfg: Any) -> None:
    """Plain text keeps only a message list's last answer: refuse (with the count) rows whose chosen and rejected
    conversations differ before that, which only a chat template can train turn by turn."""
    chosen, rejected = ds_cfg.columns.chosen, ds_cfg.columns.rejected
    rows = [i for i, row in enumerate(raw.rows) if differs_before_last_turn(row.get(chosen), row.get(rejected))]
    if rows:
        first = raw.locate(rows[0]).removeprefix(raw.origin).strip()
        raise UserError(
            f"{raw.origin}: {len(rows)} of {len(raw.rows)} rows (the first: {first}) have chosen and rejected "
            "conversations that differ before their last turn; as plain text only their last answers would be "
            "trained: use a chat model or dataset.chat_template=chatml, which trains every turn after the shared prompt"
        )


def refuse_conversations(row: dict) -> None:
    """UserError for chat messages in a row meant for a model without a chat template (it cannot render them)."""
    for key in ("prompt", "chosen", "rejected"):
        if is_conversation(row.get(key)):
            raise UserError(
                f"column '{key}' holds chat messages, but the model's tokenizer has no chat template to render them: "
                "add dataset.chat_template=chatml (or give plain-text columns, or use a chat model)"
            )
