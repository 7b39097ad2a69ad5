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
    device = str((summary.get("model") or {}).get("device") or ("cuda" if env.get("gpu") else "cpu"))
    threads = env.get("torch_threads")
    if device.startswith("cpu"):
        on = f"cpu, {threads} thread{'' if threads == 1 else 's'}" if threads else None
    else:
        on = env.get("gpu") or device
    versions = env.get("versions") or {}
    software = ", ".join(f"{name} {versions[name]}" for name in LIBRARIES if versions.get(name)) or None
    return {"computed_on": on, "software": software}


def completed_values(df: pd.DataFrame, column: str) -> list[Any]:
    """The distinct values of `column` among the completed runs (missing values left out)."""
    done = df[df["status"] == "completed"] if "status" in df.columns else df
    return list(done[column].dropna().unique()) if column in done.columns else []


def provenance_notes(df: pd.DataFrame) -> list[str]:
    """A note for each of `computed_on` / `software` on which the completed runs differ."""
    notes = []
    for column, what, example in (
        (
            "computed_on",
            "devices or CPU thread counts",
            "on the IMDb headline 1 CPU thread instead of 2 moved the KL from 6.1 to 5.0 nats",
        ),
        ("software", "library versions", "another version's kernels or defaults can change numbers as much"),
    ):
        values = completed_values(df, column)
        if len(values) > 1:
            notes.append(
                f"these runs were computed with {len(values)} different {what} (column `{column}`: "
                f"{'; '.join(map(str, values))}): the same settings round differently there, and training amplifies "
                f"it ({example}), so part of the differences between these runs may not come from their settings"
            )
    return notes
