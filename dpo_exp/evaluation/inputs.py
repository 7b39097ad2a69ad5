"""What an evaluation reads: its settings, its scorer and the held-out prompts and pairs (saved for re-evaluation)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..data.conversation import prompt_key, unique_prompts
from ..data.schema import PAIR_ID_COLUMNS, PreferenceData
from ..errors import UserError
from ..infra.storage import atomic_write_json, read_json
from ..schema import check_eval_reward, compose_config, reward_option

if TYPE_CHECKING:  # torch / transformers load lazily, so a bad run_dir is reported in a second
    from .metrics import SampleSettings

PREFIX = "eval/"
INPUTS_FILE = "eval_inputs.json"  # the held-out prompts and pairs the run evaluated on (for re-evaluation)
RESULTS_FILE = "evaluation.json"  # full results: metrics, margins, settings
SAMPLES_FILE = "samples.md"
TRACE_FILE = "eval_trace.jsonl"  # the reward-KL trace during training (evaluation.trace writes it)
PLOT_FILE = "plots/reward_kl.png"


def eval_seed(cfg: DictConfig) -> int:
    return int(cfg.eval.seed if cfg.eval.get("seed") is not None else cfg.seed)


def sample_settings(cfg: DictConfig, progress: bool = False) -> SampleSettings:
    from .metrics import SampleSettings

    ev = cfg.eval
    return SampleSettings(
        gen_cfg=cfg.generation,
        num_samples=int(ev.num_samples),
        max_new_tokens=int(ev.max_new_tokens),
        seed=eval_seed(cfg),
        logprob_batch_size=int(ev.get("batch_size") or cfg.trainer.per_device_eval_batch_size),
        score_with_prompt=bool(ev.get("score_with_prompt")),
        progress=progress,
    )


_SCORERS: dict[str, Any] = {}  # scorers built in this process (the trace and the final evaluation share one)


def check_eval_sources(cfg: DictConfig) -> None:
    """Before any model loads: the LLM judge (its chat template, or its endpoint answering within the stated wait)
    and the harness's tasks (lm-eval installed, every task known, its data present)."""
    from ..judges.llm import check_llm_judge
    from .harness import check_harness

    if cfg.eval.enabled:
        check_llm_judge(cfg.eval.get("llm_judge"))
        check_harness(cfg.eval.get("harness"))


def build_eval_scorer(cfg: DictConfig) -> tuple[Any, str | None, str | None]:
    """(scorer, its name, why reward metrics are skipped). `eval.reward` (eval/reward=NAME) wins over the run's
    `reward`."""
    from ..judges import build_scorer
    from ..judges.sources import check_judge_sources

    check_eval_reward(cfg)
    check_judge_sources(cfg, ["eval.reward" if cfg.eval.get("reward") is not None else "reward"])  # its own key
    context = cfg
    if cfg.eval.get("reward") is not None:  # eval/reward=NAME: that option's content, in place of the run's `reward`
        context = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # a copy whose `reward` is replaced,
        with open_dict(context):  # so ${...} in the option resolve
            context.reward = cfg.eval.reward
    reward_cfg = context.get("reward")
    kind = str(reward_cfg.get("kind", "none")) if reward_cfg is not None else "none"
    if kind == "none":
        return None, None, "no scorer: the run has reward=none and eval.reward is not set (e.g. eval/reward=vader)"
    # a trained judge's held-out accuracy depends on the run's held-out pairs: seed and evaluation size in the key
    held = {"seed": cfg.get("seed"), "num_prompts": cfg.eval.get("num_prompts")}
    key = OmegaConf.to_yaml(OmegaConf.create({"reward": reward_cfg, "dataset": cfg.dataset, **held}))
    if key not in _SCORERS:
        _SCORERS.clear()  # keep at most one (a scorer can hold a model)
        _SCORERS[key] = build_scorer(reward_cfg, context)
    return _SCORERS[key], kind, None


def eval_pairs(rows: list[dict]) -> list[dict]:
    """The columns of held-out pairs the implicit reward reads (sampled pairs carry the token ids trained on)."""
    keys = ("prompt", "chosen", "rejected", *PAIR_ID_COLUMNS)
    return [{k: r[k] for k in keys if k in r} for r in rows]


@dataclass
class EvalInputs:
    """Held-out prompts for sampling and held-out preference pairs for the implicit reward."""

    prompts: list[Any]  # plain text, or conversations (lists of messages) for a chat model
    pairs: list[dict]
    dropped_seen_in_training: int = 0
    references: dict[str, Any] = field(default_factory=dict)  # prompt_key(prompt) -> the dataset's chosen response
    sources: dict[str, str] = field(default_factory=dict)  # prompt_key(prompt) -> its source (a mixture; else empty)

    def reference_for(self, prompt: Any) -> Any:
        """The dataset's chosen response to a held-out prompt (from `references`, else its first held-out pair)."""
        key = prompt_key(prompt)
        if key in self.references:
            return self.references[key]
        return next((r["chosen"] for r in self.pairs if prompt_key(r.get("prompt")) == key), None)

    @classmethod
    def from_data(cls, data: PreferenceData) -> EvalInputs:
        """The held-out prompts minus any prompt that is also a training prompt; the held-out pairs."""
        train_prompts = {prompt_key(r["prompt"]) for r in data.train}
        prompts = unique_prompts(data.eval_prompts)
        kept = [p for p in prompts if prompt_key(p) not in train_prompts]
        held = {prompt_key(p) for p in kept}
        references = {k: v for k, v in data.eval_references.items() if k in held}
        return cls(kept, eval_pairs(data.eval), len(prompts) - len(kept), references, dict(data.eval_sources))

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> EvalInputs | None:
        raw = read_json(path)
        return cls(**raw) if raw else None


def load_run_config(run_dir: Path, args: DictConfig | None = None) -> DictConfig:
    """The run's saved config, its `eval` / `generation` blocks completed with today's defaults (settings the run
    predates), then the `eval.*` / `eval/reward` / `generation.*` overrides named on the command line applied.

    `args` is conf/evaluate.yaml as composed (the same eval and generation defaults as a run); without it (the
    app) the defaults are composed here."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UserError(f"run_dir={run_dir} has no .hydra/config.yaml (not a dpo_exp run directory)")
    cfg = OmegaConf.load(path)
    defaults = args if args is not None else compose_config("evaluate", ["run_dir=."])
    with open_dict(cfg):
        saved_reward = (cfg.get("eval") or {}).get("reward")
        if isinstance(saved_reward, str):  # saved before eval/reward was a config group
            cfg.eval.reward = reward_option(saved_reward)
        for block in ("eval", "generation"):
            cfg[block] = OmegaConf.merge(OmegaConf.to_container(defaults[block]), cfg.get(block) or {})
        for key in _named_overrides(("eval", "generation")) if args is not None else []:
            OmegaConf.update(cfg, key, OmegaConf.select(args, key), merge=False)
    return cfg


def _named_overrides(blocks: tuple[str, ...]) -> list[str]:
    """Dotted keys under `blocks` that this Hydra job's command line overrides (eval/reward=X -> eval.reward)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return []
    parsed = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    keys = [o.key_or_group.replace("/", ".") for o in parsed]
    return [k for k in keys if k.split(".")[0] in blocks]
