"""Every judge of the run's completions, in one home, under two protocols.

Pointwise (a score for one (prompt, completion), higher = better): `base.Judge` (`score(prompts, completions)`,
`identity()`), the reward models from the hub or a local folder (`reward_model.py`) and the one trained here
(`trained.py`); and the sentiment scorers of `sentiment.py`, which score whole texts (`score(texts)`).
`score_completions` calls either kind; `build_scorer` builds the one a `reward` option names (`kind`, or a judge
class's `_target_`). A judge is one module plus one YAML in conf/reward/.

Pairwise (which of two completions is better): `pairwise.PairwiseJudge` (`compare(prompts, a, b)`, each pair
asked in both orders, raw answers and verdicts kept; `identity()`), the LLM judge (`pairwise.LLMJudge` over a
local chat model (transformers or vLLM) or an OpenAI-compatible endpoint, `llm.py`), built from `eval.llm_judge` by
`build_llm_judge`; and people, the Rate tab's votes read through the same interface (`human_votes.HumanVotes`, which
also holds the vote file's one reader).
"""

from .base import Judge, build_judge, is_judge_config, score_completions
from .human_votes import HumanVerdict, HumanVotes
from .pairwise import LLMJudge, PairVerdict, PairwiseJudge
from .sentiment import SCORERS, Scorer, build_scorer

__all__ = [
    "SCORERS",
    "Judge",
    "HumanVerdict",
    "HumanVotes",
    "LLMJudge",
    "PairVerdict",
    "PairwiseJudge",
    "Scorer",
    "build_judge",
    "build_scorer",
    "is_judge_config",
    "score_completions",
]
