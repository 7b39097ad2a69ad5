"""`python -m dpo_exp.human export RUN [RUN ...] --out FILE`: the decided votes as prompt/chosen/rejected rows.

Train on them with `python -m dpo_exp dataset=preference_files dataset.path=FILE` (add `model.path=RUN/model` to
start from the rated policy). A bad RUN or FILE stops with one line `error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_exp.human", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export_cmd = commands.add_parser("export", help="write the decided votes as DPO training rows")
    export_cmd.add_argument("runs", nargs="+", type=Path, help="run folders (or a sweep folder) with human ratings")
    export_cmd.add_argument("--out", type=Path, required=True, help="FILE.jsonl, .csv or .parquet")
    args = parser.parse_args(argv)
    from .export import export

    try:
        counts = export(args.runs, args.out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {counts.rows} preference rows to {args.out} from {counts.votes} ratings "
        f"(dropped {counts.ties} ties, {counts.skips} skips, {counts.identical} pairs with identical texts)"
    )
    print(f"train on them: python -m dpo_exp dataset=preference_files dataset.path={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
