"""A new workflow is one module and one YAML: a toy task ("prefer the shorter completion") that lives outside the
package (its module on a temp sys.path entry, its YAML in a temp Hydra search path) runs end to end."""

import json
import os
import textwrap

from .conftest import FAST_MODEL, FAST_TRAINER, run_cli

TASK_MODULE = '''
"""Prefer the shorter of two completions: pairs from a fixture file of {prompt, a, b}, chosen = the shorter one."""

import json
from pathlib import Path

from dpo_exp.data.schema import PreferenceData
from dpo_exp.tasks import HeldOut, Task, TaskResult


class ShorterTask(Task):
    def load(self, cfg, tokenizer):
        rows = [json.loads(line) for line in Path(cfg.dataset.path).read_text().splitlines() if line.strip()]
        pairs = [
            {"prompt": r["prompt"], "chosen": min(r["a"], r["b"], key=len), "rejected": max(r["a"], r["b"], key=len)}
            for r in rows
            if len(r["a"]) != len(r["b"])
        ]
        held = int(cfg.dataset.eval_size)
        train, evals = pairs[held:], pairs[:held]
        counts = {"rows": len(rows), "train_pairs": len(train), "eval_pairs": len(evals)}
        return PreferenceData(train, evals, counts, source=f"shorter:{cfg.dataset.path}")

    def prepare(self, cfg, env, model, tokenizer, loaded):
        return TaskResult(data=loaded, model=model, summary={"shorter": {"pairs": len(loaded.train)}})

    def heldout(self, cfg, tokenizer):
        data = self.load(cfg, tokenizer)
        return HeldOut(data.eval_prompts, data.eval)
'''

TASK_YAML = """
# Toy task: prefer the shorter completion (module shorter_task.py, outside dpo_exp)
_target_: shorter_task.ShorterTask
name: shorter
path: ???          # jsonl of {prompt, a, b}
eval_size: 4       # the first this-many pairs are held out
"""


def test_a_task_is_one_module_and_one_yaml(tmp_path):
    package_dir, conf_dir = tmp_path / "toy", tmp_path / "conf"
    (conf_dir / "dataset").mkdir(parents=True)
    package_dir.mkdir()
    (package_dir / "shorter_task.py").write_text(textwrap.dedent(TASK_MODULE))
    (conf_dir / "dataset" / "shorter.yaml").write_text(TASK_YAML)
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": f"Question {i}:", "a": " Yes.", "b": " Yes, and here is a much longer answer."} for i in range(16)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pythonpath = os.pathsep.join(p for p in (str(package_dir), os.environ.get("PYTHONPATH", "")) if p)
    args = [
        f"hydra.searchpath=[file://{conf_dir}]",
        "dataset=shorter",
        f"dataset.path={data}",
        *FAST_MODEL,
        *FAST_TRAINER,
        "trainer.max_steps=2",
        "trainer.eval_strategy=no",
        "eval.num_prompts=2",
        "eval.num_samples=1",
        "eval.num_pairs=4",
        "eval.best_of_n=[]",
        "generation.max_new_tokens=4",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = run_cli(args, tmp_path, env={"PYTHONPATH": pythonpath})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["dataset"]["task"] == "shorter_task.ShorterTask"
    assert summary["data"]["train_pairs"] == 12 and summary["data"]["eval_pairs"] == 4
    assert summary["shorter"] == {"pairs": 12}  # the task's own section, written by the pipeline
    assert summary["eval/implicit_pairs"] == 4 and summary["eval/num_prompts"] == 2

    # a task without a scorer of its own rejects `reward` with one clear line, before any model loads
    proc = run_cli([*args, "reward=vader"], tmp_path, env={"PYTHONPATH": pythonpath})
    assert proc.returncode == 2 and "reward=vader builds pairs for" in proc.stderr
