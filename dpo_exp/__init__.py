"""dpo_exp: Hydra-orchestrated Direct Preference Optimization experiments (TRL + PEFT + datasets)."""

from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR.parent / "conf"  # the checkout's conf/: install editable (pip install -e ., as the Makefile does)
DEMO_DIR = PACKAGE_DIR / "demo"


def _register_resolvers() -> None:
    """`${dpo_exp.demo:reviews.jsonl}` in a config = the path of a fixture shipped inside the package."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("dpo_exp.demo"):
        OmegaConf.register_new_resolver("dpo_exp.demo", lambda name: str(DEMO_DIR / str(name)))


_register_resolvers()
