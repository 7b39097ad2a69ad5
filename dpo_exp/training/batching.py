"""Batches sized by tokens, not pairs (`train.max_tokens_per_batch`), and the host-side row lengths that let a DPO
step run without an attention mask and in two padded widths (dpo_exp.training.step).

TRL's preference collator stacks a batch as [chosen rows; rejected rows], right-padded to one width (a multiple of
`trainer.pad_to_multiple_of` when set). A token budget caps those padded slots, 2 x pairs x width, so short pairs
travel in big batches and long pairs in small ones; pairs are length-sorted, as with `train.group_by_length`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import BatchRebalanceSampler

ROW_LENGTHS = "row_lengths"  # batch key: the real (unpadded) length of each row, a host-side list of ints


def bucket(length: int, multiple: int | None) -> int:
    """`length` rounded up to a multiple of `multiple` (as TRL's collator pads with pad_to_multiple_of)."""
    return length if not multiple or multiple <= 1 else math.ceil(length / multiple) * multiple


def token_budget_batches(lengths: list[int], max_tokens: int, multiple: int | None = None) -> list[list[int]]:
    """Pair indices cut into batches whose padded token slots (2 rows per pair x the batch's padded width) stay
    within `max_tokens`: pairs sorted longest first (ties by index), each batch as many pairs as the budget allows at
    its longest pair's width (one pair at least, even when it alone exceeds the budget)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    start = 0
    while start < len(order):
        width = bucket(lengths[order[start]], multiple)
        size = max(1, max_tokens // (2 * max(1, width)))
        batches.append(order[start : start + size])
        start += size
    return batches


class TokenBudgetBatchSampler(BatchRebalanceSampler):
    """Batches of pairs within a token budget (`token_budget_batches`), in a random order each epoch, seeded by
    (`seed`, epoch) so a resumed run sees the same order; each of `world_size` processes takes every
    `world_size`-th batch (the count is cut to a multiple of it, so all processes run the same number of steps).

    The batches themselves are fixed (the whole dataset length-sorted once); only their order changes per epoch.
    It subclasses transformers' `BatchRebalanceSampler` only because that is how the Trainer recognises a batch
    sampler (it then passes it as the DataLoader's `batch_sampler` and leaves the per-process split to it);
    none of that class's behaviour is used."""

    def __init__(
        self,
        lengths: list[int],
        max_tokens: int,
        multiple: int | None = None,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
    ):
        Sampler.__init__(self)
        self.batches = token_budget_batches(lengths, max_tokens, multiple)
        self.seed = int(seed)
        self.world_size = max(1, int(world_size))
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.batches) // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1  # without set_epoch, the next pass still draws a new order
        order = torch.randperm(len(self.batches), generator=generator).tolist()
        order = order[: len(self) * self.world_size]
        for j in order[self.rank :: self.world_size]:
            yield list(self.batches[j])


def padding_share(
    batches: list[list[int]], row_lengths: list[tuple[int, int]], multiple: int | None = None, max_groups: int = 1
) -> float:
    """Share of the token slots that are padding when each batch is collated as TRL does ([chosen; rejected] rows
    right-padded to the longest row, rounded up to `multiple`) and run in up to `max_groups` forwards (`row_groups`);
    `row_lengths[i]` = (prompt+chosen, prompt+rejected) tokens of pair i."""
    slots = real = 0
    for batch in batches:
        rows = [n for i in batch for n in row_lengths[i]]
        slots += sum(len(indices) * width for indices, width in row_groups(rows, multiple, max_groups))
        real += sum(rows)
    return 1 - real / slots if slots else 0.0


class RowLengthsCollator:
    """Wraps TRL's preference collator: the batch also carries each row's real length (`ROW_LENGTHS`), read from the
    attention mask while it is still on the host (free there; on a GPU it would be a host sync). TRL's collator
    pads on the right, which is what lets the step drop the mask; a batch that is not right-padded gets no lengths
    (and keeps the mask)."""

    def __init__(self, collator: Any):
        self.collator = collator

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.device.type == "cpu":
            lengths = mask.sum(dim=1)
            right_padded = torch.equal(mask, (torch.arange(mask.shape[1]) < lengths[:, None]).to(mask.dtype))
            if right_padded:
                batch[ROW_LENGTHS] = lengths.tolist()
        return batch

    def __getattr__(self, name: str) -> Any:  # pad_token_id, pad_to_multiple_of, ... of the wrapped collator
        if name == "collator":  # not set yet (unpickling in a DataLoader worker)
            raise AttributeError(name)
        return getattr(self.collator, name)


def row_groups(lengths: list[int], multiple: int | None = None, max_groups: int = 3) -> list[tuple[list[int], int]]:
    """The rows of a right-padded batch split into at most `max_groups` forward passes, each padded only to its own
    longest row (rounded up to `multiple`), choosing the split with the fewest padded slots: [(row indices, width)],
    shortest first. With one group this is TRL's single forward at the batch's width. A causal model's output at a
    row's real tokens does not depend on the other rows or on padding after them, so the log-probs are the same."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    widths = [bucket(max(1, lengths[i]), multiple) for i in order]
    ends = [j + 1 for j in range(len(order)) if j + 1 == len(order) or widths[j + 1] != widths[j]]  # cut points
    # best[g][e]: fewest slots for the first ends[e] rows in g groups; a dynamic programme over distinct widths
    inf = float("inf")
    best = [[inf] * len(ends) for _ in range(max_groups + 1)]
    back = [[-1] * len(ends) for _ in range(max_groups + 1)]
    for g in range(1, max_groups + 1):
        for e, end in enumerate(ends):
            for s in range(-1, e):
                start = 0 if s < 0 else ends[s]
                before = 0 if s < 0 and g == 1 else (best[g - 1][s] if s >= 0 else inf)
                cost = before + (end - start) * widths[end - 1]
                if cost < best[g][e]:
                    best[g][e], back[g][e] = cost, s
    groups_used = min(range(1, max_groups + 1), key=lambda g: (best[g][-1], g))
    cuts, e = [], len(ends) - 1
    for g in range(groups_used, 0, -1):
        s = back[g][e]
        cuts.append((0 if s < 0 else ends[s], ends[e]))
        e = s
    return [(order[a:b], widths[b - 1]) for a, b in reversed(cuts)]
