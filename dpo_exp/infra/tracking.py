"""Experiment tracking: Weights & Biases when it can start, silently nothing when it cannot.

Rules: never prompt, never hang, never kill a run. With no API key the run is logged offline inside the run
directory (`wandb sync` uploads it later). An online start is announced at once and waits at most
`logger.init_timeout` seconds before falling back to offline. A W&B failure at start or mid-run is reported once and
the run continues with its disk artifacts. Charts plot against `train/global_step` (STEP_METRIC), and a resumed run
does not log again the steps its W&B run already holds (`skip_replayed_steps`).
"""

from __future__ import annotations

import logging
import netrc
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STEP_METRIC = "train/global_step"  # the x-axis of every chart (as transformers' WandbCallback defines it)
DEFAULT_INIT_TIMEOUT = 30.0  # seconds; conf/logger/wandb.yaml's logger.init_timeout overrides it


def has_wandb_credentials() -> bool:
    """True when an API key is configured (environment or ~/.netrc), i.e. online logging can work."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
        return bool(auth and auth[2])
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """auto -> online with credentials, else offline. (WANDB_MODE reaches here through conf/logger/wandb.yaml's
    `${oc.env:WANDB_MODE,auto}`, so an explicit logger.mode= on the command line wins over it.)"""
    if mode == "auto":
        return "online" if has_wandb_credentials() else "offline"
    return mode


class Tracker:
    """Minimal tracker interface; the base class tracks nothing."""

    active = False
    run_id: str | None = None
    entity: str | None = None  # where the run logs (None offline: `wandb sync` picks the entity)
    project: str | None = None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...

    def summary(self, metrics: dict[str, Any]) -> None: ...

    def remove_from_summary(self, keys: list[str]) -> None: ...

    def skip_replayed_steps(self, logged_step: int) -> None: ...

    def rerun_fields(self) -> dict[str, Any]:
        """What summary.json keeps for a rerun: `wandb_step`, how far the W&B run holds train/global_step (read
        back by `skip_replayed_steps`); nothing without a W&B run (an earlier attempt's value stays)."""
        return {}

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None: ...

    def image(self, key: str, path: str | Path) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class WandbTracker(Tracker):
    """Wraps a wandb run; any exception from W&B disables it with one warning instead of failing the job."""

    active = True

    def __init__(self, run: Any, mode: str, resumed: bool = False):
        self.run = run
        self.mode = mode
        self.run_id = run.id
        self.entity = getattr(run, "entity", None) or None
        self.project = getattr(run, "project", None) or None
        self.run_dir = Path(run.dir).parent if getattr(run, "dir", None) else None  # .../offline-run-*
        self.resumed = resumed  # continues the W&B run of an earlier attempt
        self.replayed_until = 0  # the run holds the steps up to here from that attempt: not logged again
        self.last_step = 0  # the highest train/global_step logged by this attempt

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if not self.active:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never end a run
            self.active = False
            log.warning("W&B failed during %s (%s); continuing without it. Run `wandb sync` later.", what, exc)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.replayed_until and int(metrics.get(STEP_METRIC, self.replayed_until + 1)) <= self.replayed_until:
            return  # a resumed run replays the steps after its checkpoint: W&B has them from the earlier attempt
        self._guard("log", self.run.log, metrics, step=step)
        if self.active and isinstance(metrics.get(STEP_METRIC), int):
            self.last_step = max(self.last_step, metrics[STEP_METRIC])

    def rerun_fields(self) -> dict[str, Any]:
        return {"wandb_step": max(self.last_step, self.replayed_until)}

    def summary(self, metrics: dict[str, Any]) -> None:
        self._guard("summary", self.run.summary.update, metrics)

    def remove_from_summary(self, keys: list[str]) -> None:
        """Delete summary keys (e.g. the eval/* results a re-evaluation no longer produces)."""

        def remove() -> None:
            for key in keys:
                del self.run.summary[key]

        self._guard("summary", remove)

    def skip_replayed_steps(self, logged_step: int) -> None:
        """A rerun resumes training at the last checkpoint and replays the steps after it, which the resumed W&B run
        may already hold (a W&B run can only append; `resume_from`, W&B's rewind, exists only on the server and
        counts `_step`). Rows at `train/global_step` up to what the run holds are not logged again: `logged_step`
        is what the earlier attempt recorded when it closed its W&B run (summary.json `wandb_step`); online, the
        server's summary also says how far it got (an attempt killed before it could record anything)."""
        if not self.resumed:
            return
        held = int(logged_step or 0)
        if self.mode == "offline":  # a SIGKILLed attempt recorded no wandb_step: its own folder says what it holds
            from .wandb_offline import offline_held_step

            held = max(held, offline_held_step(self.run, STEP_METRIC))
        if self.mode == "online":
            try:
                held = max(held, int(self.run.summary.get(STEP_METRIC) or 0))
            except Exception:  # noqa: BLE001 - the server's summary is a bonus, never a failure
                pass
        if held > 0:
            self.replayed_until = held
            log.info("W&B: the resumed run holds steps up to %d; replayed steps are not logged again", held)

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        import wandb

        self._guard("table", lambda: self.run.log({key: wandb.Table(columns=columns, data=rows)}))

    def image(self, key: str, path: str | Path) -> None:
        import wandb

        self._guard("image", lambda: self.run.log({key: wandb.Image(str(path))}))

    def finish(self, exit_code: int = 0) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            log.warning("W&B finish failed (%s); the offline files can be uploaded with `wandb sync`.", exc)
        self.run = None
        self.active = False
        if self.mode == "offline":
            log.info("W&B offline run saved under %s; upload with `wandb sync %s`", self.run_dir, self.run_dir)


def start_tracker(
    logger_cfg: Any,
    run_dir: Path,
    name: str,
    group: str,
    tags: list[str],
    config: dict[str, Any],
    resume_id: str | None = None,
) -> Tracker:
    """Start a W&B run (or resume `resume_id`); return a do-nothing Tracker when disabled or failing."""
    from .distributed import is_main_process

    if not logger_cfg.get("enabled") or not is_main_process():  # one W&B run per job, from the main process
        return Tracker()
    mode = resolve_mode(str(logger_cfg.get("mode", "auto")))
    if mode == "disabled":
        return Tracker()
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    try:
        import wandb
        from wandb.sdk.lib.runid import generate_id

        run_id = resume_id or generate_id()  # one id for the online try and its offline fallback
        kwargs = dict(
            project=logger_cfg.get("project") or "dpo_exp",
            entity=logger_cfg.get("entity"),
            group=group,
            name=name,
            tags=sorted(set(tags))[:64],
            job_type=logger_cfg.get("job_type") or "dpo",
            config=config,
            dir=str(logger_cfg.get("dir") or run_dir),
            id=run_id,
            resume="allow" if resume_id else None,
            reinit="finish_previous",
        )
        timeout = float(logger_cfg.get("init_timeout") or DEFAULT_INIT_TIMEOUT)
        run, mode = _init_run(wandb, mode, kwargs, timeout)
        _define_step_metric(run)
    except Exception as exc:  # noqa: BLE001 - W&B must never stop a run
        log.warning("W&B could not start (%s): continuing with disk artifacts only.", str(exc).splitlines()[0])
        return Tracker()
    return WandbTracker(run, mode, resumed=resume_id is not None and run.id == resume_id)


def _init_run(wandb: Any, mode: str, kwargs: dict[str, Any], timeout: float) -> tuple[Any, str]:
    """(run, mode): wandb.init in `mode`; an online start is announced and, failing, falls back to offline."""
    earlier = _run_folders(kwargs["dir"], kwargs["id"])  # an earlier attempt's folders of this run: never removed
    if mode == "online":
        log.info(
            "W&B: starting the online run %s (project %s); without an answer within %.0f s (logger.init_timeout) "
            "it logs offline instead",
            kwargs["id"],
            kwargs["project"],
            timeout,
        )
    try:
        return wandb.init(mode=mode, settings=_settings(wandb, timeout, mode), **kwargs), mode
    except Exception as exc:  # noqa: BLE001
        if mode != "online":
            raise
        log.warning(
            "W&B online start failed (%s): logging offline into %s instead; upload later with `wandb sync`.",
            str(exc).splitlines()[0],
            kwargs["dir"],
        )
        return _start_offline(wandb, kwargs, timeout, earlier), "offline"


def _run_folders(wandb_dir: str, run_id: str) -> set[Path]:
    """W&B's folders of run `run_id` under `wandb_dir` (online `run-*` and `offline-run-*`)."""
    return set((Path(wandb_dir) / "wandb").glob(f"*run-*-{run_id}"))


def _define_step_metric(run: Any) -> None:
    """Every metric plots against train/global_step, filled into rows that lack it (tables, images), as
    transformers' WandbCallback sets it up; W&B's default x-axis `_step` counts every log call."""
    run.define_metric(STEP_METRIC)
    run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)


def _start_offline(wandb: Any, kwargs: dict[str, Any], timeout: float, earlier: set[Path]) -> Any:
    """The offline fallback after a failed online start, under the same id when the local service lets go of it
    (else a new id); the failed tries' folders are removed, so `wandb sync` sees one run. `earlier` (folders of
    the same run from earlier attempts, which may hold unsynced records) are kept."""
    from wandb.sdk.lib.runid import generate_id

    run_id = kwargs["id"]
    wandb.teardown()  # the service still holds the failed online stream under this id
    # offline needs no network, only a fresh local W&B service: give a loaded machine time to start it
    offline = _settings(wandb, max(timeout, OFFLINE_INIT_TIMEOUT), "offline")
    try:
        run = wandb.init(mode="offline", settings=offline, **kwargs)
    except Exception as again:  # noqa: BLE001
        # seen under load: the local service still holds the failed online stream ("run ID ... is in use")
        log.warning("W&B offline start under id %s failed (%s): new id", run_id, str(again).splitlines()[0])
        wandb.teardown()
        run = wandb.init(mode="offline", settings=offline, **{**kwargs, "id": generate_id()})
    failed_tries = _run_folders(kwargs["dir"], run_id) - earlier
    if run.id == run_id:  # the online try's empty folder only; the offline run under this id is the live one
        failed_tries = {f for f in failed_tries if not f.name.startswith("offline-")}
    for failed in failed_tries:
        shutil.rmtree(failed, ignore_errors=True)
    return run


OFFLINE_INIT_TIMEOUT = 90.0  # seconds for the offline fallback's start (local service only; cannot hang on a network)


def _settings(wandb: Any, init_timeout: float, mode: str) -> Any:
    # the mode is also set here: wandb's environment (WANDB_MODE) would otherwise win over the init argument
    return wandb.Settings(init_timeout=init_timeout, silent=True, console="off", x_disable_stats=True, mode=mode)
