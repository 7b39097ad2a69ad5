"""Read W&B offline runs back through W&B's own reader (`wandb leet inspect --json`), not through our client code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def _wandb_cli() -> str:
    exe = Path(sys.executable).with_name("wandb")
    return str(exe) if exe.exists() else (shutil.which("wandb") or "wandb")


def offline_runs(run_dir: Path) -> list[Path]:
    """The offline-run-* folders W&B wrote inside a run directory."""
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def records(offline_run: Path) -> list[dict]:
    out = subprocess.run(
        [_wandb_cli(), "leet", "inspect", "--json", str(offline_run)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip().startswith("{")]


def history(offline_run: Path) -> list[dict]:
    return [r["history"]["item"] for r in records(offline_run) if r.get("type") == "history"]


def run_info(offline_run: Path) -> dict:
    """State, name, group-less run metadata, config and summary (`wandb leet inspect --summary --json`)."""
    out = subprocess.run(
        [_wandb_cli(), "leet", "inspect", "--summary", "--json", str(offline_run)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def run_record(offline_run: Path) -> dict:
    """The run record (id, name, group, tags) as written at init."""
    return next(r["run"] for r in records(offline_run) if r.get("type") == "run")
