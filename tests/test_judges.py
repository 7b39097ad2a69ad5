"""Judges of (prompt, completion): a reward model from a local folder in each input format, the trained judge
(RewardTrainer, gold-RM data protocol, cache), eval/win_rate_vs_chosen, tfidf_logreg's seed independence."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dpo_exp.data.conversation import prompt_key
from dpo_exp.infra.storage import write_jsonl

from .conftest import FAST_MODEL, FAST_TRAINER, compose

HH_PROMPT = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant:"
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory) -> Path:
    """A tiny GPT-2 reward model (one output, random weights) with the real GPT-2 tokenizer and a chat template,
    saved to a folder: what a hub reward model looks like offline."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from dpo_exp.models import offline_gpt2_tokenizer

    folder = tmp_path_factory.mktemp("tiny_rm")
    tokenizer = offline_gpt2_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer), n_layer=1, n_embd=32, n_head=2, n_positions=128, num_labels=1, pad_token_id=eos
    )
    torch.manual_seed(0)
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def helpful_option():
    """conf/reward/gpt2_large_helpful.yaml as eval/reward composes it."""
    return compose(["eval/reward=gpt2_large_helpful"]).eval.reward


def judge_for(option, folder: Path, **settings):
    """The judge the option builds with its hub id pointed at `folder` (build_scorer, as evaluation calls it)."""
    from omegaconf import OmegaConf

    from dpo_exp.judges import build_scorer

    return build_scorer(OmegaConf.merge(option, {"hub_id": str(folder), **settings}))


def direct_score(folder: Path, **encoded) -> float:
    """The model's logit on already-encoded input, without the judge."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        return float(model(**encoded).logits[0, 0])


@pytest.mark.parametrize("input_format", ["dialogue", "text_pair", "chat_template"])
def test_reward_model_judge_scores_in_the_format_it_was_trained_on(tiny_rm: Path, helpful_option, input_format: str):
    from transformers import AutoTokenizer

    from dpo_exp.judges import Judge
    from dpo_exp.judges.base import dialogue_messages

    judge = judge_for(helpful_option, tiny_rm, input_format=input_format, batch_size=2)
    assert isinstance(judge, Judge)
    completions = [" Knead flour, water and yeast.", " No.", " Buy some.", " Ask a baker, then bake it."]
    prompts = [HH_PROMPT] * len(completions)
    scores = judge.score(prompts, completions)  # two batches of two, right-padded
    tok = AutoTokenizer.from_pretrained(tiny_rm)
    for completion, score in zip(completions, scores):
        if input_format == "dialogue":
            encoded = tok(HH_PROMPT + completion, return_tensors="pt")
        elif input_format == "text_pair":
            encoded = tok(HH_PROMPT, completion, return_tensors="pt")
        else:
            text = tok.apply_chat_template(dialogue_messages(HH_PROMPT, completion), tokenize=False)
            assert text == (
                "<|user|>Hi there\n<|assistant|>Hello!\n<|user|>How do I bake bread?\n"
                f"<|assistant|>{completion.strip()}\n"
            )
            encoded = tok(text, return_tensors="pt")
        assert score == pytest.approx(direct_score(tiny_rm, **encoded), abs=1e-4)  # batching and padding are exact
    assert len(set(np.round(scores, 6))) == len(scores)


def test_long_prompts_lose_their_oldest_tokens_and_identity_follows_weights_and_format(
    tiny_rm: Path, helpful_option, tmp_path
):
    import shutil

    from transformers import AutoModelForSequenceClassification

    judge = judge_for(helpful_option, tiny_rm, max_length=16)
    batch = judge.encode(["word " * 200], [" the answer"])
    tail = judge.tokenizer(" the answer").input_ids
    assert batch["input_ids"].shape[1] == 16 and batch["input_ids"][0, -len(tail) :].tolist() == tail

    other = tmp_path / "other"
    shutil.copytree(tiny_rm, other)
    first = judge_for(helpful_option, tiny_rm).identity()
    assert judge_for(helpful_option, other).identity() == first  # by content, not by path
    model = AutoModelForSequenceClassification.from_pretrained(other)
    with torch.no_grad():
        model.score.weight.add_(1.0)
    model.save_pretrained(other)
    assert judge_for(helpful_option, other).identity() != first
    assert judge_for(helpful_option, tiny_rm, input_format="text_pair").identity() != first


def test_reward_model_judge_bad_settings_are_user_errors(tiny_rm: Path, helpful_option):
    from dpo_exp.errors import UserError

    with pytest.raises(UserError, match="input_format='xml' is not one of"):
        judge_for(helpful_option, tiny_rm, input_format="xml")
    with pytest.raises(UserError, match="label_index=3 but .* has 1 output"):
        judge_for(helpful_option, tiny_rm, label_index=3)


def separable_pairs(n: int) -> list[dict]:
    """Pairs a judge can learn: the chosen response praises, the rejected one insults (one prompt each)."""
    rows = []
    for i in range(n):
        prompt = f"\n\nHuman: question number {i} about topic {i % 7}?\n\nAssistant:"
        rows.append({"prompt": prompt, "chosen": " great helpful answer thanks", "rejected": " stupid useless junk"})
    return rows


TRAINED = [
    "dataset=preference_files",
    "reward=trained_rm",
    "reward.share=0.5",
    "reward.max_length=32",
    "reward.tiny.n_layer=1",
    "reward.tiny.n_embd=32",
    "reward.tiny.n_positions=64",
    "reward.epochs=2",
    "reward.lr=3e-3",
    "eval.num_prompts=10",
    "dataset.eval_size=10",
    "dataset.eval_fraction=0.25",
]


def test_trained_judge_learns_on_its_own_share_and_is_cached_by_content(tmp_path):
    from dpo_exp.data.preference import load_run_preferences
    from dpo_exp.judges import build_scorer
    from dpo_exp.models import offline_gpt2_tokenizer

    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, separable_pairs(80))
    base = [*TRAINED, f"dataset.path={path}", f"cache_dir={tmp_path / 'cache'}", "model=tiny_gpt2"]
    cfg = compose([*base, "seed=1"])
    judge = build_scorer(cfg.reward, cfg)
    assert judge.info["cache"] == "built" and judge.info["train_pairs"] == 40  # share 0.5 of 80 prompts
    assert judge.info["heldout_pairs"] == 10 and judge.info["heldout_accuracy"] >= 0.9  # learnt, on held-out pairs
    from dpo_exp.evaluation.judge import judge_metrics

    assert judge_metrics(judge)["judge_beats_chance"] is True  # 10 pairs suffice to tell it from a coin
    data = load_run_preferences(cfg, offline_gpt2_tokenizer())
    judge_prompts = {r["prompt"] for r in data.judge}
    assert len(judge_prompts) == 40
    assert not judge_prompts & {r["prompt"] for r in data.train + data.eval}  # disjoint from DPO and evaluation
    assert not judge_prompts & set(data.eval_prompts)
    counts = data.counts
    assert counts["train_judge_pairs"] + counts["train_pairs"] + counts["eval_pairs"] == 80
    # another run seed: the same judge (reused from the cache), other DPO/eval draws from the remaining prompts
    cfg2 = compose([*base, "seed=2"])
    again = build_scorer(cfg2.reward, cfg2)
    assert again.info["cache"] == "reused" and again.identity() == judge.identity()
    assert {r["prompt"] for r in load_run_preferences(cfg2, offline_gpt2_tokenizer()).judge} == judge_prompts


def test_win_rate_vs_chosen_counts_ties_half_with_a_bootstrap_ci():
    from dpo_exp.evaluation.judge import win_rate_vs_chosen
    from dpo_exp.evaluation.metrics import SampleEval
    from dpo_exp.generation import Samples
    from dpo_exp.judges import Judge

    class LengthJudge(Judge):  # a real (if simple) judge: longer is better
        name = "length"

        def score(self, prompts, completions):
            return [float(len(c)) for c in completions]

    judge = LengthJudge()
    prompts = ["a", "b", "c"]
    texts = [["xx", "xxxx"], ["x", "x"], ["xxx", "xxx"]]
    policy = Samples(prompts=prompts, texts=texts, token_ids=[[[0]] * 2] * 3)
    rewards = np.array([[len(t) for t in row] for row in texts], dtype=float)
    result = SampleEval(policy, None, rewards, rewards, kl=np.zeros((3, 2)))
    references = {"a": "xxx", "b": "xx", "c": "xxx"}  # a: one loss one win; b: two losses; c: two ties
    out = win_rate_vs_chosen(judge, result, references, False, 200, 0)
    assert out["win_rate_vs_chosen"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    assert out["win_rate_vs_chosen_ci_low"] <= out["win_rate_vs_chosen"] <= out["win_rate_vs_chosen_ci_high"]
    assert out["win_rate_vs_chosen_prompts"] == 3 and out["reward_chosen"] == pytest.approx(8 / 3)
    assert win_rate_vs_chosen(judge, result, {"a": "xxx"}, False, 200, 0)["win_rate_vs_chosen_prompts"] == 1
    assert win_rate_vs_chosen(judge, result, {}, False, 200, 0) == {}


def test_dialogue_messages_split_hh_turns_and_keep_plain_prompts_whole():
    from dpo_exp.judges.base import dialogue_messages

    assert dialogue_messages("Write a poem.", " Roses.") == [
        {"role": "user", "content": "Write a poem."},
        {"role": "assistant", "content": "Roses."},
    ]
    assert [m["role"] for m in dialogue_messages(HH_PROMPT, " Knead.")] == ["user", "assistant", "user", "assistant"]


def test_tfidf_judge_does_not_follow_the_run_seed(imdb_dir, tmp_path):
    """One review file: the held-out split is the data's (dataset.split_seed), so a seed sweep is judged by one
    scorer."""
    from dpo_exp.infra.storage import read_jsonl
    from dpo_exp.judges import build_scorer

    reviews = tmp_path / "reviews.jsonl"
    write_jsonl(reviews, read_jsonl(imdb_dir / "train.jsonl")[:400])

    def scorer(*extra: str):
        cfg = compose(
            ["dataset=imdb_sentiment", "reward=tfidf_logreg", f"dataset.path={reviews}"]
            + [f"cache_dir={tmp_path / 'cache'}", *extra]
        )
        return build_scorer(cfg.reward, cfg)

    a, b = scorer("seed=1"), scorer("seed=2")
    assert a.identity() == b.identity() and b.info["cache"] == "reused"
    other = scorer("seed=2", "dataset.split_seed=2")  # asked for: a different held-out split, for run and judge
    assert other.identity() != a.identity() and other.info["heldout_overlap"] == 0


def test_the_tfidf_judge_never_trains_on_the_runs_heldout_reviews(tmp_path):
    """experiment=imdb_tiny, seed 42, one 500-review file: 96 of the 125 reviews behind the evaluation prompts were
    in the judge's training split (issue 28). Now none is, on the run's own file or on another file given as
    reward.train_path, and summary.json's reward block says so (heldout_overlap)."""
    from dpo_exp.data.imdb import judge_splits, load_prompt_sets
    from dpo_exp.infra.storage import read_jsonl
    from dpo_exp.judges import build_scorer
    from dpo_exp.models import load_tokenizer

    from .conftest import shared_file

    path = shared_file("imdb/test.jsonl")
    cfg = compose(["experiment=imdb_tiny", f"dataset.path={path}", "seed=42", f"cache_dir={tmp_path / 'cache'}"])
    sets = load_prompt_sets(cfg, load_tokenizer(cfg.model))  # the run's held-out reviews behind its eval prompts
    assert sets.counts["test_reviews"] == 125
    heldout = set(sets.test.texts)
    train, _, _, counts = judge_splits(cfg.dataset)
    assert not set(train.texts) & heldout and counts["heldout_overlap"] == 0
    judge = build_scorer(cfg.reward, cfg)
    assert judge.info["heldout_overlap"] == 0 and judge.info["n_train"] == len(train.labelled()[0])

    other = tmp_path / "more_reviews.jsonl"  # another file holding the same reviews: split its own way
    write_jsonl(other, read_jsonl(path)[::-1])
    train, _, _, counts = judge_splits(cfg.dataset, path=other)
    assert counts["heldout_dropped_from_training"] > 0 and counts["heldout_overlap"] == 0
    assert not set(train.texts) & heldout


def test_a_trained_judge_needs_preference_pairs(imdb_dir):
    from dpo_exp.config import validate
    from dpo_exp.errors import UserError

    with pytest.raises(UserError, match="reward=trained_rm learns from preference pairs: dataset=imdb_sentiment"):
        validate(compose(["dataset=imdb_sentiment", f"dataset.path={imdb_dir}", "eval/reward=trained_rm"]))


def test_a_damaged_trained_judge_is_rebuilt(tmp_path):
    """Every cache kind heals (issue 23): cut the trained judge's weights and the next run trains it again."""
    from dpo_exp.judges import build_scorer

    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, separable_pairs(40))
    cfg = compose([*TRAINED, f"dataset.path={path}", f"cache_dir={tmp_path / 'cache'}", "model=tiny_gpt2"])
    first = build_scorer(cfg.reward, cfg)
    assert first.info["cache"] == "built"
    weights = max((tmp_path / "cache" / "reward_model").rglob("*.safetensors"), key=lambda p: p.stat().st_size)
    os.truncate(weights, weights.stat().st_size // 2)
    again = build_scorer(cfg.reward, cfg)
    assert again.info["cache"] == "rebuilt"
    assert again.identity() == first.identity() and again.info["heldout_accuracy"] is not None  # trained again


# ---------------------------------------------------------------- a chat model's conversations reach every judge as
# the judge was trained to read them (issue 28): never the readable "User: ...\n\nAssistant:" flattening

CHAT_PROMPT = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How do I bake bread?"},
]
TINY_CHAT = ["model=tiny_qwen2", "model.tiny.n_layer=1", "model.tiny.n_embd=32", "model.tiny.n_head=2"]


@pytest.fixture(scope="module")
def chat_samples():
    """Completions a tiny chat model (ChatML template) samples on a multi-turn conversation and on a one-turn one."""
    from dpo_exp.generation import generate_samples
    from dpo_exp.models import build_policy, load_tokenizer

    cfg = compose(TINY_CHAT)
    tokenizer = load_tokenizer(cfg.model)
    model = build_policy(cfg.model, 0)
    prompts = [CHAT_PROMPT, CHAT_PROMPT[:1]]
    return generate_samples(model, tokenizer, prompts, cfg.generation, 0, num_samples=2, max_new_tokens=6)


def expected_input(input_format: str, prompt: list[dict], completion: str):
    """The text each judge family was trained on, written out by hand for a conversation."""
    answer = completion.strip()
    if input_format == "dialogue":  # HH-RLHF's own text (the GPT-2 HH reward models, trained_rm)
        turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in prompt)
        return f"{turns}\n\nAssistant: {answer}"
    if input_format == "chat_template":  # the judge's own template over the real messages, roles alternating
        return "".join(f"<|{m['role']}|>{m['content']}\n" for m in [*prompt, {"role": "assistant", "content": answer}])
    if len(prompt) == 1:  # text_pair: (question, answer)
        return prompt[0]["content"], completion
    turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in prompt)
    return turns.strip(), completion


@pytest.mark.parametrize("input_format", ["dialogue", "text_pair", "chat_template"])
def test_a_chat_models_conversations_reach_each_judge_in_its_own_format(
    tiny_rm: Path, helpful_option, chat_samples, input_format: str
):
    from transformers import AutoTokenizer

    from dpo_exp.evaluation.metrics import score_samples

    judge = judge_for(helpful_option, tiny_rm, input_format=input_format, batch_size=3)
    scores = score_samples(judge, chat_samples, with_prompt=False)  # evaluation's path (judges always see prompts)
    tok = AutoTokenizer.from_pretrained(tiny_rm)
    for (i, completion), score in zip(chat_samples.flat(), scores.reshape(-1)):
        prompt = chat_samples.prompts[i]
        expected = expected_input(input_format, prompt, completion)
        assert judge.texts([prompt], [completion]) == [expected]
        assert "User:" not in str(expected)
        encoded = (
            tok(*expected, return_tensors="pt") if isinstance(expected, tuple) else tok(expected, return_tensors="pt")
        )
        assert score == pytest.approx(direct_score(tiny_rm, **encoded), abs=1e-4)  # the model read exactly that


def test_text_classifiers_read_a_conversation_as_prose_and_the_chosen_reply_as_messages(
    tiny_rm: Path, helpful_option, chat_samples
):
    """Sentiment scorers (eval.score_with_prompt): the turns' contents then the completion, no role tags; the
    dataset's chosen response (assistant messages) is judged against the same dialogue."""
    from dpo_exp.evaluation.judge import win_rate_vs_chosen
    from dpo_exp.evaluation.metrics import SampleEval, score_samples
    from dpo_exp.judges import Scorer

    class Seen(Scorer):  # a real scorer (text length) that keeps what it read
        name = "seen"

        def __init__(self) -> None:
            super().__init__()
            self.read: list[str] = []

        def score(self, texts):
            self.read += texts
            return [float(len(t)) for t in texts]

    seen = Seen()
    score_samples(seen, chat_samples, with_prompt=True)
    first = chat_samples.texts[0][0]
    assert seen.read[0] == f"Hi there\n\nHello!\n\nHow do I bake bread?\n\n{first.strip()}"

    judge = judge_for(helpful_option, tiny_rm)  # dialogue
    rewards = score_samples(judge, chat_samples, False)
    result = SampleEval(chat_samples, None, rewards, rewards, kl=np.zeros(rewards.shape))
    chosen = [{"role": "assistant", "content": "Knead it."}]
    references = {prompt_key(CHAT_PROMPT): chosen}
    out = win_rate_vs_chosen(judge, result, references, False, 50, 0)
    text = expected_input("dialogue", CHAT_PROMPT, "Knead it.")
    assert out["reward_chosen"] == pytest.approx(direct_score(tiny_rm, **judge.tokenizer(text, return_tensors="pt")))


def chat_pairs(n: int) -> list[dict]:
    """Separable pairs as a chat model holds them: one user message, assistant messages."""
    return [
        {
            "prompt": [{"role": "user", "content": f"question number {i} about topic {i % 7}?"}],
            "chosen": [{"role": "assistant", "content": "great helpful answer thanks"}],
            "rejected": [{"role": "assistant", "content": "stupid useless junk"}],
        }
        for i in range(n)
    ]


def test_trained_judge_learns_from_a_chat_models_conversations(tmp_path):
    """reward=trained_rm with a chat-template model (tiny_qwen2): the pairs stay messages; the judge trains and
    scores on their HH dialogue text (it crashed with `list + str` before)."""
    from dpo_exp.judges import build_scorer

    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, chat_pairs(60))
    cfg = compose([*TRAINED, *TINY_CHAT, f"dataset.path={path}", f"cache_dir={tmp_path / 'cache'}"])
    judge = build_scorer(cfg.reward, cfg)
    assert judge.info["train_pairs"] == 30 and judge.info["heldout_accuracy"] >= 0.9
    pair = chat_pairs(1)[0]
    assert judge.texts([pair["prompt"]], [pair["chosen"]]) == [
        "\n\nHuman: question number 0 about topic 0?\n\nAssistant: great helpful answer thanks<|endoftext|>"
    ]
    assert judge.score([pair["prompt"]], [pair["chosen"]])[0] > judge.score([pair["prompt"]], [pair["rejected"]])[0]


# ---------------------------------------------------------------- a judge no better than chance (issue 28)


class HeldOutJudge:
    """A judge as evaluation sees it: an identity and what it measured on held-out pairs."""

    def __init__(self, accuracy: float, pairs: int) -> None:
        self.info = {"kind": "trained_rm", "heldout_accuracy": accuracy, "heldout_pairs": pairs}

    def identity(self) -> str:
        return "trained_rm:test"


def test_a_judge_not_better_than_chance_says_its_rewards_mean_nothing(tmp_path):
    """Held-out accuracy 0.36 on 22 pairs (the issue's judge): its 95% interval includes 0.5, so summary.json says
    eval/judge_beats_chance false, the headline warns before any reward number, and compare shows the column."""
    from dpo_exp.compare.table import compare
    from dpo_exp.evaluation.judge import judge_metrics
    from dpo_exp.evaluation.report import headline

    from .test_compare import write_run

    weak = judge_metrics(HeldOutJudge(0.36, 22))
    assert weak["judge_accuracy_ci_low"] < 0.5 < weak["judge_accuracy_ci_high"] and weak["judge_beats_chance"] is False
    strong = judge_metrics(HeldOutJudge(0.9, 100))
    assert strong["judge_accuracy_ci_low"] > 0.5 and strong["judge_beats_chance"] is True

    summary = {"eval/reward_scorer": "trained_rm", **{f"eval/{k}": v for k, v in weak.items()}}
    summary |= {
        "eval/reward_reference": 0.1,
        "eval/reward_policy": 0.4,
        "eval/reward_delta": 0.3,
        "eval/reward_delta_ci_low": 0.2,
        "eval/reward_delta_ci_high": 0.4,
        "eval/significant": True,
    }
    lines = headline(summary)
    assert lines[0].startswith("WARNING: the judge (trained_rm) is not better than chance: held-out accuracy 0.360")
    assert "on 22 held out includes 0.5" in lines[0] and "NOT meaningful" in lines[0]
    assert lines[1].startswith("reward (trained_rm)")
    assert not any("not better than chance" in line for line in headline(summary | {"eval/judge_beats_chance": True}))

    base = {"status": "completed", "eval/reward_delta": 0.3}
    write_run(tmp_path / "sweep" / "0", {"beta": "0.1"}, base | {"eval/judge_beats_chance": False})
    write_run(tmp_path / "sweep" / "1", {"beta": "0.5"}, base | {"eval/judge_beats_chance": True})
    df = compare([tmp_path / "sweep"], console=False, plots=False)
    assert [bool(v) for v in df["judge_beats_chance"]] == [False, True]
    md = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "judge_beats_chance" in md.splitlines()[6]  # a column of the table
    assert "the judge of 1 run(s) (0) is not better than chance" in md


def test_the_headline_kl_is_the_rao_blackwellised_one():
    """With 2 prompts the Monte-Carlo KL came out -0.009 (issue 28): the headline leads with kl_rb, which cannot
    be negative, and keeps the Monte-Carlo estimate as a diagnostic."""
    from dpo_exp.evaluation.report import headline

    summary = {"eval/kl": -0.009, "eval/kl_ci_low": -0.013, "eval/kl_ci_high": -0.004}
    summary |= {"eval/kl_rb": 0.004, "eval/kl_rb_ci_low": 0.003, "eval/kl_rb_ci_high": 0.005}
    (line,) = headline(summary)
    assert line.startswith("KL(policy || reference) 0.004 nats [95% CI 0.003, 0.005]")
    assert "Monte-Carlo diagnostic -0.009 [95% CI -0.013, -0.004]" in line
    old = {k: v for k, v in summary.items() if not k.startswith("eval/kl_rb")}  # a run saved before kl_rb
    assert headline(old)[0].startswith("KL(policy || reference) -0.009 nats")


# ---------------------------------------------------------------- hub judges fail up front (issue 28)


def test_an_unreachable_hub_judge_stops_the_run_before_any_model_naming_its_key(tmp_path, hh_file):
    """Offline, eval/reward=gpt2_large_helpful used to fail after the whole training, with a hint naming
    reward.hub_id: now one line, before any model is built, naming eval.reward.hub_id."""
    from .test_bad_input import assert_clean_error, run_probed

    args = ["dataset=hh_rlhf", f"dataset.path={hh_file}", "eval/reward=gpt2_large_helpful", "logger=none"]
    proc, imported = run_probed([*FAST_MODEL, *FAST_TRAINER, *args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    line = assert_clean_error(proc, ["Ray2333/gpt2-large-helpful-reward_model", "eval.reward.hub_id=PATH"], imported)
    assert " reward.hub_id" not in line


def test_the_run_reward_judge_is_checked_under_its_own_key():
    from dpo_exp.errors import UserError
    from dpo_exp.judges.sources import check_judge_sources

    with pytest.raises(UserError, match=r"Skywork-Reward-V2.*use a local copy: reward\.hub_id=PATH$"):
        check_judge_sources(compose(["dataset=hh_rlhf", "reward=skywork_v2"]))
    with pytest.raises(UserError, match=r"use a local copy: reward\.base=PATH$"):
        check_judge_sources(compose(["dataset=hh_rlhf", "reward=trained_rm", "reward.base=some-org/base-model"]))
    check_judge_sources(compose(["dataset=hh_rlhf", "eval/reward=vader", "reward=trained_rm"]))  # nothing to fetch


def test_re_evaluation_names_the_eval_reward_key():
    """`python -m dpo_exp.evaluate run_dir=R eval/reward=skywork_v2` builds its scorer through build_eval_scorer:
    the line names eval.reward.hub_id (it named reward.hub_id before)."""
    from dpo_exp.errors import UserError
    from dpo_exp.evaluation.inputs import build_eval_scorer

    with pytest.raises(UserError, match=r"use a local copy: eval\.reward\.hub_id=PATH$"):
        build_eval_scorer(compose(["dataset=hh_rlhf", "eval/reward=skywork_v2"]))


def test_the_trl_reward_function_hands_conversations_to_the_judge(tiny_rm: Path):
    """RLOO / Online DPO call the run's judge with TRL's conversational prompts and completions (message lists):
    the judge reads them in its own format, as evaluation does."""
    from transformers import AutoTokenizer

    from dpo_exp.methods.base import scorer_reward

    cfg = compose(["dataset=hh_rlhf", "reward=gpt2_large_helpful", f"reward.hub_id={tiny_rm}"])
    reward = scorer_reward(cfg)
    answer = [{"role": "assistant", "content": "Knead it."}]
    (score,) = reward([CHAT_PROMPT], [answer])
    text = expected_input("dialogue", CHAT_PROMPT, "Knead it.")
    tok = AutoTokenizer.from_pretrained(tiny_rm)
    assert score == pytest.approx(direct_score(tiny_rm, **tok(text, return_tensors="pt")), abs=1e-4)
