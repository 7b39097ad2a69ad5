"""IMDb prompt sets for sentiment-guided DPO: labelled reviews in, cleaned token-prefix prompts out.

Sources: the hub's `stanfordnlp/imdb`, or `dataset.path` = a jsonl/csv/parquet file of `{text, label}`, a folder
holding train.* (and optionally test.*), or an `aclImdb` folder (train|test/pos|neg/*.txt). Training prompts come
from the train split; held-out evaluation prompts come from the test split (or, with one file only, from a
held-out share of its reviews, drawn with `dataset.split_seed`, not the run's seed, so that split is the data's like
the hub's test split) and never equal a training prompt. A judge trained on reviews (`judge_splits`) never trains
on the run's held-out reviews. Everything is seeded.
Problems in the data raise `UserError` naming the field, before any model is loaded.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from .files import check_columns, data_files, read_records
from .preference import seeded_subset

DEFAULT_DATA_SIZE = 256
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")
UNLABELLED = (None, -1)  # the hub's `unsupervised` split marks unlabelled reviews with -1


@dataclass
class LabelledTexts:
    """Cleaned review texts with their labels (1 = positive, 0 = negative, None = unlabelled)."""

    texts: list[str]
    labels: list[int | None]

    def subset(self, indices: list[int]) -> LabelledTexts:
        return LabelledTexts([self.texts[i] for i in indices], [self.labels[i] for i in indices])

    def labelled(self) -> tuple[list[str], list[int]]:
        pairs = [(t, y) for t, y in zip(self.texts, self.labels) if y is not None]
        return [t for t, _ in pairs], [int(y) for _, y in pairs]


@dataclass
class PromptSets:
    """Everything the IMDb workflow needs from the data, loaded before any model."""

    train_prompts: list[str]  # DPO training prompts (data_size of them)
    pair_eval_prompts: list[str]  # prompts whose pairs become the held-out DPO eval pairs
    eval_prompts: list[str]  # held-out prompts for sampling-based evaluation (test split)
    train: LabelledTexts  # reviews for the SFT warm start and reward training
    test: LabelledTexts  # held-out reviews (reward accuracy), never used for training
    source: str
    counts: dict[str, int] = field(default_factory=dict)


def clean_text(text: str) -> str:
    """Remove IMDb's `<br />` markup and collapse whitespace."""
    return _SPACE.sub(" ", _BREAK.sub(" ", text)).strip()


def resolve_path(path: str | Path) -> Path:
    """A dataset path; `demo:NAME` names a fixture shipped inside the package (dpo_exp/demo/NAME)."""
    text = str(path)
    if text.startswith("demo:"):
        from .. import DEMO_DIR

        return DEMO_DIR / text[len("demo:") :]
    return Path(text).expanduser()


# ---------------------------------------------------------------- raw rows per split


def _acl_root(path: Path) -> Path | None:
    for root in (path, path / "aclImdb"):
        if (root / "train" / "pos").is_dir() or (root / "train" / "neg").is_dir():
            return root
    return None


def _read_acl(root: Path) -> dict[str, list[dict]]:
    """aclImdb layout: <split>/pos/*.txt (label 1) and <split>/neg/*.txt (label 0)."""
    splits: dict[str, list[dict]] = {}
    for split in ("train", "test"):
        rows = []
        for folder, label in (("neg", 0), ("pos", 1)):
            for file in sorted((root / split / folder).glob("*.txt")) if (root / split / folder).is_dir() else []:
                rows.append({"text": file.read_text(encoding="utf-8", errors="replace"), "label": label})
        if rows:
            splits[split] = rows
    if "train" not in splits:
        raise UserError(f"dataset.path={root}: aclImdb folder without train/pos or train/neg *.txt files")
    return splits


def raw_splits(ds_cfg: Any, path: Any = None) -> tuple[dict[str, list[dict]], str, dict[str, str]]:
    """(rows per split 'train'/'test', source description, column names) from `path`, dataset.path or the hub."""
    columns = {"text": str(ds_cfg.columns.text), "label": str(ds_cfg.columns.label)}
    path = path if path is not None else ds_cfg.get("path")
    if path:
        resolved = resolve_path(path)
        if not resolved.exists():
            raise UserError(f"dataset.path={path} does not exist")
        if resolved.is_dir() and (root := _acl_root(resolved)) is not None:
            return _read_acl(root), f"aclImdb:{root}", {"text": "text", "label": "label"}
        files = data_files(resolved)
        splits = {split: read_records(file) for split, file in files.items()}
        return splits, f"files:{','.join(str(f) for f in files.values())}", columns
    if not ds_cfg.get("hub_id"):
        raise UserError("dataset.path: set it to a {text,label} file or folder (dataset.hub_id is null)")
    from datasets import load_dataset

    from ..infra.hub import hub_access

    with hub_access("dataset", str(ds_cfg.hub_id), "dataset.path"):
        splits = {"train": load_dataset(ds_cfg.hub_id, split=ds_cfg.train_split).to_list()}
        if ds_cfg.get("eval_split"):
            splits["test"] = load_dataset(ds_cfg.hub_id, split=ds_cfg.eval_split).to_list()
    return splits, f"hub:{ds_cfg.hub_id}", columns


def _label(value: Any, where: str, row: int, column: str) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value in UNLABELLED:
        return None
    if value not in (0, 1):
        raise UserError(f"{where}: row {row}: column '{column}' must be 0 or 1 (or -1 = unlabelled), got {value!r}")
    return int(value)


def normalize(rows: list[dict], columns: dict[str, str], where: str) -> tuple[LabelledTexts, int]:
    """Check columns and labels, clean texts, drop empty ones. Returns the texts and the number dropped."""
    check_columns(rows, [columns["text"]], where)
    has_labels = any(columns["label"] in r for r in rows[:100])
    texts, labels, empty = [], [], 0
    for number, row in enumerate(rows, start=1):
        value = row.get(columns["text"])
        if value is not None and not isinstance(value, str):
            raise UserError(
                f"{where}: row {number}: column '{columns['text']}' must be text, got {type(value).__name__}"
            )
        label = _label(row.get(columns["label"]), where, number, columns["label"]) if has_labels else None
        text = clean_text(value or "")
        if not text:
            empty += 1
            continue
        texts.append(text)
        labels.append(label)
    if not texts:
        raise UserError(f"{where}: every '{columns['text']}' value is empty ({len(rows)} rows)")
    return LabelledTexts(texts, labels), empty


def split_seed(ds_cfg: Any) -> int:
    """The seed that holds out a single file's evaluation reviews (`dataset.split_seed`, default 0)."""
    value = ds_cfg.get("split_seed") if hasattr(ds_cfg, "get") else None
    return 0 if value is None else int(value)


def load_labelled_splits(ds_cfg: Any, path: Any = None) -> tuple[LabelledTexts, LabelledTexts, str, dict]:
    """Train and held-out reviews. Without a test split, `eval_fraction` of the reviews, shuffled with
    `dataset.split_seed`, is held out: the same reviews for every run seed and for a judge reading the same file."""
    splits, source, columns = raw_splits(ds_cfg, path)
    counts: dict[str, int] = {}
    out: dict[str, LabelledTexts] = {}
    for split, rows in splits.items():
        out[split], counts[f"{split}_dropped_empty"] = normalize(rows, columns, f"{source} [{split}]")
        counts[f"{split}_reviews"] = len(out[split].texts)
    if "test" not in out:
        order = seeded_subset(list(range(len(out["train"].texts))), None, split_seed(ds_cfg))
        n_test = max(1, int(round(len(order) * float(ds_cfg.eval_fraction)))) if len(order) > 1 else 0
        whole = out["train"]
        out["test"], out["train"] = whole.subset(order[:n_test]), whole.subset(order[n_test:])
        counts["train_reviews"], counts["test_reviews"] = len(out["train"].texts), len(out["test"].texts)
        source += f" (held out {n_test} reviews for evaluation)"
    return out["train"], out["test"], source, counts


def judge_splits(ds_cfg: Any, path: Any = None) -> tuple[LabelledTexts, LabelledTexts, str, dict[str, int]]:
    """Train and held-out reviews for a judge trained on reviews (tfidf_logreg), from `path` or else the run's
    dataset, that never trains on the run's held-out reviews (the source of its evaluation prompts): on the run's
    own data the split is the run's; any training review equal to a run's held-out review is dropped (another
    file, or a review repeated in the data). Counts: `heldout_overlap` (training reviews among the run's held-out
    ones: 0) and `heldout_dropped_from_training`."""
    train, test, source, _ = load_labelled_splits(ds_cfg, path)
    run_heldout = set((test if path is None else load_labelled_splits(ds_cfg)[1]).texts)
    kept = [i for i, text in enumerate(train.texts) if text not in run_heldout]
    dropped = len(train.texts) - len(kept)
    train = train.subset(kept)
    overlap = len(set(train.texts) & run_heldout)
    return train, test, source, {"heldout_overlap": overlap, "heldout_dropped_from_training": dropped}


# ---------------------------------------------------------------- prompts


def make_prefixes(texts: list[str], tokenizer, low: int, high: int, seed: int) -> list[str]:
    """One prompt per text: its first n tokens, n drawn uniformly in [low, high] (seeded, one draw per text)."""
    rng = random.Random(seed)
    lengths = [rng.randint(low, high) for _ in texts]
    encoded = tokenizer([t[: 40 * high] for t in texts], add_special_tokens=False).input_ids if texts else []
    return [tokenizer.decode(ids[:n]).strip() for ids, n in zip(encoded, lengths)]  # 40 chars/token is ample


def _unique(prompts: list[str], exclude: set[str] = frozenset()) -> list[str]:
    return [p for p in dict.fromkeys(prompts) if p and p not in exclude]


def heldout_pair_prompts(pool_size: int, fraction: float, cap: Any) -> int:
    """How many prompts of the training split are held out for DPO eval pairs: a share of the distinct prompts
    (capped by `dataset.eval_size`), a function of the data alone, never of data_size."""
    if pool_size < 2:
        raise UserError(f"only {pool_size} distinct prompt(s) in the training reviews: need at least 2")
    n = max(1, int(round(pool_size * fraction)))
    if cap:
        n = min(n, int(cap))
    return min(n, pool_size - 1)


def load_prompt_sets(cfg: Any, tokenizer) -> PromptSets:
    """Prompt sets for `dataset=imdb_sentiment`, validated before any model loads."""
    ds = cfg.dataset
    seed = int(cfg.seed)
    low, high = int(ds.prompt_tokens_min), int(ds.prompt_tokens_max)
    if low < 1 or high < low:
        raise UserError(f"dataset.prompt_tokens_min={low} / prompt_tokens_max={high}: need 1 <= min <= max")
    train, test, source, counts = load_labelled_splits(ds)

    order = seeded_subset(list(range(len(train.texts))), None, seed)
    pool = _unique(make_prefixes([train.texts[i] for i in order], tokenizer, low, high, seed))
    # Held-out sets first, from the seed and the data alone: every data_size of a sweep sees the same ones.
    n_pair_eval = heldout_pair_prompts(len(pool), float(ds.eval_fraction), ds.get("eval_size"))
    pair_eval, train_pool = pool[:n_pair_eval], pool[n_pair_eval:]
    size = ds.get("data_size")
    n_train = min(DEFAULT_DATA_SIZE, len(train_pool)) if size is None else int(size)
    if n_train > len(train_pool):
        raise UserError(
            f"data_size={n_train} but only {len(train_pool)} distinct training prompts are available in {source} "
            f"(after holding out {n_pair_eval} pair-evaluation prompts; lower data_size)"
        )
    train_prompts = train_pool[:n_train]

    # Sampling-evaluation prompts: test-split prefixes, minus any that is in the training split's prompt pool.
    test_order = [test.texts[i] for i in seeded_subset(list(range(len(test.texts))), None, seed + 1)]
    candidates = _unique(make_prefixes(test_order, tokenizer, low, high, seed + 1))
    eval_prompts = _unique(candidates, exclude=set(pool))
    counts["eval_prompts_dropped_seen_in_train_split"] = len(candidates) - len(eval_prompts)
    n_eval = int(ds.get("eval_prompts") or len(eval_prompts))
    eval_prompts = eval_prompts[:n_eval]
    if not eval_prompts:
        raise UserError(f"{source}: no held-out evaluation prompts left that differ from the training prompts")
    counts.update(
        distinct_prompts=len(pool),
        train_prompts=len(train_prompts),
        pair_eval_prompts=len(pair_eval),
        eval_prompts=len(eval_prompts),
    )
    return PromptSets(train_prompts, pair_eval, eval_prompts, train, test, source, counts)
