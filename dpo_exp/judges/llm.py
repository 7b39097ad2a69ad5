"""The chat models an `LLMJudge` asks: a local causal LM with a chat template (run by transformers, or by vLLM
when `model.backend=vllm` and it is installed), or an OpenAI-compatible endpoint (`openai` when installed, else
plain HTTP). `check_llm_judge` validates an `eval.llm_judge` block before any model loads; `build_llm_judge`
builds the judge it describes.

All answer greedily (temperature 0), so one question has one answer and caching it is exact.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..models import context_length
from .pairwise import LLMJudge, load_template

log = logging.getLogger(__name__)
BACKENDS = ("transformers", "vllm")  # how a local judge (model.path) runs


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def chat_prompt_ids(tokenizer: Any, questions: list[str], budget: int) -> list[list[int]]:
    """Each question as one user message in the judge's chat template, ready for its answer, as token ids; one
    longer than `budget` tokens keeps its end (the verdict instructions), with a warning. Both local backends
    (transformers, vLLM) generate from exactly these ids."""
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]  # the template holds the special tokens
    cut = sum(len(x) > budget for x in ids)
    if cut:
        log.warning("%d judge question(s) longer than the judge's %d tokens: their start is cut", cut, budget)
    return [list(x[-budget:]) for x in ids]


def answer_texts(texts: Any) -> list[str]:
    """The judge's answers as kept and parsed: generated text without surrounding whitespace."""
    return [str(t).strip() for t in texts]


def _files_stamp(path: str) -> str:
    """A digest of a local model folder's config and weight files' names, sizes and times ("" hashed for a hub id)."""
    folder = Path(path)
    stamp = ""
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix in {".json", ".safetensors", ".bin", ".jinja"})
        stamp = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return hashlib.sha256(stamp.encode()).hexdigest()[:12]


class LocalChat:
    """A local (or hub) causal LM asked through its own chat template, greedy, in left-padded batches."""

    def __init__(self, path: str, max_new_tokens: int, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM

        self.path, self.max_new_tokens = str(path), int(max_new_tokens)
        self.tokenizer = chat_tokenizer(self.path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.path).to(device).eval()
        self.budget = max(1, context_length(self.model) - self.max_new_tokens)

    def identity(self) -> str:
        """The folder (or hub id) and a digest of its config and weight files' names, sizes and times."""
        return f"local:{self.path}:{_files_stamp(self.path)}:greedy:{self.max_new_tokens}"

    def answer(self, questions: list[str]) -> list[str]:
        import torch

        ids = chat_prompt_ids(self.tokenizer, questions, self.budget)
        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        return answer_texts(self.tokenizer.batch_decode(new, skip_special_tokens=True))


class VLLMChat:
    """A local chat model run by vLLM's offline engine, greedy. Written to vLLM's documented offline API and not
    run in this project's tests (vLLM needs a CUDA GPU and is not installed here): `vllm.LLM(model=path, ...)`,
    `SamplingParams(temperature=0, max_tokens=...)`, `LLM.generate` on token-id prompts (`{"prompt_token_ids":
    ...}`, built by `chat_prompt_ids`, the transformers backend's very prompts: `LLM.chat` would refuse a question
    longer than the context rather than cut it), each answer `outputs[i].outputs[0].text`."""

    def __init__(self, path: str, max_new_tokens: int, gpu_memory_utilization: float) -> None:
        require_vllm()  # checked before any model loads too (check_backend)
        from transformers import AutoConfig
        from vllm import LLM, SamplingParams

        self.path, self.max_new_tokens = str(path), int(max_new_tokens)
        self.tokenizer = chat_tokenizer(self.path)
        self.budget = max(1, context_length(AutoConfig.from_pretrained(self.path)) - self.max_new_tokens)
        self.llm = LLM(model=self.path, gpu_memory_utilization=float(gpu_memory_utilization))
        self.params = SamplingParams(temperature=0, max_tokens=self.max_new_tokens)

    def identity(self) -> str:
        """As `LocalChat`'s, under another name: another engine's numerics may answer differently."""
        return f"vllm:{self.path}:{_files_stamp(self.path)}:greedy:{self.max_new_tokens}"

    def answer(self, questions: list[str]) -> list[str]:
        prompts = [{"prompt_token_ids": ids} for ids in chat_prompt_ids(self.tokenizer, questions, self.budget)]
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)  # LLMJudge shows the progress
        return answer_texts(output.outputs[0].text for output in outputs)


class Endpoint:
    """An OpenAI-compatible chat-completions endpoint; the key comes from an environment variable. Each request
    waits at most `timeout_s` seconds (no retries); a batch is sent as concurrent requests."""

    def __init__(self, base_url: str, name: str, api_key_env: str | None, timeout_s: float, max_new_tokens: int):
        self.base_url, self.name = base_url.rstrip("/"), name
        self.key = os.environ.get(api_key_env or "", "") or "none"  # local servers accept any key
        self.timeout_s, self.max_new_tokens = float(timeout_s), int(max_new_tokens)

    def identity(self) -> str:
        return f"endpoint:{self.base_url}:{self.name}:greedy:{self.max_new_tokens}"

    def _one(self, question: str) -> str:
        body = {
            "model": self.name,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": self.max_new_tokens,
            "temperature": 0,
        }
        try:
            import openai
        except ImportError:  # the `openai` client is optional: the same request over plain HTTP
            reply = _http_json(f"{self.base_url}/chat/completions", self.timeout_s, body, self.key)
            return str(reply["choices"][0]["message"].get("content") or "").strip()
        client = openai.OpenAI(base_url=self.base_url, api_key=self.key, timeout=self.timeout_s, max_retries=0)
        try:
            reply = client.chat.completions.create(**body)
        except openai.OpenAIError as exc:
            raise UserError(
                f"eval.llm_judge.model.base_url={self.base_url}: the judge request failed: {_one_line(exc)}"
            ) from None
        return str(reply.choices[0].message.content or "").strip()

    def answer(self, questions: list[str]) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, len(questions))) as pool:
            return list(pool.map(self._one, questions))


def _http_json(url: str, timeout_s: float, body: dict | None = None, key: str = "none") -> dict:
    """GET (body None) or POST JSON with a bounded wait; one UserError when the server does not answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - the configured endpoint
            return json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:  # it answered, with an error (a bad key, model or path)
        raise UserError(f"eval.llm_judge.model.base_url: {url} answered HTTP {exc.code} ({exc.reason})") from None
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"eval.llm_judge.model.base_url: {url} gave no answer within {timeout_s:g} s ({reason})"
        ) from None


def chat_tokenizer(path: str):
    """The judge model's tokenizer; one UserError when it cannot be read or has no chat template."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - a missing folder or hub id in several exception types
        raise UserError(
            f"eval.llm_judge.model.path={path}: the judge's tokenizer cannot be loaded: {_one_line(exc)}"
        ) from None
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"eval.llm_judge.model.path={path} has no chat template: the judge must be a chat model")
    return tokenizer


def require_vllm() -> None:
    """One UserError when vLLM is not installed (looked up by name: nothing is imported)."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            "eval.llm_judge.model.backend=vllm needs vLLM, which is not installed: pip install vllm (a CUDA GPU), "
            "or eval.llm_judge.model.backend=transformers"
        )


def check_backend(model: Any) -> None:
    """`model.backend` names a local engine that can run here: vLLM must be installed (looked up, not imported)
    and is for a local model.path only; its GPU memory share is in (0, 1]."""
    backend = str(model.get("backend") or "transformers")
    if backend not in BACKENDS:
        raise UserError(f"eval.llm_judge.model.backend={backend} is not one of {list(BACKENDS)}")
    if backend != "vllm":
        return
    if model.get("base_url"):
        raise UserError(
            "eval.llm_judge.model.backend=vllm runs model.path in this process; an endpoint (model.base_url, "
            "e.g. `vllm serve`) is asked over HTTP: leave backend=transformers"
        )
    require_vllm()
    share = float(model.get("gpu_memory_utilization") or 0)
    if not 0 < share <= 1:
        raise UserError(f"eval.llm_judge.model.gpu_memory_utilization must be in (0, 1], got {share}")


def check_llm_judge_settings(block: Any) -> None:
    """The cheap checks of an enabled `eval.llm_judge` block (no model, no network): exactly one of model.path and
    model.base_url, the template and its placeholders, positive sizes."""
    if block is None or not block.get("enabled"):
        return
    load_template(str(block.template))
    if bool(block.model.get("path")) == bool(block.model.get("base_url")):
        raise UserError("eval.llm_judge.model: set exactly one of model.path (a local chat model) and model.base_url")
    check_backend(block.model)
    for key in ("max_pairs", "batch_size", "max_new_tokens"):
        if int(block[key]) <= 0:
            raise UserError(f"eval.llm_judge.{key} must be > 0, got {block[key]}")
    if float(block.model.get("timeout_s") or 0) <= 0:
        raise UserError(f"eval.llm_judge.model.timeout_s must be > 0, got {block.model.get('timeout_s')}")


def check_llm_judge(block: Any) -> str | None:
    """Validate an `eval.llm_judge` block before any model loads: the settings (`check_llm_judge_settings`), the
    local model's chat template, the endpoint answering /models within timeout_s. Returns the endpoint's model name
    (model.name, or the first model it lists); None for a local model or a disabled judge."""
    if block is None or not block.get("enabled"):
        return None
    check_llm_judge_settings(block)
    model = block.model
    path, base_url = model.get("path"), model.get("base_url")
    if path:
        chat_tokenizer(str(path))
        return None
    timeout = float(model.get("timeout_s") or 30)
    key = os.environ.get(str(model.get("api_key_env") or ""), "") or "none"
    listed = _http_json(f"{str(base_url).rstrip('/')}/models", timeout, key=key)
    if model.get("name"):
        return str(model.name)
    names = [str(m.get("id")) for m in listed.get("data", []) if isinstance(m, dict) and m.get("id")]
    if not names:
        raise UserError(f"eval.llm_judge.model.base_url={base_url} lists no model: set eval.llm_judge.model.name")
    return names[0]


def build_llm_judge(block: Any, cache_dir: str | Path | None, device: str = "cpu") -> LLMJudge:
    """The judge an enabled `eval.llm_judge` block describes (checked first by `check_llm_judge`)."""
    name = check_llm_judge(block)
    model, tokens = block.model, int(block.max_new_tokens)
    if model.get("path") and model.get("backend") == "vllm":
        backend: Any = VLLMChat(str(model.path), tokens, float(model.gpu_memory_utilization))
    elif model.get("path"):
        backend = LocalChat(str(model.path), tokens, device)
    else:
        backend = Endpoint(str(model.base_url), str(name), model.get("api_key_env"), float(model.timeout_s), tokens)
    return LLMJudge(backend, load_template(str(block.template)), cache_dir, int(block.batch_size))
