"""The package installs as a wheel (no -e) and runs from outside the checkout: configs and demo data ship inside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import FAST_MODEL, ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the built wheel; its dependencies come from this interpreter's site-packages (the CPU
    torch wheel included) through a .pth path entry, so nothing is downloaded and the checkout is not importable."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(ROOT),
        ],
        check=True,
        cwd=tmp,
        timeout=300,
    )
    wheel = next((tmp / "dist").glob("dpo_exp-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, timeout=300
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _run(python: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DPO_EXP_CACHE"] = str(cwd / ".cache")
    return subprocess.run(
        [str(python), "-m", "dpo_exp", *args], cwd=cwd, capture_output=True, text=True, timeout=900, env=env
    )


def test_wheel_composes_the_quickstart_outside_the_checkout(installed, tmp_path):
    where = subprocess.run(
        [str(installed), "-c", "import dpo_exp; print(dpo_exp.CONF_DIR)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert "site-packages" in where and not where.startswith(str(ROOT))
    proc = _run(installed, ["--cfg", "job", "experiment=quickstart"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name: quickstart" in proc.stdout and "reviews.jsonl" in proc.stdout
    # conf/eval/reward is a link to conf/reward in the checkout: the wheel carries its files
    group = _run(installed, ["--cfg", "job", "eval/reward=siebert"], tmp_path)
    assert group.returncode == 0 and "kind: siebert" in group.stdout, group.stderr[-2000:]


def test_wheel_runs_two_offline_steps_outside_the_checkout(installed, tmp_path):
    proc = _run(
        installed,
        [
            "experiment=quickstart",
            *FAST_MODEL,
            "logger=none",
            "trainer.max_steps=2",
            "sft.max_steps=1",
            "data_size=8",
            "eval.enabled=false",
            "hydra.run.dir=run",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "completed" and max(r["step"] for r in rows) == 2
    assert (tmp_path / "run" / "model").is_dir()


def test_wheel_ships_dpo_exps_submitit_launchers(installed, tmp_path):
    """conf/hydra/launcher/{local_submitit,slurm_gpu}.yaml name launchers in hydra_plugins/dpo_exp_launcher: Hydra
    must discover them from an installed wheel."""
    found = subprocess.run(
        [
            str(installed),
            "-c",
            "from hydra.core.plugins import Plugins; from hydra.plugins.launcher import Launcher; "
            "print(sorted(c.__module__ + '.' + c.__name__ for c in Plugins.instance().discover(Launcher)))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        check=True,
    ).stdout
    for name in ("LocalLauncher", "SlurmLauncher"):
        assert f"hydra_plugins.dpo_exp_launcher.submitit_launcher.{name}" in found
