"""The Gradio Blocks: a "Generate" tab (reference vs policies on one prompt), a "Rate" tab (blind A/B votes, rate.py)
and an "Evaluation" tab per run (automatic and human numbers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import UserError
from ..models import context_length
from ..models.chat import as_prompt, prompt_text
from . import report
from .alerts import page_error
from .generate import (
    RUN_SCORER,
    SCORER_CHOICES,
    Completion,
    Sampling,
    compare_completions,
    max_new_tokens_limit,
    prompt_cut_notice,
)
from .models import Models
from .pairs import PairMaker
from .rate import KEYBOARD_JS, Rating, rate_tab
from .runs import REFERENCE, RunInfo

SCORE_HEADERS = ["model", "reward", "log pi - log pi_ref"]


def shown_path(run: RunInfo) -> str:
    """The run's folder, relative to where the app was started when it is below it."""
    try:
        return f"`{run.path.relative_to(Path.cwd().resolve())}`"
    except ValueError:
        return f"`{run.path}`"


def score_rows(completions: list[Completion]) -> list[list[Any]]:
    def fmt(value: float | None) -> Any:
        return "n/a" if value is None else round(value, 4)

    return [[c.model, fmt(c.reward), fmt(c.log_ratio)] for c in completions if c.finished]


def heldout_prompts(runs: list[RunInfo]) -> dict[str, Any]:
    """The runs' held-out prompts by their readable text (a conversation shows every turn)."""
    return {prompt_text(p): p for run in runs for p in run.prompts}


def make_generate_fn(runs: list[RunInfo], models: Models):
    """The click handler: yields every output box (reference, then one per run) and the score table."""
    labels = [run.label for run in runs]
    cfg = runs[0].cfg
    heldout = heldout_prompts(runs)

    def generate(
        prompt: str,
        selected: list[str],
        temperature: float,
        top_k: float,
        top_p: float,
        max_new_tokens: float,
        seed: float,
        scorer: str,
    ) -> Iterator[list[Any]]:
        if not (prompt or "").strip():
            raise page_error("type a prompt or pick one of the held-out prompts")
        sampling = Sampling(float(temperature), int(top_k), float(top_p), int(max_new_tokens), int(seed))
        try:
            sampling.check()  # the same check as the command line's generation.* settings
        except UserError as exc:
            raise page_error(str(exc)) from None
        asked = heldout.get(prompt) or as_prompt(models.tokenizer, prompt)  # a held-out conversation keeps its turns
        notice = prompt_cut_notice(models, asked, sampling.max_new_tokens)
        if notice:
            gr.Warning(notice, duration=None)  # stays until closed: the completions answer a shorter prompt
        chosen = [label for label in labels if label in (selected or [])]
        try:
            for done in compare_completions(models, cfg, asked, chosen, sampling, scorer or RUN_SCORER):
                texts = {c.model: c.text for c in done}
                boxes = [texts.get(REFERENCE, "")] + [texts.get(label, "") for label in labels]
                yield boxes + [score_rows(done)]
        except Exception as exc:  # noqa: BLE001 - shown in the page (e.g. a scorer that cannot be built)
            raise page_error(f"{type(exc).__name__}: {exc}") from exc

    return generate


def generate_tab(runs: list[RunInfo], models: Models) -> None:
    with models.use(REFERENCE) as reference:
        context = context_length(reference)
    limit = max_new_tokens_limit(context)  # the prompt keeps room in the context
    defaults = Sampling.defaults(runs[0].cfg).fitted(context)
    labels = [run.label for run in runs]
    prompts = list(heldout_prompts(runs))
    with gr.Row():
        with gr.Column(scale=1):
            pick = gr.Dropdown(choices=prompts, value=None, label="held-out evaluation prompts", elem_id="pick")
            prompt = gr.Textbox(label="prompt", lines=3, elem_id="prompt")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
            selected = gr.CheckboxGroup(choices=labels, value=labels, label="policies")
            with gr.Accordion("sampling (defaults: the run's settings)", open=True):
                temperature = gr.Slider(0.05, 2.0, value=defaults.temperature, step=0.05, label="temperature")
                top_k = gr.Slider(0, 200, value=defaults.top_k, step=1, label="top-k (0 = off)")
                top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.01, label="top-p")
                max_new = gr.Slider(1, limit, value=defaults.max_new_tokens, step=1, label="max new tokens")
                seed = gr.Number(value=defaults.seed, precision=0, label="seed (same for every model)")
                scorer = gr.Dropdown(choices=SCORER_CHOICES, value=RUN_SCORER, label="reward scorer")
        with gr.Column(scale=2):
            boxes = [gr.Textbox(label=REFERENCE, lines=3, elem_id="out-reference", interactive=False)]
            boxes += [
                gr.Textbox(
                    label=label if label == "policy" else f"policy: {label}",
                    lines=3,
                    elem_id=f"out-policy-{i}",
                    interactive=False,
                )
                for i, label in enumerate(labels)
            ]
            scores = gr.Dataframe(
                headers=SCORE_HEADERS,
                label="reward and log-ratio to the reference",
                elem_id="scores",
                interactive=False,
            )
    pick.change(lambda p: p or "", pick, prompt, api_name=False)
    button.click(
        make_generate_fn(runs, models),
        [prompt, selected, temperature, top_k, top_p, max_new, seed, scorer],
        [*boxes, scores],
        api_name="generate",
    )


def evaluation_views(run: RunInfo, runs: list[RunInfo]) -> list[Any]:
    """Metrics table, human numbers, leaderboard, reward-KL image, curve gallery, samples choices and the first
    sample section."""
    sections = report.sample_sections(run)
    titles = [title for title, _ in sections]
    judged = report.judge_sections(run)
    return [
        report.metrics_rows(run),
        report.human_rows(run),
        report.leaderboard_rows(runs) if len(runs) > 1 else [],
        report.reward_kl_plot(run),
        report.curve_plots(run),
        gr.Dropdown(choices=titles, value=titles[0]),
        sections[0][1],
        gr.Dropdown(choices=[t for t, _ in judged], value=judged[0][0] if judged else None, visible=bool(judged)),
        judged[0][1] if judged else "",
    ]


def evaluation_tab(runs: list[RunInfo]) -> tuple:
    """Run picker, metrics, reward-KL plot, curves and samples.md; returns what build_app wires to page load."""
    by_label = {run.label: run for run in runs}
    run_pick = gr.Dropdown(choices=list(by_label), value=runs[0].label, label="run")
    path = gr.Markdown(shown_path(runs[0]))
    with gr.Row():
        metrics = gr.Dataframe(headers=["metric", "value"], label="eval/* metrics (summary.json)", interactive=False)
        human = gr.Dataframe(
            headers=report.HUMAN_HEADERS, label="human ratings (Rate tab)", interactive=False, elem_id="human-metrics"
        )
    board = gr.Dataframe(
        headers=report.LEADERBOARD_HEADERS,
        label="human leaderboard: Bradley-Terry fit to every vote (reference = 0)",
        interactive=False,
        visible=len(runs) > 1,
        elem_id="human-leaderboard",
    )
    reward_kl = gr.Image(type="filepath", label="reward vs KL", interactive=False)
    curves = gr.Gallery(label="training curves (plots/)", columns=3, height="auto", object_fit="contain")
    section = gr.Dropdown(label="samples.md: reference vs policy, by prompt")
    sample = gr.Markdown()
    judged = gr.Dropdown(label="LLM judge: a judged pair and the judge's reasoning (llm_judge.jsonl)", visible=False)
    judgement = gr.Markdown(elem_id="llm-judge-pair")
    outputs = [metrics, human, board, reward_kl, curves, section, sample, judged, judgement]

    def show_run(label: str) -> list[Any]:
        return [shown_path(by_label[label]), *evaluation_views(by_label[label], runs)]

    def show_section(label: str, title: str) -> str:
        return dict(report.sample_sections(by_label[label])).get(title, "")

    def show_judged(label: str, title: str) -> str:
        return dict(report.judge_sections(by_label[label])).get(title, "")

    run_pick.change(show_run, run_pick, [path, *outputs], api_name=False)
    section.change(show_section, [run_pick, section], sample, api_name=False)
    judged.change(show_judged, [run_pick, judged], judgement, api_name=False)
    return run_pick, path, outputs, show_run


def build_app(runs: list[RunInfo], models: Models, side_seed: int | None = None) -> gr.Blocks:
    """The app's Blocks; `side_seed` fixes the Rate tab's random sides and pair choice (None: fresh each start)."""
    where = shown_path(runs[0]) if len(runs) == 1 else f"{len(runs)} runs: " + ", ".join(r.label for r in runs)
    header = f"# dpo_exp: reference vs DPO policy\n{where}"
    rating = Rating(runs, PairMaker(runs, models, side_seed))
    rating.refresher.request()  # human/* summary keys from ratings made before this start
    with gr.Blocks(title="dpo_exp: reference vs DPO policy") as demo:
        gr.Markdown(header)
        with gr.Tab("Generate"):
            generate_tab(runs, models)
        with gr.Tab("Rate", elem_id="tab-rate"):
            show_pair, rate_outputs = rate_tab(rating)
        with gr.Tab("Evaluation", elem_id="tab-evaluation") as evaluation:
            run_pick, path, outputs, show_run = evaluation_tab(runs)
        evaluation.select(show_run, run_pick, [path, *outputs], api_name=False)  # fresh human numbers
        demo.load(show_run, run_pick, [path, *outputs], api_name=False)
        demo.load(show_pair, None, rate_outputs, api_name=False)
        demo.load(None, None, None, js=KEYBOARD_JS, api_name=False)
    return demo
