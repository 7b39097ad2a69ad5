"""Workflows, one module each, chosen by `_target_` in conf/dataset/*.yaml; each returns the same `TaskResult`.

- `preference`: pairs from the hub or local files (UltraFeedback, HH-RLHF, any prompt/chosen/rejected file);
- `sentiment`: IMDb prompts -> samples from the reference -> sentiment scores -> best/worst pairs.
"""

from .base import Artifact, HeldOut, StageEnv, Task, TaskResult, build_task

__all__ = ["Artifact", "HeldOut", "StageEnv", "Task", "TaskResult", "build_task"]
