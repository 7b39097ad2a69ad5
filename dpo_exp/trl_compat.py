"""Every use of a TRL (or `datasets`) private, in one place, for the TRL range pyproject.toml supports.

tests/test_trl_compat.py checks that each still exists with the signature relied on; a TRL upgrade that breaks
one fails there, naming it, instead of deep inside a run. What is used, and by whom:

- `DPOTrainer._precompute_ref_logps(dataset, name, batch_size)`, with `DPOTrainer._precompute_model_hash` (the
  weights part of its cache key) and `Dataset._fingerprint` (the data part): reference log-probs keyed on what they
  depend on, shared across sweep jobs (dpo_exp.training.ref_logps), through `CompatDPOTrainer.precompute_reference`.
- `DPOTrainer._prepare_dataset(dataset, processing_class, args, dataset_name)`: pairs that carry token ids skip
  TRL's text tokenisation (dpo_exp.training.trainer), through `CompatDPOTrainer.prepare_pairs`.
- `DPOTrainer._metrics["train"]` and `Trainer._total_train_tokens`: a dropped non-finite micro-batch's metrics are
  rolled back (dpo_exp.training.trainer), through `CompatDPOTrainer.train_metrics` / `total_train_tokens`.
- `DPOTrainer._tp_size` and `_is_vision_dataset`, and transformers' `Trainer._get_grad_norm(model, grad_norm)`: the
  sync-free DPO step (dpo_exp.training.step) and its one non-finite check per step on the clipped gradient norm
  (dpo_exp.training.nonfinite), through `tp_size` / `is_vision_dataset` / `step_grad_norm`.
- `trl.trainer.utils._use_triton` and `_ChunkedLogProbFunction`: the fused LM head's kernel choice, swapped on CPU
  (dpo_exp.throughput), through `fused_lm_head_kernel` / `set_fused_lm_head_kernel`.
- TRL's tokenisation of a text pair (`_prepare_dataset`'s tokenize step), re-done for the implicit reward of
  held-out pairs: `pair_token_ids`; for a conversational pair through `trl.trainer.dpo_trainer._tokenize` (the
  chat template as TRL applies it).
- `trl.experimental.online_dpo` (`OnlineDPOConfig`, `OnlineDPOTrainer`): experimental in TRL 1.x, imported here
  only (conf/method/online_dpo.yaml names `dpo_exp.trl_compat.OnlineDPOConfig`), so a move is fixed in one place.
- `trl.experimental.orpo` (`ORPOConfig`, `ORPOTrainer`) and `trl.experimental.cpo` (`CPOConfig`, `CPOTrainer`:
  SimPO is its `loss_type="simpo"`), likewise (conf/method/orpo.yaml, conf/method/simpo.yaml).
"""

from __future__ import annotations

import os
from typing import Any

from trl import DPOTrainer

# every experimental TRL class used, by the trl.experimental module it lives in (imported on first use)
EXPERIMENTAL = {
    "OnlineDPOConfig": "online_dpo",
    "OnlineDPOTrainer": "online_dpo",
    "ORPOConfig": "orpo",
    "ORPOTrainer": "orpo",
    "CPOConfig": "cpo",
    "CPOTrainer": "cpo",
}

SUPPORTED_TRL = ">=1.16,<2"  # = pyproject.toml's requirement
PAIR_ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")  # = dpo_exp.data.schema.PAIR_ID_COLUMNS
# (owner, attribute, parameters it must take): what tests/test_trl_compat.py checks
PRIVATE_METHODS = (
    ("trl.DPOTrainer", "_precompute_ref_logps", ("self", "dataset", "name", "batch_size")),
    ("trl.DPOTrainer", "_prepare_dataset", ("self", "dataset", "processing_class", "args", "dataset_name")),
    ("trl.DPOTrainer", "_get_grad_norm", ("self", "model", "grad_norm")),
)
PRIVATE_MODULE_NAMES = (
    ("trl.trainer.utils", "_use_triton"),
    ("trl.trainer.utils", "_ChunkedLogProbFunction"),
    ("trl.trainer.dpo_trainer", "_tokenize"),
)


class CompatDPOTrainer(DPOTrainer):
    """DPOTrainer whose private hooks this project overrides are reached through public names."""

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        return self.precompute_reference(dataset, name, batch_size)

    def precompute_reference(self, dataset, name: str, batch_size: int):
        """TRL's reference log-probs of `dataset` (cached by TRL next to the dataset's files)."""
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name: str):
        return self.prepare_pairs(dataset, processing_class, args, dataset_name)

    def prepare_pairs(self, dataset, processing_class, args, dataset_name: str):
        """TRL's tokenisation (and truncation filter) of a pair dataset."""
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def set_reference_hash(self, digest: str) -> None:
        """The weights part of TRL's reference log-probs cache key."""
        self._precompute_model_hash = digest

    @property
    def train_metrics(self) -> dict[str, list]:
        """TRL's per-micro-batch training metrics, averaged at each logging step."""
        return self._metrics["train"]

    @property
    def tp_size(self) -> int:
        """Tensor-parallel degree TRL divides its token count by."""
        return int(getattr(self, "_tp_size", 1))

    @property
    def is_vision_dataset(self) -> bool:
        return bool(getattr(self, "_is_vision_dataset", False))

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.step_grad_norm = grad_norm  # the step's (pre-clip) gradient norm, a device tensor: no host read here
        return grad_norm

    @property
    def total_train_tokens(self) -> Any:
        return getattr(self, "_total_train_tokens", None)

    @total_train_tokens.setter
    def total_train_tokens(self, value: Any) -> None:
        self._total_train_tokens = value


def set_fingerprint(dataset, fingerprint: str) -> None:
    """The data part of TRL's reference log-probs cache key (datasets' private fingerprint)."""
    dataset._fingerprint = fingerprint


def fused_lm_head_kernel() -> tuple[Any, Any] | None:
    """(`_use_triton`, `_ChunkedLogProbFunction`) of TRL's fused LM head, or None in a TRL without them."""
    import trl.trainer.utils as trl_utils

    use_triton = getattr(trl_utils, "_use_triton", None)
    kernel = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    return None if use_triton is None or kernel is None else (use_triton, kernel)


def set_fused_lm_head_kernel(use_triton: Any, kernel: Any) -> None:
    import trl.trainer.utils as trl_utils

    trl_utils._use_triton = use_triton
    trl_utils._ChunkedLogProbFunction = kernel


def pair_token_ids(tokenizer, pair: dict) -> dict[str, list[int]]:
    """prompt/chosen/rejected token ids of a pair: its own ids when it carries them (sampled pairs), else the text
    tokenised the way TRL's DPOTrainer does it for plain text (EOS appended to each response; the response starts
    where the tokenised prompt and prompt+response diverge)."""
    if all(pair.get(key) is not None for key in PAIR_ID_COLUMNS):
        return {key: list(pair[key]) for key in PAIR_ID_COLUMNS}
    if isinstance(pair["prompt"], list):  # conversational: TRL's tokenize step, through the chat template
        return _conversation_ids(tokenizer, pair)
    eos = tokenizer.eos_token or ""
    prompt_ids = tokenizer(pair["prompt"]).input_ids
    full = {}
    for key in ("chosen", "rejected"):
        text = pair[key] if pair[key].endswith(eos) else pair[key] + eos
        full[key] = tokenizer(pair["prompt"] + text).input_ids
    cut = min(_common_prefix(prompt_ids, full["chosen"]), _common_prefix(prompt_ids, full["rejected"]))
    return {"prompt_ids": prompt_ids[:cut], "chosen_ids": full["chosen"][cut:], "rejected_ids": full["rejected"][cut:]}


def _conversation_ids(tokenizer, pair: dict) -> dict[str, list[int]]:
    """A conversational pair's ids as TRL's DPOTrainer makes them: the prompt with the generation prompt, each
    response rendered after the prompt (no EOS appended: the template ends the turn), cut where they diverge."""
    from trl.trainer.dpo_trainer import _tokenize

    prompt_ids = _tokenize(tokenizer, pair["prompt"], add_generation_prompt=True)["input_ids"]
    full = {key: _tokenize(tokenizer, pair["prompt"] + pair[key])["input_ids"] for key in ("chosen", "rejected")}
    cut = min(_common_prefix(prompt_ids, full["chosen"]), _common_prefix(prompt_ids, full["rejected"]))
    return {"prompt_ids": prompt_ids[:cut], "chosen_ids": full["chosen"][cut:], "rejected_ids": full["rejected"][cut:]}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def __getattr__(name: str) -> Any:
    """The classes of EXPERIMENTAL (e.g. `OnlineDPOTrainer` from `trl.experimental.online_dpo`), imported when first
    asked for (not by every run), without TRL's experimental-API warning: the import is pinned here on purpose."""
    if name not in EXPERIMENTAL:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return getattr(importlib.import_module(f"trl.experimental.{EXPERIMENTAL[name]}"), name)
