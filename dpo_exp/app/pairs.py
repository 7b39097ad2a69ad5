"""Blind pairs for the Rate tab: a prompt, two models in random order, one seed, the run's sampling settings.

Completions come from the Generate tab's own sampler (`generate.sample_one`: same seed for both sides, the run's
generation block) and are scored by the run's judge (its sentiment scorer or reward model), so every vote can be
compared with the automatic judge. The next pair of each session is made ahead in a background thread while the
rater reads the current one.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

from ..errors import UserError
from ..evaluation.inputs import sample_settings
from ..evaluation.metrics import score_samples
from .generate import RUN_SCORER, Sampling, sample_one, scorer_for
from .models import Models
from .runs import REFERENCE, RunInfo


@dataclass
class Side:
    """One side of a pair: which model wrote it (hidden until the vote), its text, the judge's score."""

    model: str
    run: str | None  # the policy's run folder; None for the reference
    text: str
    judge_score: float | None


@dataclass
class Pair:
    pair_id: str
    prompt: str
    prompt_source: str  # "heldout" (the run's held-out prompts) or "typed"
    seed: int
    sampling: dict
    judge: str | None
    left: Side
    right: Side
    seconds: float  # time taken to sample and score both sides
    redraws: int = 0  # seeds skipped because both sides wrote the very same text


MAX_REDRAWS = 4
REDRAW_STRIDE = 10_007  # seed step of a redraw: far from the pass seeds (evaluation seed + pass)


class PairMaker:
    """Draws (prompt, two models, sides, seed) and samples the pair; thread-safe.

    Held-out prompts come in a shuffled order, pass after pass; pass k samples with the run's evaluation seed + k,
    so a prompt seen again gets new completions. One run: the reference against its policy. Several runs (a sweep):
    two of {reference, every policy}, uniformly. `side_seed` fixes the sides' random order (tests); None = fresh.
    """

    def __init__(self, runs: list[RunInfo], models: Models, side_seed: int | None = None):
        self.models = models
        self.cfg = runs[0].cfg
        self.sampling = Sampling.defaults(self.cfg)
        self.contestants = [REFERENCE, *(run.label for run in runs)]
        self.run_paths = {run.label: str(run.path) for run in runs}
        self.prompts = list(dict.fromkeys(p for run in runs for p in run.prompts))
        self.rng = random.Random(side_seed)
        self.scorer, self.judge = scorer_for(self.cfg, RUN_SCORER)
        self.with_prompt = sample_settings(self.cfg).score_with_prompt
        self._lock = threading.Lock()
        self._order: list[str] = []
        self._drawn = 0
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rate-ahead")

    def _draw(self, prompt: str | None) -> tuple[str, str, int, list[str]]:
        """(prompt, its source, seed, [left model, right model])."""
        with self._lock:
            passes, source = 0, "typed"
            if prompt is None:
                if not self.prompts:
                    raise UserError("the run has no held-out prompts (eval_inputs.json): type a prompt to rate")
                if not self._order:
                    self._order = self.rng.sample(self.prompts, len(self.prompts))
                passes, self._drawn = self._drawn // len(self.prompts), self._drawn + 1
                prompt, source = self._order.pop(), "heldout"
            models = self.rng.sample(self.contestants, 2)  # which two, and which goes left
        return prompt, source, self.sampling.seed + passes, models

    def _side(self, model: str, prompt: str, sampling: Sampling) -> Side:
        samples = sample_one(self.models, model, prompt, sampling)
        score = float(score_samples(self.scorer, samples, self.with_prompt)[0, 0]) if self.scorer else None
        return Side(model, self.run_paths.get(model), samples.texts[0][0], score)

    def make(self, prompt: str | None = None) -> Pair:
        """A new pair now: a held-out prompt (None) or the rater's own. Two identical texts are no question to ask
        a person: the pair is drawn again with another seed (both sides alike), at most MAX_REDRAWS times."""
        started = time.perf_counter()
        prompt, source, seed, (left, right) = self._draw(prompt)
        for redraws in range(MAX_REDRAWS + 1):
            sampling = Sampling(**{**asdict(self.sampling), "seed": seed + REDRAW_STRIDE * redraws})
            sides = [self._side(model, prompt, sampling) for model in (left, right)]
            if sides[0].text != sides[1].text:
                break
        settings = {k: v for k, v in asdict(sampling).items() if k != "seed"}
        seconds = time.perf_counter() - started
        return Pair(uuid.uuid4().hex, prompt, source, sampling.seed, settings, self.judge, *sides, seconds, redraws)

    def ahead(self) -> Future:
        """A pair being made in the background thread (one at a time: the models are shared)."""
        return self._ahead.submit(self.make)
