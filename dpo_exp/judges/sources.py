"""The hub models a run's judges and scorers will load, checked before anything trains (as the policy is)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..errors import UserError

# (field of a `reward` / `eval/reward` option naming a hub model, what it is called in the error line)
SOURCES = (("hub_id", "reward model"), ("base", "reward base model"))


def check_judge_sources(cfg: Any, keys: Sequence[str] = ("reward", "eval.reward")) -> None:
    """Each hub model that `reward` or `eval.reward` names (`hub_id`, a trained judge's `base`) can be loaded: its
    config.json is in the local Hugging Face cache or the hub answers. Otherwise one UserError naming the key to
    set (`reward.hub_id`, `eval.reward.hub_id`, ...), instead of a failure after the whole training. Local folders
    are left to the judge."""
    from transformers import AutoConfig

    from ..infra.hub import hub_access, is_unreachable

    for key in keys:
        option = OmegaConf.select(cfg, key)
        if option is None or not hasattr(option, "get") or str(option.get("kind", "none")) == "none":
            continue
        for field, what in SOURCES:
            source = option.get(field)
            if not source or Path(str(source)).is_dir():
                continue
            revision = option.get("revision") if field == "hub_id" else None
            with hub_access(what, str(source), f"{key}.{field}"):
                try:
                    AutoConfig.from_pretrained(str(source), revision=revision)
                except Exception as exc:  # noqa: BLE001 - a bad id or revision: one line (unreachable: hub_access)
                    if is_unreachable(exc):
                        raise
                    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise UserError(f"{key}.{field}={source}: the judge cannot be loaded: {message}") from None
