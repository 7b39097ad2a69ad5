"""Evaluate a trained policy against its reference: reward, win rate, KL, implicit-reward AUC, side-by-side samples.

`evaluate_models` measures in-memory models; `publish` writes samples.md, plots/reward_kl.png, evaluation.json and
the tracker's summary, table and plot, and returns the `eval/`-prefixed keys (the pipeline puts them in
summary.json). `evaluate_policy` is the run's evaluation stage; `trace_callbacks` the reward-KL trace during training.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from ..data.conversation import prompt_key
from ..data.schema import PreferenceData
from ..infra.storage import atomic_write_json, read_jsonl, write_jsonl
from .inputs import (
    INPUTS_FILE,
    PLOT_FILE,
    PREFIX,
    RESULTS_FILE,
    SAMPLES_FILE,
    TRACE_FILE,
    EvalInputs,
    build_eval_scorer,
    eval_seed,
    sample_settings,
)
from .llm_judge import RECORDS_FILE as LLM_JUDGE_FILE

HARNESS_PREFIX = "harness/"  # lm-evaluation-harness keys stand beside eval/* in summary.json, not under it

if TYPE_CHECKING:
    from .metrics import SampleEval
    from .policy_ref import PolicyReference
    from .trace import RewardKLTrace

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What one evaluation produced: flat metrics (no prefix), side-by-side rows, the samples and margins."""

    metrics: dict[str, Any]
    side_by_side: list[dict[str, Any]] = field(default_factory=list)
    samples: SampleEval | None = None
    margins: list[float] = field(default_factory=list)
    scorer: str | None = None
    notes: list[str] = field(default_factory=list)
    judged_pairs: list[dict[str, Any]] = field(default_factory=list)  # the LLM judge's pairs (llm_judge.jsonl)


def evaluate_models(
    cfg: DictConfig,
    pair: PolicyReference,
    tokenizer,
    inputs: EvalInputs,
    scorer=None,
    scorer_name: str | None = None,
    skip_reason: str | None = None,
    progress: bool = False,
) -> Evaluation:
    """All measurements for in-memory models. Deterministic for a given config (seeded sampling and bootstrap)."""
    from .metrics import reward_kl_metrics, sample_and_score
    from .report import side_by_side_rows

    ev = cfg.eval
    settings = sample_settings(cfg, progress)
    prompts = inputs.prompts[: int(ev.num_prompts)]
    pairs = inputs.pairs[: int(ev.num_pairs)]
    metrics: dict[str, Any] = {
        "num_prompts": len(prompts),
        "num_samples": settings.num_samples,
        "prompts_dropped_seen_in_training": inputs.dropped_seen_in_training,
    }
    out = Evaluation(metrics=metrics, scorer=scorer_name)
    if skip_reason:
        out.notes.append(f"reward metrics skipped: {skip_reason}")
    if prompts:
        result = sample_and_score(pair, tokenizer, prompts, settings, scorer)
        metrics.update(reward_kl_metrics(result, int(ev.bootstrap), settings.seed))
        if inputs.sources:  # a mixture: each source's prompts too (eval/<source>/...)
            from .sources import sample_metrics_by_source

            metrics.update(sample_metrics_by_source(result, inputs.sources, int(ev.bootstrap), settings.seed))
        out.samples = result
        out.side_by_side = side_by_side_rows(result, int(ev.num_side_by_side))
        metrics.update(_judged(scorer, result, inputs, settings, int(ev.bootstrap)))
        if (ev.get("llm_judge") or {}).get("enabled"):
            found, out.judged_pairs = _llm_judged(cfg, pair, result, inputs, settings)
            metrics.update(found)
        metrics.update(_best_of_n(pair, tokenizer, prompts, settings, scorer, ev, result))
    else:
        out.notes.append("reward/KL metrics skipped: no held-out prompts")
    if (ev.get("harness") or {}).get("enabled"):
        from .harness import harness_metrics  # lm-eval is imported only when the harness is on

        batch = int(ev.harness.batch_size or settings.logprob_batch_size)
        metrics.update(harness_metrics(pair, tokenizer, ev.harness, batch))
    if pairs:
        out.margins = _implicit_reward(cfg, pair, tokenizer, pairs, settings, metrics, inputs.sources)
    else:
        out.notes.append("implicit-reward metrics skipped: no held-out pairs")
    if scorer_name:
        metrics["reward_scorer"] = scorer_name
    for note in out.notes:
        log.warning(note)
    return out


def _best_of_n(pair, tokenizer, prompts: list, settings, scorer, ev, result) -> dict[str, Any]:
    """The best-of-N baseline on the first eval.best_of_n_prompts prompts (reusing the reference's samples)."""
    ns, n_bon = list(ev.get("best_of_n") or []), int(ev.get("best_of_n_prompts") or 0)
    if scorer is None or not ns or n_bon <= 0:
        return {}
    from .best_of_n import evaluate_best_of_n

    return evaluate_best_of_n(
        pair,
        tokenizer,
        prompts[:n_bon],
        settings,
        scorer,
        ns,
        int(ev.bootstrap),
        reuse=result.reference,
        reuse_scores=result.rewards_reference,
    )


def _judged(scorer, result, inputs: EvalInputs, settings, resamples: int) -> dict[str, Any]:
    """The judge's identity and held-out accuracy; the policy against the dataset's chosen responses (none: {})."""
    from .judge import judge_metrics, win_rate_vs_chosen

    if scorer is None:
        return {}
    references = {prompt_key(p): inputs.reference_for(p) for p in result.policy.prompts}
    chosen = win_rate_vs_chosen(scorer, result, references, settings.score_with_prompt, resamples, settings.seed)
    return {**judge_metrics(scorer), **chosen}


def _llm_judged(cfg: DictConfig, pair, result, inputs: EvalInputs, settings) -> tuple[dict[str, Any], list[dict]]:
    """The pairwise LLM judge on the evaluation's samples: llm_judge/* metrics and the judged pairs."""
    from ..judges.llm import build_llm_judge
    from .llm_judge import llm_judge_metrics

    block = cfg.eval.llm_judge
    judge = build_llm_judge(block, cfg.get("cache_dir"), str(pair.policy.device))
    references = {prompt_key(p): inputs.reference_for(p) for p in result.policy.prompts}
    return llm_judge_metrics(
        judge,
        result,
        references,
        int(block.max_pairs),
        bool(block.vs_chosen),
        int(cfg.eval.bootstrap),
        settings.seed,
        settings.progress,
    )


def _implicit_reward(
    cfg: DictConfig, pair, tokenizer, pairs: list[dict], settings, metrics: dict, sources: dict[str, str]
) -> list[float]:
    """DPO's implicit reward on held-out pairs (the trainer's tokens and truncation) into `metrics` (per source too,
    for a mixture); the margins."""
    from .metrics import implicit_reward_metrics, implicit_rewards

    chosen, rejected = implicit_rewards(
        pair,
        tokenizer,
        pairs,
        float(cfg.trainer.beta),
        cfg.trainer.max_length,
        settings.logprob_batch_size,
        str(cfg.trainer.get("truncation_mode") or "keep_start"),
        progress=settings.progress,
        ld_alpha=cfg.trainer.get("ld_alpha"),  # TRL's LD-DPO weighting, as the trainer's rewards/* use it
    )
    metrics.update(implicit_reward_metrics(chosen, rejected))
    if sources:
        from .sources import pair_metrics_by_source

        metrics.update(pair_metrics_by_source(pairs, chosen, rejected, sources))
    return (chosen - rejected).tolist()


def publish(run_dir: Path, evaluation: Evaluation, tracker, source: str, cfg: DictConfig) -> dict[str, Any]:
    """Write samples.md, plots/reward_kl.png and evaluation.json; send summary, table and plot to the tracker.

    Returns the `eval/`-prefixed summary entries.
    """
    from .report import SIDE_BY_SIDE_COLUMNS, plot_reward_kl, write_samples_md

    metrics = evaluation.metrics
    write_samples_md(run_dir / SAMPLES_FILE, evaluation.side_by_side, metrics, evaluation.scorer)
    trace_path = run_dir / TRACE_FILE
    trace = read_jsonl(trace_path) if trace_path.exists() else []
    plot = plot_reward_kl(run_dir / PLOT_FILE, trace, metrics)
    results = {k if k.startswith(HARNESS_PREFIX) else f"{PREFIX}{k}": v for k, v in metrics.items()}
    if evaluation.judged_pairs:
        write_jsonl(run_dir / LLM_JUDGE_FILE, evaluation.judged_pairs)
    if evaluation.notes:
        results[f"{PREFIX}notes"] = evaluation.notes
    atomic_write_json(
        run_dir / RESULTS_FILE,
        {
            "source": source,
            "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "metrics": results,
            "implicit_margins": evaluation.margins,
            "settings": {
                "eval": OmegaConf.to_container(cfg.eval, resolve=True),
                "seed": eval_seed(cfg),
                "score_with_prompt": sample_settings(cfg).score_with_prompt,
                "generation": OmegaConf.to_container(cfg.generation, resolve=True),
            },
        },
    )
    tracker.summary({k: v for k, v in results.items() if isinstance(v, (int, float, str))})
    if evaluation.side_by_side:
        tracker.table(
            "eval/side_by_side",
            SIDE_BY_SIDE_COLUMNS,
            [[row[c] for c in SIDE_BY_SIDE_COLUMNS] for row in evaluation.side_by_side],
        )
    if plot is not None:
        tracker.image("plots/reward_kl", plot)
    return results


def evaluate_policy(
    cfg: DictConfig, trainer, tokenizer, data: PreferenceData, run_dir: Path, tracker, reference_path=None
) -> dict[str, Any]:
    """The pipeline's evaluation stage: the trainer's policy against the reference it trained against (rebuilt
    from `reference_path`, a warm start's folder, when the trainer keeps none). Returns the eval/ summary keys."""
    from ..infra.sharding import is_sharded
    from .policy_ref import from_run_dir, from_trainer

    inputs = EvalInputs.from_data(data)
    inputs.save(run_dir / INPUTS_FILE)
    scorer, name, skip = build_eval_scorer(cfg)
    if is_sharded(trainer.model):  # sampling from shards would gather every block for every token: use the
        # consolidated model the run saved (RUN/model), on this process alone (docs/clusters.md: measured faster)
        device = str(trainer.accelerator.device)
        pair = from_run_dir(run_dir, cfg, reference_path, device)
    else:
        pair = from_trainer(trainer, cfg, reference_path)
    evaluation = evaluate_models(cfg, pair, tokenizer, inputs, scorer, name, skip, progress=True)
    return publish(run_dir, evaluation, tracker, "run", cfg)


def trace_callbacks(
    cfg: DictConfig, tokenizer, data: PreferenceData, run_dir: Path, tracker, reference_path=None
) -> list[RewardKLTrace]:
    """The reward-KL trace callback for training (none when eval is off or eval.every_n_steps=0).

    Call `bind(trainer)` on each once the trainer exists: the reference is read from it.
    """
    from .policy_ref import from_trainer
    from .trace import RewardKLTrace

    if not cfg.eval.enabled:
        return []
    if int(cfg.eval.every_n_steps) == 0:
        return []
    inputs = EvalInputs.from_data(data)
    prompts = inputs.prompts[: int(cfg.eval.trace_prompts)]
    if not prompts:
        log.warning("eval.every_n_steps is set but there are no held-out prompts: no reward-KL trace")
        return []
    scorer, _, _ = build_eval_scorer(cfg)
    return [
        RewardKLTrace(
            int(cfg.eval.every_n_steps),
            prompts,
            tokenizer,
            sample_settings(cfg),
            scorer,
            lambda trainer: from_trainer(trainer, cfg, reference_path),
            run_dir / TRACE_FILE,
            tracker,
            bootstrap=min(int(cfg.eval.bootstrap), 200),
        )
    ]
