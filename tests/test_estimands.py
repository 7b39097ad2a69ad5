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
    reward_kl_metrics,
    sample_and_score,
)
from dpo_exp.evaluation.policy_ref import PolicyReference
from dpo_exp.generation import generate_samples, stream_seed
from dpo_exp.models import offline_gpt2_tokenizer

TOKENS = [300, 350, 400, 450]  # " l", " P", "th", " ab"; ascending: the inverse CDF's coupling follows the order
PROMPT = "!"  # token 0: every prompt is this one-token prompt (rows are independent draws all the same)
REWARDS = [2.0, 3.0, 0.0, 1.0]
POLICY = [0.34, 0.0, 0.37, 0.29]  # the example: P(policy wins) = 0.5198, ties 1/2
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
