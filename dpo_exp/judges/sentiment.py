"""Sentiment scorers behind one interface: texts in, float scores out (higher = more positive).

Adding a scorer is one class here and one YAML in conf/reward/. `build_scorer` picks the class by `kind`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..errors import UserError

log = logging.getLogger(__name__)


class Scorer:
    """Base interface. `info` carries what the run summary should report (e.g. held-out accuracy)."""

    name: str = "scorer"

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}

    def score(self, texts: list[str]) -> list[float]:
        raise NotImplementedError

    def identity(self) -> str:
        """A string that changes whenever the scores could change (used in cache keys)."""
        return self.name


class VaderScorer(Scorer):
    """VADER lexicon (offline, no training): the compound score in [-1, 1]."""

    name = "vader"

    def __init__(self, cfg: Any = None, context: Any = None) -> None:
        super().__init__()
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: list[str]) -> list[float]:
        return [float(self._analyzer.polarity_scores(t)["compound"]) for t in texts]

    def identity(self) -> str:
        from importlib import metadata

        return f"vader:{metadata.version('vaderSentiment')}"


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key) if cfg is not None and hasattr(cfg, "get") else None
    return default if value is None else value


class HFClassifierScorer(Scorer):
    """A `transformers` text-classification pipeline; the score is the positive class's logit or probability.

    Batched (`reward.batch_size`), on the GPU when there is one (`reward.device: auto`), long texts truncated.
    Subclasses only name the default hub model; `reward.hub_id` may also be a local save_pretrained folder.
    """

    name = "hf_classifier"
    default_hub_id = ""

    def __init__(self, cfg: Any = None, context: Any = None) -> None:
        super().__init__()
        import torch
        from transformers import pipeline

        self.hub_id = str(_get(cfg, "hub_id", self.default_hub_id))
        self.positive_label = str(_get(cfg, "positive_label", "POSITIVE"))
        self.output = str(_get(cfg, "score", "logit"))
        if self.output not in ("logit", "probability"):
            raise UserError(f"reward.score={self.output!r} is not one of ['logit', 'probability']")
        self.batch_size = int(_get(cfg, "batch_size", 32))
        device = str(_get(cfg, "device", "auto"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        from ..infra.hub import hub_access

        self.dtype = "fp16" if device.startswith("cuda") else "fp32"  # frozen: half precision is fine on a GPU
        self.revision = _get(cfg, "revision", None)
        with hub_access("reward model", self.hub_id, "reward.hub_id"):
            self.pipe = pipeline(
                "text-classification",
                model=self.hub_id,
                device=device,
                revision=self.revision,
                dtype=torch.float16 if self.dtype == "fp16" else torch.float32,
            )
        labels = {str(v) for v in self.pipe.model.config.id2label.values()}
        if self.positive_label not in labels:
            raise UserError(
                f"reward.positive_label={self.positive_label!r} is not a label of {self.hub_id}: {sorted(labels)}"
            )
        self.info = {"kind": self.name, "hub_id": self.hub_id, "score": self.output, "device": device}

    def score(self, texts: list[str]) -> list[float]:
        from tqdm.auto import tqdm

        texts, chunk = list(texts), self.batch_size * 8
        outputs = []
        for start in tqdm(
            range(0, len(texts), chunk), desc=f"scoring ({self.name})", unit="chunk", disable=len(texts) <= chunk
        ):  # a bar when scoring takes a while (pair building, eval)
            outputs += self.pipe(
                texts[start : start + chunk],
                batch_size=self.batch_size,
                truncation=True,
                top_k=None,
                function_to_apply="none" if self.output == "logit" else "softmax",
            )
        return [float(next(d["score"] for d in out if d["label"] == self.positive_label)) for out in outputs]

    def identity(self) -> str:
        """Model (a local folder by content, a hub id by revision), label, output and dtype."""
        from pathlib import Path

        source = f"{self.hub_id}@{self.revision or 'main'}"
        if Path(self.hub_id).is_dir():
            from ..infra.cache import folder_digest
            from ..models import MODEL_FILE_PATTERNS

            source = f"files:{folder_digest(Path(self.hub_id), MODEL_FILE_PATTERNS)}"
        return f"{self.name}:{source}:{self.positive_label}:{self.output}:{self.dtype}"


class DistilbertImdbScorer(HFClassifierScorer):
    """lvwerra/distilbert-imdb: the reward of TRL's sentiment examples."""

    name = "distilbert_imdb"
    default_hub_id = "lvwerra/distilbert-imdb"


class Sst2Scorer(HFClassifierScorer):
    """distilbert-base-uncased-finetuned-sst-2-english: the original project's DistilBERT SST-2 classifier."""

    name = "sst2"
    default_hub_id = "distilbert-base-uncased-finetuned-sst-2-english"


class SiebertScorer(HFClassifierScorer):
    """siebert/sentiment-roberta-large-english: the DPO paper's IMDb reward."""

    name = "siebert"
    default_hub_id = "siebert/sentiment-roberta-large-english"


class TfidfLogRegScorer(Scorer):
    """scikit-learn TF-IDF (word 1-2 grams) + logistic regression, trained on labelled reviews, cached on disk.

    Training data: `reward.train_path` (any file/folder the IMDb loader reads), else the run's own dataset, split as
    the run splits it (`dataset.split_seed`, not the run's seed, so runs of a seed sweep share one scorer); it never
    trains on the run's held-out reviews (`data.imdb.judge_splits`; `info["heldout_overlap"]` records 0).
    Held-out accuracy and ROC-AUC (on the test split, or a held-out share) are reported in `info`.
    The score is P(positive) (`reward.score: probability`) or the decision function (`logit`).
    """

    name = "tfidf_logreg"

    def __init__(self, cfg: Any = None, context: Any = None) -> None:
        super().__init__()
        import joblib

        from ..data.imdb import judge_splits
        from ..infra.cache import cached, content_key

        self.params, self.output = self._settings(cfg)
        if context is None or not hasattr(context, "dataset"):
            raise UserError("reward=tfidf_logreg needs the run config (dataset and cache_dir) to train on")
        train, test, source, overlap = judge_splits(context.dataset, path=_get(cfg, "train_path"))
        x_train, y_train = train.labelled()
        x_test, y_test = test.labelled()
        if len(set(y_train)) < 2:
            raise UserError(f"reward=tfidf_logreg: {source} needs labelled reviews of both classes (label 0 and 1)")
        key = content_key(
            {
                "params": self.params,
                "train": content_key([x_train, y_train], 64),
                "test": content_key([x_test, y_test], 64),
                "v": 1,
            }
        )

        def build(folder):
            pipe, metrics = self._train(x_train, y_train, x_test, y_test)
            joblib.dump(pipe, folder / "model.joblib")
            return metrics

        entry = cached(context.cache_dir, "reward_tfidf", key, build, {"source": source, **self.params})
        self.pipe = joblib.load(entry.path / "model.joblib")
        self.key = key
        self.info = {
            "kind": self.name,
            "source": source,
            **entry.info,
            "cache": entry.status,
            "path": str(entry.path),
            "score": self.output,
            **overlap,  # heldout_overlap: training reviews among the run's held-out ones (0 by construction)
        }
        log.info(
            "tfidf_logreg: held-out accuracy %s, ROC-AUC %s (%s)",
            self.info.get("heldout_accuracy"),
            self.info.get("heldout_roc_auc"),
            entry.status,
        )

    @staticmethod
    def _settings(cfg: Any) -> tuple[dict[str, Any], str]:
        """The TF-IDF + logistic-regression hyper-parameters and the score's form (`probability` or `logit`)."""
        params = {
            "ngram_max": int(_get(cfg, "ngram_max", 2)),
            "min_df": int(_get(cfg, "min_df", 2)),
            "sublinear_tf": bool(_get(cfg, "sublinear_tf", True)),
            "C": float(_get(cfg, "C", 10.0)),
            "max_iter": int(_get(cfg, "max_iter", 1000)),
        }
        output = str(_get(cfg, "score", "probability"))
        if output not in ("logit", "probability"):
            raise UserError(f"reward.score={output!r} is not one of ['logit', 'probability']")
        return params, output

    def _train(self, x_train, y_train, x_test, y_test):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, roc_auc_score
        from sklearn.pipeline import make_pipeline

        p = self.params
        pipe = make_pipeline(
            TfidfVectorizer(ngram_range=(1, p["ngram_max"]), min_df=p["min_df"], sublinear_tf=p["sublinear_tf"]),
            LogisticRegression(C=p["C"], max_iter=p["max_iter"]),
        )
        pipe.fit(x_train, y_train)
        metrics: dict[str, Any] = {"n_train": len(x_train), "n_heldout": len(x_test)}
        if x_test:
            proba = pipe.predict_proba(x_test)[:, 1]
            metrics["heldout_accuracy"] = float(accuracy_score(y_test, proba > 0.5))
            metrics["heldout_roc_auc"] = float(roc_auc_score(y_test, proba)) if len(set(y_test)) > 1 else None
        return pipe, metrics

    def score(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        if self.output == "logit":
            return [float(v) for v in self.pipe.decision_function(list(texts))]
        return [float(v) for v in self.pipe.predict_proba(list(texts))[:, 1]]

    def identity(self) -> str:
        return f"{self.name}:{self.key}:{self.output}"


SCORERS: dict[str, Callable[..., Scorer]] = {
    "vader": VaderScorer,
    "distilbert_imdb": DistilbertImdbScorer,
    "sst2": Sst2Scorer,
    "siebert": SiebertScorer,
    "tfidf_logreg": TfidfLogRegScorer,
}


def build_scorer(reward_cfg: Any, context: Any = None) -> Any:
    """The scorer for a `reward` config (None for kind=none): a sentiment Scorer here, or a dpo_exp.judges judge
    for an option with `_target_` (hub or trained reward models).

    Every scorer class is called as `cls(reward_cfg, context)`; `context` is the run config (paths, caches, device).
    """
    kind = reward_cfg.get("kind", "none") if reward_cfg is not None else "none"
    if kind == "none":
        return None
    from .base import build_judge, is_judge_config

    if is_judge_config(reward_cfg):  # a judge of (prompt, completion): its class is named by `_target_`
        return build_judge(reward_cfg, context)
    if kind not in SCORERS:
        raise UserError(f"reward.kind={kind!r} is not one of {sorted(SCORERS)}")
    return SCORERS[kind](reward_cfg, context)
