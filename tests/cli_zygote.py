"""A warm start for the many one-line-error CLI checks: one process imports what every `python -m dpo_exp` run
imports before it validates (torch, transformers, TRL, datasets, Hydra; never a model's code), then forks a child
per request that runs the real entry point (`runpy`, as `python -m` does) with the request's argv, cwd and
environment, its stdout/stderr in files, and the names of every module it ended with. Each check then costs the
validation, not the ~6 s of imports (tests/test_bad_input.py: dozens of cases). Requests and replies: one JSON line
each on stdin/stdout."""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback

# What every CLI run imports before its first check; none is a model's code (the parent asserts it at start-up).
import datasets  # noqa: F401
import hydra  # noqa: F401
import omegaconf  # noqa: F401
import pandas  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
import trl  # noqa: F401
from transformers import TrainingArguments  # noqa: F401


def _child(request: dict) -> int:
    os.chdir(request["cwd"])
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    sys.argv = [request["module"], *request["args"]]
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported as a crash, as the interpreter would
        traceback.print_exc()
        code = 1
    with open(request["modules"], "w", encoding="utf-8") as handle:
        handle.write("\n".join(sorted(sys.modules)))
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main() -> None:
    print(json.dumps({"ready": sorted(sys.modules)}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(_child(request))
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
