"""People as a pairwise judge: the Rate tab's votes read through `pairwise.PairwiseJudge`.

The vote file's reader lives here (the one reader: `dpo_exp.human` writes the file with `human.store.RatingStore`
and reads it through these functions). `RUN/human/ratings.jsonl` holds one JSON object a line: `prompt`, `choice`
(left | right | tie | skip), `left` and `right` (each `model`, `text`, `judge_score`), `rater`, `pair_id`,
`vote_id`. Readers skip lines that are not JSON objects (only a crash mid-write leaves them).

`HumanVotes.compare(prompts, a, b)` answers each (prompt, a, b) with a `HumanVerdict`: every decided vote cast on
that prompt between those two texts, whichever side each was shown on; a pair nobody voted on gets a verdict that
says so (no votes; scored 1/2 and counted as two answers without a verdict, as an unparsed LLM answer is).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.conversation import prompt_key
from ..models.chat import completion_text
from .base import Prompt
from .pairwise import PairVerdict

log = logging.getLogger(__name__)

RATINGS_FILE = "human/ratings.jsonl"
REFERENCE = "reference"  # the reference model's name in a vote record
CHOICES = ("left", "right", "tie", "skip")
VOTE_SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5}  # completion a's score for one vote's answer
NO_VOTE = "(no vote)"


def ratings_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RATINGS_FILE


def numbered_records(raw: bytes) -> list[tuple[int, dict]]:
    """(line number, record) of the JSON-object lines of `raw`; torn or garbled lines (a crash mid-write) are
    skipped with a warning."""
    records, bad = [], 0
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            bad += 1
            continue
        if isinstance(record, dict):
            records.append((number, record))
        else:
            bad += 1
    if bad:
        log.warning("skipped %d unreadable line(s) of ratings (a write interrupted by a crash)", bad)
    return records


def parse_lines(raw: bytes) -> list[dict]:
    """The JSON-object lines of `raw` (numbered_records without the numbers)."""
    return [record for _, record in numbered_records(raw)]


def read_ratings(run_dir: str | Path) -> list[dict]:
    """Every readable vote record of the run (an empty list when nobody has rated it yet)."""
    path = ratings_path(run_dir)
    return parse_lines(path.read_bytes()) if path.is_file() else []


def read_many(paths: Iterable[str | Path]) -> list[dict]:
    """The records of several runs, each vote once (a vote between two policies is in both runs' files)."""
    seen: set[str] = set()
    out = []
    for run_dir in paths:
        for record in read_ratings(run_dir):
            key = str(record.get("vote_id") or record.get("pair_id"))
            if key not in seen:
                seen.add(key)
                out.append(record)
    return out


@dataclass
class HumanVerdict(PairVerdict):
    """People's decided votes on one pair. votes: one {"rater", "order", "answer"} a vote, order "ab" (a was shown
    on the left) or "ba", answer "a" / "b" (the completion preferred) or "tie". raw_ab / raw_ba: those votes as
    `rater: answer` text, per order ("(no vote)" when none); verdict_ab / verdict_ba: the completion every vote
    in that order picked, None when they differ, tie or there are none."""

    votes: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, votes: list[dict]) -> HumanVerdict:
        raw, verdict = {}, {}
        for order in ("ab", "ba"):
            mine = [v for v in votes if v["order"] == order]
            raw[order] = "\n".join(f"{v['rater']}: {v['answer']}" for v in mine) or NO_VOTE
            answers = {v["answer"] for v in mine}
            verdict[order] = answers.pop() if len(answers) == 1 and answers <= {"a", "b"} else None
        return cls(raw["ab"], raw["ba"], verdict["ab"], verdict["ba"], votes)

    @property
    def scores(self) -> tuple[float, ...]:
        """a's score in each vote (1 preferred, 0 not, 1/2 a tie); one 1/2 for a pair nobody voted on."""
        return tuple(VOTE_SCORE[v["answer"]] for v in self.votes) or (0.5,)

    @property
    def score(self) -> float:
        return sum(self.scores) / len(self.scores)

    @property
    def consistent(self) -> bool:
        """Votes in both orders, every one for the same completion."""
        return self.verdict_ab is not None and self.verdict_ab == self.verdict_ba

    @property
    def failures(self) -> int:
        """2 for a pair nobody voted on (no answer in either order), else 0."""
        return 0 if self.votes else 2


class HumanVotes:
    """The Rate tab's votes as a `PairwiseJudge`. A vote answers a compared (prompt, a, b) when its prompt and its
    two texts are those, in either order. When a vote's two texts are the same, only the models tell its sides
    apart: `b_model` (e.g. "reference") names the model on side b; without it such a vote reads as a tie."""

    def __init__(self, records: Sequence[dict], b_model: str | None = None) -> None:
        self.records = [r for r in records if r.get("choice") in ("left", "right", "tie")]
        self.b_model = b_model
        self._index: dict[tuple[str, frozenset], list[dict]] = defaultdict(list)
        for record in self.records:
            texts = frozenset(completion_text(record[side].get("text")) for side in ("left", "right"))
            self._index[(prompt_key(record.get("prompt")), texts)].append(record)

    @classmethod
    def from_runs(cls, run_dirs: Iterable[str | Path], b_model: str | None = None) -> HumanVotes:
        """The votes recorded for these run folders (each vote once)."""
        return cls(read_many(run_dirs), b_model)

    def identity(self) -> str:
        """The decided votes read (their ids and answers): changes whenever one is added."""
        keys = sorted(f"{r.get('vote_id') or r.get('pair_id')}:{r['choice']}" for r in self.records)
        return f"human:{len(keys)}:{hashlib.sha256(chr(0).join(keys).encode()).hexdigest()[:12]}"

    def _order(self, record: dict, a: Any, b: Any) -> str | None:
        """ "ab" when a was shown on the left, "ba" when b was; None when the sides cannot be told apart."""
        if a != b:
            return "ab" if completion_text(record["left"].get("text")) == a else "ba"
        models = (record["left"].get("model"), record["right"].get("model"))
        if self.b_model is not None and models.count(self.b_model) == 1:
            return "ab" if models[1] == self.b_model else "ba"
        return None

    def compare(self, prompts: Sequence[Prompt], a: Sequence[Any], b: Sequence[Any]) -> list[HumanVerdict]:
        """One verdict per (prompt, a, b): every decided vote on that prompt between those two texts."""
        verdicts = []
        for prompt, x, y in zip(prompts, a, b):
            x, y = completion_text(x), completion_text(y)
            votes = []
            for record in self._index.get((prompt_key(prompt), frozenset((x, y))), []):
                order, choice = self._order(record, x, y), record["choice"]
                if choice == "tie" or order is None:
                    answer = "tie"
                else:  # the left completion is a in order "ab", b in order "ba"
                    answer = "a" if (choice == "left") == (order == "ab") else "b"
                votes.append(
                    {"rater": str(record.get("rater") or "anonymous"), "order": order or "ab", "answer": answer}
                )
            verdicts.append(HumanVerdict.of(votes))
        return verdicts
