"""One run, start to finish: validate -> task data -> model -> task pairs -> method (DPO, ...) -> evaluation -> plots.

Each stage returns a typed result; this module alone writes summary.json (dpo_exp.human merges only its human/*
keys), whose `status` (running, completed, failed, interrupted) lets sweeps resume and compare. `evaluate_run`
re-evaluates a finished run (python -m dpo_exp.evaluate); `record_failure` marks a job failed before it ran.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import check_eval, precision_setting, validate
from .errors import RunInterrupted, error_line
from .infra.distributed import barrier, is_main_process, rank, run_folder_lock, shared_run_dir, world_size
from .infra.runinfo import RunIdentity, environment, run_identity
from .infra.runrecord import heldout_split_config
from .infra.sharding import local_param_bytes, strategy
from .infra.storage import DiskFull, atomic_write_json, disk_full_error, read_json, read_jsonl, says_disk_full
from .infra.tracking import Tracker, start_tracker
from .objective import objective_key, objective_value
from .tasks import StageEnv, TaskResult, build_task
from .training.model_card import write_model_cards
from .training.rerun import claim_folder

log = logging.getLogger(__name__)

SUMMARY = "summary.json"


@dataclass
class RunContext:
    """What the pipeline keeps while a job runs: the config, identity, summary and tracker, device, precision."""

    cfg: DictConfig
    identity: RunIdentity
    summary: dict[str, Any] = field(default_factory=dict)
    tracker: Tracker = field(default_factory=Tracker)
    env: StageEnv = field(default_factory=StageEnv)

    @property
    def run_dir(self) -> Path:
        return self.identity.run_dir

    def save_summary(self, **updates: Any) -> None:
        self.summary.update(updates)
        if is_main_process():  # in a multi-process run only the main process writes the run folder
            atomic_write_json(self.run_dir / SUMMARY, self.summary)


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
    rerun = claim_folder(cfg, identity.run_dir, previous, identity.overrides)  # skip, resume, or refuse a new command
    if rerun.skip:
        log.info("%s is already completed: skipping (skip_completed=false to redo it)", identity.run_dir)
        return objective_value(previous, objective_key(cfg))
    ctx = RunContext(cfg=cfg, identity=identity)
    ctx.summary = {
        **_identity_fields(identity),
        "status": "running",
        "model": {"name": cfg.model.name},
        "dataset": {"name": cfg.dataset.name, "task": cfg.dataset.get("_target_")},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "attempts": int(previous.get("attempts", 0)) + 1,
        "wandb_id": previous.get("wandb_id"),
        "wandb_step": previous.get("wandb_step"),
        "objective": objective_key(cfg),
        "num_processes": world_size(),
        "distributed": strategy(cfg).record(world_size()),  # the strategy and the world size this run used
        **rerun.summary,
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
        ctx.save_summary(status="interrupted", wall_time_s=round(time.time() - start, 2), **ctx.tracker.rerun_fields())
        ctx.tracker.finish(exit_code=1)
        if exc.forward is not None:
            exc.forward()  # e.g. submitit's SIGUSR2 handler: requeue the job, which then resumes from the checkpoint
        raise
    except BaseException as exc:
        reason = disk_full_error(ctx.run_dir) if says_disk_full(exc) and not isinstance(exc, DiskFull) else exc
        fields = {"error": error_line(reason), **ctx.tracker.rerun_fields()}
        ctx.save_summary(status="failed", wall_time_s=round(time.time() - start, 2), **fields)
        ctx.tracker.finish(exit_code=1)
        if reason is not exc:  # a full disk anywhere: one line naming the folder
            raise reason from None
        raise
    ctx.save_summary(status="completed", wall_time_s=round(time.time() - start, 2), **ctx.tracker.rerun_fields())
    ctx.tracker.summary({"status": "completed", "wall_time_s": ctx.summary["wall_time_s"]})
    ctx.tracker.finish(exit_code=0)
    if is_main_process():
        from .evaluation.report import headline

        print(f"[dpo_exp] completed in {ctx.summary['wall_time_s']:.0f} s; outputs in {ctx.run_dir.resolve()}")
        for line in headline(ctx.summary):
            print(f"[dpo_exp] {line}")
    return objective_value(ctx.summary, objective_key(cfg))


def _identity_fields(identity: RunIdentity) -> dict[str, Any]:
    return {"name": identity.name, "group": identity.group, "overrides": identity.overrides, "sweep": identity.swept}


def _run_stages(ctx: RunContext) -> None:
    from .evaluation.inputs import check_eval_sources
    from .judges.sources import check_judge_sources
    from .models import build_policy, load_tokenizer

    cfg = ctx.cfg
    task = build_task(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.dataset.get("chat_template"))
    check_judge_sources(cfg)  # hub judges fail here, like the policy, not after training
    check_eval_sources(cfg)  # the LLM judge and the harness tasks, like the hub judges: before training
    loaded = task.load(cfg, tokenizer)  # the data is read and checked before any model (or TRL) loads
    from .evaluation.orchestrator import evaluate_policy, trace_callbacks
    from .methods import MethodSettings, build_method

    _start_tracking(ctx)
    model = build_policy(cfg.model, int(cfg.seed), ctx.env.device)  # fp32 master weights; precision = autocast
    # every process prepares (a warm start trains with all of them); the pair cache is written once, locked
    prepared = task.prepare(cfg, ctx.env, model, tokenizer, loaded)
    record_task(ctx, prepared)
    data, reference_path = prepared.data, prepared.reference_path

    tracers = trace_callbacks(cfg, tokenizer, data, ctx.run_dir, ctx.tracker, reference_path)
    started = time.time()
    evaluate = partial(evaluate_policy, cfg, tokenizer=tokenizer, data=data, tracker=ctx.tracker)
    settings = MethodSettings(cfg, tokenizer, ctx.run_dir, ctx.tracker, ctx.env, tracers, evaluate)
    trained = build_method(cfg).run(prepared.model, reference_path, data, settings)
    ctx.summary.update(ref_logps=trained.ref_logps, saved_model=trained.saved_model, **trained.summary)
    if getattr(trained.trainer, "model", None) is not None:  # what this process held: its shards, or the whole model
        ctx.summary["distributed"]["param_bytes_per_process"] = local_param_bytes(trained.trainer.model)
    if trained.resumed_from:
        ctx.summary["resumed_from"] = trained.resumed_from
    ctx.save_summary(**trained.final, skipped_steps=trained.skipped_steps)
    final = trained.final
    ctx.tracker.summary({("eval/" + k[5:]) if k.startswith("eval_") else f"train/{k}": v for k, v in final.items()})
    _timing(ctx, "train", time.time() - started)
    if cfg.eval.enabled:
        if is_main_process():  # sampling is not split across processes: the main one evaluates, the others wait
            started = time.time()
            results = evaluate_policy(cfg, trained.trainer, tokenizer, data, ctx.run_dir, ctx.tracker, reference_path)
            ctx.save_summary(**results)
            write_model_cards(ctx.run_dir, cfg)  # the card's model-index gets the evaluation
            _timing(ctx, "eval", time.time() - started)
        barrier()
    if is_main_process() and (ctx.run_dir / "metrics.jsonl").exists():
        from .infra.plots import plot_training

        for png in plot_training(read_jsonl(ctx.run_dir / "metrics.jsonl"), ctx.run_dir / "plots"):
            ctx.tracker.image(f"plots/{png.stem}", png)


def _start_tracking(ctx: RunContext) -> None:
    """Device, precision and environment into the summary; the tracker started (resuming the run's W&B id), with
    where it logs (`compare --wandb` builds the sweep's workspace there) and the steps it already holds."""
    from .models import model_source, resolve_device, resolve_precision

    cfg = ctx.cfg
    device = resolve_device(cfg.model.device)
    ctx.env = StageEnv(device, resolve_precision(precision_setting(cfg)[0], device), ctx.run_dir)
    ctx.summary["model"].update(source=model_source(cfg.model), device=device, precision=ctx.env.precision)
    ctx.summary["environment"] = env = environment()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    identity = ctx.identity
    config = {**resolved, "overrides": identity.overrides, "sweep": identity.swept, "environment": env}
    ctx.tracker = start_tracker(
        cfg.logger,
        ctx.run_dir,
        identity.name,
        identity.group,
        identity.tags,
        config,
        resume_id=ctx.summary.get("wandb_id"),
    )
    ctx.save_summary(wandb_id=ctx.tracker.run_id, wandb_entity=ctx.tracker.entity, wandb_project=ctx.tracker.project)
    ctx.tracker.skip_replayed_steps(int(ctx.summary.get("wandb_step") or 0))


def record_task(ctx: RunContext, result: TaskResult) -> None:
    """What the task reports into summary.json and the tracker; its artifacts into the run folder."""
    if result.reference_path is not None:
        ctx.summary["reference_path"] = str(result.reference_path)
    ctx.summary.update(result.summary)
    for stage, seconds in result.timings.items():
        ctx.summary[f"timing/{stage}_s"] = round(max(0.0, seconds), 2)
    data = result.data
    ctx.summary["data"] = {"source": data.source, **data.counts}
    if data.composition:  # a mixture's sources (dataset=mixture)
        ctx.summary["data"]["composition"] = data.composition
    ctx.summary["heldout"] = data.heldout_hashes()
    ctx.summary.setdefault("dataset", {})["source"] = data.source
    ctx.save_summary()
    ctx.tracker.summary(
        {
            **result.metrics,
            **{f"timing/{stage}_s": ctx.summary[f"timing/{stage}_s"] for stage in result.timings},
            **{f"data/{k}": v for k, v in data.counts.items()},
        }
    )
    if not is_main_process():  # several processes: only process 0 writes the run folder
        return
    for artifact in result.artifacts:
        path = ctx.run_dir / artifact.name
        path.parent.mkdir(parents=True, exist_ok=True)
        written = artifact.write(path)
        if artifact.image:
            ctx.tracker.image(str(Path(artifact.name).with_suffix("")), written)


def _timing(ctx: RunContext, stage: str, seconds: float) -> None:
    """`timing/<stage>_s` in summary.json and the tracker (sft, pairs, train, eval)."""
    key = f"timing/{stage}_s"
    ctx.save_summary(**{key: round(max(0.0, seconds), 2)})
    ctx.tracker.summary({key: ctx.summary[key]})


def record_failure(cfg: DictConfig, exc: BaseException) -> None:
    """Make sure a failed job is visible as failed on disk and in W&B, even when it failed before the pipeline
    wrote anything (e.g. config validation). Never raises: recording must not stop the sweep either."""
    try:
        identity = run_identity(cfg)
        identity.run_dir.mkdir(parents=True, exist_ok=True)
        summary = read_json(identity.run_dir / SUMMARY) or {}
        if summary.get("status") == "failed":
            return  # the pipeline recorded it (and finished its W&B run as failed)
        summary.update(status="failed", error=error_line(exc), **_identity_fields(identity))
        if not summary.get("wandb_id"):
            tracker = start_tracker(
                cfg.logger,
                identity.run_dir,
                identity.name,
                identity.group,
                identity.tags,
                {"overrides": identity.overrides, "sweep": identity.swept, **identity.swept},
            )
            summary["wandb_id"] = tracker.run_id
            tracker.summary({"status": "failed", "error": summary["error"]})
            tracker.finish(exit_code=1)
        atomic_write_json(identity.run_dir / SUMMARY, summary)
    except Exception as inner:  # noqa: BLE001
        log.warning("could not record the failure in the run directory: %s", inner)


def evaluate_run(run_dir: Path, cfg: DictConfig, tracker: Tracker | None = None, progress: bool = True) -> dict:
    """Re-evaluate a finished run with its (overridden) config: evaluation.json, samples.md, the plot, and the
    eval/ keys of its summary.json. Returns those keys."""
    from .evaluation.inputs import INPUTS_FILE, PREFIX, EvalInputs, build_eval_scorer, check_eval_sources, eval_pairs
    from .evaluation.orchestrator import evaluate_models, publish
    from .evaluation.policy_ref import from_run_dir
    from .models import load_tokenizer

    run_dir = Path(run_dir)
    summary = read_json(run_dir / SUMMARY) or {}
    check_eval(cfg)
    check_eval_sources(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.dataset.get("chat_template"))
    inputs = EvalInputs.load(run_dir / INPUTS_FILE)
    if inputs is None or len(inputs.prompts) < int(cfg.eval.num_prompts):
        # rebuilt from the dataset config (seeded, so the run's prompts come first)
        log.warning("rebuilding the held-out prompts of %s from the dataset config", run_dir)
        split_cfg = heldout_split_config(run_dir, cfg)
        heldout = build_task(split_cfg).heldout(split_cfg, tokenizer)
        pairs = eval_pairs(heldout.pairs) if heldout.pairs is not None else (inputs.pairs if inputs else [])
        inputs = EvalInputs(heldout.prompts, pairs, heldout.dropped_seen_in_training)
    scorer, name, skip = build_eval_scorer(cfg)
    pair = from_run_dir(run_dir, cfg, summary.get("reference_path"))
    evaluation = evaluate_models(cfg, pair, tokenizer, inputs, scorer, name, skip, progress=progress)
    results = publish(run_dir, evaluation, tracker or Tracker(), "evaluate", cfg)
    summary = {k: v for k, v in summary.items() if not k.startswith((PREFIX, "harness/"))}  # (TRL's are eval_*)
    summary.update(results, evaluated_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(run_dir / SUMMARY, summary)
    write_model_cards(run_dir, cfg)  # the model card's evaluation follows the new one
    return results
