"""Length-grouped pair batches. Random batches of pairs of very different lengths are mostly padding:
`LengthGroupedPairSampler` shuffles, cuts the pairs into mega-batches, sorts each by length and shuffles the
resulting batches (the idea of transformers' `LengthGroupedSampler`, whose mega-batch collapses to one batch on small
datasets). Trade-off: within a mega-batch, batches hold pairs of similar length rather than a uniform mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


def pair_lengths(dataset: Any) -> list[int]:
    """Padded cost of each tokenised pair: the longer of prompt+chosen and prompt+rejected."""
    columns = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).with_format("arrow")
    lengths: list[int] = []
    for batch in columns.iter(batch_size=4096):
        prompt = batch.column("prompt_ids").to_pylist()
        chosen = batch.column("chosen_ids").to_pylist()
        rejected = batch.column("rejected_ids").to_pylist()
        lengths.extend(len(p) + max(len(c), len(r)) for p, c, r in zip(prompt, chosen, rejected))
    return lengths


class LengthGroupedPairSampler(Sampler[int]):
    """Batches of pairs of similar length, in random order, seeded by (`seed`, epoch): the Trainer calls
    `set_epoch`, so an epoch's order is the same whether the run went straight through or resumed mid-way.

    Each epoch: shuffle, cut into mega-batches of `mega_batches` batches, sort each mega-batch by length
    (longest first), cut into batches, shuffle the full batches (a short remainder batch comes last). The batch
    size must be the per-step batch (per-device batch x gradient accumulation)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega_batches: int = 8):
        self.lengths = list(lengths)
        self.batch_size = max(1, int(batch_size))
        self.mega = self.batch_size * max(1, int(mega_batches))
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1  # without set_epoch, the next pass still draws a new order
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), self.mega):
            group = sorted(order[start : start + self.mega], key=lambda i: -self.lengths[i])
            batches.extend(group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size))
        full = [b for b in batches if len(b) == self.batch_size]
        rest = [b for b in batches if len(b) < self.batch_size]
        for j in torch.randperm(len(full), generator=generator).tolist():
            yield from full[j]
        for b in rest:
            yield from b
