"""The one-random-number-per-row draw samples the softmax distribution (after the warpers), never a token of
probability zero, and is what generate_samples draws with."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from dpo_exp.generation import generate_samples
from dpo_exp.models import build_model, offline_gpt2_tokenizer
from dpo_exp.sampler import BLOCK, ExponentialRaceSampler, InverseCdfSampler, inverse_cdf_draw, sampling_processors


def test_draw_follows_the_distribution_across_blocks():
    torch.manual_seed(0)
    vocab = 2 * BLOCK + 600  # two whole blocks and a partial one
    probs = torch.softmax(torch.randn(vocab) * 2, -1)
    probs[torch.rand(vocab) < 0.3] = 0.0  # unreachable tokens, as after top-k / top-p
    probs[BLOCK - 1 : BLOCK + 1] = 0.0  # on both sides of a block boundary
    probs /= probs.sum()
    draws, rows = 40, 10_000
    counts = torch.zeros(vocab)
    for _ in range(draws):
        uniform = 1.0 - torch.rand(rows, 1, dtype=torch.float64)
        counts += torch.bincount(inverse_cdf_draw(probs.expand(rows, vocab), uniform), minlength=vocab)
    expected = probs * draws * rows
    assert counts[probs == 0].sum() == 0
    z = (counts - expected)[probs > 0] / expected[probs > 0].sqrt()
    assert z.abs().max() < 6, z.abs().max()  # every token within 6 sigma of its expected count
    assert abs(float((z**2).mean()) - 1.0) < 0.1  # and the spread is that of multinomial noise


def test_draw_at_the_ends_of_the_unit_interval_stays_on_drawable_tokens():
    vocab = BLOCK + 10
    probs = torch.zeros(2, vocab)
    probs[:, 3] = 0.25
    probs[:, BLOCK + 4] = 0.75  # the last drawable token, in the partial block
    uniform = torch.tensor([[1e-300], [1.0]], dtype=torch.float64)
    assert inverse_cdf_draw(probs, uniform).tolist() == [3, BLOCK + 4]
    tiny = torch.zeros(1, 5)
    tiny[0, 2] = 1.0  # a single token: whatever the number
    for u in (1e-12, 0.5, 1.0):
        assert inverse_cdf_draw(tiny, torch.tensor([[u]], dtype=torch.float64)).item() == 2


def test_sampler_singles_out_one_token_per_row_and_warpers_come_first():
    torch.manual_seed(0)
    scores = torch.randn(3, 50)
    out = InverseCdfSampler()(torch.zeros(3, 1, dtype=torch.long), scores)
    assert ((out == 0).sum(-1) == 1).all() and torch.isinf(out).sum() == 3 * 49
    kinds = [type(p) for p in sampling_processors(0.7, 5, 0.9)]
    assert kinds == [TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, InverseCdfSampler]
    assert [type(p) for p in sampling_processors(1.0, 0, 1.0)] == [InverseCdfSampler]
    assert [type(p) for p in sampling_processors(1.0, 0, 1.0, paired=True)] == [ExponentialRaceSampler]


def test_exponential_race_follows_the_distribution():
    torch.manual_seed(0)
    vocab, rows, draws = 300, 20_000, 10
    scores = torch.randn(vocab) * 2
    scores[::7] = float("-inf")  # unreachable tokens
    probs = torch.softmax(scores, -1)
    counts = torch.zeros(vocab)
    for _ in range(draws):
        out = ExponentialRaceSampler()(torch.zeros(rows, 1, dtype=torch.long), scores.expand(rows, vocab).clone())
        counts += torch.bincount(out.argmax(-1), minlength=vocab)
    expected = probs * rows * draws
    assert counts[probs == 0].sum() == 0
    z = (counts - expected)[probs > 0] / expected[probs > 0].sqrt()
    assert z.abs().max() < 6 and abs(float((z**2).mean()) - 1.0) < 0.15


def test_generate_samples_draw_only_top_k_tokens():
    """Through generate: with top_k=2 every first token is one of the model's two most likely next tokens."""
    model = build_model(
        OmegaConf.create({"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}}), seed=0
    ).eval()
    tokenizer = offline_gpt2_tokenizer()
    prompt = "The film was"
    with torch.no_grad():
        logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]
    top2 = set(logits.topk(2).indices.tolist())
    cfg = OmegaConf.create(
        {"num_samples": 64, "max_new_tokens": 1, "temperature": 1.0, "top_k": 2, "top_p": 1.0, "batch_size": 1}
    )
    first = [ids[0] for ids in generate_samples(model, tokenizer, [prompt], cfg, seed=0, progress=False).token_ids[0]]
    assert set(first) == top2  # both drawn (64 draws), nothing else


def test_paired_draw_keeps_two_similar_models_samples_alike():
    """Evaluation compares a policy with its reference sample by sample under one seed: with `paired=True` two
    nearly equal models draw mostly the same completions; the one-number draw decouples them."""
    model = build_model(
        OmegaConf.create({"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}}), seed=0
    ).eval()
    nudged = build_model(
        OmegaConf.create({"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}}), seed=0
    ).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in nudged.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    tokenizer = offline_gpt2_tokenizer()
    prompts = ["The film was", "I did not expect", "Acting and plot"]
    cfg = OmegaConf.create(
        {"num_samples": 8, "max_new_tokens": 4, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "batch_size": 8}
    )

    def agreement(paired: bool) -> float:
        a, b = (
            generate_samples(m, tokenizer, prompts, cfg, seed=3, progress=False, paired=paired) for m in (model, nudged)
        )
        same = [x == y for row_a, row_b in zip(a.token_ids, b.token_ids) for x, y in zip(row_a, row_b)]
        return sum(same) / len(same)

    assert agreement(True) > 0.8
    assert agreement(False) < agreement(True) - 0.3
