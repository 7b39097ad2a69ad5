"""Evaluate a trained policy against its reference: reward, win rate, KL, implicit-reward AUC, side-by-side samples.

In a run (`eval.enabled=true`) the pipeline calls `evaluate_policy(ctx, trainer, tokenizer, data)` after training.
On a finished run directory: `python -m dpo_exp.evaluate run_dir=PATH [eval.num_prompts=...]` rebuilds the
tokenizer, the held-out inputs, the reference and the policy from what the run saved, and recomputes the same
numbers with the same seed (run_dir/evaluation.json, and the `eval/` keys of summary.json).

Everything lands under an `eval/` prefix in summary.json and the W&B summary; samples.md, plots/reward_kl.png
and a W&B table show the samples. The measurement code lives in `dpo_exp.evaluation`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from . import CONF_DIR
from .data import PAIR_ID_COLUMNS
from .errors import UserError
from .storage import atomic_write_json, read_json, read_jsonl

if TYPE_CHECKING:  # torch / transformers load lazily, so a bad run_dir is reported in a second
    from .evaluation.metrics import SampleEval, SampleSettings
    from .evaluation.models import PolicyReference
    from .evaluation.trace import RewardKLTrace


log = logging.getLogger(__name__)

PREFIX = "eval/"
INPUTS_FILE = "eval_inputs.json"  # the held-out prompts and pairs the run evaluated on (for re-evaluation)
RESULTS_FILE = "evaluation.json"  # full results: metrics, margins, settings
SAMPLES_FILE = "samples.md"
TRACE_FILE = "eval_trace.jsonl"  # the reward-KL trace during training (evaluation.trace writes it)
PLOT_FILE = "plots/reward_kl.png"


# ---------------------------------------------------------------- configuration


def eval_seed(cfg: DictConfig) -> int:
    return int(cfg.eval.seed if cfg.eval.get("seed") is not None else cfg.seed)


def sample_settings(cfg: DictConfig, progress: bool = False) -> SampleSettings:
    from .evaluation.metrics import SampleSettings

    ev = cfg.eval
    score_with_prompt = ev.get("score_with_prompt")
    if score_with_prompt is None:
        score_with_prompt = cfg.dataset.kind == "imdb_sentiment"
    return SampleSettings(
        gen_cfg=cfg.generation,
        num_samples=int(ev.num_samples),
        max_new_tokens=int(ev.max_new_tokens),
        seed=eval_seed(cfg),
        logprob_batch_size=int(ev.get("batch_size") or cfg.trainer.per_device_eval_batch_size),
        score_with_prompt=bool(score_with_prompt),
        progress=progress,
    )


_SCORERS: dict[str, Any] = {}  # scorers built in this process (the trace and the final evaluation share one)


def build_eval_scorer(cfg: DictConfig) -> tuple[Any, str | None, str | None]:
    """(scorer, its name, why reward metrics are skipped). `eval.reward` (eval/reward=NAME) wins over the run's
    `reward`."""
    from .config import check_eval
    from .rewards import build_scorer

    check_eval(cfg)
    context = cfg
    if cfg.eval.reward is not None:  # eval/reward=NAME: that option's content, in place of the run's `reward`
        context = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # a copy whose `reward` is replaced,
        with open_dict(context):  # so ${...} in the option resolve
            context.reward = cfg.eval.reward
    reward_cfg = context.get("reward")
    kind = str(reward_cfg.get("kind", "none")) if reward_cfg is not None else "none"
    if kind == "none":
        return None, None, "no scorer: the run has reward=none and eval.reward is not set (e.g. eval/reward=vader)"
    key = OmegaConf.to_yaml(OmegaConf.create({"reward": reward_cfg, "dataset": cfg.dataset}))
    if key not in _SCORERS:
        _SCORERS.clear()  # keep at most one (a scorer can hold a model)
        _SCORERS[key] = build_scorer(reward_cfg, context)
    return _SCORERS[key], kind, None


# ---------------------------------------------------------------- held-out inputs


@dataclass
class EvalInputs:
    """Held-out prompts for sampling and held-out preference pairs for the implicit reward."""

    prompts: list[str]
    pairs: list[dict]
    dropped_seen_in_training: int = 0

    @classmethod
    def from_data(cls, data: Any) -> EvalInputs:
        """From PreferenceData: eval_prompts minus any prompt that is also a training prompt; the eval pairs."""
        train_prompts = {r["prompt"] for r in getattr(data, "train", [])}
        prompts = list(dict.fromkeys(getattr(data, "eval_prompts", None) or []))
        kept = [p for p in prompts if p not in train_prompts]
        keys = ("prompt", "chosen", "rejected", *PAIR_ID_COLUMNS)  # sampled pairs carry the token ids trained on
        pairs = [{k: r[k] for k in keys if k in r} for r in getattr(data, "eval", None) or []]
        return cls(kept, pairs, len(prompts) - len(kept))

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> EvalInputs | None:
        raw = read_json(path)
        return cls(**raw) if raw else None


# ---------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """What one evaluation produced: flat metrics (no prefix), side-by-side rows, the samples and margins."""

    metrics: dict[str, Any]
    side_by_side: list[dict[str, Any]] = field(default_factory=list)
    samples: SampleEval | None = None
    margins: list[float] = field(default_factory=list)
    scorer: str | None = None
    notes: list[str] = field(default_factory=list)


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
    from .evaluation.metrics import implicit_reward_metrics, implicit_rewards, reward_kl_metrics, sample_and_score
    from .evaluation.report import side_by_side_rows

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
        out.samples = result
        out.side_by_side = side_by_side_rows(result, int(ev.num_side_by_side))
        ns, n_bon = list(ev.get("best_of_n") or []), int(ev.get("best_of_n_prompts") or 0)
        if scorer is not None and ns and n_bon > 0:
            from .evaluation.best_of_n import evaluate_best_of_n

            metrics.update(
                evaluate_best_of_n(
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
            )
    else:
        out.notes.append("reward/KL metrics skipped: no held-out prompts")
    if pairs:
        chosen, rejected = implicit_rewards(
            pair,
            tokenizer,
            pairs,
            float(cfg.trainer.beta),
            cfg.trainer.max_length,
            settings.logprob_batch_size,
            str(cfg.trainer.get("truncation_mode") or "keep_start"),
            progress=settings.progress,
        )
        metrics.update(implicit_reward_metrics(chosen, rejected))
        out.margins = (chosen - rejected).tolist()
    else:
        out.notes.append("implicit-reward metrics skipped: no held-out pairs")
    if scorer_name:
        metrics["reward_scorer"] = scorer_name
    for note in out.notes:
        log.warning(note)
    return out


def publish(run_dir: Path, evaluation: Evaluation, tracker, source: str, cfg: DictConfig) -> dict[str, Any]:
    """Write samples.md, plots/reward_kl.png and evaluation.json; send summary, table and plot to the tracker.

    Returns the `eval/`-prefixed summary entries.
    """
    from .evaluation.report import SIDE_BY_SIDE_COLUMNS, plot_reward_kl, write_samples_md

    metrics = evaluation.metrics
    write_samples_md(run_dir / SAMPLES_FILE, evaluation.side_by_side, metrics, evaluation.scorer)
    trace_path = run_dir / TRACE_FILE
    trace = read_jsonl(trace_path) if trace_path.exists() else []
    plot = plot_reward_kl(run_dir / PLOT_FILE, trace, metrics)
    results = {f"{PREFIX}{k}": v for k, v in metrics.items()}
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


def evaluate_policy(ctx, trainer, tokenizer, data) -> dict[str, Any]:
    """The pipeline's evaluation stage: the trainer's policy against the reference it trained against."""
    from .evaluation.models import from_trainer

    cfg = ctx.cfg
    inputs = EvalInputs.from_data(data)
    inputs.save(ctx.run_dir / INPUTS_FILE)
    scorer, name, skip = build_eval_scorer(cfg)
    pair = from_trainer(trainer, cfg, ctx.summary)
    evaluation = evaluate_models(cfg, pair, tokenizer, inputs, scorer, name, skip, progress=True)
    return publish(ctx.run_dir, evaluation, ctx.tracker, "run", cfg)


def trace_callbacks(ctx, tokenizer, data) -> list[RewardKLTrace]:
    """The reward-KL trace callback for train_policy (none when eval is off or eval.every_n_steps=0).

    Call `bind(trainer)` on each once the trainer exists: the reference is read from it.
    """
    from .evaluation.models import from_trainer
    from .evaluation.trace import RewardKLTrace

    cfg = ctx.cfg
    if not cfg.eval.enabled or int(cfg.eval.every_n_steps) == 0:
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
            lambda trainer: from_trainer(trainer, cfg, ctx.summary),
            ctx.run_dir / TRACE_FILE,
            ctx.tracker,
            bootstrap=min(int(cfg.eval.bootstrap), 200),
        )
    ]


# ---------------------------------------------------------------- standalone: a finished run directory


def load_run_config(run_dir: Path, args: DictConfig | None = None) -> DictConfig:
    """The run's saved config, its `eval` / `generation` blocks completed with today's defaults (settings the run
    predates), then the `eval.*` / `eval/reward` / `generation.*` overrides named on the command line applied.

    `args` is conf/evaluate.yaml as composed (the same eval and generation defaults as a run); without it (the
    app) the defaults are composed here."""
    from .config import compose_config, reward_option

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UserError(f"run_dir={run_dir} has no .hydra/config.yaml (not a dpo_exp run directory)")
    cfg = OmegaConf.load(path)
    defaults = args if args is not None else compose_config("evaluate", ["run_dir=."])
    with open_dict(cfg):
        saved_reward = (cfg.get("eval") or {}).get("reward")
        if isinstance(saved_reward, str):  # saved before eval/reward was a config group
            cfg.eval.reward = reward_option(saved_reward)
        for block in ("eval", "generation"):
            cfg[block] = OmegaConf.merge(OmegaConf.to_container(defaults[block]), cfg.get(block) or {})
        for key in _named_overrides(("eval", "generation")) if args is not None else []:
            OmegaConf.update(cfg, key, OmegaConf.select(args, key), merge=False)
    return cfg


def _named_overrides(blocks: tuple[str, ...]) -> list[str]:
    """Dotted keys under `blocks` that this Hydra job's command line overrides (eval/reward=X -> eval.reward)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return []
    parsed = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    keys = [o.key_or_group.replace("/", ".") for o in parsed]
    return [k for k in keys if k.split(".")[0] in blocks]


def rebuild_inputs(run_dir: Path, cfg: DictConfig, tokenizer) -> EvalInputs:
    """The held-out inputs the run evaluated on (eval_inputs.json); rebuilt from the dataset config (seeded, so
    the run's prompts come first) when that file is missing or eval.num_prompts asks for more prompts than it has.

    For imdb_sentiment the held-out pairs were sampled during the run, so they are always the saved ones.
    """
    saved = EvalInputs.load(run_dir / INPUTS_FILE)
    if saved is not None and len(saved.prompts) >= int(cfg.eval.num_prompts):
        return saved
    from .data import PreferenceData
    from .pipeline import RunContext, load_data
    from .runinfo import RunIdentity

    log.warning(
        "rebuilding the held-out prompts of %s from the dataset config (%s)",
        run_dir,
        "no " + INPUTS_FILE if saved is None else f"eval.num_prompts > {len(saved.prompts)} saved",
    )
    ctx = RunContext(cfg=cfg, identity=RunIdentity(run_dir, "evaluate", "evaluate"))
    data = load_data(ctx, tokenizer)
    if isinstance(data, PreferenceData):
        return EvalInputs.from_data(data)
    # imdb_sentiment prompt sets: held-out prompts minus every prompt used for training pairs
    used = set(getattr(data, "train_prompts", [])) | set(getattr(data, "pair_eval_prompts", []))
    prompts = list(dict.fromkeys(getattr(data, "eval_prompts", [])))
    kept = [p for p in prompts if p not in used]
    return EvalInputs(kept, saved.pairs if saved else [], len(prompts) - len(kept))


def evaluate_run_dir(run_dir: Path, cfg: DictConfig, tracker=None, progress: bool = True) -> dict[str, Any]:
    """Re-evaluate a finished run: writes evaluation.json, samples.md, the plot, and updates summary.json."""
    from .config import check_eval
    from .evaluation.models import from_run_dir
    from .models import load_tokenizer
    from .tracking import Tracker

    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json") or {}
    check_eval(cfg)
    tokenizer = load_tokenizer(cfg.model)
    inputs = rebuild_inputs(run_dir, cfg, tokenizer)
    scorer, name, skip = build_eval_scorer(cfg)
    pair = from_run_dir(run_dir, cfg, summary)
    evaluation = evaluate_models(cfg, pair, tokenizer, inputs, scorer, name, skip, progress=progress)
    results = publish(run_dir, evaluation, tracker or Tracker(), "evaluate", cfg)
    summary = {k: v for k, v in summary.items() if not k.startswith(PREFIX)}  # TRL's eval metrics are eval_*
    summary.update(results)
    summary["evaluated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_json(run_dir / "summary.json", summary)
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(args: DictConfig) -> None:
    from .tracking import start_tracker

    run_dir = Path(str(args.run_dir))
    tracker = None
    try:
        cfg = load_run_config(run_dir, args)  # a UserError when run_dir is not a dpo_exp run directory
        summary = read_json(run_dir / "summary.json") or {}
        if args.wandb and summary.get("wandb_id"):
            tracker = start_tracker(
                cfg.logger,
                run_dir,
                summary.get("name", "dpo"),
                summary.get("group", "dpo"),
                [],
                {},
                resume_id=summary["wandb_id"],
            )
        results = evaluate_run_dir(run_dir, cfg, tracker)
        if tracker is not None:
            tracker.finish(exit_code=0)
    except BaseException as exc:
        if tracker is not None:  # the resumed W&B run is closed as failed, not left running
            tracker.finish(exit_code=1)
        if isinstance(exc, UserError):
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        raise
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}, indent=2))


if __name__ == "__main__":
    main()
