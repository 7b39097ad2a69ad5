"""What the compared runs were computed with (the device, CPU threads, library versions), and a note when it differs:
the same settings computed another way round differently, and training amplifies that into differences a reader
would otherwise put down to the settings (on the IMDb headline, a warm start built on 1 CPU thread instead of 2
moved the KL from 6.1 to 5.0 nats; docs/concepts.md#caches-their-keys-and-reproducibility)."""

from __future__ import annotations

from typing import Any

import pandas as pd

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate")  # those whose kernels or defaults change numbers


def computed_with(summary: dict[str, Any]) -> dict[str, str | None]:
    """`computed_on` (the GPU's name, or "cpu, N threads") and `software` (the libraries' versions) of one run,
    from its summary's `environment`; None where the run did not record it."""
    env = summary.get("environment") or {}
    if not env:
        return {"computed_on": None, "software": None}
    threads = env.get("torch_threads")
    on = env.get("gpu") or (f"cpu, {threads} thread{'' if threads == 1 else 's'}" if threads else None)
    versions = env.get("versions") or {}
    software = ", ".join(f"{name} {versions[name]}" for name in LIBRARIES if versions.get(name)) or None
    return {"computed_on": on, "software": software}


def provenance_notes(df: pd.DataFrame) -> list[str]:
    """A note for each of `computed_on` / `software` on which the completed runs differ."""
    done = df[df["status"] == "completed"] if "status" in df.columns else df
    notes = []
    for column, what in (("computed_on", "devices or CPU thread counts"), ("software", "library versions")):
        values = done[column].dropna().unique() if column in done.columns else []
        if len(values) > 1:
            notes.append(
                f"these runs were computed with {len(values)} different {what} (column `{column}`: "
                f"{'; '.join(map(str, values))}): the same settings round differently there, and training amplifies "
                "it (on the IMDb headline, 1 CPU thread instead of 2 moved the KL from 6.1 to 5.0 nats), so small "
                "differences between these runs may not come from their settings"
            )
    return notes
