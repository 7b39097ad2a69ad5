"""`python -m dpo_exp.evaluate run_dir=PATH [eval.num_prompts=...]`: re-evaluate a finished run (entry point).

The run's own config is loaded with the non-null `eval`/`generation` values of conf/evaluate.yaml applied; the
tokenizer, held-out inputs, reference and policy are rebuilt from what the run saved, and the same seed gives the
same numbers (run_dir/evaluation.json, samples.md, plots/reward_kl.png and the eval/ keys of summary.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from . import CONF_DIR
from .errors import UserError


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(args: DictConfig) -> None:
    from .evaluation.inputs import load_run_config
    from .infra.quiet import quiet_library_notices
    from .infra.storage import read_json
    from .infra.tracking import start_tracker
    from .pipeline import SUMMARY, evaluate_run

    quiet_library_notices()
    run_dir = Path(str(args.run_dir))
    tracker = None
    try:
        cfg = load_run_config(run_dir, args)  # a UserError when run_dir is not a dpo_exp run directory
        summary = read_json(run_dir / SUMMARY) or {}
        if args.wandb and summary.get("wandb_id"):
            name, group = summary.get("name", "dpo"), summary.get("group", "dpo")
            tracker = start_tracker(cfg.logger, run_dir, name, group, [], {}, resume_id=summary["wandb_id"])
        results = evaluate_run(run_dir, cfg, tracker)
        if tracker is not None:  # the earlier evaluation's keys this one lacks (eval/bon_* after best_of_n=[])
            tracker.remove_from_summary(sorted(k for k in summary if k.startswith("eval/") and k not in results))
            tracker.finish(exit_code=0)
    except BaseException as exc:
        if tracker is not None:  # the resumed W&B run is closed as failed, not left running
            tracker.finish(exit_code=1)
        if isinstance(exc, UserError):
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        raise
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}, indent=2))


if __name__ == "__main__":
    main()
