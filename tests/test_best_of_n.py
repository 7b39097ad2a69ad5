"""Best-of-N baseline (analytic KL, unbiased best-of-N reward) and the significance flag of the evaluation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from dpo_exp.evaluation.best_of_n import analytic_kl, best_of_n_metrics, evaluate_best_of_n, expected_best
from dpo_exp.evaluation.metrics import SampleEval, reward_kl_metrics, significant
from dpo_exp.generation import Samples


def test_analytic_kl_is_log_n_minus_n_minus_1_over_n():
    assert analytic_kl(1) == 0.0
    assert analytic_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert analytic_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    kls = [analytic_kl(n) for n in (1, 2, 4, 8, 16)]
    assert kls == sorted(kls) and len(set(kls)) == 5  # strictly growing with N
    with pytest.raises(ValueError):
        analytic_kl(0)


def test_expected_best_matches_brute_force_over_subsets():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 6))
    for n in range(1, 7):
        brute = [np.mean([max(row[list(c)]) for c in itertools.combinations(range(6), n)]) for row in scores]
        np.testing.assert_allclose(expected_best(scores, n), brute)
    np.testing.assert_allclose(expected_best(scores, 1), scores.mean(axis=1))  # best-of-1 = the mean
    np.testing.assert_allclose(expected_best(scores, 6), scores.max(axis=1))  # best-of-K = the max
    with pytest.raises(ValueError):
        expected_best(scores, 7)


def test_best_of_n_metrics_grow_with_n_and_skip_n_beyond_the_samples():
    scores = np.random.default_rng(1).uniform(size=(20, 8))
    out = best_of_n_metrics(scores, [1, 2, 4, 8, 16], resamples=200, seed=0)
    assert "bon_reward_16" not in out and out["bon_samples"] == 8 and out["bon_prompts"] == 20
    assert out["bon_reward_1"] == pytest.approx(scores.mean()) and out["bon_delta_1"] == pytest.approx(0.0)
    rewards = [out[f"bon_reward_{n}"] for n in (1, 2, 4, 8)]
    assert rewards == sorted(rewards) and rewards[0] < rewards[-1]
    assert out["bon_kl_8"] == pytest.approx(analytic_kl(8))
    assert out["bon_reward_4_ci_low"] <= out["bon_reward_4"] <= out["bon_reward_4_ci_high"]


class _LengthScorer:
    """Scores a text by its length: deterministic, no model."""

    def score(self, texts):
        return [float(len(t)) for t in texts]


def test_best_of_1_equals_the_reference_mean_on_the_same_samples_and_reuses_them(tiny_pair):
    """Evaluation reference samples are reused as the first best-of-N samples; best-of-1 = their mean."""
    pair, tokenizer, settings = tiny_pair
    prompts = ["The movie was", "I think this film", "Acting"]
    with pair.reference() as reference:
        from dpo_exp.generation import generate_samples

        reuse = generate_samples(
            reference,
            tokenizer,
            prompts,
            settings.gen_cfg,
            settings.seed,
            num_samples=2,
            max_new_tokens=settings.max_new_tokens,
            progress=False,
        )
    scorer = _LengthScorer()
    reuse_scores = np.array([[len(p + t) for t in texts] for p, texts in zip(prompts, reuse.texts)], float)
    out = evaluate_best_of_n(pair, tokenizer, prompts, settings, scorer, [1, 2, 4], 100, reuse, reuse_scores)
    assert out["bon_samples"] == 4 and out["bon_prompts"] == 3
    # recompute from scratch: the reused samples are the first two of every prompt's four
    from dpo_exp.evaluation.best_of_n import reference_samples

    with pair.reference() as reference:
        full = reference_samples(reference, tokenizer, prompts, settings, 4, reuse)
    assert [t[:2] for t in full.texts] == reuse.texts
    scores = np.array([[len(p + t) for t in texts] for p, texts in zip(prompts, full.texts)], float)
    assert out["bon_reward_1"] == pytest.approx(scores.mean())
    assert out["bon_reward_4"] == pytest.approx(scores.max(axis=1).mean())


@pytest.fixture(scope="module")
def tiny_pair():
    from omegaconf import OmegaConf

    from dpo_exp.evaluation.metrics import SampleSettings
    from dpo_exp.evaluation.policy_ref import PolicyReference
    from dpo_exp.models import build_model, load_tokenizer

    from .conftest import FAST_MODEL, compose

    cfg = compose([*FAST_MODEL, "lora=none"])
    tokenizer = load_tokenizer(cfg.model)
    model = build_model(cfg.model, 0)
    pair = PolicyReference(model, model)  # only the reference is sampled here
    gen = OmegaConf.create(
        {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "batch_size": 8, "num_samples": 2, "max_new_tokens": 6}
    )
    return pair, tokenizer, SampleSettings(gen_cfg=gen, num_samples=2, max_new_tokens=6, seed=3, score_with_prompt=True)


def _result(policy: np.ndarray, reference: np.ndarray) -> SampleEval:
    empty = Samples([], [], [])
    return SampleEval(empty, empty, policy, reference, kl=np.zeros_like(policy))


def test_significant_when_the_delta_interval_excludes_zero():
    assert significant(0.01, 0.05) and significant(-0.05, -0.01)
    assert not significant(-0.01, 0.02)
    rng = np.random.default_rng(0)
    reference = rng.uniform(size=(100, 4))
    better = reward_kl_metrics(_result(reference + 0.1 + rng.normal(0, 0.01, (100, 4)), reference), 500, 0)
    assert better["significant"] is True and better["reward_delta_ci_low"] > 0
    worse = reward_kl_metrics(_result(reference - 0.1, reference), 500, 0)
    assert worse["significant"] is True and worse["reward_delta_ci_high"] < 0  # a significant loss is flagged too
    coin = reward_kl_metrics(_result(reference + rng.choice([-0.1, 0.1], size=(100, 4)), reference), 500, 0)
    assert coin["reward_delta_ci_low"] < 0 < coin["reward_delta_ci_high"] and coin["significant"] is False


def test_coupled_win_rate_per_prompt_compares_mean_rewards_over_samples():
    # every prompt: the policy wins 1 of 4 samples by a lot and loses 3 by a little -> per sample 0.25, per prompt 1
    reference = np.full((50, 4), 0.5)
    policy = reference + np.array([0.4, -0.01, -0.01, -0.01])
    out = reward_kl_metrics(_result(policy, reference), 200, 0)
    assert out["win_rate_coupled"] == 0.25 and out["win_rate_prompt_coupled"] == 1.0
    assert out["win_rate_prompt_coupled_ci_low"] == out["win_rate_prompt_coupled_ci_high"] == 1.0
    assert "win_rate" not in out  # no independent reference samples: no headline win rate
    policy[:25] = reference[:25] - 0.1  # half the prompts lost outright
    out = reward_kl_metrics(_result(policy, reference), 500, 0)
    low, high = out["win_rate_prompt_coupled_ci_low"], out["win_rate_prompt_coupled_ci_high"]
    assert out["win_rate_prompt_coupled"] == 0.5 and low < 0.5 < high
    policy[:25] = reference[:25]  # ties count one half
    assert reward_kl_metrics(_result(policy, reference), 200, 0)["win_rate_prompt_coupled"] == 0.75


def test_headline_win_rate_compares_every_policy_sample_with_every_independent_reference_sample():
    reference = np.tile([0.0, 1.0, 2.0, 3.0], (10, 1))
    policy = np.tile([1.5, 1.5, 1.5, 1.5], (10, 1))  # beats 2 of the 4 reference samples
    result = _result(policy, reference)
    result.rewards_reference_independent = reference[:, ::-1].copy()  # order does not matter: all pairs count
    out = reward_kl_metrics(result, 200, 0)
    assert out["win_rate"] == 0.5 and out["tie_rate"] == 0.0
    result.rewards_reference_independent = np.tile([1.5, 1.5, 0.0, 0.0], (10, 1))
    out = reward_kl_metrics(result, 200, 0)
    assert out["win_rate"] == 0.75 and out["tie_rate"] == 0.5  # ties count one half


def test_headline_states_the_effect_and_whether_it_is_significant():
    from dpo_exp.evaluation.report import headline

    summary = {
        "eval/reward_scorer": "tfidf_logreg",
        "eval/reward_reference": 0.5,
        "eval/reward_policy": 0.55,
        "eval/reward_delta": 0.05,
        "eval/reward_delta_ci_low": 0.02,
        "eval/reward_delta_ci_high": 0.08,
        "eval/significant": True,
        "eval/win_rate": 0.8,
        "eval/win_rate_ci_low": 0.7,
        "eval/win_rate_ci_high": 0.9,
        "eval/tie_rate": 0.0,
        "eval/win_rate_coupled": 0.83,
        "eval/win_rate_prompt_coupled": 0.85,
        "eval/num_prompts": 100,
        "eval/num_samples": 4,
        "eval/kl": 3.2,
        "eval/kl_ci_low": 3.0,
        "eval/kl_ci_high": 3.4,
        "eval/bon_delta_4": 0.1,
        "eval/bon_kl_4": analytic_kl(4),
        "timing/sft_s": 120.0,
        "timing/pairs_s": 60.0,
        "timing/train_s": 200.0,
        "timing/eval_s": 90.0,
    }
    text = "\n".join(headline(summary))
    assert "0.5000 -> 0.5500: delta +0.0500 [95% CI +0.0200, +0.0800], significant" in text
    assert "win rate 0.800 [95% CI 0.700, 0.900]" in text and "100 held-out prompts x 4 samples" in text
    assert "(P(policy beats reference), independent draws, ties 1/2)" in text
    assert "same-seed diagnostics (depend on the sampler's coupling): per sample 0.830, per prompt" in text
    assert "KL(policy || reference) 3.200 nats" in text and "N=4 +0.1000 @ 0.64" in text
    assert "stage times: sft 120 s, pairs 60 s, train 200 s, eval 90 s" in text
    summary.update({"eval/reward_delta_ci_low": -0.01, "eval/significant": False})
    assert "NOT significant" in "\n".join(headline(summary))
    assert headline({}) == []  # evaluation off: nothing to say
    summary.update({"eval/kl": None, "eval/kl_infinite": 0.25})  # top-k / top-p supports differ
    assert "KL(policy || reference) infinite: 25% of policy samples" in "\n".join(headline(summary))
