"""Iterative DPO: K rounds of DPO (TRL's DPOTrainer, dpo_exp.training), each later round on fresh pairs sampled from
the previous round's policy and judged by the run's scorer.

Layout: round r < K trains in RUN/rounds/<r>/ (checkpoints, metrics.jsonl, model/, evaluation.json, round.json);
the last round trains in RUN itself, so the run's model/, metrics and evaluation are its last policy. The pairs of
round r >= 2 are RUN/rounds/<r>/pairs.jsonl. summary.json["rounds"] lists every round: the hash of the model its
pairs were sampled from (`sampled_from`), its pair count, and (rounds < K) its eval/ keys; the last round's are the
run's own eval/ keys. Every round is keyed on the settings that made it (RUN/rounds/<r>/settings.json: the run's
resolved settings but `method.rounds`, and the hash of the model it starts from): a resumed run skips the rounds that
finished (round.json) and reuses sampled pair sets under the same key only; a round made under other settings is
redone from scratch (the last round: its checkpoints in RUN too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ..data.schema import PreferenceData
from ..errors import UserError
from ..infra.storage import atomic_write_json, read_json
from ..training.stage import TrainResult, train_policy
from .base import Method, MethodSettings, TrainedPolicy

log = logging.getLogger(__name__)

ROUNDS_DIR = "rounds"
ROUND_FILE = "round.json"
KEY_FILE = "settings.json"
PAIRS_FILE = "pairs.jsonl"
ROUND_SEED_OFFSET = 200_003  # round r samples its pairs with seed + r x this (its own stream)
REFERENCES = ("sft", "previous")


def weights_hash(model) -> str:
    """sha256 (16 hex) of a model's weights (names, dtypes, values; not its config, which training touches): which
    model a round's pairs were sampled from."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu()
        h.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.float().numpy().tobytes())
    return h.hexdigest()[:16]


def round_key(cfg: Any, r: int, sampled_from: str) -> str:
    """sha256 (16 hex) of what makes round r: the run's resolved settings (but `method.rounds`: round r is the same
    in a longer run) and the hash of the policy it starts from (its pairs are sampled from it)."""
    from ..training.rerun import settings_of

    settings = {k: v for k, v in settings_of(cfg).items() if k != "method.rounds"}
    text = json.dumps({"round": r, "sampled_from": sampled_from, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def claim_round(run_dir: Path, r: int, key: str, last: bool) -> None:
    """Keep round r's files (RUN/rounds/<r>: pairs, round.json, checkpoints) only if they were made under `key`;
    else remove them (and, for the last round, its checkpoints in RUN), then record `key` for the round."""
    from ..schema import CHECKPOINT_DIR

    folder = run_dir / ROUNDS_DIR / str(r)
    made = (read_json(folder / KEY_FILE) or {}).get("key")
    if made == key:
        return
    stale = [folder] + ([run_dir / CHECKPOINT_DIR] if last else [])
    if made is not None or any(path.exists() for path in stale):
        log.info("round %d: its earlier files were made under other settings: redoing it", r)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    atomic_write_json(folder / KEY_FILE, {"round": r, "key": key})


def sample_round_pairs(policy, tokenizer, prompts: list[str], cfg: Any, seed: int, scorer) -> list[dict]:
    """`generation.num_samples` completions per prompt from `policy`, prompt + completion scored, paired as the
    task pairs (dataset.pairs): the same steps as dpo_exp.tasks.sentiment's pairs, on the current policy."""
    from ..data.pairs import build_pairs
    from ..generation import generate_samples, sample_sequences
    from ..models import context_length

    gen = cfg.generation
    samples = generate_samples(policy, tokenizer, prompts, gen, seed, desc="sampling round pairs")
    sequences = sample_sequences(tokenizer, samples, int(gen.max_new_tokens), context_length(policy))
    from ..judges import score_completions

    flat_prompts = [prompt for prompt, texts in zip(samples.prompts, samples.texts) for _ in texts]
    scored = score_completions(scorer, flat_prompts, [text for texts in samples.texts for text in texts], True)
    n = int(gen.num_samples)
    scores = [scored[i * n : (i + 1) * n] for i in range(len(prompts))]
    pairs = cfg.dataset.pairs
    rows, _ = build_pairs(samples, scores, str(pairs.strategy), float(pairs.min_margin), sequences)
    return rows


class IterativeDPO(Method):
    """`rounds` rounds of sample -> score -> pair -> DPO, each round's policy evaluated against the starting model."""

    uses_reward = True
    skips_nonfinite = True  # dpo_exp's DPO trainer drops non-finite micro-batches (on_nonfinite=skip)

    @property
    def rounds(self) -> int:
        return int(self.settings.get("rounds", 1))

    def check(self, cfg: Any) -> None:
        super().check(cfg)
        rounds = self.settings.get("rounds")
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise UserError(f"method.rounds={rounds!r} must be a whole number >= 1")
        if self.settings.get("reference") not in REFERENCES:
            raise UserError(f"method.reference={self.settings.get('reference')!r} is not one of {list(REFERENCES)}")
        if cfg.lora.enabled:
            raise UserError(f"method={self.name} trains full fine-tuning: choose lora=none")

    def train(self, policy, reference: Path | None, data: PreferenceData, settings: MethodSettings) -> TrainResult:
        from ..training.ref_logps import frozen_reference

        cfg, run_dir = settings.cfg, settings.run_dir
        keep_start = self.rounds > 1 and self.settings["reference"] == "sft"
        start = frozen_reference(policy, settings.env.precision) if keep_start else None  # DPO's reference, rounds >= 2
        records: list[dict[str, Any]] = [{"round": 1, "sampled_from": weights_hash(policy), "pairs": len(data.train)}]
        round_data = data
        result = None
        for r in range(1, self.rounds + 1):
            last = r == self.rounds
            folder = run_dir if last else run_dir / ROUNDS_DIR / str(r)
            if self.rounds > 1:  # never reuse a round (its pairs, its training) made under other settings
                claim_round(run_dir, r, round_key(cfg, r, records[-1]["sampled_from"]), last)
            if r > 1:
                round_data = self._round_pairs(policy, data, settings, r)
                records[-1]["pairs"] = len(round_data.train)
            ref_model = start if r > 1 else None  # None: the round's starting policy (TRL's own reference)
            done = read_json(folder / ROUND_FILE) if not last else None
            if done:  # a resumed run: this round finished before
                log.info("round %d of %d: finished earlier, loading %s", r, self.rounds, folder / "model")
                _load_weights(policy, folder / "model")
                records[-1].update(done)
            else:
                log.info("round %d of %d: DPO on %d pairs", r, self.rounds, len(round_data.train))
                callbacks = settings.callbacks if last else []
                s = settings
                result = train_policy(
                    cfg, policy, s.tokenizer, round_data, folder, s.tracker, s.env, reference, callbacks, ref_model
                )
                if not last and settings.evaluate is not None:
                    records[-1].update(
                        settings.evaluate(TrainedPolicy(policy), run_dir=folder, reference_path=reference)
                    )
                    atomic_write_json(folder / ROUND_FILE, records[-1])
            if not last:
                records.append({"round": r + 1, "sampled_from": weights_hash(policy)})
        # evaluated against the starting model (rebuilt from the run's reference_path), whatever DPO's reference was
        result.trainer = TrainedPolicy(result.trainer.model)
        result.summary["rounds"] = records
        return result

    def _round_pairs(self, policy, data: PreferenceData, settings: MethodSettings, r: int) -> PreferenceData:
        """Round r's training pairs: sampled from the current policy (or read back when a resumed run has them)."""
        from ..data.pairs import read_pairs, write_pairs
        from ..judges import build_scorer

        cfg = settings.cfg
        path = settings.run_dir / ROUNDS_DIR / str(r) / PAIRS_FILE
        if path.exists():
            rows = read_pairs(path)
        else:
            prompts = list(dict.fromkeys(row["prompt"] for row in data.train))
            seed = int(cfg.seed) + r * ROUND_SEED_OFFSET
            rows = sample_round_pairs(policy, settings.tokenizer, prompts, cfg, seed, build_scorer(cfg.reward, cfg))
            path.parent.mkdir(parents=True, exist_ok=True)
            write_pairs(rows, path)
        if len(rows) < 2:
            raise UserError(f"round {r}: only {len(rows)} pairs sampled from the round-{r - 1} policy (need >= 2)")
        return PreferenceData(train=rows, eval=data.eval, counts={"train": len(rows)}, eval_prompts=data.eval_prompts)


def _load_weights(policy, folder: Path) -> None:
    """A finished round's saved policy into `policy` (in place)."""
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(str(folder))
    policy.load_state_dict(saved.state_dict())
