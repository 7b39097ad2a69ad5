"""`python -m dpo_exp.compare PATH [PATH ...] [--out DIR] [--no-plots] [--wandb]`: see dpo_exp.compare.table."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import UserError
from .table import __doc__ as TABLE_DOC
from .table import compare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_exp.compare", description=TABLE_DOC.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="a multirun folder and/or run directories")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the first PATH)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log a sweep-summary W&B run in the sweep's group and build its W&B workspace",
    )
    args = parser.parse_args(argv)
    try:
        compare(args.paths, args.out, console=True, plots=not args.no_plots)
        if args.wandb:
            from .wandb_summary import log_sweep_summary

            logging.basicConfig(level=logging.INFO, format="%(message)s")  # e.g. "W&B: starting the online run"

            log_sweep_summary(args.out or args.paths[0], args.paths)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
