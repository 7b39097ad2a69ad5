"""Chat templates in one place: which prompts are conversations, how they become the model's text and token ids.

A prompt is either plain text (GPT-2, IMDb review prefixes) or a conversation: TRL's conversational format, a list
of `{"role", "content"}` messages with every earlier turn. Training (TRL's DPOTrainer), sampling for pair building
and evaluation, best-of-N and the app all turn a conversation into tokens the same way: the tokenizer's chat
template with the generation prompt (`apply_chat_template(..., add_generation_prompt=True)`), so the policy is
sampled on the format it was trained on. Plain-text prompts are tokenised as they are.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..data.conversation import encode_prompts, is_conversation, render_prompt, uses_chat

# ChatML (the format of Qwen2.5- and SmolLM2-Instruct), for tokenizers that ship no template: `chatml` names it.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' "
    "+ '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
NAMED_TEMPLATES = {"chatml": CHATML}

__all__ = ["encode_prompts", "is_conversation", "render_prompt", "uses_chat"]  # defined in data.conversation

Prompt = Any  # str (plain text) or list[dict] (a conversation)


def template_source(template: str) -> str:
    """The Jinja source of a template given by name (`chatml`) or as Jinja text."""
    return NAMED_TEMPLATES.get(template.strip(), template)


def use_template(tokenizer, template: str | None):
    """Give the tokenizer `template` (a name or Jinja text; None keeps the tokenizer's own). Returns the tokenizer."""
    if template:
        tokenizer.chat_template = template_source(str(template))
    return tokenizer


def template_identity(tokenizer) -> str | None:
    """A short digest of the tokenizer's chat template, for cache keys (None without one)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    text = template if isinstance(template, str) else repr(sorted(template.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def as_prompt(tokenizer, text: str) -> Prompt:
    """A prompt typed as text (the app): one user turn when the model chats, the text itself otherwise."""
    return [{"role": "user", "content": text}] if uses_chat(tokenizer) else text


def prompt_text(prompt: Prompt) -> str:
    """A readable rendering of a prompt (samples.md, judges, the app): every turn on its own paragraph."""
    if not is_conversation(prompt):
        return prompt
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt) + "\n\nAssistant:"


def completion_text(completion: Any) -> str:
    """The text of a response: plain text, or the content of its assistant message(s)."""
    if is_conversation(completion):
        return "".join(str(m.get("content", "")) for m in completion)
    return completion
