"""A saved W&B workspace for one sweep, built with `wandb-workspaces` (W&B's library for workspaces as code).

Panels: loss, reward accuracy, margins and chosen/rejected rewards (train and eval); a parallel-coordinates panel
from the swept keys to eval/reward_delta, eval/win_rate and eval/kl; the reward-KL scatter. The runset is
filtered to the sweep's W&B group and grouped by the swept keys. Online it is saved and its URL returned;
without an API key its definition is written to JSON for later.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WORKSPACE_FILE = "wandb_workspace.json"
STEP = "train/global_step"
CURVES = [  # (panel title, W&B keys): the names dpo_exp.training logs TRL's metrics under
    ("loss", ["train/loss", "eval/loss"]),
    ("reward accuracy", ["train/rewards/accuracies", "eval/rewards/accuracies"]),
    ("reward margin", ["train/rewards/margins", "eval/rewards/margins"]),
    ("chosen vs rejected rewards (train)", ["train/rewards/chosen", "train/rewards/rejected"]),
    ("chosen vs rejected rewards (eval)", ["eval/rewards/chosen", "eval/rewards/rejected"]),
]
OUTCOMES = ["eval/reward_delta", "eval/win_rate", "eval/kl"]
KL, REWARD = "eval/kl", "eval/reward_policy"


def build_workspace(entity: str, project: str, group: str, params: list[str]):
    """The Workspace object (no network): sections of panels, runs filtered to `group`, grouped by `params`."""
    from wandb_workspaces import expr
    from wandb_workspaces.reports.v2.interface import (
        Config,
        LinePlot,
        ParallelCoordinatesPlot,
        ParallelCoordinatesPlotColumn,
        ScatterPlot,
        SummaryMetric,
    )
    from wandb_workspaces.workspaces import RunsetSettings, Section, SectionPanelSettings, Workspace

    curves = [LinePlot(title=title, x=STEP, y=keys) for title, keys in CURVES]
    columns = [ParallelCoordinatesPlotColumn(metric=Config(key)) for key in params]
    columns += [ParallelCoordinatesPlotColumn(metric=SummaryMetric(key)) for key in OUTCOMES]
    evaluation = [
        ParallelCoordinatesPlot(title="swept keys -> outcome", columns=columns),
        ScatterPlot(title="reward-KL frontier", x=SummaryMetric(KL), y=SummaryMetric(REWARD)),
    ]
    return Workspace(
        entity=entity,
        project=project,
        name=f"sweep {group}",
        sections=[
            Section(
                name="DPO training curves",
                panels=curves,
                is_open=True,
                panel_settings=SectionPanelSettings(x_axis=STEP),
            ),
            Section(name="sweep outcome", panels=evaluation, is_open=True),
        ],
        runset_settings=RunsetSettings(
            filters=[expr.Metric("Group") == group],
            groupby=[expr.Config(key) for key in params],
        ),
    )


def workspace_json(workspace) -> dict[str, Any]:
    """The library's serialisations: the Workspace fields (pydantic) and the view spec `Workspace.save()` uploads."""
    from pydantic import TypeAdapter

    return {
        "workspace": TypeAdapter(type(workspace)).dump_python(workspace, mode="json"),
        "view": workspace._to_model().model_dump(by_alias=True, exclude_none=True, mode="json"),
    }


def create_or_write(out: Path, entity: str | None, project: str, group: str, params: list[str], online: bool) -> str:
    """Save the workspace online (returns its URL), or write OUT/wandb_workspace.json (returns a how-to line).

    Never raises: a W&B failure is reported in the returned line and the JSON is written instead.
    """
    path = Path(out) / WORKSPACE_FILE
    try:
        if online:
            import wandb

            entity = entity or wandb.Api().default_entity
        workspace = build_workspace(entity or "YOUR_ENTITY", project, group, params)
        path.write_text(json.dumps(workspace_json(workspace), indent=2, default=str))
        if online:
            return f"W&B workspace: {workspace.save().url}"
    except Exception as exc:  # noqa: BLE001 - the workspace is a convenience, never a failure of the sweep
        log.warning("W&B workspace not created (%s)", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if not path.exists():
            return f"W&B workspace not created: {exc}"
    return (
        f"W&B workspace definition written to {path}; with an API key (`wandb login`), create it with "
        f"`python -m dpo_exp.compare {out} --wandb`"
    )
