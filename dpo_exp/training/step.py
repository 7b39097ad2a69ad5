"""The DPO training step without host syncs: TRL's sigmoid loss, with TRL's logged metrics kept on the device.

TRL's `DPOTrainer._compute_loss` reads each of its ~15 logged metrics back to the host (`.item()`, `if n > 0`) on
every micro-batch, so the host waits for the GPU ~15 times per forward. TRL has no switch for this, so for the
common configuration (`sync_free_loss_applies`: the single `sigmoid` loss, reverse KL, no `ld_alpha`, no WPO
weighting, no MoE aux loss) this module computes the same loss from the same forward pass and the same metrics as
one small device vector per micro-batch (`StepStats`); the trainer reads them all back once per logging step
(`DeviceMetrics.flush`). Every other configuration runs TRL's own `_compute_loss`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps"})
# TRL's logged training metrics computed here, in this order in a micro-batch's device vector
METRIC_NAMES = (
    "entropy",
    "logits/chosen",
    "logits/rejected",
    "mean_token_accuracy",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def sync_free_loss_applies(trainer: Any) -> bool:
    """Whether `dpo_loss` reproduces TRL's `_compute_loss` for this trainer's settings."""
    return (
        list(trainer.loss_types) == ["sigmoid"]
        and trainer.f_divergence_type == "reverse_kl"
        and trainer.ld_alpha is None
        and not trainer.use_weighting
        and not trainer.aux_loss_enabled
        and not trainer.is_vision_dataset
    )


def _ratio(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """total / count, 0 where count is 0 (TRL's `x / n if n > 0 else 0.0`, without reading n on the host)."""
    count = count.to(total.dtype)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def host_to_device(values: Any, device: torch.device) -> torch.Tensor:
    """Host values (a list or a CPU tensor) as a tensor on `device`. To a GPU through pinned memory without blocking:
    a copy from pageable memory waits for the device's queue to drain first (a host sync)."""
    tensor = values if isinstance(values, torch.Tensor) else torch.tensor(values)
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def policy_forward(model: Any, model_kwargs: dict[str, Any], labels: torch.Tensor, groups: Any) -> Any:
    """The policy's fused-LM-head outputs for the batch: one forward, or one per row group (`row_groups`: rows of
    similar length, each sliced to its own padded width) reassembled into the batch's rows and width."""
    if groups is None or len(groups) == 1:
        return model(**model_kwargs, labels=labels, fused_lm_head=True)
    width = labels.shape[1]
    parts: dict[str, list[torch.Tensor]] = {}
    rows: list[int] = []
    for indices, group_width in groups:
        w = min(width, group_width)
        index = host_to_device(indices, labels.device)
        kwargs = {
            k: v[index, :w] if isinstance(v, torch.Tensor) and v.dim() == 2 else v for k, v in model_kwargs.items()
        }
        out = model(**kwargs, labels=labels[index, :w], fused_lm_head=True)
        for name in ("log_probs", "entropy", "mean_logits", "is_top1"):
            value = getattr(out, name)
            if value is not None and width > w:  # right-pad the per-position outputs back to the batch's width
                value = torch.cat([value, value.new_zeros(value.shape[0], width - w)], dim=1)
            parts.setdefault(name, []).append(value)
        rows.extend(indices)
    inverse = torch.empty(len(rows), dtype=torch.long)
    inverse[torch.tensor(rows)] = torch.arange(len(rows))
    inverse = host_to_device(inverse, labels.device)
    return SimpleNamespace(
        **{name: None if values[0] is None else torch.cat(values)[inverse] for name, values in parts.items()}
    )


def dpo_loss(
    trainer: Any,
    model: Any,
    inputs: dict[str, Any],
    num_tokens: torch.Tensor,
    groups: list[tuple[list[int], int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL's sigmoid DPO loss on a batch ([chosen; rejected] rows), its logged metrics as one float vector on the
    device (`METRIC_NAMES`) and the batch's `num_tokens` summed over processes (TRL's `num_tokens` count), gathered
    as TRL gathers them; nothing is read back to the host. `groups` (right-padded batches only, whose inputs then
    carry no attention mask): run the policy once per row group (`policy_forward`)."""
    model_kwargs = {k: v for k, v in inputs.items() if k not in NON_MODEL_KEYS}
    model_kwargs["use_cache"] = False
    completion_mask = inputs["completion_mask"]
    shift_mask = completion_mask[..., 1:]
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    outputs = policy_forward(model, model_kwargs, labels, groups)
    seq_len = shift_mask.size(1)
    chosen_logps, rejected_logps = outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
    ref_chosen, ref_rejected = _reference_logps(trainer, inputs)
    chosen_ratio = chosen_logps - ref_chosen
    rejected_ratio = rejected_logps - ref_rejected
    loss = 0.0 + (-F.logsigmoid(trainer.beta * (chosen_ratio - rejected_ratio))).mean() * trainer.loss_weights[0]
    with torch.no_grad():
        token_stats = _token_stats(trainer.accelerator, outputs, shift_mask)
        pair_means = _pair_means(trainer, chosen_ratio, rejected_ratio, chosen_logps, rejected_logps)
        stats = torch.cat([token_stats, pair_means.float()])
        tokens = trainer.accelerator.gather_for_metrics(num_tokens.reshape(1)).sum() // trainer.tp_size
    return loss, stats, tokens


def _reference_logps(trainer: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's (chosen, rejected) sequence log-probs: precomputed in the batch, or TRL's reference pass (a
    frozen copy, or the policy with its adapter disabled)."""
    if trainer.precompute_ref_logps:
        return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
    reference = trainer.ref_model if trainer.ref_model is not None else trainer.model
    return trainer.compute_ref_log_probs(reference, inputs)


def _token_stats(accelerator: Any, outputs: Any, shift_mask: torch.Tensor) -> torch.Tensor:
    """The per-token metrics (entropy, chosen and rejected mean logits, mean token accuracy) as TRL computes them:
    sums and counts over the completion tokens of every process, then their ratios."""
    seq_len = shift_mask.size(1)
    chosen_mask, rejected_mask = shift_mask.chunk(2, dim=0)
    entropy = outputs.entropy[:, -seq_len:]
    mean_logits = outputs.mean_logits[:, -seq_len:]
    chosen_top1, _ = outputs.is_top1[:, -seq_len:].chunk(2, dim=0)
    chosen_logits, rejected_logits = mean_logits.chunk(2, dim=0)
    sums = torch.stack(
        [
            (entropy * shift_mask).sum(),
            shift_mask.sum(),
            torch.where(chosen_mask.bool(), chosen_logits, 0).sum(),  # no boolean indexing: its nonzero syncs
            chosen_mask.sum(),
            torch.where(rejected_mask.bool(), rejected_logits, 0).sum(),
            rejected_mask.sum(),
            (chosen_top1 & chosen_mask.bool()).sum(),
        ]
    ).float()
    sums = accelerator.gather_for_metrics(sums.unsqueeze(0)).sum(0)
    return torch.stack(
        [_ratio(sums[0], sums[1]), _ratio(sums[2], sums[3]), _ratio(sums[4], sums[5]), _ratio(sums[6], sums[3])]
    )


def _pair_means(
    trainer: Any,
    chosen_ratio: torch.Tensor,
    rejected_ratio: torch.Tensor,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """The per-pair metrics (rewards, reward accuracy and margin, log-probs), averaged over the pairs of every
    process."""
    chosen_rewards = trainer.beta * chosen_ratio.detach()
    rejected_rewards = trainer.beta * rejected_ratio.detach()
    per_pair = torch.stack(
        [
            chosen_rewards,
            rejected_rewards,
            (chosen_rewards > rejected_rewards).float(),
            chosen_rewards - rejected_rewards,
            chosen_logps.detach(),
            rejected_logps.detach(),
        ],
        dim=1,
    )
    return trainer.accelerator.gather(per_pair).mean(dim=0)


class DeviceMetrics:
    """Per-micro-batch metric vectors and token counts kept on the device until the next logging step."""

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []  # token counts not yet added to the Trainer's total

    def mark(self) -> tuple[int, int]:
        return len(self.rows), len(self.tokens)

    def rollback(self, mark: tuple[int, int]) -> None:
        """Forget what was recorded after `mark` (a dropped non-finite micro-batch)."""
        del self.rows[mark[0] :], self.tokens[mark[1] :]

    def flush(self) -> tuple[dict[str, list[float]], int]:
        """Everything recorded since the last flush, read back in one transfer: per-metric lists of per-micro-batch
        values (TRL's `_metrics` layout) and the number of tokens."""
        if not self.rows and not self.tokens:
            return {}, 0
        n = len(self.rows)
        # one transfer: the metric rows (float32 values, exact in float64) and the token total (int64, exact)
        parts = [torch.stack(self.rows).flatten().double()] if self.rows else []
        parts.append(torch.stack(self.tokens).sum().reshape(1).double() if self.tokens else torch.zeros(1))
        values = torch.cat([p.to(parts[0].device) for p in parts]).tolist()
        tokens = int(values.pop())
        width = len(METRIC_NAMES)
        metrics = {name: [values[i * width + j] for i in range(n)] for j, name in enumerate(METRIC_NAMES)}
        self.rows.clear()
        self.tokens.clear()
        return metrics, tokens
