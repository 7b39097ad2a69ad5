"""How far the earlier offline attempts of a W&B run got, read back through W&B's own reader."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def _wandb_cli() -> str:
    exe = Path(sys.executable).with_name("wandb")
    return str(exe) if exe.exists() else (shutil.which("wandb") or "wandb")


def offline_held_step(run: Any, step_key: str, timeout: float = 60.0) -> int:
    """The highest `step_key` the earlier offline folders of `run` (same id, same W&B directory) hold; 0 when there
    are none or none can be read. A SIGKILLed attempt records no `wandb_step` in summary.json: only its transaction
    log says what its W&B service wrote before dying (often nothing: the buffered records die with it). Read with
    `wandb leet inspect --json`, W&B's own reader of that log; no public Python API reads an offline run."""
    current = Path(run.dir).parent  # .../wandb/offline-run-<time>-<id>/files -> its folder
    held = 0
    for folder in sorted(current.parent.glob(f"offline-run-*-{run.id}")):
        if folder == current:
            continue
        try:
            out = subprocess.run(
                [_wandb_cli(), "leet", "inspect", "--json", str(folder)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue  # unreadable: the summary's wandb_step stands
        for line in out.splitlines():
            try:
                record = json.loads(line) if line.strip().startswith("{") else {}
            except ValueError:
                continue
            item = (record.get("history") or {}).get("item") or {} if record.get("type") == "history" else {}
            if isinstance(item.get(step_key), (int, float)):
                held = max(held, int(item[step_key]))
    return held
