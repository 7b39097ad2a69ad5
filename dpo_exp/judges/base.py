"""The judge interface, its builder, and the input formats judges read (dialogue text, chat messages, plain text).

Judges get each prompt as the run holds it: plain text, or a conversation (a list of `{"role", "content"}`
messages, what a chat model was trained and sampled on). Each judge turns it into the text it was trained on
(`dialogue_text`, `judge_messages`, `question_text`, `plain_text`), never a readable flattening of the turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..data.conversation import HH_TURN, is_conversation
from ..errors import UserError
from ..models.chat import completion_text

Prompt = Any  # plain text, or a conversation (a list of chat messages)


class Judge:
    """Scores a completion given its prompt. `info` carries what the run summary reports (e.g. held-out accuracy)."""

    name: str = "judge"

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Any]) -> list[float]:
        """Scores of completions (text, or assistant messages) given their prompts (text or conversations)."""
        raise NotImplementedError

    def identity(self) -> str:
        """A string that changes whenever the scores could change (used in cache keys)."""
        return self.name


def setting(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg.key`, or `default` when the config lacks it or holds null."""
    value = cfg.get(key) if cfg is not None and hasattr(cfg, "get") else None
    return default if value is None else value


def is_judge_config(reward_cfg: Any) -> bool:
    """True for a `reward` option that names a judge class (`_target_`), not a sentiment scorer `kind`."""
    return reward_cfg is not None and hasattr(reward_cfg, "get") and bool(reward_cfg.get("_target_"))


def build_judge(reward_cfg: Any, context: Any = None) -> Judge:
    """The judge a `reward` option's `_target_` names, called as `cls(reward_cfg, context)` (context: the run
    config, for judges that read the run's data or cache)."""
    from hydra.utils import get_class

    target = str(reward_cfg.get("_target_"))
    try:
        cls = get_class(target)
    except Exception as exc:  # noqa: BLE001 - Hydra raises several types for a bad path
        raise UserError(f"reward._target_={target}: {str(exc).strip().splitlines()[-1]}") from None
    if not (isinstance(cls, type) and issubclass(cls, Judge)):
        raise UserError(f"reward._target_={target} is not a dpo_exp.judges.Judge subclass")
    return cls(reward_cfg, context)


def score_completions(
    scorer: Any, prompts: Sequence[Prompt], completions: Sequence[Any], with_prompt: bool
) -> list[float]:
    """Scores of completions under a judge (given their prompts, as the run holds them: each judge formats them
    itself) or a sentiment scorer (the completion alone, or `plain_text` of prompt and completion when
    `with_prompt`)."""
    if isinstance(scorer, Judge):
        return [float(s) for s in scorer.score(list(prompts), list(completions))]
    answers = [completion_text(c) for c in completions]
    texts = [plain_text(p, c) for p, c in zip(prompts, answers)] if with_prompt else answers
    return [float(s) for s in scorer.score(texts)]


def _content(message: dict) -> str:
    return str(message.get("content") or "").strip()


def dialogue_text(prompt: Prompt, completion: str) -> str:
    """The dialogue as HH-RLHF writes it ("\\n\\nHuman: ...\\n\\nAssistant: ..."), what the GPT-2 HH reward models and
    `trained_rm` read. A text prompt is already that text (or plain text) and is joined to the completion as it is;
    a conversation is written turn by turn (a system message first, as untagged text), ending with the completion
    as the last assistant turn."""
    if not is_conversation(prompt):
        return str(prompt) + completion
    parts = []
    for message in prompt:
        role = message.get("role")
        if role == "system":
            parts.append(_content(message))
        else:
            parts.append(f"\n\n{'Assistant' if role == 'assistant' else 'Human'}: {_content(message)}")
    return "".join(parts) + f"\n\nAssistant: {completion.strip()}"


def judge_messages(prompt: Prompt, completion: str) -> list[dict[str, str]]:
    """The dialogue as chat messages, for a judge's own chat template: a conversation's messages as they are, plus
    the completion as the last assistant turn; a text prompt split into its HH turns (`dialogue_messages`)."""
    if is_conversation(prompt):
        return [{"role": str(m["role"]), "content": _content(m)} for m in prompt] + [
            {"role": "assistant", "content": completion.strip()}
        ]
    return dialogue_messages(str(prompt), completion)


def question_text(prompt: Prompt) -> str:
    """The question of a (question, answer) text pair: a text prompt as it is; a conversation's one user message,
    or, for several turns, the dialogue so far in HH form (without a trailing "Assistant:")."""
    if not is_conversation(prompt):
        return str(prompt)
    if len(prompt) == 1:
        return _content(prompt[0])
    return dialogue_text(prompt, "").rsplit("\n\nAssistant:", 1)[0].strip()


def plain_text(prompt: Prompt, completion: str) -> str:
    """What a text classifier (sentiment) reads: a text prompt continued by the completion; a conversation's
    contents, one paragraph per turn, then the completion (no role tags: the classifiers were trained on prose)."""
    if not is_conversation(prompt):
        return str(prompt) + completion
    return "\n\n".join([*(_content(m) for m in prompt), completion.strip()])


def dialogue_messages(prompt: str, completion: str) -> list[dict[str, str]]:
    """Chat messages of an HH-style dialogue prompt ("\\n\\nHuman: ...\\n\\nAssistant:") and its completion as the
    last assistant turn. A prompt without turn tags is one user message."""
    parts = HH_TURN.split(prompt)
    messages: list[dict[str, str]] = []
    if len(parts) == 1 or parts[0].strip():
        lead = parts[0].strip()
        if lead or len(parts) == 1:
            messages.append({"role": "user", "content": prompt.strip() if len(parts) == 1 else lead})
    for speaker, text in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if text.strip() or role == "user":
            messages.append({"role": role, "content": text.strip()})
    messages.append({"role": "assistant", "content": completion.strip()})
    return messages
