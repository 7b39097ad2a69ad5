"""Sequence log-probabilities under a causal LM, the Monte-Carlo KL and DPO's implicit reward.

A "sequence" is (context token ids, target token ids); its log-probability is the sum over the target tokens of
log p(token | everything before it). Batches are right-padded, so positions are the unpadded ones; sequences are
processed in a fixed (length-sorted) order, so the same inputs always give the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from ..generation import TokenSequence
from ..trl_compat import pair_token_ids


@contextmanager
def frozen_eval(model) -> Iterator[None]:
    """eval() (no dropout) and no_grad for the duration, restoring the training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _batches(sequences: Sequence[TokenSequence], pad_id: int, batch_size: int):
    """(indices, input_ids, attention_mask, target mask shifted to the predicting positions), length-sorted."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    for start in range(0, len(order), batch_size):
        chunk = [i for i in order[start : start + batch_size] if sequences[i][1]]
        if not chunk:
            continue
        rows = [list(sequences[i][0]) + list(sequences[i][1]) for i in chunk]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        target = torch.zeros((len(rows), width), dtype=torch.bool)
        for row, (i, tokens) in enumerate(zip(chunk, rows)):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
            target[row, len(sequences[i][0]) : len(tokens)] = True
        yield chunk, ids, mask, target[:, 1:]  # token t is predicted by the logits at position t-1


def _log_softmax(model, ids, mask, warp=None) -> torch.Tensor:
    """Next-token log-probabilities at every position; with `warp` (dpo_exp.sampler.warpers) those of the warped
    distribution the sampler draws from (-inf outside its top-k / top-p support)."""
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
    if warp:
        shape = logits.shape
        logits = warp(None, logits.reshape(-1, shape[-1])).reshape(shape)
    return logits.log_softmax(-1)


def _progress(batches, sequences: Sequence[TokenSequence], batch_size: int, desc: str | None):
    """A tqdm bar over the batches when `desc` is given (the evaluation's progress), else the batches as they are."""
    if not desc:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc=desc, total=-(-len(sequences) // batch_size), unit="batch")


def sequence_logprobs(
    model,
    sequences: Sequence[TokenSequence],
    pad_id: int,
    batch_size: int = 8,
    desc: str | None = None,
    shared_lengths: Sequence[int] | None = None,
    tail_weight: float = 1.0,
) -> np.ndarray:
    """Sum of log p(target tokens) for each (context, target) pair, in float64. Empty targets give 0.
    `desc`: show a progress bar with this label.

    `shared_lengths` (one per sequence) weights the target tokens past that many by `tail_weight`: TRL's
    `ld_alpha` (LD-DPO), whose log-prob is shared + ld_alpha * tail with shared = min(chosen, rejected) length."""
    out = np.zeros(len(sequences), dtype=np.float64)
    with frozen_eval(model):
        for chunk, ids, mask, target in _progress(_batches(sequences, pad_id, batch_size), sequences, batch_size, desc):
            logp = _log_softmax(model, ids, mask)
            token_logp = logp.gather(-1, ids[:, 1:].to(logp.device).unsqueeze(-1)).squeeze(-1)
            weight = target.to(logp.device).to(logp.dtype)
            if shared_lengths is not None:
                shared = torch.tensor([shared_lengths[i] for i in chunk], device=logp.device)[:, None]
                tail = target.to(logp.device).cumsum(-1) > shared
                weight = torch.where(tail, weight * tail_weight, weight)
            out[chunk] = (token_logp * weight).sum(-1).double().cpu().numpy()
    return out


def sequence_kl(
    policy,
    reference_context,
    sequences: Sequence[TokenSequence],
    pad_id: int,
    batch_size: int = 8,
    desc: str | None = None,
    warp=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Two per-sequence estimates of KL(policy || reference) from sequences sampled from the policy.

    - mc: sum over target tokens of log pi - log pi_ref (the plain Monte-Carlo estimate);
    - rb: sum over target positions of the exact next-token KL(pi(.|prefix) || pi_ref(.|prefix)) — same
      expectation (the sequence KL), far lower variance (the per-token sampling noise is averaged out).
    `warp` (dpo_exp.sampler.warpers: temperature, top-k, top-p) is applied to BOTH models' logits, so the KL is
    the one between the distributions the samples were drawn from. Where the policy can draw a token the warped
    reference cannot (top-k / top-p supports differ), that KL is +inf, and so is the estimate.
    `reference_context()` is a context manager yielding the reference (e.g. the policy with its adapter disabled).
    """
    mc = np.zeros(len(sequences), dtype=np.float64)
    rb = np.zeros(len(sequences), dtype=np.float64)
    with frozen_eval(policy):
        for chunk, ids, mask, target in _progress(_batches(sequences, pad_id, batch_size), sequences, batch_size, desc):
            logp = _log_softmax(policy, ids, mask, warp)
            with reference_context() as reference, frozen_eval(reference):
                logq = _log_softmax(reference, ids, mask, warp)
            target = target.to(logp.device)
            labels = ids[:, 1:].to(logp.device).unsqueeze(-1)
            ratio = (logp.gather(-1, labels) - logq.gather(-1, labels)).squeeze(-1)
            mc[chunk] = torch.where(target, ratio, 0.0).sum(-1).double().cpu().numpy()
            # tokens the policy cannot draw add nothing (0 * log 0 = 0); those only the reference cannot draw: +inf
            token_kl = torch.where(logp > float("-inf"), logp.exp() * (logp - logq), 0.0).sum(-1)
            rb[chunk] = torch.where(target, token_kl, 0.0).sum(-1).double().cpu().numpy()
    return mc, rb


def truncate(context: list[int], completion: list[int], max_length: int | None, mode: str) -> TokenSequence:
    """Cut context+completion to max_length as TRL's DataCollatorForPreference does (keep_start: drop the end;
    keep_end: drop the start), returning what is left of each part."""
    full = list(context) + list(completion)
    if not max_length or len(full) <= max_length:
        return list(context), list(completion)
    if mode == "keep_start":
        kept, n_context = full[:max_length], min(len(context), max_length)
    elif mode == "keep_end":
        kept, n_context = full[-max_length:], max(0, len(context) - (len(full) - max_length))
    else:
        raise ValueError(f"truncation_mode={mode!r}: expected 'keep_start' or 'keep_end'")
    return kept[:n_context], kept[n_context:]


def pair_sequences(
    tokenizer, pairs: Sequence[dict], max_length: int | None, truncation_mode: str = "keep_start"
) -> tuple[list[TokenSequence], list[TokenSequence]]:
    """(prompt, chosen) and (prompt, rejected) token sequences as the DPO trainer sees them (same ids, same cut)."""
    chosen, rejected = [], []
    for pair in pairs:
        ids = pair_token_ids(tokenizer, pair)
        chosen.append(truncate(ids["prompt_ids"], ids["chosen_ids"], max_length, truncation_mode))
        rejected.append(truncate(ids["prompt_ids"], ids["rejected_ids"], max_length, truncation_mode))
    return chosen, rejected
