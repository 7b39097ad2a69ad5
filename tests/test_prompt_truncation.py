"""Issue 20, section 3: a prompt longer than the context leaves room for keeps its END wherever the project samples
(evaluation, pair building, best-of-N, the app), so an HH dialogue still ends in its "\\n\\nAssistant:" turn; the
app's max-new-tokens slider leaves room for the prompt. Before, sampling cut prompts from the right."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from dpo_exp.data.preference import ASSISTANT_TAG
from dpo_exp.generation import generate_samples, sample_sequences
from dpo_exp.models import build_model, offline_gpt2_tokenizer

from .conftest import shared_file

CONTEXT, NEW = 64, 8  # the prompt budget is 56 tokens
GEN = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "batch_size": 4, "num_samples": 2, "max_new_tokens": NEW}


@pytest.fixture(scope="module")
def tokenizer():
    return offline_gpt2_tokenizer()


@pytest.fixture(scope="module")
def model():
    tiny = OmegaConf.create({"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": CONTEXT}})
    return build_model(tiny, seed=0).eval()


@pytest.fixture(scope="module")
def long_prompt(tokenizer) -> tuple[str, str]:
    """(an HH prompt far over the budget, ending in "\\n\\nAssistant:"; the text of its last 56 tokens)."""
    for line in shared_file("hh_rlhf/test.jsonl").read_text().splitlines():
        chosen = json.loads(line)["chosen"]
        prompt = chosen[: chosen.rindex(ASSISTANT_TAG) + len(ASSISTANT_TAG)]
        ids = tokenizer(prompt).input_ids
        if len(ids) > 2 * (CONTEXT - NEW):
            tail = tokenizer.decode(ids[-(CONTEXT - NEW) :])
            if tokenizer(tail).input_ids == ids[-(CONTEXT - NEW) :]:  # the tail re-tokenises to the same ids
                return prompt, tail
    pytest.skip("no long HH prompt in the sample")


def _ends_with_assistant(tokenizer, ids: list[int]) -> bool:
    return tokenizer.decode(ids).endswith(ASSISTANT_TAG)


def test_evaluation_sampling_keeps_the_end_of_a_long_prompt(model, tokenizer, long_prompt):
    prompt, tail = long_prompt
    gen = OmegaConf.create(GEN)
    samples, cut = (
        generate_samples(model, tokenizer, [p], gen, 0, progress=False, paired=True) for p in (prompt, tail)
    )
    assert samples.token_ids == cut.token_ids  # the model saw the prompt's last 56 tokens
    context = sample_sequences(tokenizer, samples, NEW, CONTEXT)[0][0]
    assert len(context) == CONTEXT - NEW and _ends_with_assistant(tokenizer, context)
    assert tokenizer.truncation_side == "right"  # the tokenizer's own setting is restored


def test_pair_building_trains_on_the_end_of_a_long_prompt(model, tokenizer, long_prompt):
    from dpo_exp.tasks.sentiment import _sample_pairs

    class Length:
        def score(self, texts):
            return [float(len(t)) for t in texts]

    cfg = OmegaConf.create({"generation": GEN, "dataset": {"pairs": {"strategy": "best_vs_worst", "min_margin": 0}}})
    rows, _ = _sample_pairs(model, tokenizer, [long_prompt[0]], cfg, 0, Length(), 0, "pairs")
    assert rows and _ends_with_assistant(tokenizer, rows[0]["prompt_ids"])


def test_best_of_n_samples_the_end_of_a_long_prompt(model, tokenizer, long_prompt):
    from dpo_exp.evaluation.best_of_n import reference_samples
    from dpo_exp.evaluation.metrics import SampleSettings

    settings = SampleSettings(gen_cfg=OmegaConf.create(GEN), num_samples=2, max_new_tokens=NEW, seed=0)
    prompt, tail = long_prompt
    assert (
        reference_samples(model, tokenizer, [prompt], settings, 3).token_ids
        == reference_samples(model, tokenizer, [tail], settings, 3).token_ids
    )


def test_the_app_samples_the_end_of_a_long_prompt_and_leaves_it_room(model, tokenizer, long_prompt):
    from dpo_exp.app.generate import Sampling, sample_one
    from dpo_exp.app.models import Models
    from dpo_exp.evaluation.policy_ref import PolicyReference

    models = Models(tokenizer, PolicyReference(model, model), {"policy": model})
    sampling = Sampling(1.0, 0, 1.0, NEW, 3)
    prompt, tail = long_prompt
    assert (
        sample_one(models, "policy", prompt, sampling).token_ids
        == sample_one(models, "policy", tail, sampling).token_ids
    )
    from dpo_exp.app.generate import max_new_tokens_limit

    assert max_new_tokens_limit(CONTEXT) == 48 and max_new_tokens_limit(1024) == 256  # a quarter stays for the prompt
    assert Sampling(1.0, 0, 1.0, 500, 3).fitted(CONTEXT).max_new_tokens == 48  # what a request asks is capped
