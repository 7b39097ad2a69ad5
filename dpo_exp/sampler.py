"""Drawing the next token inside `generate`'s loop, as `transformers` logits processors: fast, or paired.

`generate(do_sample=True)` draws with `torch.multinomial`, which on a CPU draws an exponential random number for
every vocabulary entry of every row (q ~ Exp(1), argmax p/q): with GPT-2's 50k vocabulary that was 69 % of a
batched sampling step (benchmarks/bench_generation.py). `InverseCdfSampler` draws from the same distribution by
inverting the cumulative distribution with ONE uniform number per row: block sums (accumulated in float64) locate
the block of the vocabulary the number falls in, and a float64 cumulative sum of that block alone locates the
token. It returns scores that are 0 at the drawn token and -inf elsewhere, so `generate` runs greedy
(`do_sample=False`) and its argmax picks the drawn token. Temperature, top-k and top-p are applied before it by transformers' own warpers
(`sampling_processors`), in the order `generate` applies them when sampling.

One number per row couples two *different* models weakly: a small change in early-vocabulary probabilities shifts
every later boundary of the cumulative distribution, so a policy and its reference under one seed rarely draw the
same tokens. Evaluation compares them sample by sample under one seed (common random numbers: the closer the two
draws, the narrower the paired confidence intervals), so it draws with `ExponentialRaceSampler` (`paired=True`):
the exponential race `torch.multinomial` runs (token v wins with the smallest E_v / p_v, E_v ~ Exp(1) shared by the
two models). Similar models then draw mostly identical tokens. The exponentials (`exponential_noise`) are -log U of
float32 uniforms (about 2x faster than `exponential_` on a CPU), except in the lower tail: float32 uniforms lie on a
2^-24 grid, which would put no exponential below 2^-24 and draw a token of probability 5e-8 at about half its rate,
so the few values below `TAIL` (~50 of a 50k-token row) are re-drawn from float64 uniforms.

Draws come from torch's global generator (seeded by the caller), so equal models fed equal prompts and seeds draw
equal tokens; they differ from what `torch.multinomial` would have drawn under the same seed.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

BLOCK = 1024  # vocabulary entries per block of the two-level search
TAIL = 2.0**-10  # exponentials below about this are re-drawn in float64 (`exponential_noise`)


def inverse_cdf_draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The token index of each row of `probs` [rows, vocab] at which its cumulative distribution reaches
    `uniform` [rows, 1] (values in (0, 1]) times the row's total: P(index = v) = probs[v] / total, up to the float32
    rounding of the block sums. Never returns an index of probability zero."""
    rows, vocab = probs.shape
    whole = vocab // BLOCK * BLOCK
    sums = [probs[:, :whole].view(rows, whole // BLOCK, BLOCK).sum(-1)] if whole else []
    if whole < vocab:
        sums.append(probs[:, whole:].sum(-1, keepdim=True))
    ends = torch.cat(sums, dim=1).to(torch.float64).cumsum(-1)  # cumulative mass at the end of each block
    target = uniform.to(torch.float64) * ends[:, -1:]
    block = torch.searchsorted(ends, target).clamp_(max=ends.shape[1] - 1)
    before = torch.where(block > 0, ends.gather(1, (block - 1).clamp(min=0)), 0.0)
    position = torch.arange(BLOCK, device=probs.device)
    index = block * BLOCK + position  # [rows, BLOCK]: the block's tokens
    inside = torch.where(index < vocab, probs.gather(1, index.clamp(max=vocab - 1)), 0.0)
    offset = torch.searchsorted(inside.cumsum(-1, dtype=torch.float64), target - before)
    # float rounding can put the target a hair outside the block's own cumulative sum: stay on tokens it can draw
    drawable = inside > 0
    first = torch.where(drawable, position, BLOCK).amin(-1, keepdim=True)
    last = torch.where(drawable, position, -1).amax(-1, keepdim=True)
    return (block * BLOCK + torch.minimum(torch.maximum(offset, first), last)).squeeze(1)


def single_out(scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Scores that make greedy decoding pick `tokens` [rows]: 0 there, -inf elsewhere."""
    return torch.full_like(scores, float("-inf")).scatter_(1, tokens[:, None], 0.0)


class InverseCdfSampler(LogitsProcessor):
    """Draws a token per row from softmax(scores) (`inverse_cdf_draw`, one uniform number per row) and returns
    scores that single it out (0 there, -inf elsewhere) for greedy decoding to pick."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float(), dim=-1)
        uniform = 1.0 - torch.rand(scores.shape[0], 1, dtype=torch.float64, device=scores.device)  # in (0, 1]
        return single_out(scores, inverse_cdf_draw(probs, uniform))


def exponential_noise(shape: tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """float32 Exp(1) values: -log U of float32 uniforms, with the lower tail resolved. A float32 uniform U lies on
    a 2^-24 grid, so -log U has no value below ~2^-24 (a token of probability 5e-8 would win the race at half its
    rate); the values with U >= 1 - TAIL (exactly a TAIL share of the grid) are replaced by -log(1 - TAIL * V),
    V a float64 uniform in (0, 1]: the same conditional law, continuous down to ~1e-16."""
    uniform = torch.rand(shape, device=device)
    tail = (uniform.view(-1) >= 1.0 - TAIL).nonzero().squeeze(1)
    noise = uniform.log_().neg_()  # a 0 draw gives inf: never wins
    if tail.numel():
        fine = 1.0 - torch.rand(tail.numel(), dtype=torch.float64, device=noise.device)  # in (0, 1]
        noise.view(-1)[tail] = torch.log1p(-TAIL * fine).neg_().float()
    return noise


class ExponentialRaceSampler(LogitsProcessor):
    """Draws a token per row from softmax(scores) by the exponential race (argmax p_v / E_v, one E_v ~ Exp(1) per
    vocabulary entry): two similar models under one seed draw mostly the same token. Returns scores that single it
    out, like `InverseCdfSampler`."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float(), dim=-1)
        return single_out(scores, (probs / exponential_noise(probs.shape, probs.device)).argmax(-1))


def warpers(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """transformers' temperature / top-k / top-p warpers that change anything, in `generate`'s sampling order: the
    distribution a sample is actually drawn from is softmax(warpers(logits)) (KL is measured on it too)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return processors


def sampling_processors(temperature: float, top_k: int, top_p: float, paired: bool = False) -> LogitsProcessorList:
    """The `warpers`, then the draw: the exponential race when `paired` (samples compared with another model's under
    the same seed), else the one-number inverse CDF."""
    processors = warpers(temperature, top_k, top_p)
    processors.append(ExponentialRaceSampler() if paired else InverseCdfSampler())
    return processors
