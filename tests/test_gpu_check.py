"""`make gpu-check` (benchmarks/gpu_check.py): without a GPU it says so and exits 0; `--smoke` runs every row on CPU
at tiny scale, so the script itself is known to work before a GPU ever runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(args: list[str], tmp_path, timeout: int):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}  # no GPU, even on a machine with one
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    proc = _run([], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == (
        "no GPU here (torch.cuda.is_available() is False): the GPU check needs one; nothing was run"
    )


@pytest.mark.slow
def test_smoke_runs_every_row_on_cpu_and_prints_the_table(tmp_path):
    import json

    out = tmp_path / "gpu_check.json"
    proc = _run(["--smoke", "--out", str(out)], tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["check"] for r in rows] == [
        "full fine-tuning + precomputed reference + evaluation",
        "LoRA fine-tuning + evaluation",
        "samplers (dpo_exp/sampler.py)",
        "throughput (bench_gpu.py --quick)",
    ]
    assert all(r["ok"] for r in rows), rows
    assert "weights F32" in rows[0]["detail"] and "reference precomputed" in rows[0]["detail"]
    assert "tokens/s" in rows[3]["detail"] and "MFU" in rows[3]["detail"]
    table = proc.stdout[proc.stdout.index("\ncheck ") + 1 :].splitlines()
    assert table[0].split()[:3] == ["check", "result", "seconds"] and table[1 + len(rows)].startswith("total ")
