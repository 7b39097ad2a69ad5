"""A finished run folder stands alone: after the cache is deleted and the folder moved, plain transformers / PEFT
load its model (in a process that never imports dpo_exp) and `python -m dpo_exp.evaluate` still works."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli

LOAD = """import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, pipeline
assert "dpo_exp" not in sys.modules
run = sys.argv[1]
generate = pipeline("text-generation", model=f"{run}/model", device="cpu")
text = generate("The movie was", max_new_tokens=5, do_sample=False)[0]["generated_text"]
merged = AutoModelForCausalLM.from_pretrained(f"{run}/model").eval()
base = AutoModelForCausalLM.from_pretrained(f"{run}/model/base")
peft = PeftModel.from_pretrained(base, f"{run}/model/adapter").eval()
ids = torch.tensor([[464, 3807, 373, 257, 1310]])
with torch.no_grad():
    gap = (merged(ids).logits - peft(ids).logits).abs().max().item()
    with peft.disable_adapter():
        moved = (merged(ids).logits - peft(ids).logits).abs().max().item()
print(json.dumps({"text": text, "merged_vs_adapter": gap, "policy_vs_base": moved,
                  "dpo_exp_imported": "dpo_exp" in sys.modules}))
"""


def test_moved_run_folder_loads_without_cache_or_dpo_exp(tmp_path, ultrafeedback_file):
    work = tmp_path / "work"
    work.mkdir()
    run_dir = work / "run"
    args = [
        *FAST_MODEL,
        "lora=gpt2_attn",
        *FAST_TRAINER,
        "dataset=ultrafeedback",
        f"dataset.path={ultrafeedback_file}",
        "data_size=8",
        "dataset.eval_size=4",
        "epochs=1",
        "lr=1e-2",
        "logger=none",
        "eval.enabled=false",
        f"hydra.run.dir={run_dir}",
    ]
    result = run_cli(args, work)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["saved_model"] == {
        "policy": "model",
        "kind": "lora-merged",
        "adapter": "model/adapter",
        "base": "model/base",
    }
    card = ModelCard.load(run_dir / "model" / "README.md").data  # written with the model, before any evaluation
    assert card.library_name == "transformers" and card.eval_results is None and card.hyperparameters["lr"] == 1e-2
    adapter = ModelCard.load(run_dir / "model" / "adapter" / "README.md").data
    assert (
        adapter.library_name == "peft" and "lora" in adapter.tags and adapter.base_model_local["folder"] == "model/base"
    )
    shutil.rmtree(work / ".cache")  # documented as always safe
    moved = tmp_path / "elsewhere" / "copied_run"
    moved.parent.mkdir()
    shutil.move(str(run_dir), moved)
    shutil.rmtree(work)

    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(moved)],
        cwd=tmp_path / "elsewhere",
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["text"].startswith("The movie was") and len(out["text"]) > len("The movie was")
    assert out["merged_vs_adapter"] < 1e-4  # the merged policy is the base + adapter
    assert out["policy_vs_base"] > 1e-4  # and training moved it away from the base

    evaluated = run_cli(
        [
            f"run_dir={moved}",
            "wandb=false",
            "eval.num_prompts=4",
            "eval.num_samples=1",
            "eval.num_pairs=4",
            "eval.bootstrap=10",
            "eval.max_new_tokens=4",
        ],
        tmp_path / "elsewhere",
        module="dpo_exp.evaluate",
        timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    summary = json.loads((moved / "summary.json").read_text())
    assert "eval/kl" in summary
    for card in ("README.md", "adapter/README.md"):  # the merged model's card and the adapter's own
        results = {r.metric_type: r.metric_value for r in ModelCard.load(moved / "model" / card).data.eval_results}
        assert results["kl"] == pytest.approx(summary["eval/kl"], abs=1e-6)  # the cards follow the re-evaluation
