"""W&B views of a sweep (issue 14): the sweep-summary run read back with W&B's own reader, and the workspace."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from dpo_exp.compare.wandb_summary import TABLE_KEY
from dpo_exp.compare.workspace import CURVES, OUTCOMES, WORKSPACE_FILE, build_workspace

from .conftest import run_cli
from .test_compare import curves, write_run
from .wandb_records import offline_runs, records

GROUP = "quickstart-sweep-2026-01-01_10-00-00"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A 3-job beta sweep as the pipeline leaves it (one job failed), then `compare --wandb` on it."""
    root = tmp_path_factory.mktemp("views") / "multirun" / "2026-01-01" / "10-00-00"
    for job, beta in enumerate(("0.1", "0.5", "1.0")):
        b = float(beta)
        summary = {
            "status": "completed",
            "group": GROUP,
            "sweep": {"beta": beta},
            "loss": 0.7 - 0.2 * b,
            "eval_loss": 0.66 - b / 10,
            "eval/reward_policy": 0.55 + 0.05 / b,
            "eval/reward_reference": 0.5,
            "eval/reward_delta": 0.05 / b,
            "eval/kl": 1 / b,
            "eval/win_rate": 0.6,
        }
        if job == 2:
            summary = {"status": "failed", "group": GROUP, "sweep": {"beta": beta}, "error": "NonFiniteError"}
        write_run(root / str(job), {"model": "tiny_gpt2", "beta": beta}, summary, curves(b) if job < 2 else None)
    proc = run_cli([str(root), "--wandb"], root, module="dpo_exp.compare", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep summary run logged offline" in proc.stdout
    return root


@pytest.fixture(scope="module")
def summary_records(sweep: Path) -> tuple[Path, list[dict]]:
    """The summary run's offline folder and its records, read once by W&B's own reader."""
    (offline,) = offline_runs(sweep)
    return offline, records(offline)


def _history(recs: list[dict]) -> dict:
    return next(r["history"]["item"] for r in recs if r.get("type") == "history")


def test_summary_run_is_in_the_sweeps_group_with_its_job_type(sweep: Path, summary_records):
    run = next(r["run"] for r in summary_records[1] if r.get("type") == "run")
    assert run["run_group"] == GROUP and run["job_type"] == "sweep-summary"
    for job in ("0", "1", "2"):
        assert not offline_runs(sweep / job)  # the summary lands beside the jobs, not inside one


def test_summary_table_has_one_row_per_job_with_the_numbers_of_comparison_csv(sweep: Path, summary_records):
    offline, recs = summary_records
    item = _history(recs)
    assert item[f"{TABLE_KEY}._type"] == "table-file"
    csv = pd.read_csv(sweep / "comparison.csv")
    assert item[f"{TABLE_KEY}.nrows"] == len(csv) == 3
    table = json.loads((offline / "files" / item[f"{TABLE_KEY}.path"]).read_text())
    assert table["columns"] == list(csv.columns)
    for logged, (_, row) in zip(table["data"], csv.iterrows()):
        for column, value in zip(table["columns"], logged):
            expected = row[column]
            if isinstance(expected, float) and math.isnan(expected):
                assert value is None, column
            else:
                assert value == pytest.approx(expected) if isinstance(value, float) else value == expected, column
    assert [r[table["columns"].index("status")] for r in table["data"]] == ["completed", "completed", "failed"]


def test_summary_run_has_frontier_scatter_curves_and_the_comparison_artifact(summary_records):
    recs = summary_records[1]
    charts = {}
    for r in recs:
        for key, value in (r.get("config", {}).get("update") or {}).items():
            if key.startswith("_wandb.visualize."):
                charts[key.removeprefix("_wandb.visualize.")] = value["panel_config"]
    frontier = charts["sweep/reward_kl_frontier"]
    assert frontier["panelDefId"] == "wandb/scatter/v0"
    assert frontier["fieldSettings"] == {"x": "eval/kl", "y": "eval/reward_policy"}
    assert charts["sweep/curves/loss"]["panelDefId"] == "wandb/lineseries/v0"
    item = _history(recs)
    assert item["sweep/curves/loss_table.nrows"] == 8  # 2 jobs with curves x 4 train steps
    files = {
        c["path"]
        for r in recs
        if r.get("type") == "artifact" and r["artifact"]["type"] == "sweep-comparison"
        for c in r["artifact"]["manifest"]["contents"]
    }
    assert {"comparison.md", "comparison.csv", "plots/reward_kl_frontier.png"} <= files


def test_workspace_for_a_two_parameter_sweep_has_the_panels_and_the_group_filter(tmp_path: Path):
    workspace = build_workspace("team", "dpo_exp", GROUP, ["beta", "lr"])
    training, outcome = workspace.sections
    lines = {p.title: p.y for p in training.panels}
    for title, keys in CURVES:
        assert lines[title] == keys
    assert {"train/loss", "eval/loss", "train/rewards/chosen", "eval/rewards/rejected"} <= {
        k for keys in lines.values() for k in keys
    }
    parallel, scatter = outcome.panels
    assert [c.metric.name for c in parallel.columns] == ["beta", "lr", *OUTCOMES]
    assert (scatter.x.name, scatter.y.name) == ("eval/kl", "eval/reward_policy")
    assert workspace.runset_settings.filters == f"Metric(\"Group\") == '{GROUP}'"  # the library's own form
    assert [g.name for g in workspace.runset_settings.groupby] == ["beta", "lr"]


def test_without_an_api_key_the_workspace_definition_is_written_to_the_sweep(sweep: Path):
    saved = json.loads((sweep / WORKSPACE_FILE).read_text())
    run_set = saved["view"]["spec"]["section"]["runSets"][0]
    assert run_set["filters"]["filters"] == [
        {"key": {"section": "run", "name": "group"}, "op": "=", "value": GROUP, "disabled": False}
    ]
    assert run_set["grouping"] == [{"section": "config", "name": "beta.value"}]
    panels = [p for s in saved["view"]["spec"]["section"]["panelBankConfig"]["sections"] for p in s["panels"]]
    kinds = [p["viewType"] for p in panels]
    assert kinds.count("Run History Line Plot") == len(CURVES)
    parallel = next(p for p in panels if p["viewType"] == "Parallel Coordinates Plot")
    assert [c["accessor"] for c in parallel["config"]["columns"]] == [
        "config:beta.value",
        "summary:eval/reward_delta",
        "summary:eval/win_rate",
        "summary:eval/kl",
    ]
    scatter = next(p for p in panels if p["viewType"] == "Scatter Plot")
    assert (scatter["config"]["xAxis"], scatter["config"]["yAxis"]) == ("summary:eval/kl", "summary:eval/reward_policy")
    assert saved["workspace"]["name"] == f"sweep {GROUP}"
