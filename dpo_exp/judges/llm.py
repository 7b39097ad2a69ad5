"""The chat models an `LLMJudge` asks: a local causal LM with a chat template (transformers), or an
OpenAI-compatible endpoint (`openai` when installed, else plain HTTP). `check_llm_judge` validates an
`eval.llm_judge` block before any model loads; `build_llm_judge` builds the judge it describes.

Both answer greedily (temperature 0), so one question has one answer and caching it is exact.
"""

from __future__ import annotations

import hashlib
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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

    def identity(self) -> str:
        """The folder (or hub id) and a digest of its config and weight files' names, sizes and times."""
        folder = Path(self.path)
        stamp = ""
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix in {".json", ".safetensors", ".bin", ".jinja"})
            stamp = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
        digest = hashlib.sha256(stamp.encode()).hexdigest()[:12]
        return f"local:{self.path}:{digest}:greedy:{self.max_new_tokens}"

    def answer(self, questions: list[str]) -> list[str]:
        import torch

        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
            for q in questions
        ]
        # a question longer than the judge's context keeps its end (the verdict instructions), with a warning
        budget = max(1, context_length(self.model) - self.max_new_tokens)
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        if max(lengths) > budget:
            log.warning(
                "%d judge question(s) longer than the judge's %d tokens: their start is cut",
                sum(n > budget for n in lengths),
                budget,
            )
        self.tokenizer.truncation_side = "left"
        batch = self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False, truncation=True, max_length=budget
        )
        batch = batch.to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


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


def check_llm_judge_settings(block: Any) -> None:
    """The cheap checks of an enabled `eval.llm_judge` block (no model, no network): exactly one of model.path and
    model.base_url, the template and its placeholders, positive sizes."""
    if block is None or not block.get("enabled"):
        return
    load_template(str(block.template))
    if bool(block.model.get("path")) == bool(block.model.get("base_url")):
        raise UserError("eval.llm_judge.model: set exactly one of model.path (a local chat model) and model.base_url")
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
    if model.get("path"):
        backend: Any = LocalChat(str(model.path), tokens, device)
    else:
        backend = Endpoint(str(model.base_url), str(name), model.get("api_key_env"), float(model.timeout_s), tokens)
    return LLMJudge(backend, load_template(str(block.template)), cache_dir, int(block.batch_size))
