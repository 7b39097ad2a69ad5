"""What an evaluation reads: its settings, its scorer and the held-out prompts and pairs (saved for re-evaluation)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from .. import CONF_DIR
from ..data.schema import PAIR_ID_COLUMNS, PreferenceData
from ..errors import UserError
from ..infra.storage import atomic_write_json, read_json

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


def build_eval_scorer(cfg: DictConfig) -> tuple[Any, str | None, str | None]:
    """(scorer, its name, why reward metrics are skipped). `eval.reward` wins over the run's `reward`."""
    from ..rewards import build_scorer

    name = cfg.eval.get("reward")
    if name:
        if not (CONF_DIR / "reward" / f"{name}.yaml").is_file():
            options = sorted(p.stem for p in (CONF_DIR / "reward").glob("*.yaml"))
            raise UserError(f"eval.reward={name!r} is not one of {options} (conf/reward/*.yaml)")
        run_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # a copy whose `reward` is replaced,
        with open_dict(run_cfg):  # so ${...} in the option resolve
            run_cfg.reward = OmegaConf.load(CONF_DIR / "reward" / f"{name}.yaml")
        reward_cfg, context, label = run_cfg.reward, run_cfg, str(name)
    else:
        kind = cfg.reward.get("kind", "none") if cfg.get("reward") is not None else "none"
        if kind == "none":
            return None, None, "no scorer: the run has reward=none and eval.reward is not set (e.g. eval.reward=vader)"
        reward_cfg, context, label = cfg.reward, cfg, str(kind)
    key = OmegaConf.to_yaml(OmegaConf.create({"reward": reward_cfg, "dataset": cfg.dataset}))
    if key not in _SCORERS:
        _SCORERS.clear()  # keep at most one (a scorer can hold a model)
        _SCORERS[key] = build_scorer(reward_cfg, context)
    return _SCORERS[key], label, None


def eval_pairs(rows: list[dict]) -> list[dict]:
    """The columns of held-out pairs the implicit reward reads (sampled pairs carry the token ids trained on)."""
    keys = ("prompt", "chosen", "rejected", *PAIR_ID_COLUMNS)
    return [{k: r[k] for k in keys if k in r} for r in rows]


@dataclass
class EvalInputs:
    """Held-out prompts for sampling and held-out preference pairs for the implicit reward."""

    prompts: list[str]
    pairs: list[dict]
    dropped_seen_in_training: int = 0

    @classmethod
    def from_data(cls, data: PreferenceData) -> EvalInputs:
        """The held-out prompts minus any prompt that is also a training prompt; the held-out pairs."""
        train_prompts = {r["prompt"] for r in data.train}
        prompts = list(dict.fromkeys(data.eval_prompts))
        kept = [p for p in prompts if p not in train_prompts]
        return cls(kept, eval_pairs(data.eval), len(prompts) - len(kept))

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> EvalInputs | None:
        raw = read_json(path)
        return cls(**raw) if raw else None


def load_run_config(run_dir: Path, overrides: DictConfig | None = None) -> DictConfig:
    """The run's saved config with the non-null `eval` / `generation` overrides of conf/evaluate.yaml applied."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UserError(f"run_dir={run_dir} has no .hydra/config.yaml (not a dpo_exp run directory)")
    cfg = OmegaConf.load(path)
    for block in ("eval", "generation"):
        given = (overrides or {}).get(block) or {}
        with open_dict(cfg):
            for key, value in given.items():
                if value is not None:
                    cfg[block][key] = value
    return cfg
