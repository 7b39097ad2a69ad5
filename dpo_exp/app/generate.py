"""One prompt through the reference and every selected policy: same seed, same settings, scored, with log-ratios.

Sampling is `generation.generate_samples` (seeded per call, so equal models give equal text), scores come from the
run's scorer (`evaluate.build_eval_scorer`, or an offline scorer picked in the UI) and the log-ratio
log pi(y|x) - log pi_ref(y|x) of each completion from `evaluation.logprobs.sequence_logprobs`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..evaluation.inputs import build_eval_scorer, sample_settings
from ..evaluation.logprobs import sequence_logprobs
from ..evaluation.metrics import score_samples
from ..generation import Samples, generate_samples, prompt_token_budget, sample_sequences
from ..models import context_length
from ..models.chat import encode_prompts, prompt_text
from .models import Models
from .runs import REFERENCE

RUN_SCORER = "run's scorer"
MAX_NEW_TOKENS = 256  # the slider's ceiling on a large context
SCORER_CHOICES = [RUN_SCORER, "vader", "tfidf_logreg", "none"]  # offline ones (hub classifiers need the internet)


@dataclass
class Sampling:
    """The UI's sampling controls."""

    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    seed: int

    @classmethod
    def defaults(cls, cfg: DictConfig) -> Sampling:
        """The run's own settings: its generation block, eval.max_new_tokens and the evaluation seed."""
        gen, ev = cfg.generation, cfg.eval
        seed = ev.get("seed") if ev.get("seed") is not None else cfg.seed
        return cls(
            float(gen.temperature),
            int(gen.top_k or 0),
            float(gen.top_p),
            int(ev.get("max_new_tokens") or gen.max_new_tokens),
            int(seed),
        )

    def check(self) -> None:
        """UserError for settings the run's own validation refuses too (one validator: config.check_sampling)."""
        from ..config import check_sampling

        check_sampling(self.temperature, self.top_k, self.top_p, prefix="")

    def fitted(self, context: int) -> Sampling:
        """These settings with max_new_tokens capped to `max_new_tokens_limit(context)`."""
        return Sampling(
            self.temperature,
            self.top_k,
            self.top_p,
            min(self.max_new_tokens, max_new_tokens_limit(context)),
            self.seed,
        )

    def gen_cfg(self) -> DictConfig:
        return OmegaConf.create(
            {
                "temperature": self.temperature,
                "top_k": self.top_k,
                "top_p": self.top_p,
                "num_samples": 1,
                "max_new_tokens": self.max_new_tokens,
                "batch_size": 1,
            }
        )


def max_new_tokens_limit(context: int) -> int:
    """The most new tokens the app lets a model draw: a quarter of its context (at least 16 tokens) stays for the
    prompt, which sampling cuts from the left to fit (a dialogue keeps its final turn)."""
    return max(1, min(MAX_NEW_TOKENS, context - max(16, context // 4)))


@dataclass
class Completion:
    """One model's completion of the prompt."""

    model: str
    text: str
    reward: float | None
    log_ratio: float | None  # log pi(y|x) - log pi_ref(y|x); None for the reference's own completion
    finished: bool = True  # False while the text is still streaming in


def scorer_for(cfg: DictConfig, choice: str) -> tuple[Any, str | None]:
    """(scorer or None, its name) for the UI choice: the run's scorer, an offline scorer by name, or none."""
    if choice == "none":
        return None, None
    if choice != RUN_SCORER:
        from ..schema import reward_option

        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        with open_dict(cfg):
            cfg.eval.reward = reward_option(choice)  # as eval/reward=<choice> would compose it
    scorer, name, _ = build_eval_scorer(cfg)
    return scorer, name


def prompt_cut_notice(models: Models, prompt: Any, max_new_tokens: int) -> str | None:
    """What the user must be told when the prompt is longer than the models can read with `max_new_tokens` left
    for the completion (it is cut before sampling); None when it fits."""
    with models.use(REFERENCE) as model:
        budget = prompt_token_budget(model, max_new_tokens)
    tokens = len(encode_prompts(models.tokenizer, [prompt]).input_ids[0])
    if tokens <= budget:
        return None
    return (
        f"The prompt is {tokens} tokens long ({len(prompt_text(prompt))} characters); the models read only its last "
        f"{budget} tokens (their context minus {max_new_tokens} new tokens): its beginning was cut before sampling."
    )


def sample_one(models: Models, label: str, prompt: Any, sampling: Sampling, streamer: Any = None) -> Samples:
    with models.use(label) as model:
        return generate_samples(
            model,
            models.tokenizer,
            [prompt],
            sampling.gen_cfg(),
            sampling.seed,
            num_samples=1,
            max_new_tokens=sampling.max_new_tokens,
            progress=False,
            paired=True,  # shown side by side with the other model's sample under the same seed
            streamer=streamer,
        )


def stream_one(models: Models, label: str, prompt: Any, sampling: Sampling) -> Iterator[str | Samples]:
    """The text so far while `label` samples (transformers' TextIteratorStreamer), then the finished Samples.

    Sampling runs in a worker thread; the draw is the same as sample_one's (same seed, same settings).
    """
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(models.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["samples"] = sample_one(models, label, prompt, sampling, streamer)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc
            streamer.end()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    worker.join()
    if "error" in result:
        raise result["error"]
    yield result["samples"]


def log_ratio(models: Models, label: str, samples: Samples, max_new_tokens: int) -> float:
    """log pi(y|x) - log pi_ref(y|x) of the sampled completion under the policy `label` and the reference."""
    tokenizer = models.tokenizer
    with models.use(label) as policy:
        sequences = sample_sequences(tokenizer, samples, max_new_tokens, context_length(policy))
        logp = sequence_logprobs(policy, sequences, tokenizer.pad_token_id)
    with models.use(REFERENCE) as reference:
        logq = sequence_logprobs(reference, sequences, tokenizer.pad_token_id)
    return float(logp[0] - logq[0])


def compare_completions(
    models: Models, cfg: DictConfig, prompt: Any, labels: list[str], sampling: Sampling, scorer_choice: str = RUN_SCORER
) -> Iterator[list[Completion]]:
    """Yield the completions of `prompt` (text, or a conversation sampled through the chat template) so far, reference
    first: while a model samples, its partial text (no scores yet);
    then its finished completion with reward and log-ratio. The last list yielded is the complete one."""
    scorer, _ = scorer_for(cfg, scorer_choice)
    with_prompt = sample_settings(cfg).score_with_prompt
    with models.use(REFERENCE) as reference:
        sampling = sampling.fitted(context_length(reference))  # room for the prompt, whatever the request asked
    done: list[Completion] = []
    for label in [REFERENCE, *labels]:
        for samples in stream_one(models, label, prompt, sampling):
            if isinstance(samples, str):
                yield [*done, Completion(label, samples, None, None, finished=False)]
        reward = float(score_samples(scorer, samples, with_prompt)[0, 0]) if scorer is not None else None
        ratio = None if label == REFERENCE else log_ratio(models, label, samples, sampling.max_new_tokens)
        done.append(Completion(label, samples.texts[0][0], reward, ratio))
        yield list(done)
