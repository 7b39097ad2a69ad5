"""The judge interface, its builder, and the dialogue parsing the input formats share."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..errors import UserError


class Judge:
    """Scores a completion given its prompt. `info` carries what the run summary reports (e.g. held-out accuracy)."""

    name: str = "judge"

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
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
    scorer: Any, prompts: Sequence[str], completions: Sequence[str], with_prompt: bool
) -> list[float]:
    """Scores of completions under a judge (given their prompts) or a sentiment scorer (the completion alone, or
    prompt + completion when `with_prompt`)."""
    if isinstance(scorer, Judge):
        return [float(s) for s in scorer.score(list(prompts), list(completions))]
    texts = [p + c for p, c in zip(prompts, completions)] if with_prompt else list(completions)
    return [float(s) for s in scorer.score(texts)]


_TURN = re.compile(r"\n\n(Human|Assistant):")


def dialogue_messages(prompt: str, completion: str) -> list[dict[str, str]]:
    """Chat messages of an HH-style dialogue prompt ("\\n\\nHuman: ...\\n\\nAssistant:") and its completion as the
    last assistant turn. A prompt without turn tags is one user message."""
    parts = _TURN.split(prompt)
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
