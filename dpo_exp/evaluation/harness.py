"""The capability tax: lm-evaluation-harness (`lm_eval`) tasks scored on the reference and the policy.

Imported only when `eval.harness.enabled` (lm-eval is an optional extra: `pip install dpo_exp[harness]`).
`run(model, tokenizer, tasks) -> ({task: {metric: (value, stderr)}}, per-document values)`; `harness_metrics`
scores both models of a `PolicyReference` and returns `harness/<task>/<metric>_{policy,reference,delta}` with the
harness's standard errors (the delta's paired over the shared documents). Tasks are named as the harness names them (its built-in tasks, a folder of your own YAMLs in
`eval.harness.include_path`) or shipped here (`harness_tasks/`, e.g. `imdb_sentiment_mc`), whose relative
`data_files` are read under `eval.harness.data_dir`.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UserError

SHIPPED = Path(__file__).parent / "harness_tasks"


def _shipped_names() -> dict[str, Path]:
    import yaml

    return {str(yaml.safe_load(p.read_text()).get("task")): p for p in sorted(SHIPPED.glob("*.yaml"))}


def _localise(path: Path, data_dir: str | None, into: Path) -> None:
    """A shipped task YAML copied into `into` with its relative data_files under `data_dir`."""
    import yaml

    spec = yaml.safe_load(path.read_text())
    files = (spec.get("dataset_kwargs") or {}).get("data_files") or {}
    for split, name in files.items():
        if not Path(str(name)).is_absolute():
            if not data_dir:
                raise UserError(f"eval.harness.tasks: {spec['task']} reads {name}: set eval.harness.data_dir")
            full = Path(str(data_dir)).expanduser() / str(name)
            if not full.is_file():
                raise UserError(f"eval.harness.data_dir={data_dir} has no {name} (task {spec['task']})")
            files[split] = str(full.resolve())
    (into / path.name).write_text(yaml.safe_dump(spec))


def task_manager(block: Any, scratch: Path):
    """A harness TaskManager over the shipped tasks (localised into `scratch`), `include_path`, and the harness's
    own tasks only when a task named is neither (indexing them all takes a while)."""
    from lm_eval.tasks import TaskManager

    shipped = _shipped_names()
    tasks = [str(t) for t in block.tasks]
    for name in tasks:
        if name in shipped:
            _localise(shipped[name], block.get("data_dir"), scratch)
    paths = [str(scratch)]
    if block.get("include_path"):
        include = Path(str(block.include_path)).expanduser()
        if not include.is_dir():
            raise UserError(f"eval.harness.include_path={block.include_path} is not a folder")
        paths.append(str(include))
    manager = TaskManager(include_path=paths, include_defaults=False)
    if any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=paths, include_defaults=True)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(
            f"eval.harness.tasks: no harness task named {', '.join(unknown)} (shipped: {sorted(shipped)}; "
            "`lm-eval ls tasks` lists the harness's own; eval.harness.include_path adds your YAMLs)"
        )
    return manager


def check_harness(block: Any) -> None:
    """Before any model loads: lm-eval installed, and every task in `eval.harness.tasks` known (with its data)."""
    if block is None or not block.get("enabled"):
        return
    if not list(block.tasks):
        raise UserError("eval.harness.tasks is empty: name at least one task (e.g. [imdb_sentiment_mc])")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("eval.harness.enabled=true needs lm-eval: pip install 'dpo_exp[harness]'") from None
    with tempfile.TemporaryDirectory() as scratch:
        task_manager(block, Path(scratch))


Scores = dict[str, dict[str, tuple[float, float | None]]]  # {task: {metric: (value, stderr)}}
PerDoc = dict[str, dict[str, dict[Any, float]]]  # {task: {metric: {doc_id: value}}}


def run(model, tokenizer, block: Any, batch_size: int) -> tuple[Scores, PerDoc]:
    """{task: {metric: (value, stderr)}} of one model on `block.tasks` (at most `block.limit` documents each), and
    each document's value of each metric (for the paired standard error of a difference)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    with tempfile.TemporaryDirectory() as scratch:
        manager = task_manager(block, Path(scratch))
        limit = block.get("limit")
        results = simple_evaluate(
            model=lm,
            tasks=[str(t) for t in block.tasks],
            task_manager=manager,
            limit=int(limit) if limit else None,
            bootstrap_iters=int(block.get("bootstrap_iters") or 1000),
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
            log_samples=True,
        )
    out: Scores = {}
    for task, metrics in (results or {}).get("results", {}).items():
        found: dict[str, tuple[float, float | None]] = {}
        for key, value in metrics.items():
            metric, _, _filter = str(key).partition(",")
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if metric.endswith("_stderr") or not numeric or f"{metric}_stderr,{_filter}" not in metrics:
                continue  # the harness gives every metric a stderr key ("N/A" when none); sample_len has none
            stderr = metrics.get(f"{metric}_stderr,{_filter}")
            found[metric] = (float(value), float(stderr) if isinstance(stderr, (int, float)) else None)
        out[str(task)] = found
    per_doc: PerDoc = {}
    for task, samples in (results or {}).get("samples", {}).items():
        for sample in samples:
            for metric in out.get(str(task), {}):
                value = sample.get(metric)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    per_doc.setdefault(str(task), {}).setdefault(metric, {})[sample["doc_id"]] = float(value)
    return out, per_doc


def paired_stderr(policy: dict[Any, float], reference: dict[Any, float]) -> float | None:
    """The standard error of the mean per-document difference (both models read the same documents), for a metric
    the harness averages over documents; None when fewer than two documents pair up."""
    import numpy as np

    docs = sorted(set(policy) & set(reference), key=str)
    if len(docs) < 2:
        return None
    diff = np.asarray([policy[d] - reference[d] for d in docs])
    return float(diff.std(ddof=1) / math.sqrt(len(docs)))


def harness_metrics(pair: Any, tokenizer, block: Any, batch_size: int) -> dict[str, Any]:
    """`harness/<task>/<metric>_policy`, `_reference`, `_delta` and their `_stderr`. The delta's standard error is
    paired (the per-document differences, when the metric's value is the mean over documents and every document
    has one), else sqrt(se_policy^2 + se_reference^2), an upper bound for documents shared by both."""
    policy, policy_docs = run(pair.policy, tokenizer, block, batch_size)
    with pair.reference() as reference:
        ref, ref_docs = run(reference, tokenizer, block, batch_size)
    out: dict[str, Any] = {}
    for task, metrics in policy.items():
        for metric, (value, stderr) in metrics.items():
            ref_value, ref_stderr = ref.get(task, {}).get(metric, (math.nan, None))
            base = f"harness/{task}/{metric}"
            out[f"{base}_policy"], out[f"{base}_reference"] = value, ref_value
            out[f"{base}_delta"] = value - ref_value
            if stderr is None or ref_stderr is None:
                continue
            out[f"{base}_policy_stderr"], out[f"{base}_reference_stderr"] = stderr, ref_stderr
            docs_p, docs_r = policy_docs.get(task, {}).get(metric, {}), ref_docs.get(task, {}).get(metric, {})
            mean_p = sum(docs_p.values()) / len(docs_p) if docs_p else math.nan
            mean_r = sum(docs_r.values()) / len(docs_r) if docs_r else math.nan
            paired = None
            if math.isclose(mean_p, value, abs_tol=1e-9) and math.isclose(mean_r, ref_value, abs_tol=1e-9):
                paired = paired_stderr(docs_p, docs_r)
            out[f"{base}_delta_stderr"] = paired if paired is not None else math.sqrt(stderr**2 + ref_stderr**2)
            out[f"{base}_delta_stderr_paired"] = paired is not None
    return out
