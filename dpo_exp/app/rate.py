"""The "Rate" tab: blind A/B votes on pairs from `pairs.PairMaker`, recorded through `dpo_exp.human`.

Each browser session (a tab, or a gradio_client) has its current pair and the next one being made ahead. A vote
names the pair it is about (its id travels with the page), so a double click or a stale page records nothing twice.
The record goes to the ratings file of every policy run on the pair (`human.store.RatingStore`: locked, atomic
appends) and the runs' `human/*` summary keys are recomputed in a background thread. Runs without held-out prompts
(no eval_inputs.json) show why in place of a pair and rate only typed prompts; a vote with no pair records nothing.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

import gradio as gr

from .. import __version__
from ..human.bradley_terry import leaderboard
from ..human.stats import WinRate, win_rate
from ..human.store import CHOICES, RatingStore, read_many, read_ratings
from ..human.summary import publish
from ..infra.cache import folder_digest
from ..infra.runinfo import git_commit
from ..models import MODEL_FILE_PATTERNS
from .alerts import page_error
from .generate import prompt_cut_notice
from .pairs import Pair, PairMaker
from .runs import REFERENCE, RunInfo

SHORTCUTS = {"left": ("1", "ArrowLeft"), "right": ("2", "ArrowRight"), "tie": ("3", "t"), "skip": ("0", "s")}
# keydown -> a click on the matching vote button, while the Rate tab is visible and no text field has the focus
KEYBOARD_JS = """() => {
  const keys = %s;
  document.addEventListener('keydown', (event) => {
    const tag = (event.target.tagName || '').toLowerCase();
    if (tag === 'input' || tag === 'textarea' || event.ctrlKey || event.metaKey || event.altKey) return;
    const id = keys[event.key];
    const button = id && document.getElementById(id);
    if (!button || button.offsetParent === null) return;
    event.preventDefault();
    button.click();
  });
}""" % {key: f"vote-{choice}" for choice, pair in SHORTCUTS.items() for key in pair}


def app_version(runs: list[RunInfo]) -> dict[str, Any]:
    """What produced the pairs: dpo_exp's version and commit, and each run's folder, name and model files' digest."""
    return {
        "dpo_exp": __version__,
        "git_commit": git_commit(),
        "runs": {
            run.label: {
                "path": str(run.path),
                "name": run.summary.get("name"),
                "model_digest": folder_digest(run.path / "model", MODEL_FILE_PATTERNS),
            }
            for run in runs
        },
    }


def vote_record(pair: Pair, choice: str, rater: str, version: dict) -> dict[str, Any]:
    """One line of ratings.jsonl."""
    winner = {"left": pair.left.model, "right": pair.right.model}.get(choice)
    return {
        "vote_id": f"{pair.pair_id}-{choice}",
        "pair_id": pair.pair_id,
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "rater": rater,
        "choice": choice,
        "winner": winner,
        "prompt": pair.prompt,
        "prompt_source": pair.prompt_source,
        "left": asdict(pair.left),
        "right": asdict(pair.right),
        "seed": pair.seed,
        "sampling": pair.sampling,
        "redraws": pair.redraws,
        "judge": pair.judge,
        "version": version,
    }


class SummaryRefresher:
    """Recomputes the runs' human/* keys (and, with several runs, the Bradley–Terry leaderboard) in one background
    thread; requests made while it works are folded into one more pass, which reads the latest ratings."""

    def __init__(self, runs: list[RunInfo]):
        self.runs = runs
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="human-summary")
        self._lock = threading.Lock()
        self._pending = False
        self.last: Future | None = None

    def request(self) -> Future | None:
        with self._lock:
            if self._pending:
                return self.last
            self._pending = True
            self.last = self._worker.submit(self._refresh)
            return self.last

    def _refresh(self) -> None:
        with self._lock:
            self._pending = False
        board = {}
        if len(self.runs) > 1:
            board = {row.model: row for row in leaderboard(read_many(run.path for run in self.runs))}
        for run in self.runs:
            if read_ratings(run.path) or board:
                publish(run.path, board.get(run.label))


class Rating:
    """The Rate tab's server side: per-session pairs, the ratings files and the summary refresher."""

    def __init__(self, runs: list[RunInfo], maker: PairMaker):
        self.runs, self.maker = runs, maker
        self.stores = {run.label: RatingStore(run.path) for run in runs}
        self.version = app_version(runs)
        self.refresher = SummaryRefresher(runs)
        self.current: dict[str, Pair] = {}
        self.ahead: dict[str, Future] = {}
        self.session_votes: dict[str, int] = defaultdict(int)
        self._session_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)

    def session_lock(self, session: str) -> threading.Lock:
        return self._session_locks[session]

    def pair_for(self, session: str) -> Pair | None:
        """The session's current pair (made now the first time; None when the runs have no held-out prompts and
        the rater has not typed one); the next held-out pair is always being made ahead."""
        if session not in self.current and self.maker.prompts:
            self.current[session] = self.maker.make()
        if session not in self.ahead and self.maker.prompts:
            self.ahead[session] = self.maker.ahead()
        return self.current.get(session)

    def advance(self, session: str) -> Pair | None:
        """The next pair after a vote: the one made ahead, or none (no held-out prompts: the rater types one)."""
        if session in self.ahead:
            self.current[session] = self.ahead.pop(session).result()
        else:
            self.current.pop(session, None)
        return self.pair_for(session)

    def record(self, session: str, choice: str, rater: str) -> dict[str, Any] | None:
        """Append the vote on the session's current pair to each policy run's file; None when already recorded."""
        if choice not in CHOICES:
            raise page_error(f"choice must be one of {', '.join(CHOICES)}")
        pair = self.current[session]
        record = vote_record(pair, choice, (rater or "").strip() or "anonymous", self.version)
        runs = [side.model for side in (pair.left, pair.right) if side.model != REFERENCE]
        written = [self.stores[label].append(record) for label in runs]
        if not any(written):
            return None
        self.session_votes[session] += 1
        self.refresher.request()
        return record

    def tally(self, session: str, last: dict[str, Any] | None) -> str:
        records = read_many(run.path for run in self.runs)
        counts = defaultdict(int)
        for r in records:
            counts[r.get("winner") or r.get("choice")] += 1
        parts = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
        text = f"**{len(records)} votes** recorded ({parts or 'none yet'}); **{self.session_votes[session]}** by you"
        pooled = win_rate(records) if len(self.runs) == 1 else None  # a sweep: the leaderboard (Evaluation tab)
        if pooled is not None:
            text += f"; the policy's human win rate: {win_rate_text(pooled)}"
        if last:
            text += (
                f"  \nlast vote: **{last['choice']}**, the left was **{last['left']['model']}**, "
                f"the right was **{last['right']['model']}**"
            )
        return text

    # ------------------------------------------------ the tab's events (each returns the outputs of rate_layout)

    def show(self, session: str) -> list[Any]:
        with self.session_lock(session):
            return [*pair_view(self.pair_for(session)), self.tally(session, None)]

    def vote(self, session: str, choice: str, rater: str, shown_pair: str) -> list[Any]:
        """Record `choice` on the pair the page showed and show the next one. Nothing is recorded when there is no
        pair to rate (a page error says why) or the page showed an older pair (a second click)."""
        with self.session_lock(session):
            current = self.pair_for(session)
            if current is None:
                raise page_error(NO_PAIR)
            if shown_pair != current.pair_id:  # a second click on a pair already rated: show the current one
                return [*pair_view(current), self.tally(session, None)]
            record = self.record(session, choice, rater)
            return [*pair_view(self.advance(session)), self.tally(session, record)]

    def rate_own(self, session: str, text: str) -> tuple[list[Any], str | None]:
        """A pair on the rater's own prompt, and the warning the Generate tab gives when the prompt is cut."""
        if not (text or "").strip():
            raise page_error("type a prompt first")
        with self.session_lock(session):
            pair = self.maker.make(text)
            self.current[session] = pair
            notice = prompt_cut_notice(self.maker.models, pair.prompt, self.maker.sampling.max_new_tokens)
            return [*pair_view(pair), self.tally(session, None)], notice


MIN_INTERVAL_PROMPTS = 5  # a bootstrap over fewer prompts has too few distinct resamples (one prompt: [x, x])


def win_rate_text(result: WinRate) -> str:
    """The win rate with its 95% interval, or, on votes from too few prompts, how many more an interval needs."""
    if result.prompts < MIN_INTERVAL_PROMPTS:
        more = MIN_INTERVAL_PROMPTS - result.prompts
        votes = f"{result.votes} vote{'s' if result.votes != 1 else ''}"
        return (
            f"**{result.rate:.2f}** on {votes} ({result.prompts} prompt{'s' if result.prompts != 1 else ''}); "
            f"a 95% interval needs votes on {MIN_INTERVAL_PROMPTS} prompts: {more} more"
        )
    return f"**{result.rate:.2f}** [95% CI {result.low:.2f}, {result.high:.2f}] on {result.votes} votes"


NO_PAIR = "no pair to rate: these runs have no held-out prompts (eval_inputs.json); type a prompt of your own above"


def pair_view(pair: Pair | None) -> list[Any]:
    """prompt, left text, right text, pair id (the outputs of every Rate-tab event but the tally)."""
    if pair is None:
        return [f"**{NO_PAIR}**", "", "", ""]
    source = "held-out prompt" if pair.prompt_source == "heldout" else "your prompt"
    return [f"**{source}:** {pair.prompt}", pair.left.text, pair.right.text, pair.pair_id]


def rate_layout() -> tuple[Any, Any, Any, dict[str, Any], list[Any]]:
    """(rater box, own-prompt box, its button, the vote buttons, the outputs every event updates)."""
    keys = " · ".join(f"{choice}: `{' / '.join(k)}`" for choice, k in SHORTCUTS.items())
    gr.Markdown(f"Which completion is better? The models are hidden and their sides random. Keys: {keys}")
    with gr.Row():
        rater = gr.Textbox(label="your name (kept for this session)", elem_id="rater", scale=1)
        own = gr.Textbox(label="or rate a prompt of your own", elem_id="rate-own", scale=2)
        own_button = gr.Button("Rate my prompt", elem_id="rate-own-button", scale=0)
    prompt = gr.Markdown(elem_id="rate-prompt")
    with gr.Row():
        left = gr.Textbox(label="left", lines=5, interactive=False, elem_id="rate-left")
        right = gr.Textbox(label="right", lines=5, interactive=False, elem_id="rate-right")
    with gr.Row():
        buttons = {
            choice: gr.Button(
                {"left": "left is better", "right": "right is better"}.get(choice, choice),
                elem_id=f"vote-{choice}",
                variant="primary" if choice in ("left", "right") else "secondary",
            )
            for choice in ("left", "tie", "right", "skip")
        }
    pair_id = gr.Textbox(visible=False, elem_id="rate-pair-id")
    tally = gr.Markdown(elem_id="rate-tally")
    return rater, own, own_button, buttons, [prompt, left, right, pair_id, tally]


def rate_tab(rating: Rating) -> list[Any]:
    """Lay out the tab and wire its events; returns the handler and outputs build_app loads the first pair with."""
    rater, own, own_button, buttons, outputs = rate_layout()
    pair_id = outputs[3]

    def show(request: gr.Request) -> list[Any]:
        return rating.show(request.session_hash or "default")

    def vote_on(choice: str):
        def vote(rater_name: str, shown_pair: str, request: gr.Request) -> list[Any]:
            return rating.vote(request.session_hash or "default", choice, rater_name, shown_pair)

        return vote

    def rate_own(text: str, request: gr.Request) -> list[Any]:
        outputs, notice = rating.rate_own(request.session_hash or "default", text)
        if notice:
            gr.Warning(notice, duration=None)  # stays until closed, as on the Generate tab
        return outputs

    for choice, button in buttons.items():
        button.click(
            vote_on(choice),
            [rater, pair_id],
            outputs,
            api_name=f"vote_{choice}",
            concurrency_id="rate",  # sessions vote at once; the model lock and the file lock keep them apart
            concurrency_limit=4,
        )
    own_button.click(rate_own, own, outputs, api_name="rate_own", concurrency_id="rate", concurrency_limit=4)
    rate_pair = gr.Button(visible=False)
    rate_pair.click(show, None, outputs, api_name="rate_pair", concurrency_id="rate", concurrency_limit=4)
    return [show, outputs]
