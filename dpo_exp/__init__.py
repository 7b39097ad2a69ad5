"""dpo_exp: Hydra-orchestrated Direct Preference Optimization experiments (TRL + PEFT + datasets)."""

from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
# Installed from a wheel, the configs ship inside the package (setup.py copies them); an editable install
# (`pip install -e .`, as the Makefile does) reads the checkout's top-level conf/ and experiments/.
CONF_DIR = PACKAGE_DIR / "conf" if (PACKAGE_DIR / "conf" / "config.yaml").is_file() else PACKAGE_DIR.parent / "conf"
DEMO_DIR = PACKAGE_DIR / "demo"


def _register_resolvers() -> None:
    """`${dpo_exp.demo:reviews.jsonl}` in a config = the path of a fixture shipped inside the package."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("dpo_exp.demo"):
        OmegaConf.register_new_resolver("dpo_exp.demo", lambda name: str(DEMO_DIR / str(name)))


_register_resolvers()
