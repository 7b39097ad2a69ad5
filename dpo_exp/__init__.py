"""dpo_exp: Hydra-orchestrated Direct Preference Optimization experiments (TRL + PEFT + datasets)."""

from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR.parent / "conf"
DEMO_DIR = PACKAGE_DIR / "demo"
