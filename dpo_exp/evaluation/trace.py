"""Reward and KL during training: a TrainerCallback that puts the run's path on the reward-KL plane.

Every `eval.every_n_steps` optimiser steps (and at the start and end of training) it samples the policy on a
small fixed prompt set, scores the samples and estimates KL(policy || reference). The reference's samples (same
seed, and the independent ones behind win_rate) are drawn once (the reference does not change). The global RNG is saved and restored around each measurement, so
tracing does not change the training run itself. Rows go to run_dir/eval_trace.jsonl and W&B (`eval_trace/*`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..infra.storage import append_jsonl, read_jsonl, write_jsonl
from .metrics import SampleSettings, reward_kl_metrics, sample_and_score
from .policy_ref import PolicyReference

log = logging.getLogger(__name__)

TRACE_KEYS = (
    "kl",
    "kl_std",
    "kl_rb",
    "reward_policy",
    "reward_reference",
    "reward_delta",
    "win_rate",
    "win_rate_coupled",
)


class RewardKLTrace(TrainerCallback):
    """Trace reward and KL every `every_n_steps` steps. Call `bind(trainer)` once the trainer exists."""

    def __init__(
        self,
        every_n_steps: int,
        prompts: list[str],
        tokenizer,
        settings: SampleSettings,
        scorer,
        pair_factory: Callable[[Any], PolicyReference],
        path: Path,
        tracker,
        bootstrap: int = 200,
    ):
        self.every_n_steps = int(every_n_steps)
        self.prompts = list(prompts)
        self.tokenizer = tokenizer
        self.settings = settings
        self.scorer = scorer
        self.pair_factory = pair_factory
        self.path = Path(path)
        self.tracker = tracker
        self.bootstrap = bootstrap
        self.trainer = None
        self._pair: PolicyReference | None = None
        self._reference_samples = None
        self._independent_samples = None
        self._last_step: int | None = None

    def bind(self, trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        step = int(state.global_step)
        if self.path.exists():  # a resumed run keeps the rows up to its checkpoint; a fresh one starts over
            write_jsonl(self.path, [r for r in read_jsonl(self.path) if step and r.get("step", 0) <= step])
        if step == 0:
            self.record(state)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            self.record(state)

    def on_train_end(self, args, state, control, **kwargs):
        finished = state.max_steps and state.global_step >= state.max_steps  # not after a graceful stop (a signal)
        if finished and self._last_step != state.global_step:
            self.record(state)

    def record(self, state) -> dict[str, Any]:
        """Measure now; returns (and writes) the row."""
        if self.trainer is None:
            raise RuntimeError("RewardKLTrace.bind(trainer) was not called")
        if self._pair is None:
            self._pair = self.pair_factory(self.trainer)
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            result = sample_and_score(
                self._pair,
                self.tokenizer,
                self.prompts,
                self.settings,
                self.scorer,
                reference_samples=self._reference_samples,
                with_reference=False,
                independent_samples=self._independent_samples,
            )
        self._reference_samples = result.reference
        self._independent_samples = result.reference_independent
        metrics = reward_kl_metrics(result, self.bootstrap, self.settings.seed)
        row = {"step": int(state.global_step), "epoch": state.epoch, "prompts": len(self.prompts)}
        row.update({k: metrics[k] for k in TRACE_KEYS if k in metrics})
        append_jsonl(self.path, row)
        self.tracker.log(
            {f"eval_trace/{k}": v for k, v in row.items() if k in TRACE_KEYS} | {"train/global_step": row["step"]}
        )
        log.info("eval trace step %d: %s", row["step"], {k: round(v, 4) for k, v in row.items() if k in TRACE_KEYS})
        self._last_step = row["step"]
        return row
