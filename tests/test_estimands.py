"""Issue 20, section 2: every evaluation estimate means one thing, whatever the sampler, eval.num_samples or the
generation settings. Each test fails on the code before the fix (noted per test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dpo_exp.evaluation.metrics import (
    INDEPENDENT_STREAM,
    SampleEval,
    SampleSettings,
    kl_estimates,
    reward_kl_metrics,
    sample_and_score,
)
from dpo_exp.evaluation.policy_ref import PolicyReference
from dpo_exp.generation import generate_samples, stream_seed
from dpo_exp.models import offline_gpt2_tokenizer

TOKENS = [300, 350, 400, 450]  # " l", " P", "th", " ab"; ascending: the inverse CDF's coupling follows the order
PROMPT = "!"  # token 0: every prompt is this one-token prompt (rows are independent draws all the same)
REWARDS = [2.0, 3.0, 0.0, 1.0]
POLICY = [0.34, 0.0, 0.37, 0.29]  # the issue's example: P(policy wins) = 0.5198, ties 1/2
REFERENCE = [0.05, 0.27, 0.55, 0.13]


@pytest.fixture(scope="module")
def tokenizer():
    return offline_gpt2_tokenizer()


def one_token_model(probs: list[float]):
    """A tiny GPT-2 (512-token vocabulary: cheap draws) whose next-token distribution is `probs` over TOKENS
    whatever the context: the final layer norm outputs a constant unit vector e_0, so the logits are column 0 of
    the (tied) embeddings."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=512, n_layer=1, n_embd=8, n_head=2, n_positions=16, eos_token_id=50256)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        logits = torch.full((model.config.vocab_size,), -1e4)
        for token, p in zip(TOKENS, probs):
            if p > 0:
                logits[token] = float(np.log(p))
        model.transformer.wte.weight[:, 0] = logits
    return model


class TokenScorer:
    """Scores a one-token completion by which of TOKENS it is."""

    def __init__(self, tokenizer):
        self.rewards = {tokenizer.decode([t]): r for t, r in zip(TOKENS, REWARDS)}

    def score(self, texts: list[str]) -> list[float]:
        return [self.rewards[t] for t in texts]


def true_win_rate() -> float:
    r = np.array(REWARDS)
    beats = (r[:, None] > r[None, :]) + 0.5 * (r[:, None] == r[None, :])
    return float(np.array(POLICY) @ beats @ np.array(REFERENCE))


def _settings(num_samples: int, seed: int) -> SampleSettings:
    gen = OmegaConf.create({"temperature": 1.0, "top_k": 0, "top_p": 1.0, "batch_size": 1600})
    return SampleSettings(gen_cfg=gen, num_samples=num_samples, max_new_tokens=1, seed=seed, logprob_batch_size=256)


@pytest.mark.parametrize(
    ("paired", "num_samples", "prompts", "seed"), [(True, 1, 1600, 1), (True, 4, 400, 2), (False, 4, 400, 3)]
)
def test_headline_win_rate_estimates_p_policy_wins_for_any_sampler_and_num_samples(
    tokenizer, paired, num_samples, prompts, seed
):
    """2a. Before: eval/win_rate compared sample i with the reference's sample i under the same seed, so its value
    depended on how the sampler coupled the two draws (the inverse CDF gives ~0.455 here, the race ~0.489, for a
    true 0.520). Now it estimates P(policy beats reference) from independent draws, for both samplers and any
    num_samples; the same-seed rate is the diagnostic win_rate_coupled."""
    truth = true_win_rate()
    assert truth == pytest.approx(0.5198)
    policy, reference = one_token_model(POLICY), one_token_model(REFERENCE)
    scorer = TokenScorer(tokenizer)
    settings = _settings(num_samples, seed)
    texts = [PROMPT] * prompts
    if paired:  # the evaluation's own path (the race)
        result = sample_and_score(PolicyReference(policy, reference), tokenizer, texts, settings, scorer)
    else:  # the same draws with the one-number inverse CDF
        gen = settings.gen_cfg

        def draw(model, seed):
            return generate_samples(model, tokenizer, texts, gen, seed, num_samples, 1, progress=False, paired=False)

        p, q = draw(policy, seed), draw(reference, seed)
        independent = draw(reference, stream_seed(seed, INDEPENDENT_STREAM))
        score = [np.array([scorer.score(row) for row in s.texts]) for s in (p, q, independent)]
        result = SampleEval(p, q, score[0], score[1], np.zeros_like(score[0]), None, score[2], independent)
    out = reward_kl_metrics(result, 200, 0)
    assert abs(out["win_rate"] - truth) < 0.04, out["win_rate"]  # ~3 standard errors at these sizes
    if not paired:  # the coupled diagnostic is the sampler's, not the models'
        assert abs(out["win_rate_coupled"] - truth) > 0.03, out["win_rate_coupled"]


# ---------------------------------------------------------------- 2b. KL between the sampled distributions


def scaled_model(scale: float):
    """The tiny GPT-2 with its logits multiplied by `scale` (final layer norm scaled): peaked next-token
    distributions. Two scales give two models with the same token ORDER at every position (equal top-k sets)."""
    from dpo_exp.models import build_model

    tiny = OmegaConf.create({"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}})
    model = build_model(tiny, seed=0).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(scale)
        model.transformer.ln_f.bias.mul_(scale)
    return model


def _first_token_kl(policy, reference, tokenizer, prompts, temperature, top_k) -> float:
    """The exact mean over prompts of KL(warped policy || warped reference) of the first new token, warped by hand."""

    def warped(model, prompt):
        with torch.no_grad():
            z = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].double() / temperature
        if top_k:
            z[z < z.topk(top_k).values[-1]] = float("-inf")
        return z.log_softmax(-1)

    kls = []
    for prompt in prompts:
        p, q = warped(policy, prompt), warped(reference, prompt)
        kls.append(float(torch.where(p > float("-inf"), p.exp() * (p - q), 0.0).sum()))
    return float(np.mean(kls))


@pytest.mark.parametrize(("temperature", "top_k"), [(0.7, 0), (1.0, 10)])
def test_kl_is_taken_between_the_distributions_sampled(tokenizer, temperature, top_k):
    """Before: kl / kl_rb used the raw logits while samples came from the warped ones, so at temperature 0.7 the
    two estimators disagreed (0.80 vs 0.57 nats here) and neither was the KL of what was sampled (0.13)."""
    policy, reference = scaled_model(45.0), scaled_model(30.0)
    prompts = [f"Review number {i}:" for i in range(48)]
    gen = OmegaConf.create(
        {"temperature": temperature, "top_k": top_k, "top_p": 1.0, "batch_size": 48, "num_samples": 8}
    )
    settings = SampleSettings(gen_cfg=gen, num_samples=8, max_new_tokens=1, seed=0, logprob_batch_size=128)
    samples = generate_samples(policy, tokenizer, prompts, gen, 0, 8, 1, progress=False)
    mc, rb = kl_estimates(PolicyReference(policy, reference), tokenizer, samples, settings)
    exact = _first_token_kl(policy, reference, tokenizer, prompts, temperature, top_k)
    assert exact > 0.05
    assert rb.mean() == pytest.approx(exact, rel=1e-3)  # one new token: the Rao-Blackwellised value is exact
    assert abs(mc.mean() - exact) < 4 * mc.std() / np.sqrt(mc.size)  # Monte-Carlo: unbiased for the same KL


def test_kl_is_infinite_where_the_warped_supports_differ(tokenizer):
    """Top-p keeps more tokens of the flatter model: where the policy can draw a token the warped reference cannot,
    the KL is infinite, and the metrics say so (kl_infinite) rather than print a finite number."""
    policy, reference = scaled_model(30.0), scaled_model(45.0)  # the policy is the flatter one
    prompts = [f"Review number {i}:" for i in range(8)]
    gen = OmegaConf.create({"temperature": 1.0, "top_k": 0, "top_p": 0.5, "batch_size": 8, "num_samples": 4})
    settings = SampleSettings(gen_cfg=gen, num_samples=4, max_new_tokens=2, seed=0)
    samples = generate_samples(policy, tokenizer, prompts, gen, 0, 4, 2, progress=False)
    mc, rb = kl_estimates(PolicyReference(policy, reference), tokenizer, samples, settings)
    assert np.isposinf(rb).any() and not np.isnan(rb).any() and not np.isnan(mc).any()
    result = SampleEval(samples, None, None, None, mc, rb)
    out = reward_kl_metrics(result, 100, 0)
    assert out["kl_rb"] == float("inf") and 0 < out["kl_rb_infinite"] <= 1
    assert out["kl_infinite"] == float(np.isposinf(mc).mean())


# ---------------------------------------------------------------- 2c. the race's exponentials in the lower tail


def test_race_exponentials_reach_below_the_float32_uniform_grid():
    """Before: Exp(1) was -log U of float32 uniforms (a 2^-24 grid), so no value fell below ~2^-24 and a token of
    probability 5e-8 won the race at about half its rate. P(E < 2^-25) = 2^-25: 2^28 draws expect 8 such values
    (before: exactly 0). Above the tail the law is Exp(1) as before."""
    from dpo_exp.sampler import exponential_noise

    torch.manual_seed(0)
    small, draws, chunk = 0, 2**28, 2**24
    for _ in range(draws // chunk):
        small += int((exponential_noise((chunk,)) < 2.0**-25).sum())
    assert 2 <= small <= 20, small  # Poisson(8)
    noise = exponential_noise((2**20,))
    assert abs(float((noise < 2.0**-12).double().mean()) / (1 - np.exp(-(2.0**-12))) - 1) < 0.2  # tail mass kept
    assert abs(float(noise.mean()) - 1) < 0.01 and float(noise.min()) > 0


# ---------------------------------------------------------------- 2d. ld_alpha


def test_reference_logprob_cache_key_covers_ld_alpha_and_the_collator_fields():
    """Before: the key hashed max_length, truncation_mode and padding_free only: a run with ld_alpha (LD-DPO)
    reused reference log-probs computed without it."""
    from datasets import Dataset
    from trl import DPOConfig

    from dpo_exp.training.ref_logps import REF_LOGPS_ARGS, tokenised_fingerprint

    data = Dataset.from_list([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5]}])
    base = dict(output_dir="unused", max_length=64, report_to=[], use_cpu=True, bf16=False)
    keys = {tokenised_fingerprint(data, DPOConfig(**base))}
    for change in ({"ld_alpha": 0.5}, {"pad_to_multiple_of": 8}, {"truncation_mode": "keep_end"}):
        keys.add(tokenised_fingerprint(data, DPOConfig(**base, **change)))
    assert len(keys) == 4
    assert tokenised_fingerprint(data, DPOConfig(**base, beta=0.5)) in keys  # beta does not touch them
    assert {"ld_alpha", "pad_to_multiple_of", "max_length", "truncation_mode"} <= set(REF_LOGPS_ARGS)


def test_implicit_rewards_weight_the_longer_responses_tail_by_ld_alpha(tokenizer):
    """Before: implicit_rewards summed every token's log-ratio, while TRL's rewards with ld_alpha count the tokens
    past the shorter response's length ld_alpha times."""
    from dpo_exp.evaluation.logprobs import pair_sequences, sequence_logprobs
    from dpo_exp.evaluation.metrics import implicit_rewards

    policy, reference = scaled_model(3.0), scaled_model(1.0)
    pairs = [
        {"prompt": "The film", "chosen": " was a long and quiet delight", "rejected": " bored me"},
        {"prompt": "Acting:", "chosen": " fine", "rejected": " wooden and stiff throughout the film"},
    ]
    pair = PolicyReference(policy, reference)
    chosen, rejected = implicit_rewards(pair, tokenizer, pairs, 0.1, 64, ld_alpha=0.25)
    plain_chosen, _ = implicit_rewards(pair, tokenizer, pairs, 0.1, 64)
    c_seq, r_seq = pair_sequences(tokenizer, pairs, 64)
    for i, (c, r) in enumerate(zip(c_seq, r_seq)):
        shared = min(len(c[1]), len(r[1]))
        for seq, got in ((c, chosen[i]), (r, rejected[i])):
            head = (seq[0], seq[1][:shared])
            ratio = [
                sequence_logprobs(m, [head, seq], tokenizer.pad_token_id) for m in (policy, reference)
            ]  # [log p(shared part), log p(all)] per model
            expected = 0.1 * sum(sign * (part[0] + 0.25 * (part[1] - part[0])) for sign, part in zip((1, -1), ratio))
            assert got == pytest.approx(expected, abs=1e-6)
    assert not np.allclose(chosen, plain_chosen)  # the weighting changed something


# ---------------------------------------------------------------- 2e. the model's own generation config


def test_sampling_ignores_the_models_generation_config(tokenizer):
    """Before: generate applied the checkpoint's repetition penalty (and no-repeat n-grams, suppressed tokens,
    minimum lengths) before the custom draw, so samples came from a distribution KL and implicit reward ignore.
    Now a model whose generation_config sets them samples exactly as the same weights without them."""
    plain, penalised = scaled_model(20.0), scaled_model(20.0)
    penalised.generation_config.repetition_penalty = 50.0
    penalised.generation_config.no_repeat_ngram_size = 1
    penalised.generation_config.min_new_tokens = 6
    penalised.generation_config.suppress_tokens = list(range(0, 2000))
    prompts = ["The film was", "I did not expect", "Acting and plot"]
    gen = OmegaConf.create({"temperature": 1.0, "top_k": 0, "top_p": 1.0, "batch_size": 8, "num_samples": 4})
    a, b = (
        generate_samples(m, tokenizer, prompts, gen, 5, 4, 6, progress=False, paired=True) for m in (plain, penalised)
    )
    assert a.token_ids == b.token_ids
    assert penalised.generation_config.repetition_penalty == 50.0  # the model's own config is left as it was


# ---------------------------------------------------------------- 2f. independent random streams


def test_best_of_n_and_the_independent_reference_draw_on_their_own_streams(tokenizer):
    """Before: best-of-N's extra samples and the unpaired reference samples were both seeded seed + 7919, so on the
    prompts they share they drew the same random numbers. Each now has its own hashed stream, and a draw on it
    differs from the other's."""
    from dpo_exp.evaluation.best_of_n import SEED_STREAM, reference_samples

    streams = {
        stream_seed(seed, name) + batch
        for seed in (0, 1, 42)
        for name in (SEED_STREAM, INDEPENDENT_STREAM)
        for batch in range(1000)
    }
    assert len(streams) == 3 * 2 * 1000  # no two streams (or seeds) share a batch seed
    reference = scaled_model(1.0)
    prompts = [f"Prompt {i}" for i in range(6)]
    gen = OmegaConf.create({"temperature": 1.0, "top_k": 0, "top_p": 1.0, "batch_size": 8})
    # one new token, 4 samples per prompt: under one seed both draws (the same inverse CDF) would put the same
    # random numbers on the first 4 prompts' rows and draw the same tokens there
    settings = SampleSettings(gen_cfg=gen, num_samples=4, max_new_tokens=1, seed=0)
    scorer = TokenScorer.__new__(TokenScorer)
    scorer.score = lambda texts: [float(len(t)) for t in texts]
    result = sample_and_score(PolicyReference(reference, reference), tokenizer, prompts, settings, scorer)
    extra = reference_samples(reference, tokenizer, prompts[:4], settings, 4)  # nothing reused: 4 fresh per prompt
    independent = [ids for row in result.reference_independent.token_ids[:4] for ids in row]
    drawn = [ids for row in extra.token_ids for ids in row]
    assert sum(a == b for a, b in zip(independent, drawn)) <= 1  # a near-uniform 50k-token draw rarely repeats


# ---------------------------------------------------------------- 2g. the CPU LM head and entropy's gradient


@pytest.mark.parametrize("temperature", [1.0, 0.7])  # the hand-written kernel, and the plain-ops path
def test_cpu_lm_head_refuses_to_back_propagate_through_entropy(temperature):
    """Before: full_logits_log_probs returned an entropy without gradient, so a loss using it silently trained on
    the log-probs alone (TRL's kernel differentiates it). Now back-propagating through it raises; the log-probs'
    gradient is unchanged."""
    from dpo_exp.throughput import full_logits_log_probs

    torch.manual_seed(0)
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    targets = torch.randint(0, 20, (6,))
    outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
    logp, entropy, _, mean_logits, _ = full_logits_log_probs(
        hidden, weight, None, targets, temperature, 4, outputs=outputs
    )
    with pytest.raises(RuntimeError, match="no gradient"):
        (logp.sum() + entropy.sum()).backward(retain_graph=True)
    hidden.grad = None
    logp, entropy, _, mean_logits, _ = full_logits_log_probs(
        hidden, weight, None, targets, temperature, 4, outputs=outputs
    )
    logp.sum().backward()  # the statistics only logged (detached, as TRL does): fine
    expected = torch.autograd.grad(
        (hidden @ weight.t() / temperature).log_softmax(-1).gather(1, targets[:, None]).sum(), hidden
    )[0]
    assert torch.allclose(hidden.grad, expected, atol=1e-5)
    assert float(entropy.detach().sum()) > 0 and mean_logits is not None
