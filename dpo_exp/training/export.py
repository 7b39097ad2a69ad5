"""The trained model, saved so that the run folder stands alone (no cache, any machine, any working directory).

Layout of RUN_DIR/model/:
- LoRA runs: the policy with its adapter merged, as a plain transformers model (`pipeline("text-generation",
  model=RUN_DIR/model)` or `AutoModelForCausalLM.from_pretrained(RUN_DIR/model)`), plus
  `adapter/` (the LoRA adapter alone) and, unless the base came unchanged from the hub, `base/` (the starting
  model: tiny, warm-started or local). The adapter's `base_model_name_or_path` is the hub id, or `base/`'s
  absolute path at save time; after moving the folder load it with
  `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(RUN/model/base), RUN/model/adapter)`.
- Full fine-tuning: the policy itself, plus `base/` when the reference was a warm start (it lives in the cache).
Every folder carries the tokenizer.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

ADAPTER_DIR = "adapter"
BASE_DIR = "base"


def hub_base(model_cfg: Any, reference_path: Path | str | None) -> str | None:
    """The hub id when the starting model is exactly a hub model (no local path, no tiny build, no warm start)."""
    if model_cfg.get("path") or model_cfg.get("tiny") or reference_path:
        return None
    return str(model_cfg.hub_id) if model_cfg.get("hub_id") else None


def _unsharded_peft(trainer, state: dict) -> Any:
    """A plain (unsharded) copy of a sharded PEFT policy, from its gathered state dict: FSDP modules cannot be
    deep-copied, and merging or unloading the adapter needs whole weights."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    sharded = trainer.accelerator.unwrap_model(trainer.model)
    base = AutoModelForCausalLM.from_config(sharded.get_base_model().config)
    plain = get_peft_model(base, sharded.peft_config["default"])
    plain.load_state_dict(state)
    return plain.eval()


def _point_adapter_at(adapter_dir: Path, base: str) -> None:
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def save_run_model(
    trainer, tokenizer, model_dir: Path, model_cfg: Any, reference_path: Path | str | None = None
) -> dict[str, str]:
    """Save the trained policy into `model_dir` (layout above); returns what was saved, for summary.json.
    `reference_path`: the warm-started reference's folder, when the run has one. A sharded model is gathered
    (every process takes part) into one consolidated folder."""
    from ..infra.sharding import consolidated_save

    with consolidated_save(trainer):
        return _save_run_model(trainer, tokenizer, model_dir, model_cfg, reference_path)


def _save_run_model(
    trainer, tokenizer, model_dir: Path, model_cfg: Any, reference_path: Path | str | None = None
) -> dict[str, str]:
    from ..infra.sharding import gathered_state_dict, is_sharded
    from ..models import is_peft

    model_dir = Path(model_dir)
    model = trainer.model
    hub_id = hub_base(model_cfg, reference_path)
    sharded_peft = is_peft(model) and is_sharded(model)
    if sharded_peft:  # every process: the adapter gathered and saved, then the whole policy gathered to the main one
        trainer.save_model(str(model_dir / ADAPTER_DIR))
        state = gathered_state_dict(trainer)
        if trainer.args.should_save:
            model = _unsharded_peft(trainer, state)
    if not trainer.args.should_save:  # another process of a multi-process run: the main one writes the folder
        if not sharded_peft:
            trainer.save_model(str(model_dir / ADAPTER_DIR if is_peft(model) else model_dir))  # collective-safe
        return {}
    if not is_peft(model):
        trainer.save_model(str(model_dir))
        tokenizer.save_pretrained(str(model_dir))
        info = {"policy": "model", "kind": "full"}
        reference = reference_path
        if reference and Path(reference).is_dir():  # the warm-started reference lives in the cache: keep a copy
            shutil.copytree(reference, model_dir / BASE_DIR, dirs_exist_ok=True)
            tokenizer.save_pretrained(str(model_dir / BASE_DIR))
            info["base"] = f"model/{BASE_DIR}"
        elif hub_id:
            info["base"] = hub_id
        return info

    adapter_dir = model_dir / ADAPTER_DIR
    if not sharded_peft:
        trainer.save_model(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    merged = copy.deepcopy(model).merge_and_unload()  # a copy: the run goes on evaluating the PEFT model
    merged.save_pretrained(str(model_dir))
    del merged
    tokenizer.save_pretrained(str(model_dir))
    info = {"policy": "model", "kind": "lora-merged", "adapter": f"model/{ADAPTER_DIR}"}
    if hub_id:
        _point_adapter_at(adapter_dir, hub_id)
        info["base"] = hub_id
        return info
    base = copy.deepcopy(model).unload()  # the starting weights: LoRA layers removed, nothing merged
    base.save_pretrained(str(model_dir / BASE_DIR))
    del base
    tokenizer.save_pretrained(str(model_dir / BASE_DIR))
    _point_adapter_at(adapter_dir, str((model_dir / BASE_DIR).resolve()))
    info["base"] = f"model/{BASE_DIR}"
    return info
