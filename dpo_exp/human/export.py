"""Decided votes as DPO training rows: prompt / chosen / rejected (ties and skips dropped), for
`dataset=preference_files dataset.path=FILE`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..infra.storage import atomic_write_text, write_jsonl
from .store import RATINGS_FILE, read_many

SUFFIXES = (".jsonl", ".csv", ".parquet")


@dataclass
class Exported:
    rows: int
    votes: int
    ties: int
    skips: int
    identical: int  # left and right texts equal: nothing to prefer, dropped


def rating_dirs(paths: list[Path]) -> list[Path]:
    """Run folders holding human/ratings.jsonl: each PATH itself, or every one below it (a sweep folder)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path} is not a folder (give run folders or a sweep folder)")
        below = [p.parent.parent for p in sorted(path.glob(f"**/{RATINGS_FILE}"))]
        if not below:
            raise UserError(f"{path} holds no {RATINGS_FILE} (rate in the app's Rate tab first)")
        found += below
    return list(dict.fromkeys(p.resolve() for p in found))


def preference_rows(records: list[dict]) -> tuple[list[dict], Exported]:
    """prompt/chosen/rejected rows of the left/right votes, plus who voted and which models wrote them."""
    rows, identical = [], 0
    decided = [r for r in records if r.get("choice") in ("left", "right")]
    for record in decided:
        won, lost = (
            (record["left"], record["right"]) if record["choice"] == "left" else (record["right"], record["left"])
        )
        if won["text"] == lost["text"]:
            identical += 1
            continue
        rows.append(
            {
                "prompt": record["prompt"],
                "chosen": won["text"],
                "rejected": lost["text"],
                "chosen_model": won["model"],
                "rejected_model": lost["model"],
                "rater": record.get("rater"),
                "vote_id": record.get("vote_id"),
            }
        )
    counts = Exported(
        len(rows),
        len(records),
        sum(r.get("choice") == "tie" for r in records),
        sum(r.get("choice") == "skip" for r in records),
        identical,
    )
    return rows, counts


def export(paths: list[Path], out: Path) -> Exported:
    """Write the decided votes of the runs under `paths` to `out` (.jsonl, .csv or .parquet)."""
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise UserError(f"--out {out}: use one of {', '.join(SUFFIXES)}")
    rows, counts = preference_rows(read_many(rating_dirs(paths)))
    if not rows:
        raise UserError(
            f"no decided votes to export ({counts.votes} ratings: {counts.ties} ties, {counts.skips} skips)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".jsonl":
        write_jsonl(out, rows)
    else:
        import pandas as pd

        frame = pd.DataFrame(rows)
        if out.suffix == ".csv":
            atomic_write_text(out, frame.to_csv(index=False))
        else:
            frame.to_parquet(out, index=False)
    return counts
