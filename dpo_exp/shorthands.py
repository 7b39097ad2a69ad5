"""Shorthands a method ignores (conf/method `shorthands`): the multirun check, run before any job, and the job's
command line that `config.validate` checks a single run against."""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from . import CONF_DIR


def command_line() -> dict[str, str]:
    """The job's command-line overrides (key -> value); empty outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    from .infra.runinfo import parse_overrides

    return parse_overrides([str(o) for o in HydraConfig.get().overrides.task]) if HydraConfig.initialized() else {}


def sweep_shorthand_problem(config: DictConfig) -> str | None:
    """A multirun's refusal (None: none) of a shorthand that a method of the sweep ignores, set or swept on the command
    line or in `hydra.sweeper.params` (a preset's or Optuna's sweep): `-m method=preferred_ft beta=0.1,0.5` would run
    identical jobs. `config` is the sweep's config with its `hydra` node (Hydra's on_multirun_start)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    params = {str(k).lstrip("+~"): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
    given = {**params}  # the command line wins over the sweeper's params, as in Hydra's sweepers
    for override in parser.parse_overrides([str(o) for o in config.hydra.overrides.task]):
        if not override.is_delete():
            given[override.key_or_group] = override.input_line.partition("=")[2]
    names = [str(config.method.get("name"))] if config.get("method") is not None else []
    if "method" in given:
        chosen = parser.parse_overrides([f"method={given['method']}"])[0]
        try:
            names = list(chosen.sweep_string_iterator()) if chosen.is_sweep_override() else [given["method"]]
        except Exception:  # noqa: BLE001 - e.g. glob(*), which only the sweeper expands: each job checks itself
            return None
    shorthands = {k: v for k, v in given.items() if k in SHORTHANDS}
    for name in names:
        composed = config.get("method")
        node = composed if composed is not None and composed.get("name") == name else method_option(name)
        problem = ignored_shorthand_problem(node, shorthands, multirun=True) if node is not None else None
        if problem:
            return problem
    return None


class SweepShorthandCheck(Callback):
    """conf/config.yaml `hydra.callbacks`: a multirun that sets or sweeps a shorthand one of its methods ignores
    stops with one `error:` line (exit code 2) before any job runs; a single run is refused by `validate`."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = sweep_shorthand_problem(config)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)


# ---------------------------------------------------------------- the shorthands each method reads

SHORTHANDS = ("beta", "lr", "epochs", "batch_size", "data_size", "seed")  # conf/config.yaml's top-level shorthands


def method_shorthands(method: Any) -> tuple[str, ...]:
    """The shorthands a `method` node reads (its YAML's `shorthands`); every one for a method that declares none (a
    config saved before the declarations: DPO, which reads them all)."""
    declared = (method or {}).get("shorthands")
    return tuple(str(k) for k in declared) if declared is not None else SHORTHANDS


def method_option(name: str) -> Any:
    """conf/method/NAME.yaml as saved in this checkout (None when there is no such option)."""
    path = CONF_DIR / "method" / f"{name}.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def ignored_shorthand_problem(method: Any, given: dict[str, Any], multirun: bool = False) -> str | None:
    """The one-line refusal of shorthands in `given` (key -> value set or swept) that `method` does not read: such a
    value changes nothing that is trained (`-m method=preferred_ft beta=0.1,0.5` = two identical jobs). None when the
    method reads them all."""
    used = method_shorthands(method)
    ignored = {k: v for k, v in given.items() if k in SHORTHANDS and k not in used}
    if not ignored:
        return None
    name = (method or {}).get("name", "?")
    keys = ", ".join(f"{k}={v}" for k, v in ignored.items())
    reads = f"it reads {', '.join(used) or 'no shorthand'}: `shorthands` in conf/method/{name}.yaml"
    if multirun:
        return (
            f"method={name} ignores {keys} in this multirun ({reads}), so its jobs would not differ: remove "
            f"{'it' if len(ignored) == 1 else 'them'} (a preset's sweep: ~hydra.sweeper.params.{next(iter(ignored))}) "
            f"or sweep method={name} on its own"
        )
    return f"method={name} ignores {keys} ({reads}): remove it; the method's own settings are method.*"
