"""Judges of (prompt, completion): reward models from the hub or a local folder, and a reward model trained here.

Contract (`base.Judge`): `score(prompts, completions) -> list[float]` (higher = better) and `identity()`, a string
that changes whenever the scores could (it enters every cache key a judge touches). A judge is one module plus
one YAML in conf/reward/ whose `_target_` names its class; `build_judge` instantiates it. The sentiment scorers of
`dpo_exp.rewards` score whole texts; `score_completions` calls either kind.
"""

from .base import Judge, build_judge, is_judge_config, score_completions

__all__ = ["Judge", "build_judge", "is_judge_config", "score_completions"]
