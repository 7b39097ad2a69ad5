"""`python -m dpo_exp [overrides]`: compose the config with Hydra and run one DPO job per (multirun) job.

In a multirun (`-m`), a failing job is recorded as failed (summary.json `status: failed` + `error`, and a W&B run
that finishes with exit code 1) and returns None, so the launcher goes on with the remaining jobs and a sweeper
(Optuna) counts it as a failed trial. Each job returns `summary[cfg.objective]` for sweepers to optimise.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from . import CONF_DIR
from .errors import RunFailure, UserError

log = logging.getLogger("dpo_exp")


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from .infra.runlock import RunFolderBusy
    from .pipeline import RunInterrupted, record_failure, run

    try:
        result = run(cfg)
    except (UserError, RunFailure) as exc:  # one clear line: bad input (exit 2) or a run that cannot go on (1)
        if _is_multirun():  # one bad job must not stop the sweep; it is marked failed in its summary
            log.error("job failed: %s", exc)
            if not isinstance(exc, RunFolderBusy):  # the folder belongs to another live process: leave it alone
                record_failure(cfg, exc)
            return None
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UserError) else 1)
    except RunInterrupted as exc:
        print(f"interrupted: {exc}. Run the same command again to resume.", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001
        if _is_multirun():
            log.exception("job failed: %s", exc)
            record_failure(cfg, exc)
            return None
        raise
    if result is None and _is_multirun():
        from .pipeline import objective_key

        log.warning(
            "objective %r is not a number in summary.json: a sweeper gets None for this job", objective_key(cfg)
        )
    return result


if __name__ == "__main__":
    main()
