"""hydra-submitit-launcher's launchers (conf/hydra/launcher/slurm_gpu.yaml, local_submitit.yaml), with failed jobs
that show as failed.

`python -m dpo_exp -m` records a failed job (summary.json, W&B) and returns None, so that the sweep goes on. Under
the plugin's own launchers that job's submitit task then ends "Job completed successfully". Here its task raises
`JobFailed` instead, so submitit (and Slurm) record it as failed, and `launch` waits for every job and hands the
sweeper None for a failed one, as the in-process launcher does, instead of stopping at the first. The plugin has no
hook for either (its `launch` stops at the first failed task), hence these subclasses; Hydra instantiates launchers
only from the `hydra_plugins` package, hence their place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as plugin
from omegaconf import OmegaConf

from dpo_exp.infra import job_outcome

log = logging.getLogger(__name__)


class JobFailed(RuntimeError):
    """A sweep job that failed: its submitit task fails with this (the reason is in the job's summary.json)."""


class _FailedTasksFail(plugin.BaseSubmititLauncher):
    """What the two launchers below add to the plugin's: the task fails with its job; `launch` waits for all."""

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
    ) -> JobReturn:
        """The task: the plugin's (compose the job's config, run it), then raise when the job failed."""
        job_outcome.note_failure(None)  # a requeued task starts clean
        ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        if job_outcome.failure() is not None:
            raise JobFailed(f"job #{job_num} failed: {job_outcome.failure()}")
        if ret.status is JobStatus.FAILED:  # an exception the job did not catch (`return_value` would re-raise it)
            raise JobFailed(f"job #{job_num} failed: {ret._return_value!r}") from ret._return_value
        return ret

    def executor(self) -> Any:
        """The submitit executor with this launcher's parameters, as the plugin's `launch` builds it."""
        import submitit

        params = dict(self.params)
        init_keys = {"submitit_folder", "max_num_timeout"}
        init = {"folder": params["submitit_folder"]}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base_keys = set(OmegaConf.structured(plugin.BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base_keys else f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k not in init_keys}
        )
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """The plugin's `launch` (same executor, parameters and job arguments), but it waits for every job and a
        failed one returns None to the sweeper rather than raising at the first."""
        assert self.config is not None
        executor = self.executor()
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, self.config.hydra.sweep.dir)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        return [_job_return(job, overrides) for job, overrides in zip(jobs, job_overrides)]


def _job_return(job: Any, overrides: Sequence[str]) -> JobReturn:
    """Task 0's JobReturn; for a failed job, None (as `python -m dpo_exp` returns in-process for a failed job: the
    status is COMPLETED so that Hydra's basic sweeper goes on; the failure is in the job's summary.json)."""
    from submitit.core.utils import UncompletedJobError

    try:
        return job.results()[0]
    except UncompletedJobError as exc:
        lines = reversed(str(exc).splitlines())  # the task's traceback; a JobFailed names the job and its reason
        reason = next((line.split("JobFailed: ", 1)[1] for line in lines if "JobFailed: " in line), "")
        log.error("submitit job %s failed%s (log: %s)", job.job_id, f": {reason}" if reason else "", job.paths.stderr)
        failed = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
        failed.return_value = None
        return failed


class LocalLauncher(_FailedTasksFail, plugin.LocalLauncher):
    """`hydra/launcher=local_submitit`: submitit on this machine (one process per task)."""


class SlurmLauncher(_FailedTasksFail, plugin.SlurmLauncher):
    """`hydra/launcher=slurm_gpu`: one Slurm job per sweep job."""
