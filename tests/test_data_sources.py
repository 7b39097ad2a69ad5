"""Data from anywhere (issue 32): any preference set by column mapping, binary feedback (prompt, completion, label)
and the Rate tab's votes exported as it, mixtures of sources (all fast: no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_exp.data.preference import load_preference_data
from dpo_exp.errors import UserError

from .conftest import compose


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def renamed_copy(source: Path, out: Path, names: dict[str, str]) -> Path:
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    return write_jsonl(out, [{names.get(k, k): v for k, v in row.items()} for row in rows])


# ---------------------------------------------------------------- column mapping


def test_any_preference_file_loads_by_naming_its_columns(tmp_path, ultrafeedback_file):
    """A renamed copy of the UltraFeedback sample, mapped back with dataset.columns.*, gives the same pairs."""
    copy = renamed_copy(
        ultrafeedback_file, tmp_path / "renamed.jsonl", {"prompt": "question", "chosen": "good", "rejected": "bad"}
    )
    original = load_preference_data(compose(["dataset=ultrafeedback", f"dataset.path={ultrafeedback_file}"]).dataset, 0)
    mapped_cfg = compose(
        [
            "dataset=ultrafeedback",
            f"dataset.path={copy}",
            "dataset.columns.prompt=question",
            "dataset.columns.chosen=good",
            "dataset.columns.rejected=bad",
        ]
    ).dataset
    mapped = load_preference_data(mapped_cfg, 0)
    assert mapped.train == original.train and mapped.eval == original.eval and len(mapped.train) > 700
    files_cfg = compose(
        [
            "dataset=preference_files",
            f"dataset.path={copy}",
            "dataset.columns={prompt: question, chosen: good, rejected: bad}",
        ]
    ).dataset
    assert len(load_preference_data(files_cfg, 0).train) > 700


def test_a_missing_column_is_one_line_listing_the_columns_there_are(tmp_path, ultrafeedback_file):
    copy = renamed_copy(ultrafeedback_file, tmp_path / "renamed.jsonl", {"chosen": "good"})
    cfg = compose(["dataset=preference_files", f"dataset.path={copy}"]).dataset
    with pytest.raises(UserError) as caught:
        load_preference_data(cfg, 0)
    message = str(caught.value)
    assert "\n" not in message and "missing column(s) ['chosen']" in message
    assert "found ['good', 'metadata', 'prompt', 'rejected', 'source_index']" in message


# ---------------------------------------------------------------- hub datasets: config (subset), folder and split names

HUB_README = """---
configs:
- config_name: first
  default: true
  data_files:
  - {split: train_prefs, path: first/train.jsonl}
  - {split: test_prefs, path: first/test.jsonl}
- config_name: second
  data_files:
  - {split: train_prefs, path: second/train.jsonl}
  - {split: test_prefs, path: second/test.jsonl}
---
"""


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    """A hub dataset's repository as `datasets` reads it (a local copy: offline): two configs declared in its
    README, each a folder of 100 UltraFeedback pairs (80 train_prefs, 20 test_prefs). Returns it and the prompts
    of each config."""
    from .conftest import shared_file

    rows = [json.loads(line) for line in shared_file("ultrafeedback/sample.jsonl").read_text().splitlines()]
    repo = tmp_path_factory.mktemp("hub") / "org_prefs"
    prompts = {}
    for name, part in (("first", rows[:100]), ("second", rows[100:200])):
        (repo / name).mkdir(parents=True)
        write_jsonl(repo / name / "train.jsonl", part[:80])
        write_jsonl(repo / name / "test.jsonl", part[80:])
        prompts[name] = {r["prompt"] for r in part}
    (repo / "README.md").write_text(HUB_README, encoding="utf-8")
    return repo, prompts


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """`datasets` writes its prepared copies under the test's folder, not the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def hub_cfg(repo: Path, *extra: str):
    return compose(["dataset=preference_files", "dataset.path=null", f"dataset.hub_id={repo}", *extra]).dataset


def test_a_hub_datasets_config_is_chosen_by_name_with_its_split_names(hub_repo, datasets_cache):
    """dataset.hub_config is the config (subset) name (load_dataset's `name`), train_split / eval_split its splits;
    dataset.hub_data_dir a folder of the repository (load_dataset's `data_dir`)."""
    repo, prompts = hub_repo
    splits = ["dataset.train_split=train_prefs", "dataset.eval_split=test_prefs", "dataset.eval_size=null"]
    second = load_preference_data(hub_cfg(repo, "dataset.hub_config=second", *splits), 0)
    train, held = {r["prompt"] for r in second.train}, {r["prompt"] for r in second.eval}
    assert train | held <= prompts["second"] and len(second.train) > 60 and held and not train & held
    assert second.counts["train_raw"] == 80 and second.counts["test_raw"] == 20  # its own split files
    default = load_preference_data(hub_cfg(repo, *splits), 0)  # no config named: the repository's default
    assert {r["prompt"] for r in default.train} <= prompts["first"]
    folder = load_preference_data(hub_cfg(repo, "dataset.hub_data_dir=second"), 0)  # the folder's train/test files
    assert {r["prompt"] for r in folder.train} == train and folder.counts["test_raw"] == 20
    # a mixture source names its config `subset` (and its folder `data_dir`)
    sources = f"[{{hub_id: {repo}, subset: second, split: train_prefs, weight: 1}}, {{hub_id: {repo}, weight: 1, "
    sources += "data_dir: first, label: first}]"
    mixed = load_preference_data(compose(["dataset=mixture", f"dataset.sources={sources}"]).dataset, 0)
    by_source = {c["source"]: c["train_pairs"] for c in mixed.composition}
    assert set(by_source) == {"org_prefs", "first"} and all(by_source.values())
    trained = {r["prompt"] for r in mixed.train}
    assert trained & prompts["second"] and trained & prompts["first"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["dataset.hub_config=harmless-base"],
            "dataset.hub_config=harmless-base: hub dataset {repo} has no config 'harmless-base' (its configs: first, "
            "second); a folder of its repository is dataset.hub_data_dir=harmless-base",
        ),
        (
            ["dataset.hub_config=second", "dataset.train_split=train"],
            "dataset.train_split=train: hub dataset {repo} (config second) has no split 'train' (its splits: "
            "train_prefs, test_prefs)",
        ),
        (
            ["dataset.train_split=train_prefs", "dataset.eval_split=validation"],
            "dataset.eval_split=validation: hub dataset {repo} has no split 'validation' (its splits: train_prefs, "
            "test_prefs)",
        ),
        (
            ["dataset=mixture", "dataset.sources=[{{hub_id: {repo}, subset: third, weight: 1}}]"],
            "dataset.sources[0].subset=third: hub dataset {repo} has no config 'third' (its configs: first, "
            "second); a folder of its repository is dataset.sources[0].data_dir=third",
        ),
        (["dataset.hub_data_dir=third"], "dataset.hub_data_dir=third: no data files there in {repo} ("),
    ],
    ids=["unknown_config", "unknown_split", "unknown_eval_split", "unknown_mixture_subset", "unknown_folder"],
)
def test_an_unknown_hub_config_or_split_is_one_line_listing_the_ones_there_are(
    hub_repo, datasets_cache, tmp_path, overrides, message
):
    repo, _ = hub_repo
    overrides = [o.format(repo=repo) for o in overrides]
    cfg = compose(overrides).dataset if overrides[0] == "dataset=mixture" else hub_cfg(repo, *overrides)
    with pytest.raises(UserError) as caught:
        load_preference_data(cfg, 0)
    assert str(caught.value).startswith(message.format(repo=repo)) and "\n" not in str(caught.value)
    assert not list((tmp_path / "hf_datasets").rglob("*.arrow"))  # refused before anything was prepared


# ---------------------------------------------------------------- binary feedback


def feedback_file(path: Path, prompts: int = 20) -> Path:
    rows = []
    for i in range(prompts):
        rows += [
            {"prompt": f"Prompt {i}:", "completion": f" a good answer {i}", "label": True},
            {"prompt": f"Prompt {i}:", "completion": f" a bad answer {i}", "label": "false"},
        ]
    return write_jsonl(path, rows)


def test_binary_feedback_is_held_out_by_prompt_and_paired_for_the_pair_metrics(tmp_path):
    path = feedback_file(tmp_path / "feedback.jsonl")
    data = load_preference_data(
        compose(["dataset=feedback", f"dataset.path={path}", "dataset.eval_fraction=0.2"]).dataset, 0
    )
    train_prompts = {r["prompt"] for r in data.train}
    assert len(data.train) == 32 and {r["label"] for r in data.train} == {True, False}
    assert {tuple(sorted(r)) for r in data.train} == {("completion", "label", "prompt")}
    assert len(data.eval) == 4 and not train_prompts & {r["prompt"] for r in data.eval}
    assert all(" good " in r["chosen"] and " bad " in r["rejected"] for r in data.eval)
    assert data.counts["train_desirable"] == data.counts["train_undesirable"] == 16


def test_a_bad_feedback_label_names_its_line(tmp_path):
    path = write_jsonl(
        tmp_path / "f.jsonl",
        [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "p", "completion": "d", "label": "maybe"}],
    )
    with pytest.raises(UserError, match=r"f.jsonl line 2: label must be true/false \(or 1/0\), got 'maybe'"):
        load_preference_data(compose(["dataset=feedback", f"dataset.path={path}"]).dataset, 0)


def test_the_rate_tabs_votes_export_as_kto_feedback_and_train_kto(tmp_path):
    """`export --format kto`: each winner desirable, each loser undesirable, ties dropped; the file is the feedback
    dataset method=kto trains on (one KTO step on the tiny model)."""
    from dpo_exp.human.__main__ import main
    from dpo_exp.human.store import RatingStore
    from dpo_exp.methods.base import trl_args
    from dpo_exp.methods.kto import kto_trainer
    from dpo_exp.models import build_policy, load_tokenizer

    from .conftest import FAST_MODEL, FAST_TRAINER
    from .test_human import vote
    from .test_methods import method_settings

    store = RatingStore(tmp_path / "rated")
    for i in range(10):
        store.append(vote(f"p{i}", "policy", "reference", "left" if i % 2 else "right"))
    store.append(vote("tied", "policy", "reference", "tie"))
    out = tmp_path / "kto.jsonl"
    assert main(["export", str(tmp_path / "rated"), "--out", str(out), "--format", "kto"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20 and "tied" not in {r["prompt"] for r in rows}
    for row in rows:
        i = int(row["prompt"][1:])
        winner = "policy" if i % 2 else "reference"
        assert row["label"] == (row["model"] == winner) and row["completion"] == f"{row['model']} on p{i}"

    cfg = compose(
        [
            "dataset=feedback",
            f"dataset.path={out}",
            "method=kto",
            *FAST_MODEL,
            *FAST_TRAINER,
            "trainer.max_steps=1",
            "lr=1e-3",
            "trainer.warmup_steps=0",
        ]
    )
    from dpo_exp.config import validate

    validate(cfg)
    data = load_preference_data(cfg.dataset, 0)
    assert len(data.train) == 18 and len(data.eval) == 1  # one prompt (of 10) held out with both its rows
    policy, tokenizer = build_policy(cfg.model, 0), load_tokenizer(cfg.model)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    trainer = kto_trainer(
        policy, data, method_settings(cfg, tokenizer, tmp_path), trl_args(cfg, tmp_path, "fp32", "cpu"), []
    )
    trainer.train()
    assert trainer.state.global_step == 1
    assert any(not v.equal(before[k]) for k, v in policy.state_dict().items())


# ---------------------------------------------------------------- mixtures


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> tuple[Path, Path]:
    """A: 600 UltraFeedback rows as they are; B: the other 400 under other column names."""
    from .conftest import shared_file

    rows = [json.loads(line) for line in shared_file("ultrafeedback/sample.jsonl").read_text().splitlines()]
    folder = tmp_path_factory.mktemp("mixture")
    a = write_jsonl(folder / "A.jsonl", rows[:600])
    b = write_jsonl(
        folder / "B.jsonl", [{"q": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in rows[600:]]
    )
    return a, b


def mixture(a: Path, b: Path, *extra: str):
    sources = (
        f"[{{path: {a}, weight: 3}}, {{path: {b}, weight: 1, columns: {{prompt: q, chosen: good, rejected: bad}}}}]"
    )
    return compose(["dataset=mixture", f"dataset.sources={sources}", *extra])


def test_a_3_to_1_mixture_draws_its_rows_by_weight_and_holds_out_each_source_by_prompt(two_sources):
    a, b = two_sources
    cfg = mixture(a, b, "data_size=400")
    data = load_preference_data(cfg.dataset, 0)
    assert len(data.train) == 400
    assert [(c["source"], c["weight"], c["train_pairs"]) for c in data.composition] == [
        ("A", 3.0, 300),
        ("B", 1.0, 100),
    ]
    a_prompts = {r["prompt"] for r in map(json.loads, a.read_text().splitlines())}
    from_a = sum(r["prompt"] in a_prompts for r in data.train)
    assert from_a == 300 and data.counts["A/train_pairs"] == 300 and data.counts["B/train_pairs"] == 100
    # each source held out on its own: prompts of both, none of them trained on; the pool interleaves them
    train = {r["prompt"] for r in data.train}
    held = {source: [p for p, s in data.eval_sources.items() if s == source] for source in ("A", "B")}
    assert all(held.values()) and not train & set(data.eval_sources)
    assert {data.eval_sources[p] for p in data.eval_prompts[:2]} == {"A", "B"}
    assert all(c["eval_pairs"] > 0 for c in data.composition)
    # a trained judge learns from its share of every source, disjoint from training and held-out prompts
    judged = load_preference_data(cfg.dataset, 0, judge_share=0.2, judge_seed=1)
    judge_prompts = {r["prompt"] for r in judged.judge}
    assert judge_prompts & a_prompts and judge_prompts - a_prompts
    assert not judge_prompts & {r["prompt"] for r in judged.train} and not judge_prompts & set(judged.eval_sources)
    # the composition is part of the dataset config, hence of every key made from it
    other = load_preference_data(mixture(a, b, "data_size=400", "dataset.sources.1.weight=3").dataset, 0)
    assert [c["train_pairs"] for c in other.composition] == [200, 200]


def test_a_mixture_without_data_size_takes_what_the_weights_allow_and_rows_counts_are_exact(two_sources):
    a, b = two_sources
    data = load_preference_data(mixture(a, b).dataset, 0)
    drawn = {s: data.counts[f"{s}/train_pairs"] for s in ("A", "B")}
    assert data.counts["A/train_unused_pairs"] <= 3 < data.counts["B/train_unused_pairs"]  # A (weight 3) runs out
    assert abs(drawn["A"] - 3 * drawn["B"]) <= 3 and len(data.train) == sum(drawn.values())
    sources = f"[{{path: {a}, rows: 50}}, {{path: {b}, rows: 20, columns: {{prompt: q, chosen: good, rejected: bad}}}}]"
    rows = load_preference_data(compose(["dataset=mixture", f"dataset.sources={sources}"]).dataset, 0)
    assert [c["train_pairs"] for c in rows.composition] == [50, 20] and len(rows.train) == 70


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (None, "dataset=mixture needs dataset.sources"),
        ("[{path: A.jsonl}]", r"dataset.sources\[0\] needs a weight or a rows count"),
        ("[{path: A.jsonl, weight: 1}, {path: B.jsonl, rows: 5}]", "every source a weight, or every source a rows"),
        ("[{path: A.jsonl, name: hh_rlhf, weight: 1}]", "needs exactly one of path / name / hub_id"),
        ("[{path: A.jsonl, weight: -1}]", r"dataset.sources\[0\].weight=-1 must be a number > 0"),
        ("[{path: A.jsonl, weight: 1, colums: {}}]", r"unknown key\(s\) \['colums'\]"),
        ("[{path: x/A.jsonl, weight: 1}, {path: y/A.jsonl, weight: 1}]", "two sources share a name"),
    ],
)
def test_a_malformed_mixture_is_one_error_line_before_anything_loads(sources, message):
    from dpo_exp.config import validate

    from .conftest import FAST_MODEL, FAST_TRAINER

    extra = [] if sources is None else [f"dataset.sources={sources}"]
    with pytest.raises(UserError, match=message):
        validate(compose(["dataset=mixture", *FAST_MODEL, *FAST_TRAINER, *extra]))


def test_a_mixture_source_missing_a_column_names_its_file_and_the_columns_there_are(two_sources):
    a, b = two_sources
    sources = f"[{{path: {a}, weight: 1}}, {{path: {b}, weight: 1}}]"  # B's columns are q / good / bad
    with pytest.raises(
        UserError,
        match=r"B.jsonl \[train\]: missing column\(s\) \['prompt', 'chosen', 'rejected'\]; found \['bad', 'good', 'q'\]",
    ):
        load_preference_data(compose(["dataset=mixture", f"dataset.sources={sources}"]).dataset, 0)


@pytest.mark.slow
def test_a_mixture_run_reports_each_source_and_the_pool(tmp_path, two_sources):
    """The command line of the issue: per-source eval/<source>/... beside the pooled keys, the composition in
    summary.json."""
    from .conftest import FAST_MODEL, FAST_TRAINER, run_cli

    a, b = two_sources
    sources = (
        f"[{{path: {a}, weight: 3}}, {{path: {b}, weight: 1, columns: {{prompt: q, chosen: good, rejected: bad}}}}]"
    )
    run_dir = tmp_path / "run"
    args = [*FAST_MODEL, *FAST_TRAINER, "dataset=mixture", f"dataset.sources={sources}", "data_size=16"]
    args += ["epochs=1", "trainer.max_steps=2", "dataset.eval_size=6", "eval.num_prompts=6", "eval.num_samples=2"]
    args += ["eval.max_new_tokens=8", "eval.num_pairs=12", "eval.bootstrap=20", "eval.every_n_steps=0", "logger=none"]
    proc = run_cli([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert [(c["source"], c["train_pairs"]) for c in s["data"]["composition"]] == [("A", 12), ("B", 4)]
    for source in ("A", "B"):
        assert 0 <= s[f"eval/{source}/implicit_accuracy"] <= 1 and s[f"eval/{source}/implicit_pairs"] == 6
        assert f"eval/{source}/kl" in s
    assert s["eval/implicit_pairs"] == 12 and "eval/kl" in s  # pooled


def test_per_source_metrics_are_the_pooled_metrics_of_each_sources_prompts_and_pairs():
    """eval/<source>/...: each source's held-out prompts (sampled) and pairs, measured as the pool is."""
    import numpy as np

    from dpo_exp.evaluation.metrics import SampleEval
    from dpo_exp.evaluation.sources import pair_metrics_by_source, sample_metrics_by_source
    from dpo_exp.generation import Samples

    prompts = ["a1", "b1", "a2", "b2", "a3"]
    sources = {p: p[0].upper() for p in prompts}
    kl = np.array([[1.0, 1.0], [5.0, 5.0], [2.0, 2.0], [7.0, 7.0], [3.0, 3.0]])
    rewards = np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    result = SampleEval(
        policy=Samples(prompts, [["x", "y"]] * 5, [[[1], [2]]] * 5),
        reference=None,
        rewards_policy=rewards,
        rewards_reference=np.full((5, 2), 0.5),
        kl=kl,
        rewards_reference_independent=np.full((5, 2), 0.5),
    )
    out = sample_metrics_by_source(result, sources, 20, 0)
    assert out["A/kl"] == pytest.approx(2.0) and out["B/kl"] == pytest.approx(6.0)
    assert out["A/win_rate"] == 1.0 and out["B/win_rate"] == 0.0
    assert (out["A/num_prompts"], out["B/num_prompts"]) == (3, 2)
    pairs = [{"prompt": p} for p in prompts]
    chosen, rejected = np.array([1.0, 0.0, 1.0, 0.0, -1.0]), np.zeros(5)
    by_pair = pair_metrics_by_source(pairs, chosen, rejected, sources)
    assert by_pair["A/implicit_accuracy"] == pytest.approx(2 / 3) and by_pair["B/implicit_accuracy"] == 0.0
    assert (by_pair["A/implicit_pairs"], by_pair["B/implicit_pairs"]) == (3, 2)
