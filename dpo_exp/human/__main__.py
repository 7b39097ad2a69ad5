"""`python -m dpo_exp.human export RUN [RUN ...] --out FILE [--format pairs|kto]`: the decided votes as training rows.

Pairs (prompt/chosen/rejected): train on them with `python -m dpo_exp dataset=preference_files dataset.path=FILE`
(add `model.path=RUN/model` to start from the rated policy). `--format kto` writes binary feedback instead
(prompt/completion/label: the winner desirable, the loser undesirable): `method=kto dataset=feedback dataset.path=FILE`. A bad RUN or FILE stops with one line `error: ...` and exit code 2.
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
    export_cmd.add_argument(
        "--format", default="pairs", choices=("pairs", "kto"), help="pairs (default) or kto (binary feedback)"
    )
    args = parser.parse_args(argv)
    from .export import export

    try:
        counts = export(args.runs, args.out, args.format)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kind = "binary-feedback" if args.format == "kto" else "preference"
    print(
        f"wrote {counts.rows} {kind} rows to {args.out} from {counts.votes} ratings "
        f"(dropped {counts.ties} ties, {counts.skips} skips, {counts.identical} pairs with identical texts)"
    )
    if args.format == "kto":
        print(f"train on them: python -m dpo_exp method=kto dataset=feedback dataset.path={args.out}")
    else:
        print(f"train on them: python -m dpo_exp dataset=preference_files dataset.path={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
