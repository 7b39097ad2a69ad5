"""Batched sampling: exactly num_samples completions per prompt, max_new_tokens respected, seeded."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from dpo_exp.generation import generate_samples
from dpo_exp.models import build_model, offline_gpt2_tokenizer

TINY = OmegaConf.create({"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 128}})
PROMPTS = ["This movie", "I watched it last night and", "Terrible", "One of the best films", "The plot"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return build_model(TINY, seed=0), offline_gpt2_tokenizer()


def gen_cfg(**overrides):
    base = {"num_samples": 3, "max_new_tokens": 6, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "batch_size": 2}
    return OmegaConf.create({**base, **overrides})


def test_counts_and_max_new_tokens(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    samples = generate_samples(model, tokenizer, PROMPTS, gen_cfg(), seed=1, progress=False)
    assert samples.prompts == PROMPTS
    assert len(samples.texts) == len(PROMPTS) and all(len(t) == 3 for t in samples.texts)
    assert len(samples.flat()) == 15
    lengths = [len(ids) for row in samples.token_ids for ids in row]
    assert max(lengths) == 6 and min(lengths) >= 0  # random weights rarely pick EOS: most run to the limit
    assert all(
        t == tokenizer.decode(i, skip_special_tokens=True)
        for texts, ids in zip(samples.texts, samples.token_ids)
        for t, i in zip(texts, ids)
    )
    assert tokenizer.padding_side == "right"  # restored after left-padded generation


def test_num_samples_and_length_overrides(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    samples = generate_samples(
        model, tokenizer, PROMPTS[:2], gen_cfg(), seed=1, num_samples=5, max_new_tokens=2, progress=False
    )
    assert [len(t) for t in samples.texts] == [5, 5]
    assert max(len(ids) for row in samples.token_ids for ids in row) <= 2


def test_seeded_and_left_padding_does_not_change_a_prompt_alone(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    first = generate_samples(model, tokenizer, PROMPTS, gen_cfg(), seed=3, progress=False)
    second = generate_samples(model, tokenizer, PROMPTS, gen_cfg(), seed=3, progress=False)
    assert first.texts == second.texts
    other = generate_samples(model, tokenizer, PROMPTS, gen_cfg(), seed=4, progress=False)
    assert other.texts != first.texts
    # greedy decoding is deterministic: a padded batch must give what each prompt gives on its own
    greedy = gen_cfg(top_k=1, num_samples=1, batch_size=8)
    batched = generate_samples(model, tokenizer, PROMPTS, greedy, seed=0, progress=False)
    single = [generate_samples(model, tokenizer, [p], greedy, seed=0, progress=False).texts[0] for p in PROMPTS]
    assert batched.texts == single


def test_tokenizer_saved_after_sampling_reloads_right_padded(model_and_tokenizer, tmp_path):
    """Left padding for generation must not leak into a tokenizer saved later (e.g. run_dir/model)."""
    from transformers import AutoTokenizer

    model, tokenizer = model_and_tokenizer
    generate_samples(model, tokenizer, PROMPTS, gen_cfg(), seed=1, progress=False)
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).padding_side == "right"
    assert tokenizer(["a b c", "d"], padding=True).attention_mask[1] == [1, 0, 0]


def test_batches_sorted_by_length_and_samples_in_caller_order(model_and_tokenizer):
    """Length-sorted batching: each prompt's samples follow it whatever order the prompts come in, and a
    different batching (batch_size / max_batch_tokens) is a different, equally deterministic, draw."""
    model, tokenizer = model_and_tokenizer
    forward = generate_samples(model, tokenizer, PROMPTS, gen_cfg(), seed=3, progress=False)
    backward = generate_samples(model, tokenizer, PROMPTS[::-1], gen_cfg(), seed=3, progress=False)
    assert backward.prompts == PROMPTS[::-1]
    assert backward.token_ids[::-1] == forward.token_ids
    capped = gen_cfg(batch_size=8, max_batch_tokens=3 * (8 + 6) * 2)
    first = generate_samples(model, tokenizer, PROMPTS, capped, seed=3, progress=False)
    assert generate_samples(model, tokenizer, PROMPTS, capped, seed=3, progress=False).token_ids == first.token_ids
    assert [len(t) for t in first.texts] == [3] * len(PROMPTS)


def test_batch_plan_sorts_and_respects_token_budget():
    from dpo_exp.generation import batch_plan

    prompts = ["e", "a", "c", "b", "d"]
    lengths = [5, 1, 3, 1, 4]
    assert batch_plan(prompts, lengths, batch_size=2) == [[1, 3], [2, 4], [0]]
    # 2 samples x (length + 2 new tokens) per prompt; a budget of 16 padded tokens fits 2 prompts up to length 2
    plan = batch_plan(prompts, lengths, batch_size=8, num_samples=2, max_new_tokens=2, max_batch_tokens=16)
    assert plan == [[1, 3], [2], [4], [0]]
    assert sorted(i for b in plan for i in b) == list(range(5))
    for batch in plan:
        assert len(batch) == 1 or len(batch) * 2 * (max(lengths[i] for i in batch) + 2) <= 16
