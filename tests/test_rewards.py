"""Sentiment scorers: tfidf_logreg quality + cache, a transformers-pipeline scorer on a local tiny classifier, vader."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from dpo_exp.errors import UserError
from dpo_exp.judges import build_scorer
from dpo_exp.judges.sentiment import Sst2Scorer

from .conftest import compose

POSITIVE = "A wonderful, moving film with brilliant acting. I loved every minute and highly recommend it."
NEGATIVE = "A boring, awful film with terrible acting. I hated every minute, a complete waste of time."


def test_tfidf_logreg_accuracy_and_cache(imdb_dir, tmp_path):
    cfg = compose(
        ["dataset=imdb_sentiment", "reward=tfidf_logreg", f"dataset.path={imdb_dir}", f"cache_dir={tmp_path / 'cache'}"]
    )
    scorer = build_scorer(cfg.reward, cfg)
    info = scorer.info
    # measured: accuracy 0.850, ROC-AUC 0.933 on the 500 test reviews (train on the 2000 train reviews)
    assert info["n_train"] == 2000 and info["n_heldout"] == 500
    assert info["heldout_accuracy"] >= 0.80
    assert info["heldout_roc_auc"] >= 0.88
    assert info["cache"] == "built"
    pos, neg = scorer.score([POSITIVE, NEGATIVE])
    assert 0.0 <= neg < 0.5 < pos <= 1.0

    again = build_scorer(cfg.reward, cfg)
    assert again.info["cache"] == "reused" and again.identity() == scorer.identity()
    assert again.score([POSITIVE, NEGATIVE]) == [pos, neg]

    logits = build_scorer(OmegaConf.merge(cfg.reward, {"score": "logit"}), cfg)
    assert logits.info["cache"] == "reused"  # same classifier, other output
    lpos, lneg = logits.score([POSITIVE, NEGATIVE])
    assert lneg < 0 < lpos and logits.identity() != scorer.identity()


def test_tfidf_needs_both_labels(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(f'{{"text": "review {i} good", "label": 1}}\n' for i in range(30)))
    cfg = compose(
        ["dataset=imdb_sentiment", "reward=tfidf_logreg", f"dataset.path={path}", f"cache_dir={tmp_path / 'cache'}"]
    )
    with pytest.raises(UserError, match="both classes"):
        build_scorer(cfg.reward, cfg)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A randomly initialised GPT-2 sequence classifier saved locally: stands in for a hub sentiment model."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from dpo_exp.models import offline_gpt2_tokenizer

    tokenizer = offline_gpt2_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=1,
        n_embd=32,
        n_head=2,
        n_positions=64,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(config).eval()
    folder = tmp_path_factory.mktemp("tiny_classifier")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def test_hf_pipeline_scorer_positive_logit_and_probability(tiny_classifier):
    folder, model, tokenizer = tiny_classifier
    texts = [POSITIVE, NEGATIVE, "ok", "An average film, neither good nor bad, that I will soon forget entirely."]
    with torch.no_grad():
        expected = [model(**tokenizer(t, return_tensors="pt")).logits[0] for t in texts]
    cfg = OmegaConf.create(
        {
            "kind": "sst2",
            "hub_id": str(folder),
            "positive_label": "POSITIVE",
            "score": "logit",
            "batch_size": 3,
            "device": "cpu",
        }
    )
    scorer = build_scorer(cfg)
    assert isinstance(scorer, Sst2Scorer)
    logits = scorer.score(texts)
    assert logits == pytest.approx([float(e[1]) for e in expected], abs=1e-4)
    assert [scorer.score([t])[0] for t in texts] == pytest.approx(logits, abs=1e-4)  # batching changes nothing
    proba = build_scorer(OmegaConf.merge(cfg, {"score": "probability"})).score(texts)
    assert proba == pytest.approx([float(torch.softmax(e, -1)[1]) for e in expected], abs=1e-4)
    assert scorer.identity() != build_scorer(OmegaConf.merge(cfg, {"score": "probability"})).identity()


def test_hf_scorer_rejects_unknown_label(tiny_classifier):
    folder, _, _ = tiny_classifier
    cfg = OmegaConf.create({"kind": "siebert", "hub_id": str(folder), "positive_label": "LABEL_1", "device": "cpu"})
    with pytest.raises(UserError, match="positive_label"):
        build_scorer(cfg)


def test_reward_configs_compose():
    for name, hub in [
        ("sst2", "distilbert-base-uncased-finetuned-sst-2-english"),
        ("distilbert_imdb", "lvwerra/distilbert-imdb"),
        ("siebert", "siebert/sentiment-roberta-large-english"),
    ]:
        cfg = compose(["dataset=imdb_sentiment", f"reward={name}"])
        assert cfg.reward.kind == name and cfg.reward.hub_id == hub
    assert compose(["dataset=imdb_sentiment"]).reward.kind == "sst2"  # the dataset's default scorer
    assert compose([]).reward.kind == "none"


def test_vader_and_unknown_kind():
    scorer = build_scorer(OmegaConf.create({"kind": "vader"}))
    pos, neg = scorer.score([POSITIVE, NEGATIVE])
    assert pos > 0.5 and neg < -0.5
    with pytest.raises(UserError, match="reward.kind"):
        build_scorer(OmegaConf.create({"kind": "nope"}))
