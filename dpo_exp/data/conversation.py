"""Conversations in preference data: TRL's conversational format (lists of `{"role", "content"}` messages).

With a chat model every pair becomes `{prompt: [every earlier turn], chosen: [assistant message], rejected:
[assistant message]}`: HH-RLHF's "Human:/Assistant:" dialogues are split into their turns, UltraFeedback's message
lists keep every turn before the final answer, and flat strings become one user turn and one assistant answer.
Prompts are compared (held-out protocol, de-duplication) through `prompt_key`, which is the text itself for plain
prompts, so plain-text runs keep their keys and hashes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

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


def _answer(value: Any) -> Any:
    """A response as a one-message assistant list (its last assistant message when it is a conversation)."""
    if is_conversation(value):
        answers = [m for m in value if m.get("role") == "assistant"] or value
        return [{"role": "assistant", "content": answers[-1].get("content")}]
    if isinstance(value, str):
        return [{"role": "assistant", "content": value.strip()}]
    return value  # a wrong type: filter_pairs names it


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
    """The normalised `row` in TRL's conversational format. `raw` is the source row: UltraFeedback's message lists
    (flattened by the plain-text normaliser) give the earlier turns of the prompt."""
    out = dict(row)
    chosen_raw = raw.get(columns.chosen)
    if loader == "ultrafeedback" and is_conversation(chosen_raw) and not is_conversation(raw.get(columns.prompt)):
        answers = [i for i, m in enumerate(chosen_raw) if m.get("role") == "assistant"]
        last = answers[-1] if answers else len(chosen_raw)
        out["prompt"] = [dict(m) for m in chosen_raw[:last]]
        out["chosen"], out["rejected"] = _answer(chosen_raw), _answer(raw.get(columns.rejected))
        return out
    source_prompt = raw.get(columns.prompt)
    out["prompt"] = _prompt(source_prompt if is_conversation(source_prompt) else row.get("prompt"), loader)
    answer = _hh_answer if loader == "hh_rlhf" else _answer
    out["chosen"], out["rejected"] = answer(row.get("chosen")), answer(row.get("rejected"))
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
