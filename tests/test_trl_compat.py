"""dpo_exp.trl_compat: the installed TRL is in the supported range and still has every private dpo_exp uses."""

import importlib
import inspect
import re
from importlib import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet

from dpo_exp import trl_compat


def _owner(path: str):
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr) if module else importlib.import_module(path)


def test_installed_trl_is_in_the_supported_range_of_pyproject():
    assert metadata.version("trl") in SpecifierSet(trl_compat.SUPPORTED_TRL)
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    requirement = re.search(r'^\s*"trl([^"]*)"', pyproject, re.MULTILINE).group(1)
    assert SpecifierSet(trl_compat.SUPPORTED_TRL) == SpecifierSet(requirement)


def test_every_private_method_exists_with_the_parameters_used():
    for owner, name, params in trl_compat.PRIVATE_METHODS:
        method = getattr(_owner(owner), name, None)
        assert method is not None, f"{owner}.{name} is gone"
        assert tuple(inspect.signature(method).parameters) == params, (owner, name)
    for module, name in trl_compat.PRIVATE_MODULE_NAMES:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name} is gone"
    assert trl_compat.fused_lm_head_kernel() is not None


def test_the_private_attributes_set_are_the_ones_trl_reads():
    source = inspect.getsource(_owner("trl.DPOTrainer"))
    assert "_precompute_model_hash" in source and "_fingerprint" in source
    assert "self._metrics[mode]" in source
    assert "_total_train_tokens" in source


def test_reference_logprob_cache_key_covers_every_field_trl_reads():
    """The reference log-probs cache key (dpo_exp.training.ref_logps.REF_LOGPS_ARGS) names every DPOConfig field
    that TRL's compute_ref_log_probs and its preference collator read (issue 20: ld_alpha was missing)."""
    from trl import DPOTrainer

    from dpo_exp.training.ref_logps import REF_LOGPS_ARGS

    source = inspect.getsource(DPOTrainer.compute_ref_log_probs)
    read = set(re.findall(r"self\.args\.(\w+)", source)) | set(re.findall(r"self\.(ld_alpha)", source))
    assert "ld_alpha" in read
    assert read - {"gradient_checkpointing_kwargs"} <= set(REF_LOGPS_ARGS)  # checkpointing changes no value
    init = inspect.getsource(DPOTrainer.__init__)
    collator = re.search(r"DataCollatorForPreference\((.*?)\)", init, re.S).group(1)
    assert set(re.findall(r"args\.(\w+)", collator)) <= set(REF_LOGPS_ARGS)


def test_every_experimental_trl_class_used_is_importable_where_trl_compat_pins_it():
    """Online DPO, ORPO and CPO (SimPO) live in trl.experimental: a move in a TRL release fails here, naming it."""
    import importlib

    from dpo_exp import trl_compat

    for name, module in trl_compat.EXPERIMENTAL.items():
        assert getattr(trl_compat, name) is getattr(importlib.import_module(f"trl.experimental.{module}"), name)
