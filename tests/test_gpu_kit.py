"""benchmarks/gpu_kit.py: the GPU benchmarks carried to a GPU machine without internet. `run` installs the kit's
wheels ahead of the machine's packages, points the benchmarks at the kit's data, and keeps every step within the
budget, killing a step (and what it started) at its end. A real kit was packed and run, on a copy of the
working tree in a virtual environment holding only what a CUDA PyTorch image holds, on 2026-12-07 (docs/performance.md)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

from .conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_kit.py"


def _gpu_kit():
    spec = importlib.util.spec_from_file_location("gpu_kit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel(folder: Path, name: str, version: str, source: str) -> Path:
    """A real (if minimal) pure-Python wheel of one module."""
    dist = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}.py", source)
        wheel.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{dist}/RECORD", "")
    return path


def test_run_installs_the_wheels_first_on_the_path_and_reads_the_kits_data(tmp_path, monkeypatch):
    """A step sees the carried module (from the kit's install folder, first on sys.path, ahead of the repository),
    the kit's data folder and the offline settings; kit.json records the install, the imports and the step."""
    gpu_kit = _gpu_kit()
    kit, out = tmp_path / "kit", tmp_path / "out"
    (kit / "wheels").mkdir(parents=True)
    _wheel(kit / "wheels", "gpu_kit_probe", "1.0", "CARRIED = True\n")
    step = tmp_path / "step.py"
    step.write_text(
        "import json, os, sys, gpu_kit_probe\n"
        "json.dump({'module': gpu_kit_probe.__file__, 'path': sys.path[1:3], 'data': os.environ['DPO_EXP_SHARED_DATA'],"
        " 'hub_offline': os.environ['HF_HUB_OFFLINE']}, open(sys.argv[2], 'w'))\n"
    )
    monkeypatch.setitem(gpu_kit.STEPS, "probe", (str(step), lambda folder: ["--out", str(folder / "probe.json")]))
    assert gpu_kit.run(kit, out, ["probe"], budget=120) == 0
    seen = json.loads((out / "probe.json").read_text())
    site = Path(seen["path"][0])
    assert Path(seen["module"]).parent == site and site.name.startswith("gpu_kit_site_")
    assert seen["path"][1] == str(ROOT)
    assert seen["data"] == str(kit / "data") and seen["hub_offline"] == "1"
    record = json.loads((out / "kit.json").read_text())
    assert record["install"]["exit"] == 0 and record["imports"]["exit"] == 0
    assert record["steps"]["probe"]["exit"] == 0
    assert record["versions"][0].split()[2] == metadata.version("trl")  # the probe's line: torch, transformers, trl


def test_a_step_past_the_budget_is_killed_with_what_it_started(tmp_path):
    gpu_kit = _gpu_kit()
    marker = tmp_path / "child_alive"
    child = f"import time, pathlib; time.sleep(3); pathlib.Path({str(marker)!r}).write_text('x')"
    command = [
        sys.executable,
        "-c",
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)",
    ]
    started = time.perf_counter()
    result = gpu_kit.timed(command, {}, tmp_path / "step.log", seconds=1)
    assert result["exit"] == "killed after 1 s" and time.perf_counter() - started < 20
    time.sleep(4)
    assert not marker.exists()  # the grandchild died with the step


def test_pack_asks_for_the_tested_versions_as_wheels_for_the_target():
    gpu_kit = _gpu_kit()
    pins = gpu_kit.pinned()
    assert f"trl=={metadata.version('trl')}" in pins and f"transformers=={metadata.version('transformers')}" in pins
    command = gpu_kit.download_command("trl==1.16.0", Path("w"), "3.12", ["manylinux_2_28_x86_64"])
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command and "--only-binary=:all:" in command
    assert command[command.index("--python-version") + 1] == "3.12" and command[-1] == "trl==1.16.0"


def test_bad_input_is_one_error_line(tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)

    unknown = cli("run", "--out", str(tmp_path), "--kit", str(tmp_path), "--only", "profile,speed")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "error: unknown step 'speed' in --only (steps: profile, fit, check)"
    missing = cli("run", "--out", str(tmp_path), "--kit", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: no kit at ")
