"""The run's model card: RUN/model/README.md, and RUN/model/adapter/README.md for a LoRA adapter, in the Hugging
Face model-card format (YAML metadata + text) that `huggingface_hub.ModelCard.load` parses.

Metadata: the base model, the datasets, the method, library versions, a `license` left to the user, the
hyper-parameters that differ from conf/'s defaults, and the evaluation (reward delta, win rate, KL with 95% CIs and
the judge's identity) in `model-index` form, built with huggingface_hub's own `ModelCardData`/`EvalResult`. Each
card is written atomically, from the run's config and summary.json: with the model after training, and again after
every evaluation (the pipeline's and `python -m dpo_exp.evaluate`'s).
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..infra.storage import atomic_write_text, read_json
from .export import ADAPTER_DIR, BASE_DIR, hub_base

log = logging.getLogger(__name__)

CARD = "README.md"
# the config blocks whose values shape the trained model (paths, logging and bookkeeping are left out)
HYPER_KEYS = ("beta", "lr", "epochs", "batch_size", "data_size", "seed", "on_nonfinite")
HYPER_BLOCKS = ("trainer", "method", "lora", "sft", "train", "generation", "reward")
# (summary key under eval/, metric name) for model-index; each has _ci_low/_ci_high in summary.json
EVAL_METRICS = (
    ("reward_delta", "reward delta, policy - reference (95% bootstrap CI over prompts)"),
    ("win_rate", "win rate vs an independent reference sample, ties 1/2 (95% CI)"),
    ("kl", "KL(policy ‖ reference), nats, Monte-Carlo (95% CI)"),
    ("kl_rb", "KL(policy ‖ reference), nats, exact per-token (95% CI)"),
)
LICENSE_NOTE = (
    "license: left to you. This card sets none: the base model's and the training data's licences apply to the "
    "weights; set `license:` in the YAML above before publishing."
)


@functools.lru_cache(maxsize=1)
def default_config() -> DictConfig | None:
    """conf/'s defaults (`python -m dpo_exp` with no overrides), composed with Hydra; None when it cannot be."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .. import CONF_DIR

    try:
        if GlobalHydra.instance().is_initialized():  # inside @hydra.main: compose on its search path
            return compose(config_name="config")
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config")
    except Exception as exc:  # noqa: BLE001 - a card without the comparison beats no card
        log.warning("model card: could not compose the default config (%s)", exc)
        return None


def _flat(cfg: DictConfig | None, keys: tuple[str, ...], blocks: tuple[str, ...]) -> dict[str, Any]:
    """Resolved dotted key -> value of the hyper-parameter blocks (a block that cannot be resolved is skipped)."""
    out: dict[str, Any] = {}
    if cfg is None:
        return out
    for key in (*keys, *blocks):
        try:
            value = OmegaConf.select(cfg, key)
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra run
            continue
        stack = [(key, value)]
        while stack:
            name, item = stack.pop()
            if isinstance(item, dict):
                stack.extend((f"{name}.{k}", v) for k, v in item.items())
            else:
                out[name] = item
    return out


def changed_hyperparameters(cfg: DictConfig, defaults: DictConfig | None) -> dict[str, Any]:
    """The run's hyper-parameters whose value differs from the default (or that the default lacks)."""
    run, base = _flat(cfg, HYPER_KEYS, HYPER_BLOCKS), _flat(defaults, HYPER_KEYS, HYPER_BLOCKS)
    return {k: v for k, v in sorted(run.items()) if k not in base or base[k] != v}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _round(value: Any) -> Any:
    return round(float(value), 6) if _finite(value) else None


def _dataset(cfg: DictConfig) -> tuple[str, str]:
    """(id, pretty name): the hub id, or the local file's name when the data came from dataset.path."""
    ds = cfg.dataset
    path = ds.get("path")
    ident = Path(str(path)).name if path else str(ds.get("hub_id") or ds.get("name"))
    return ident, f"{ds.get('name')} ({ident})"


def eval_results(cfg: DictConfig, summary: dict[str, Any]) -> list:
    """huggingface_hub EvalResults for the evaluation's headline estimands, each with its CI and the judge."""
    from huggingface_hub import EvalResult

    ident, name = _dataset(cfg)
    judge = {
        "judge": summary.get("eval/reward_scorer"),
        "judge_identity": summary.get("eval/judge_identity"),
        "num_prompts": summary.get("eval/num_prompts"),
    }
    results = []
    for key, label in EVAL_METRICS:
        value = summary.get(f"eval/{key}")
        if not _finite(value):
            continue
        low, high = summary.get(f"eval/{key}_ci_low"), summary.get(f"eval/{key}_ci_high")
        args = {"ci95_low": _round(low), "ci95_high": _round(high), **{k: v for k, v in judge.items() if v is not None}}
        results.append(
            EvalResult(
                task_type="text-generation",
                task_name="preference alignment: policy vs its reference on held-out prompts",
                dataset_type=ident,
                dataset_name=name,
                dataset_split="held-out prompts",
                metric_type=key,
                metric_name=label,
                metric_value=_round(value),
                metric_args=args,
            )
        )
    return results


def card_data(cfg: DictConfig, summary: dict[str, Any], adapter: bool = False, base_folder: bool = False):
    """The card's YAML metadata as a huggingface_hub ModelCardData (`base_folder`: the run saved model/base)."""
    from huggingface_hub import ModelCardData

    base = hub_base(cfg.model, summary.get("reference_path"))
    versions = (summary.get("environment") or {}).get("versions") or {}
    method = {"name": cfg.method.get("name"), "target": cfg.method.get("_target_")}
    if cfg.method.get("name") in ("dpo", "iterative_dpo"):
        method["loss_type"] = OmegaConf.select(cfg, "trainer.loss_type")
    ident, _ = _dataset(cfg)
    name = str(summary.get("name") or cfg.get("name") or "dpo")
    results = eval_results(cfg, summary)
    return ModelCardData(
        base_model=base,  # None: the starting model is not a hub model; see base_model_local
        datasets=[ident],
        library_name="peft" if adapter else "transformers",
        license=None,  # left to the user: see the card's text
        pipeline_tag="text-generation",
        tags=["dpo_exp", "trl", str(method["name"]), *(["lora"] if adapter else [])],
        model_name=name,
        eval_results=results or None,
        base_model_local=None
        if base
        else {"name": cfg.model.get("name"), "folder": "model/base" if base_folder else None},
        method=method,
        hyperparameters=changed_hyperparameters(cfg, default_config()),
        library_versions={k: v for k, v in versions.items() if v},
        judge={"name": summary.get("eval/reward_scorer"), "identity": summary.get("eval/judge_identity")}
        if results
        else None,
    )


def _body(cfg: DictConfig, summary: dict[str, Any], data, adapter: bool) -> str:
    name = data.model_name
    load = (
        "```python\nfrom peft import AutoPeftModelForCausalLM\n"
        'model = AutoPeftModelForCausalLM.from_pretrained("RUN/model/adapter")  # hub base; else:\n'
        '# PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("RUN/model/base"), "RUN/model/adapter")\n```'
        if adapter
        else '```python\nfrom transformers import pipeline\ngenerate = pipeline("text-generation", model="RUN/model")\n```'
    )
    lines = [
        f"# {name}" + (" (LoRA adapter)" if adapter else ""),
        "",
        f"Trained by dpo_exp with method `{data.method['name']}` from "
        f"`{data.base_model or cfg.model.get('name')}` on `{data.datasets[0]}`"
        + (" (this folder is the adapter alone; `../` holds the merged model)." if adapter else "."),
        "",
        load,
        "",
        "## Hyper-parameters that differ from conf/'s defaults",
        "",
        *(f"- `{k}`: `{v}`" for k, v in data.hyperparameters.items()),
        *(["- none"] if not data.hyperparameters else []),
        "",
        "## Evaluation",
        "",
    ]
    if data.eval_results:
        judge = data.judge or {}
        named = f"`{judge['name']}` (identity `{judge.get('identity')}`)" if judge.get("name") else "none (KL only)"
        lines += [f"Judge: {named}.", ""]
        lines += ["| estimand | value | 95% CI |", "| --- | --- | --- |"]
        for r in data.eval_results:
            lines.append(
                f"| {r.metric_name} | {r.metric_value} | [{r.metric_args['ci95_low']}, {r.metric_args['ci95_high']}] |"
            )
    else:
        lines.append("Not evaluated yet (or without a judge): `python -m dpo_exp.evaluate run_dir=RUN` adds it here.")
    return "\n".join([*lines, "", "## License", "", LICENSE_NOTE, ""])


def render(cfg: DictConfig, summary: dict[str, Any], adapter: bool = False, base_folder: bool = False) -> str:
    """The whole card: `---` YAML metadata `---`, then the text."""
    data = card_data(cfg, summary, adapter, base_folder)
    return f"---\n{data.to_yaml()}\n---\n\n{_body(cfg, summary, data, adapter)}"


def write_model_cards(run_dir: Path, cfg: DictConfig) -> list[Path]:
    """(Re)write the cards of RUN/model (and its adapter/), atomically, from `cfg` and RUN/summary.json."""
    model_dir = Path(run_dir) / "model"
    if not (model_dir / "config.json").is_file():
        return []
    summary = read_json(Path(run_dir) / "summary.json") or {}
    written = []
    for folder, adapter in ((model_dir, False), (model_dir / ADAPTER_DIR, True)):
        if folder.is_dir() and (not adapter or (folder / "adapter_config.json").is_file()):
            card = render(cfg, summary, adapter, (model_dir / BASE_DIR).is_dir())
            atomic_write_text(folder / CARD, card)  # replaces PEFT's template card
            written.append(folder / CARD)
    return written
