"""One run, start to finish: validate -> data -> model -> (pairs) -> DPO -> evaluation -> artifacts.

Every stage writes its results to the run directory; summary.json carries the run's status
(`running`, `completed`, `failed`, `interrupted`) so sweeps can be resumed and compared.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import precision_setting, validate
from .distributed import (
    barrier,
    is_main_process,
    rank,
    run_folder_lock,
    shared_run_dir,
    world_size,
)
from .errors import UserError
from .runinfo import RunIdentity, environment, run_identity
from .storage import atomic_write_json, read_json, read_jsonl
from .tracking import Tracker, start_tracker

log = logging.getLogger(__name__)

SUMMARY = "summary.json"


class RunInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint. `forward` passes the signal on afterwards."""

    def __init__(self, message: str, forward=None):
        super().__init__(message)
        self.forward = forward


@dataclass
class RunContext:
    """What every stage needs: the config, where to write, the identity and the tracker."""

    cfg: DictConfig
    identity: RunIdentity
    summary: dict[str, Any] = field(default_factory=dict)
    tracker: Tracker = field(default_factory=Tracker)
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def run_dir(self) -> Path:
        return self.identity.run_dir

    def save_summary(self, **updates: Any) -> None:
        self.summary.update(updates)
        if is_main_process():  # in a multi-process run only the main process writes the run folder
            atomic_write_json(self.run_dir / SUMMARY, self.summary)


AUTO_OBJECTIVE_WITH_REWARD = "eval/reward_delta"  # sampled reward gain over the reference (maximise)
AUTO_OBJECTIVE_WITHOUT_REWARD = "eval_rewards/accuracies"  # TRL's held-out implicit-reward accuracy (maximise)


def objective_key(cfg: DictConfig) -> str:
    """The summary key a job returns to a sweeper. `objective: auto` picks one comparable across beta, lr and data
    size (unlike eval_loss, whose scale depends on beta): eval/reward_delta when the evaluation has a reward scorer
    (the run's `reward` or `eval/reward`), else eval_rewards/accuracies. Both are maximised."""
    key = str(cfg.objective)
    if key != "auto":
        return key
    ev = cfg.get("eval") or {}
    run_reward = str((cfg.get("reward") or {}).get("kind", "none"))
    has_scorer = bool(ev.get("enabled", False)) and (bool(ev.get("reward")) or run_reward != "none")
    return AUTO_OBJECTIVE_WITH_REWARD if has_scorer else AUTO_OBJECTIVE_WITHOUT_REWARD


def objective_value(summary: dict, key: str) -> float | None:
    value = summary.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def load_data(ctx: RunContext, tokenizer) -> Any:
    """Preference pairs (or, for imdb_sentiment, the prompt sets) — before any model is loaded."""
    cfg = ctx.cfg
    if cfg.dataset.kind == "imdb_sentiment":
        from .prompts import load_prompt_sets

        return load_prompt_sets(cfg, tokenizer)
    from .data import load_preference_data

    max_length = cfg.trainer.max_length
    room = int(cfg.train.min_prompt_tokens)

    def prompt_fits(prompt: str) -> bool:
        return max_length is None or len(tokenizer(prompt, verbose=False).input_ids) + room <= int(max_length)

    return load_preference_data(cfg.dataset, int(cfg.seed), prompt_fits, max_length)


def run(cfg: DictConfig, run_dir: Path | None = None) -> float | None:
    """Run one job. Returns the configured objective (a summary value) for sweepers."""
    identity = run_identity(cfg, run_dir)
    identity.run_dir = shared_run_dir(identity.run_dir)  # torchrun / accelerate: the main process's folder
    identity.run_dir.mkdir(parents=True, exist_ok=True)
    validate(cfg)
    with run_folder_lock(identity.run_dir):  # a second process on this folder stops here, naming the holder's pid
        return _run_job(cfg, identity)


def _run_job(cfg: DictConfig, identity: RunIdentity) -> float | None:
    previous = read_json(identity.run_dir / SUMMARY) or {}
    if cfg.skip_completed and previous.get("status") == "completed":
        log.info("%s is already completed: skipping (skip_completed=false to redo it)", identity.run_dir)
        return objective_value(previous, objective_key(cfg))

    ctx = RunContext(cfg=cfg, identity=identity)
    ctx.summary = {
        "status": "running",
        "name": identity.name,
        "group": identity.group,
        "overrides": identity.overrides,
        "sweep": identity.swept,
        "model": {"name": cfg.model.name},
        "dataset": {"name": cfg.dataset.name, "kind": cfg.dataset.kind},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "attempts": int(previous.get("attempts", 0)) + 1,
        "wandb_id": previous.get("wandb_id"),
        "objective": objective_key(cfg),
        "num_processes": world_size(),
    }
    if world_size() > 1:
        log.info("process %d of %d (only process 0 writes the run folder)", rank(), world_size())
    ctx.save_summary()
    start = time.time()
    try:
        try:
            _run_stages(ctx)
        except KeyboardInterrupt:  # Ctrl-C outside training (reading or tokenising data, sampling): no checkpoint
            raise RunInterrupted("stopped by SIGINT before training finished") from None
    except RunInterrupted as exc:
        ctx.save_summary(status="interrupted", wall_time_s=round(time.time() - start, 2))
        ctx.tracker.finish(exit_code=1)
        if exc.forward is not None:
            exc.forward()  # e.g. submitit's SIGUSR2 handler: requeue the job, which then resumes from the checkpoint
        raise
    except BaseException as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        ctx.save_summary(
            status="failed", error=f"{type(exc).__name__}: {message}", wall_time_s=round(time.time() - start, 2)
        )
        ctx.tracker.finish(exit_code=1)
        raise
    ctx.save_summary(status="completed", wall_time_s=round(time.time() - start, 2))
    ctx.tracker.summary({"status": "completed", "wall_time_s": ctx.summary["wall_time_s"]})
    ctx.tracker.finish(exit_code=0)
    if is_main_process():
        print(f"[dpo_exp] completed in {ctx.summary['wall_time_s']:.0f} s; outputs in {ctx.run_dir.resolve()}")
        for line in headline(ctx.summary):
            print(f"[dpo_exp] {line}")
    return objective_value(ctx.summary, objective_key(cfg))


def _run_stages(ctx: RunContext) -> None:
    from .models import build_policy, load_tokenizer, model_source, resolve_device, resolve_precision

    cfg = ctx.cfg
    tokenizer = load_tokenizer(cfg.model)
    data = load_data(ctx, tokenizer)
    ctx.device = resolve_device(cfg.model.device)
    ctx.precision = resolve_precision(precision_setting(cfg)[0], ctx.device)
    ctx.summary["model"].update(source=model_source(cfg.model), device=ctx.device, precision=ctx.precision)
    ctx.summary["environment"] = environment()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    ctx.tracker = start_tracker(
        cfg.logger,
        ctx.run_dir,
        ctx.identity.name,
        ctx.identity.group,
        ctx.identity.tags,
        {
            **resolved,
            "overrides": ctx.identity.overrides,
            "sweep": ctx.identity.swept,
            "environment": ctx.summary["environment"],
        },
        resume_id=ctx.summary.get("wandb_id"),
    )
    ctx.save_summary(wandb_id=ctx.tracker.run_id)

    model = build_policy(cfg.model, int(cfg.seed), ctx.device)  # fp32 master weights; precision = autocast
    if cfg.dataset.kind == "imdb_sentiment":
        from .sentiment import build_sentiment_pairs

        # every process runs this (a warm start trains with all of them); the pair cache is written once, locked
        started = time.time()
        data, model = build_sentiment_pairs(ctx, model, tokenizer, data)  # records timing/sft_s itself
        _timing(ctx, "pairs", time.time() - started - ctx.summary.get("timing/sft_s", 0.0))
    ctx.summary["data"] = {"source": data.source, **data.counts}
    ctx.summary["heldout"] = data.heldout_hashes()
    ctx.summary["dataset"]["source"] = data.source
    ctx.save_summary()
    ctx.tracker.summary({f"data/{k}": v for k, v in data.counts.items()})

    started = time.time()
    trainer = train_policy(ctx, model, tokenizer, data)
    _timing(ctx, "train", time.time() - started)
    if cfg.eval.enabled:
        from .evaluate import evaluate_policy

        if is_main_process():  # sampling is not split across processes: the main one evaluates, the others wait
            started = time.time()
            results = evaluate_policy(ctx, trainer, tokenizer, data)  # the trainer knows the reference
            ctx.save_summary(**results)
            _timing(ctx, "eval", time.time() - started)
        barrier()
    if is_main_process():
        write_plots(ctx)


def _timing(ctx: RunContext, stage: str, seconds: float) -> None:
    """`timing/<stage>_s` in summary.json and the tracker (sft, pairs, train, eval)."""
    key = f"timing/{stage}_s"
    ctx.save_summary(**{key: round(max(0.0, seconds), 2)})
    ctx.tracker.summary({key: ctx.summary[key]})


def headline(summary: dict[str, Any]) -> list[str]:
    """The run's result in a few console lines: reward ref -> policy, delta with CI, win rate with CI, KL, stages."""
    lines = []
    s = summary
    if isinstance(s.get("eval/reward_delta"), (int, float)):
        verdict = "significant" if s.get("eval/significant") else "NOT significant (95% CI includes 0)"
        lines.append(
            f"reward ({s.get('eval/reward_scorer', 'scorer')}) {s['eval/reward_reference']:.4f} -> "
            f"{s['eval/reward_policy']:.4f}: delta {s['eval/reward_delta']:+.4f} "
            f"[95% CI {s['eval/reward_delta_ci_low']:+.4f}, {s['eval/reward_delta_ci_high']:+.4f}], {verdict}"
        )
        lines.append(
            f"win rate {s['eval/win_rate']:.3f} [95% CI {s['eval/win_rate_ci_low']:.3f}, "
            f"{s['eval/win_rate_ci_high']:.3f}] (ties {s.get('eval/tie_rate', 0.0):.2f}) on "
            f"{s.get('eval/num_prompts')} held-out prompts x {s.get('eval/num_samples')} samples (per sample)"
        )
        if isinstance(s.get("eval/win_rate_prompt"), (int, float)):
            lines.append(
                f"win rate per prompt (mean reward over its samples) {s['eval/win_rate_prompt']:.3f} "
                f"[95% CI {s['eval/win_rate_prompt_ci_low']:.3f}, {s['eval/win_rate_prompt_ci_high']:.3f}]"
            )
    if isinstance(s.get("eval/kl"), (int, float)):
        lines.append(
            f"KL(policy || reference) {s['eval/kl']:.3f} nats [95% CI {s['eval/kl_ci_low']:.3f}, "
            f"{s['eval/kl_ci_high']:.3f}]"
        )
    bon = sorted(int(k.split("_")[-1]) for k in s if k.startswith("eval/bon_delta_"))
    if bon:
        lines.append(
            "best-of-N from the reference (delta @ KL): "
            + ", ".join(f"N={n} {s[f'eval/bon_delta_{n}']:+.4f} @ {s[f'eval/bon_kl_{n}']:.2f}" for n in bon)
        )
    stages = [(k[len("timing/") : -2], v) for k, v in s.items() if k.startswith("timing/")]
    if stages:
        lines.append("stage times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages))
    return lines


def train_policy(ctx: RunContext, model, tokenizer, data):
    """DPO with checkpoints and graceful stop; saves the adapter/model, final metrics into the summary."""
    from .evaluate import trace_callbacks
    from .ref_logps import RefLogpsCache
    from .train import GracefulStop, build_trainer, final_metrics, last_checkpoint

    cfg = ctx.cfg
    metrics_path = ctx.run_dir / "metrics.jsonl"
    stopper = GracefulStop()
    tracers = trace_callbacks(ctx, tokenizer, data)  # reward-KL trace during training (eval.every_n_steps > 0)
    ref_cache = RefLogpsCache.from_config(cfg)  # shares TRL's precomputed reference log-probs across jobs
    trainer = build_trainer(
        cfg,
        model,
        tokenizer,
        ref_cache.dataset(data.train),
        ref_cache.dataset(data.eval) if data.eval else None,
        ctx.run_dir,
        ctx.tracker,
        ctx.precision,
        ctx.device,
        extra_callbacks=[stopper, *tracers],
    )
    for tracer in tracers:
        tracer.bind(trainer)
    ctx.save_summary(ref_logps=ref_cache.status(trainer))
    resume_from = last_checkpoint(Path(cfg.resume)) if cfg.get("resume") else last_checkpoint(ctx.run_dir)
    if resume_from is None and metrics_path.exists() and is_main_process():
        metrics_path.unlink()  # a fresh start: no rows from an earlier, checkpoint-less attempt
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
        ctx.summary["resumed_from"] = str(resume_from)
        if is_main_process():
            _truncate_metrics(metrics_path, int(resume_from.name.split("-")[-1]))
    stopper.install()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        stopper.uninstall()
    if stopper.signal_name is not None:
        raise RunInterrupted(
            f"stopped by {stopper.signal_name}; checkpoint saved in {ctx.run_dir / 'checkpoints'}", stopper.forward
        )
    final = final_metrics(trainer.state.log_history)
    if resume_from is not None and "train_loss" in final:
        start = int(resume_from.name.split("-")[-1])
        final["train_loss"] = whole_run_train_loss(trainer.state.log_history, final["train_loss"], start)
        if is_main_process():
            _patch_final_row(metrics_path, train_loss=final["train_loss"])
    from .export import save_run_model

    ctx.summary["saved_model"] = save_run_model(trainer, tokenizer, ctx.run_dir / "model", cfg.model, ctx.summary)
    ctx.save_summary(**final, skipped_steps=trainer.skipped_steps)  # steps skipped by on_nonfinite=skip
    ctx.tracker.summary({("eval/" + k[5:]) if k.startswith("eval_") else f"train/{k}": v for k, v in final.items()})
    return trainer


def whole_run_train_loss(log_history: list[dict], resumed_train_loss: float, start: int) -> float:
    """The mean training loss over every step of a run resumed at step `start`, as an uninterrupted run reports it.

    transformers' final `train_loss` only averages the steps run since the resume. The history restored from the
    checkpoint holds the earlier steps' logged losses (each the mean since the previous log row); they are weighted
    by the steps they cover and combined with the resumed part's mean.
    """
    final = next((r for r in reversed(log_history) if "train_runtime" in r), None)
    if final is None or int(final["step"]) <= start:
        return resumed_train_loss
    end = int(final["step"])
    total, covered, previous = 0.0, 0, 0
    for row in log_history:
        if "loss" not in row or "train_runtime" in row or "step" not in row:
            continue
        if row["step"] > start:
            break
        total += float(row["loss"]) * (row["step"] - previous)
        covered += row["step"] - previous
        previous = row["step"]
    return (total + resumed_train_loss * (end - start)) / (covered + end - start)


def _patch_final_row(path: Path, **values: Any) -> None:
    """Replace values in metrics.jsonl's `final` row (the resumed run's whole-run train_loss)."""
    if not path.exists():
        return
    from .storage import write_jsonl

    write_jsonl(path, [{**r, **values} if r.get("split") == "final" else r for r in read_jsonl(path)])


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only rows up to the checkpoint's step, so a resumed run does not log steps twice."""
    if not path.exists():
        return
    from .storage import write_jsonl

    write_jsonl(path, [r for r in read_jsonl(path) if r.get("step", 0) <= step and r.get("split") != "final"])


def write_plots(ctx: RunContext) -> None:
    from .plots import plot_training

    path = ctx.run_dir / "metrics.jsonl"
    if not path.exists():
        return
    for png in plot_training(read_jsonl(path), ctx.run_dir / "plots"):
        ctx.tracker.image(f"plots/{png.stem}", png)


__all__ = ["RunContext", "RunInterrupted", "UserError", "run"]
