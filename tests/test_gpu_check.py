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
        "distributed=fsdp on one device (torchrun, 1 process)",
        "distributed=zero3 on one device (torchrun, 1 process)",
        "samplers (dpo_exp/sampler.py)",
        "throughput (bench_gpu.py --quick)",
    ]
    assert all(r["ok"] for i, r in enumerate(rows) if i != 3), rows
    assert "weights F32" in rows[0]["detail"] and "reference precomputed" in rows[0]["detail"]
    assert "fsdp, 1 process, sharded checkpoint" in rows[2]["detail"] and "weights F32" in rows[2]["detail"]
    assert rows[3]["ok"] is None and rows[3]["detail"].startswith("skipped: ")  # DeepSpeed: no GPU (or not installed)
    assert "tokens/s" in rows[5]["detail"] and "MFU" in rows[5]["detail"]
    table = proc.stdout[proc.stdout.index("\ncheck ") + 1 :].splitlines()
    assert table[0].split()[:3] == ["check", "result", "seconds"] and table[1 + len(rows)].startswith("total ")
    assert table[4].startswith(rows[3]["check"]) and table[4].removeprefix(rows[3]["check"]).split()[0] == "skip"


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_zero3_row_without_deepspeed_is_skipped_not_failed(tmp_path, monkeypatch):
    """Where DeepSpeed is not installed, the zero3 row reports "skipped" with the extra to install, and a table of
    skipped and passing rows exits 0."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("DeepSpeed is installed")
    gpu_check = _gpu_check_module()
    (zero3,) = [row for row in gpu_check.ROWS if row[0].startswith("distributed=zero3")]
    monkeypatch.setattr(gpu_check, "ROWS", [zero3])
    seen: list[list[dict]] = []
    (result,) = gpu_check.run_rows(gpu_check.gpu_scale("bf16"), tmp_path, lambda rows: seen.append(list(rows)))
    assert seen == [[result]]  # the rows so far are handed on after each row (the JSON is rewritten as it goes)
    assert result["ok"] is None
    assert result["detail"] == "skipped: deepspeed not installed (pip install 'dpo_exp[deepspeed]')"


def test_sharded_rows_launch_one_process_the_way_dpo_exp_accepts():
    """The fsdp and zero3 rows run `torchrun --standalone --nproc_per_node 1 -m dpo_exp`: one launched process,
    which dpo_exp accepts for a sharded strategy (refusing only a run started without a launcher)."""
    from dpo_exp.errors import UserError
    from dpo_exp.infra.sharding import check_strategy

    from .conftest import FAST_MODEL, compose

    launcher = _gpu_check_module().one_process_launcher()
    assert launcher[0].endswith("torchrun") and launcher[1:] == ["--standalone", "--nproc_per_node", "1"]
    cfg = compose([*FAST_MODEL, "lora=none", "distributed=fsdp"])
    assert check_strategy(cfg, 1, "dpo", "cpu", launched=True).name == "fsdp"
    with pytest.raises(UserError, match="has one and no launcher"):
        check_strategy(cfg, 1, "dpo", "cpu", launched=False)


def test_a_failed_rows_detail_is_the_exception_the_run_ended_with():
    """A row's FAIL detail names the run's exception: a launched process's own under torchrun (not torchrun's
    summary after it), else the last `...Error: ...` line of a plain run's traceback."""
    gpu_check = _gpu_check_module()
    torchrun = (
        "Error executing job with overrides: ['distributed=fsdp']\n[rank0]: Traceback (most recent call last):\n"
        "[rank0]: ValueError: Kernels are not available.\nTraceback (most recent call last):\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "============================================================\n"
    )
    assert gpu_check.failure_line(torchrun) == "[rank0]: ValueError: Kernels are not available."
    plain = "Traceback (most recent call last):\n  File 'x.py'\nModuleNotFoundError: No module named 'narwhals'\n"
    assert gpu_check.failure_line(plain) == "ModuleNotFoundError: No module named 'narwhals'"
    assert gpu_check.failure_line("") == "no output"
