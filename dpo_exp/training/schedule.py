"""The learning rate of every optimisation step, as the Trainer will schedule it; a schedule that trains nothing is
refused before training starts.

transformers' warm-up starts from 0 (`lr * step / warmup_steps` at step 0) and a fractional `warmup_steps` rounds
UP to whole steps, so the first step of any warmed-up run trains at learning rate 0: a 1-step run would "complete"
with the policy equal to its reference.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import UserError

log = logging.getLogger(__name__)


def step_learning_rates(args: Any, total_steps: int) -> list[float]:
    """The learning rate each of `total_steps` optimisation steps uses under the TrainingArguments `args`, from
    transformers' own scheduler (same type, warm-up and kwargs), stepped on a one-parameter optimiser."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=float(args.learning_rate))
    schedule = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.get_warmup_steps(total_steps),
        num_training_steps=total_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs or {},
    )
    rates = []
    for _ in range(total_steps):
        rates.append(float(schedule.get_last_lr()[0]))
        optimizer.step()
        schedule.step()
    return rates


def check_schedule(args: Any, total_steps: int) -> None:
    """UserError when no step would train (every step's learning rate is 0); a warning when most would not."""
    rates = step_learning_rates(args, total_steps)
    idle = sum(rate == 0.0 for rate in rates)
    setting = f"trainer.warmup_steps={args.warmup_steps}, lr_scheduler_type={args.lr_scheduler_type}"
    if idle == len(rates):
        raise UserError(
            f"no optimisation step would train: all {total_steps} step(s) have learning rate 0 ({setting}; "
            "transformers' warm-up starts at 0 and rounds up to whole steps). Train more steps (more data, epochs "
            "or trainer.max_steps) or set trainer.warmup_steps=0"
        )
    if idle * 2 >= len(rates):
        log.warning(
            "%d of %d optimisation steps have learning rate 0 (%s): most of this run does not train",
            idle,
            len(rates),
            setting,
        )


def total_steps(trainer: Any) -> int:
    """The optimisation steps `trainer.train()` will run (transformers' own count from the train dataloader)."""
    return int(trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1])
