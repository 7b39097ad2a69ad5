"""Batched, left-padded, KV-cached sampling from a causal LM (pair building and evaluation share it).

Prompts are sorted by token length (then text) and cut into batches of `batch_size` prompts, optionally fewer
so that a batch stays under `max_batch_tokens` padded tokens; similar lengths mean little left padding. Each
batch is seeded (`seed + batch number`) in that sorted order and the samples are returned in the caller's
prompt order. So two models given the same prompts, settings and seed draw the same random numbers (identical
models give identical samples: paired comparisons are exact), and a prompt's samples do not depend on the order
the prompts were given in. What a prompt draws does depend on the batching (`batch_size`, `max_batch_tokens`):
cache keys include them (`dpo_exp.tasks.sentiment.pair_key`).

A prompt longer than the context leaves room for keeps its END (the tokenizer truncates from the left while
sampling): a dialogue prompt must still end in its `\n\nAssistant:` turn. The draw runs under a clean
`GenerationConfig`: the model's own generation config (repetition penalty, no-repeat n-grams, suppressed tokens,
minimum lengths, beams) is set aside, so samples come from exactly softmax(warpers(logits)), the distribution the
evaluation's KL and implicit reward are computed on.

Draws meant to be independent of the evaluation's (the unpaired reference samples, best-of-N's extra samples) take
their seed from `stream_seed(seed, name)`, a hash: unlike a fixed offset, two streams never share a batch's seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .data.conversation import prompt_key
from .models import context_length
from .models.chat import encode_prompts
from .sampler import sampling_processors

TokenSequence = tuple[list[int], list[int]]  # (context ids, completion ids)


@dataclass
class Samples:
    """`num_samples` completions per prompt: texts and the generated token ids (EOS/padding stripped)."""

    prompts: list  # plain text, or conversations (dpo_exp.models.chat renders them with the chat template)
    texts: list[list[str]]
    token_ids: list[list[list[int]]]

    def flat(self) -> list[tuple[int, str]]:
        """(prompt index, completion) for every sample."""
        return [(i, text) for i, texts in enumerate(self.texts) for text in texts]


def stream_seed(seed: int, stream: str) -> int:
    """A base seed for the named random stream under `seed`: a 62-bit hash, so streams (each seeding its batches
    base + batch number) never overlap in practice, whatever the prompts and batching."""
    digest = hashlib.sha256(f"{int(seed)}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def default_batch_size(device: str) -> int:
    return 256 if str(device).startswith("cuda") else 64


def prompt_token_budget(model, max_new_tokens: int) -> int:
    """How many prompt tokens a sampled prompt keeps: the model's context minus the new tokens (a longer prompt is
    cut to this many, on the tokenizer's `truncation_side`)."""
    return max(1, context_length(model) - int(max_new_tokens))


def generate_samples(
    model,
    tokenizer,
    prompts: list,  # plain text or conversations
    gen_cfg: Any,
    seed: int,
    num_samples: int | None = None,
    max_new_tokens: int | None = None,
    desc: str = "sampling",
    progress: bool = True,
    streamer: Any = None,
    paired: bool = False,
) -> Samples:
    """Sample completions for every prompt. gen_cfg: temperature, top_k, top_p, batch_size, num_samples, ...

    `paired`: the samples will be compared one by one with another model's drawn under the same seed (evaluation,
    the app), so the draw is the one that keeps similar models' samples alike (`dpo_exp.sampler`).
    `streamer` (a transformers streamer, one prompt and one sample only) receives the tokens as they are drawn.
    """
    num_samples = int(num_samples or gen_cfg.num_samples)
    max_new_tokens = int(max_new_tokens or gen_cfg.max_new_tokens)
    device = next(model.parameters()).device
    batch_size = int(gen_cfg.get("batch_size") or default_batch_size(str(device)))
    max_prompt_tokens = prompt_token_budget(model, max_new_tokens)

    lengths = [len(x) for x in prompt_token_ids(tokenizer, list(prompts), max_prompt_tokens)]
    plan = batch_plan(prompts, lengths, batch_size, num_samples, max_new_tokens, gen_cfg.get("max_batch_tokens"))

    was_training = model.training
    model.eval()
    texts: list[list[str]] = [[] for _ in prompts]
    ids: list[list[list[int]]] = [[] for _ in prompts]
    eos = tokenizer.eos_token_id
    try:
        with sides(tokenizer, padding="left"), clean_generation_config(model):
            for number, batch in enumerate(tqdm(plan, desc=desc, disable=not progress, unit="batch")):
                chunk = [prompts[i] for i in batch]
                enc = encode_prompts(
                    tokenizer, chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_tokens
                ).to(device)
                out = _generate(
                    model, tokenizer, enc, gen_cfg, num_samples, max_new_tokens, seed + number, streamer, paired
                )
                generated = out[:, enc.input_ids.shape[1] :].tolist()
                for p, index in enumerate(batch):
                    rows = [_strip(generated[p * num_samples + s], eos) for s in range(num_samples)]
                    ids[index] = rows
                    texts[index] = [tokenizer.decode(r, skip_special_tokens=True) for r in rows]
    finally:
        model.train(was_training)
    return Samples(prompts=list(prompts), texts=texts, token_ids=ids)


@contextmanager
def sides(tokenizer, padding: str | None = None) -> Iterator[None]:
    """Within the block the tokenizer truncates from the LEFT (a prompt keeps its end) and, if given, pads on
    `padding`; both sides are restored afterwards and the fast backend's padding/truncation settings cleared."""
    saved = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    if padding:
        tokenizer.padding_side = padding
    try:
        yield
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = saved
        _reset_backend_padding(tokenizer)


def prompt_token_ids(tokenizer, prompts: list[Any], max_prompt_tokens: int) -> list[list[int]]:
    """Each prompt's token ids as sampling feeds them (a conversation through the chat template): at most
    `max_prompt_tokens`, keeping the END of the prompt."""
    with sides(tokenizer):
        return encode_prompts(tokenizer, list(prompts), truncation=True, max_length=max_prompt_tokens).input_ids


def _generation_owner(model):
    """The module whose `generation_config` `generate` reads (a PEFT model's base model)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@contextmanager
def clean_generation_config(model) -> Iterator[None]:
    """Within the block the model's own `generation_config` is a fresh `GenerationConfig()`: `generate` fills every
    setting not passed explicitly from it, so a checkpoint's repetition penalty, no-repeat n-grams, suppressed
    tokens, minimum lengths or beams would otherwise reshape the distribution the custom draw samples."""
    from transformers import GenerationConfig

    owner = _generation_owner(model)
    saved = getattr(owner, "generation_config", None)
    owner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        owner.generation_config = saved


def _generate(
    model,
    tokenizer,
    enc,
    gen_cfg: Any,
    num_samples: int,
    max_new_tokens: int,
    seed: int,
    streamer: Any,
    paired: bool = False,
):
    """One batch's `num_samples` samples per prompt (rows prompt-major), seeded (CPU and CUDA generators).

    The draw is `dpo_exp.sampler`'s (the paired race or the one-number inverse CDF, transformers' warpers before
    it), run through generate's greedy loop, which takes one row per sample: the prompts are repeated here."""
    torch.manual_seed(seed)
    if enc.input_ids.device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    from transformers import GenerationConfig

    rows = {key: value.repeat_interleave(num_samples, dim=0) for key, value in enc.items()}
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    with torch.no_grad():
        return model.generate(
            **rows,
            generation_config=config,
            logits_processor=sampling_processors(
                float(gen_cfg.temperature), int(gen_cfg.top_k or 0), float(gen_cfg.top_p), paired
            ),
            **({"streamer": streamer} if streamer is not None else {}),
        )


def sample_sequences(tokenizer, samples: Samples, max_new_tokens: int, context: int) -> list[TokenSequence]:
    """(prompt ids, completion ids) for every sample, flattened prompt-major, exactly as generate_samples sampled
    them (pair building trains on these ids, evaluation scores them; no decode/re-tokenise round trip).

    The prompt is tokenized with generate_samples' truncation (its end kept); a sample shorter than max_new_tokens
    ended on EOS, which generate_samples stripped, so EOS is put back: the termination is part of the sampled
    sequence.
    """
    max_prompt = max(1, context - max_new_tokens)
    eos = tokenizer.eos_token_id
    out: list[TokenSequence] = []
    for prompt_ids, rows in zip(prompt_token_ids(tokenizer, samples.prompts, max_prompt), samples.token_ids):
        for generated in rows:
            ended = len(generated) < max_new_tokens
            out.append((prompt_ids, list(generated) + ([eos] if ended else [])))
    return out


def batch_plan(
    prompts: list[str],
    lengths: list[int],
    batch_size: int,
    num_samples: int = 1,
    max_new_tokens: int = 0,
    max_batch_tokens: int | None = None,
) -> list[list[int]]:
    """Prompt indices per generate() call: sorted by (token length, text, index), cut every `batch_size` prompts
    and, with `max_batch_tokens`, before a batch's padded size (rows x (longest prompt + new tokens)) exceeds it."""
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], prompt_key(prompts[i]), i))
    budget = int(max_batch_tokens) if max_batch_tokens else None
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending lengths: the newest prompt is the longest of the batch
        cost = (len(current) + 1) * num_samples * (lengths[i] + max_new_tokens)
        if current and (len(current) >= batch_size or (budget is not None and cost > budget)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _reset_backend_padding(tokenizer) -> None:
    """A fast tokenizer keeps the last padding and truncation settings (here: LEFT) in its Rust backend, and
    save_pretrained writes them into tokenizer.json, so a tokenizer saved after sampling would reload left-padded
    or left-truncating. Clear them; the next call sets them again from `padding_side` / `truncation_side`."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and getattr(backend, "padding", None) is not None:
        backend.no_padding()
    if backend is not None and getattr(backend, "truncation", None) is not None:
        backend.no_truncation()


def _strip(tokens: list[int], eos: int) -> list[int]:
    """Cut at the first EOS (generate pads finished sequences with it)."""
    return tokens[: tokens.index(eos)] if eos in tokens else tokens
