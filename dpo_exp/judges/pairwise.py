"""Pairwise judges: which of two completions of a prompt is better, asked in both orders.

Contract (`PairwiseJudge`): `compare(prompts, a, b) -> list[PairVerdict]`, each pair asked twice (a shown first,
then b shown first), both raw answers and parsed verdicts kept; `identity()` changes whenever a verdict could.
`LLMJudge` asks a chat model (`llm.py`: a local model through transformers or vLLM, or an OpenAI-compatible
endpoint) through a prompt template, and caches every answer under `cache_dir/llm_judge/` keyed by (judge
identity, template, the rendered question), so a rerun on the same samples makes no new calls. People answer
through the same contract: `human_votes.HumanVotes` reads the Rate tab's votes (one or more a pair, either order).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from ..errors import UserError
from ..infra.storage import atomic_write_json, read_json
from ..models.chat import completion_text
from .base import Prompt, question_text

PLACEHOLDERS = ("{prompt}", "{response_a}", "{response_b}")
TEMPLATES = ("dpo_pairwise", "alpaca_eval")  # shipped in judges/templates/<name>.txt
CACHE_NAMESPACE = "llm_judge"
# The verdict: the last "More helpful: A", "Output: B", "Verdict: (A)", ... in the answer, or an answer that is
# only the letter. Anything else is a parse failure (counted, never dropped).
_LABELLED = re.compile(r"(?:more helpful|output|verdict|answer|better|winner)\s*[:=\-]?\s*[\"'(\[]?([AB])\b", re.I)
_BARE = re.compile(r"^\W*([AB])\W*$")


@dataclass
class PairVerdict:
    """One pair asked in both orders. verdict_*: "a" / "b" (which of the pair's two completions the judge
    preferred, whatever position it was shown in) or None when that answer could not be parsed."""

    raw_ab: str  # the answer with completion a shown first (as "A")
    raw_ba: str  # the answer with completion b shown first
    verdict_ab: str | None
    verdict_ba: str | None

    @property
    def score(self) -> float:
        """1 when both orders prefer a, 0 when both prefer b, 1/2 otherwise (disagreement or a parse failure)."""
        if self.verdict_ab == self.verdict_ba and self.verdict_ab is not None:
            return 1.0 if self.verdict_ab == "a" else 0.0
        return 0.5

    @property
    def consistent(self) -> bool:
        """Both orders parsed and picked the same completion."""
        return self.verdict_ab is not None and self.verdict_ab == self.verdict_ba

    @property
    def scores(self) -> tuple[float, ...]:
        """The outcomes a win rate averages: one (`score`) for a judge asked once in each order; a judge with
        several answers a pair (people's votes, `human_votes.HumanVerdict`) gives one each."""
        return (self.score,)

    @property
    def failures(self) -> int:
        """Answers without a verdict (0, 1 or 2): counted, never dropped."""
        return (self.verdict_ab is None) + (self.verdict_ba is None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PairwiseJudge(Protocol):
    """Which of two completions of a prompt is better (see the module docstring)."""

    def compare(self, prompts: Sequence[Prompt], a: Sequence[Any], b: Sequence[Any]) -> list[PairVerdict]: ...

    def identity(self) -> str: ...


def parse_verdict(text: str) -> str | None:
    """ "A" or "B" from a judge's answer (the last labelled letter, or a bare letter), None when there is none."""
    found = _LABELLED.findall(text or "")
    if found:
        return found[-1].upper()
    bare = _BARE.match((text or "").strip())
    return bare.group(1).upper() if bare else None


def load_template(template: str) -> str:
    """A shipped template by name (`dpo_pairwise`, `alpaca_eval`) or a file's text; one UserError when the file is
    missing or lacks a placeholder ({prompt}, {response_a}, {response_b})."""
    if template in TEMPLATES:
        return resources.files("dpo_exp.judges").joinpath("templates", f"{template}.txt").read_text(encoding="utf-8")
    path = Path(template).expanduser()
    if not path.is_file():
        raise UserError(
            f"eval.llm_judge.template={template} is neither a shipped template {list(TEMPLATES)} nor a file"
        )
    text = path.read_text(encoding="utf-8")
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise UserError(
            f"eval.llm_judge.template={template} lacks the placeholders {', '.join(missing)} (it needs all of {PLACEHOLDERS})"
        )
    return text


def render(template: str, prompt: Prompt, first: str, second: str) -> str:
    """The template with the prompt and the two responses put in (plain replacement: a template may hold braces)."""
    return (
        template.replace("{prompt}", question_text(prompt).strip())
        .replace("{response_a}", first.strip())
        .replace("{response_b}", second.strip())
    )


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


class LLMJudge:
    """A chat model asked which response is better, in both orders, through a template; answers cached.

    `backend` answers a batch of user messages (`llm.LocalChat`, `llm.Endpoint`): `answer(list[str]) -> list[str]`,
    `identity()`. `calls` counts the questions the backend was asked, `cached` those answered from the cache."""

    def __init__(self, backend: Any, template: str, cache_dir: str | Path | None, batch_size: int = 8) -> None:
        self.backend, self.template = backend, template
        self.cache = Path(cache_dir) / CACHE_NAMESPACE if cache_dir is not None else None
        self.batch_size = max(1, int(batch_size))
        self.calls = 0
        self.cached = 0

    def identity(self) -> str:
        return f"llm_judge:{self.backend.identity()}:template={_digest(self.template)[:12]}"

    def _path(self, question: str) -> Path | None:
        if self.cache is None:
            return None
        key = _digest(self.backend.identity(), self.template, question)
        return self.cache / key[:2] / f"{key}.json"

    def ask(self, questions: Sequence[str], progress: Callable[[int], None] | None = None) -> list[str]:
        """Answers to rendered questions: from the cache where present, the rest from the backend in batches."""
        answers: list[str | None] = [None] * len(questions)
        todo = []
        for i, question in enumerate(questions):
            path = self._path(question)
            entry = read_json(path) if path is not None and path.is_file() else None
            if entry is not None and isinstance(entry.get("text"), str):
                answers[i] = entry["text"]
                self.cached += 1
                if progress:
                    progress(1)
            else:
                todo.append(i)
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            texts = self.backend.answer([questions[i] for i in batch])
            self.calls += len(batch)
            for i, text in zip(batch, texts):
                answers[i] = text
                path = self._path(questions[i])
                if path is not None:
                    atomic_write_json(path, {"judge": self.backend.identity(), "text": text})
            if progress:
                progress(len(batch))
        return [a or "" for a in answers]

    def compare(
        self,
        prompts: Sequence[Prompt],
        a: Sequence[Any],
        b: Sequence[Any],
        progress: Callable[[int], None] | None = None,
    ) -> list[PairVerdict]:
        """Each (prompt, a, b) asked with a shown first and with b shown first (2 questions a pair)."""
        first, second = [completion_text(x) for x in a], [completion_text(x) for x in b]
        questions = []
        for prompt, x, y in zip(prompts, first, second):
            questions += [render(self.template, prompt, x, y), render(self.template, prompt, y, x)]
        answers = self.ask(questions, progress)
        verdicts = []
        for raw_ab, raw_ba in zip(answers[0::2], answers[1::2]):
            ab, ba = parse_verdict(raw_ab), parse_verdict(raw_ba)
            verdicts.append(
                PairVerdict(
                    raw_ab,
                    raw_ba,
                    None if ab is None else ("a" if ab == "A" else "b"),
                    None if ba is None else ("b" if ba == "A" else "a"),  # swapped: "A" was completion b
                )
            )
        return verdicts
