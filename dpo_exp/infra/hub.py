"""Hugging Face hub access: an unreachable hub (no network, or the offline flags) becomes one clear line naming the
hub id, the offline flags and the local alternative, instead of a chain of tracebacks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import UserError

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
# Words of the messages transformers / datasets / huggingface_hub use when the hub cannot be reached.
_UNREACHABLE = (
    "couldn't connect",
    "could not connect",
    "couldn't reach",
    "offline",
    "connection",
    "timed out",
    "name resolution",
    "network is unreachable",
    "max retries",
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_unreachable(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says the hub could not be reached or offline mode is on."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        hub_types: tuple[type, ...] = (OfflineModeIsEnabled, LocalEntryNotFoundError)
    except ImportError:  # pragma: no cover - huggingface_hub always comes with transformers
        hub_types = ()
    for item in _chain(exc):
        if isinstance(item, (ConnectionError, TimeoutError, *hub_types)):
            return True
        if isinstance(item, OSError) and any(word in str(item).lower() for word in _UNREACHABLE):
            return True
    return False


def offline_flags() -> str:
    flags = [f"{name}={os.environ[name]}" for name in OFFLINE_FLAGS if os.environ.get(name)]
    return ", ".join(flags) if flags else "no offline flag set (HF_HUB_OFFLINE=1 makes this fail at once)"


@contextmanager
def hub_access(what: str, hub_id: str, local_option: str) -> Iterator[None]:
    """Around a hub download: unreachable hub -> UserError `<what> <hub_id> is not in the local cache and the hub
    cannot be reached (<flags>); ... use <local_option>=...`."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - only hub reachability errors are turned into a line
        if not is_unreachable(exc):
            raise
        raise UserError(
            f"{what} {hub_id!r} is not in the local Hugging Face cache and the hub cannot be reached "
            f"({offline_flags()}); connect once to download it, or use a local copy: {local_option}=PATH"
        ) from None
