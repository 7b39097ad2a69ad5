"""`python -m dpo_exp [overrides]`: compose the config with Hydra and run one DPO job per (multirun) job.

In a multirun (`-m`), a failing job is recorded as failed (summary.json `status: failed` + `error`, and a W&B run
that finishes with exit code 1) and returns None, so the launcher goes on with the remaining jobs and a sweeper
(Optuna) counts it as a failed trial; the sweep then ends with a table of its failed jobs and exit status 1
(`dpo_exp.compare.failures`), and under dpo_exp's submitit launchers the job's task fails. Each job returns
`summary[cfg.objective]` for sweepers to optimise. In a submitit job of several tasks, each task is one process of
a data-parallel run (`join_submitit_job`).
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


def _job_failed(cfg: DictConfig, exc: BaseException, record: bool) -> None:
    """A multirun job failed: record it in its run folder (process 0 of a data-parallel job) and note it for the
    launcher, which fails the job's submitit task."""
    from .infra.distributed import is_main_process
    from .infra.job_outcome import note_failure
    from .pipeline import record_failure

    if record and is_main_process():
        record_failure(cfg, exc)
    note_failure(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _note_refusal(cfg: DictConfig, exc: BaseException) -> None:
    from .infra.distributed import is_main_process
    from .infra.runinfo import run_identity
    from .infra.runrecord import note_refusal

    if is_main_process():
        note_refusal(run_identity(cfg).run_dir, str(exc))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from .infra.distributed import join_submitit_job
    from .infra.quiet import quiet_library_notices
    from .infra.runlock import RunFolderBusy
    from .infra.runrecord import RunRecordMismatch
    from .pipeline import RunInterrupted, run

    join_submitit_job()  # a submitit job of several tasks: one data-parallel process per task
    quiet_library_notices()  # e.g. no "Running in WANDB offline mode" with logger=none
    try:
        result = run(cfg)
    except (UserError, RunFailure) as exc:  # one clear line: bad input (exit 2) or a run that cannot go on (1)
        if _is_multirun():  # one bad job must not stop the sweep; it is marked failed in its summary
            log.error("job failed: %s", exc)
            # a folder in use by another live process, or holding another command's run: leave it alone
            _job_failed(cfg, exc, record=not isinstance(exc, (RunFolderBusy, RunRecordMismatch)))
            if isinstance(exc, RunRecordMismatch):  # noted beside the record, for the sweep's failed-jobs table
                _note_refusal(cfg, exc)
            return None
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UserError) else 1)
    except RunInterrupted as exc:
        print(f"interrupted: {exc}. Run the same command again to resume.", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001
        if _is_multirun():
            log.exception("job failed: %s", exc)
            _job_failed(cfg, exc, record=True)
            return None
        raise
    if result is None and _is_multirun():
        from .objective import objective_key

        log.warning(
            "objective %r is not a number in summary.json: a sweeper gets None for this job", objective_key(cfg)
        )
    return result


if __name__ == "__main__":
    main()
