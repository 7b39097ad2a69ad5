"""CLI: `python -m dpo_exp.app PATH [PATH ...] [--server-name HOST] [--server-port PORT] [--share]`.

PATH is a completed run directory or a multirun folder (every completed job). A PATH that is not a completed
run stops with one line `error: ...` and exit code 2 before any model loads.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..errors import UserError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dpo_exp.app", description="Reference vs DPO policy, side by side, in the browser."
    )
    parser.add_argument("paths", nargs="+", type=Path, help="completed run directories and/or multirun folders")
    parser.add_argument(
        "--server-name",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="interface to listen on (0.0.0.0 for every interface)",
    )
    parser.add_argument(
        "--server-port",
        type=int,
        default=None,
        help="port (default: GRADIO_SERVER_PORT or the first free one from 7860)",
    )
    parser.add_argument("--share", action="store_true", help="also open a public *.gradio.live link")
    parser.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda, mps")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="CPU threads for sampling (default: torch's); 1 makes a tiny model's pairs ~10x faster on a busy machine",
    )
    parser.add_argument(
        "--rate-seed",
        type=int,
        default=None,
        help="seed of the Rate tab's random sides, pairs and prompt order (default: different at every start)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by default: no usage pings
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ..infra.quiet import quiet_library_notices
    from .runs import find_runs

    try:
        runs = find_runs(args.paths)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ..models import resolve_device
    from .models import load_models
    from .ui import build_app

    quiet_library_notices()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    device = resolve_device(args.device)
    print(f"loading {len(runs)} run(s) on {device}: " + ", ".join(r.label for r in runs), flush=True)
    demo = build_app(runs, load_models(runs, device), args.rate_seed)
    allowed = sorted({str(r.path) for r in runs} | {str(r.sweep_dir) for r in runs if r.sweep_dir})
    demo.queue().launch(
        server_name=args.server_name,
        server_port=args.server_port,
        share=args.share,
        allowed_paths=allowed,
        inbrowser=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
