"""`python -m dpo_exp [overrides]`: compose the config with Hydra and run one DPO job per (multirun) job."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from . import CONF_DIR
from .errors import UserError

log = logging.getLogger("dpo_exp")


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from .pipeline import RunInterrupted, run

    try:
        return run(cfg)
    except UserError as exc:
        if _is_multirun():  # one bad job must not stop the sweep; it is marked failed in its summary
            log.error("job failed: %s", exc)
            return None
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RunInterrupted as exc:
        print(f"interrupted: {exc}. Run the same command again to resume.", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001
        if _is_multirun():
            log.exception("job failed: %s", exc)
            return None
        raise


if __name__ == "__main__":
    main()
