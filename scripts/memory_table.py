"""The memory table of docs/clusters.md, computed by dpo_exp.memory's estimator (`make docs-memory`).

Per-device memory of full fine-tuning for four model sizes under ddp, fsdp, fsdp_offload and zero3 on 1, 2, 8 and 16
devices. The configs are written out here (the published shapes of GPT-2 and Qwen2.5: no hub access needed); the
batch is stated in the page. tests/test_docs.py fails when the page's table is not this script's output.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "docs" / "clusters.md", ROOT / "README.md")  # both carry the table between the markers
BEGIN, END = "<!-- memory-table: begin (make docs-memory) -->", "<!-- memory-table: end -->"
STRATEGIES = ("ddp", "fsdp", "fsdp_offload", "zero3")
DEVICES = (1, 2, 8, 16)
PAIRS, LENGTH = 4, 512  # pairs per device and micro-batch, tokens per sequence: 2 x 4 x 512 token slots


def models() -> dict[str, object]:
    """Configs of 0.1 B / 0.5 B / 1.5 B / 7 B models (GPT-2 small; Qwen2.5-0.5B, -1.5B, -7B), from their shapes."""
    from transformers import GPT2Config, Qwen2Config

    def qwen(hidden, layers, heads, kv, inner, vocab, tied):
        return Qwen2Config(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            intermediate_size=inner,
            vocab_size=vocab,
            tie_word_embeddings=tied,
        )

    return {
        "0.1 B (GPT-2)": GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257),
        "0.5 B (Qwen2.5-0.5B)": qwen(896, 24, 14, 2, 4864, 151936, True),
        "1.5 B (Qwen2.5-1.5B)": qwen(1536, 28, 12, 2, 8960, 151936, True),
        "7 B (Qwen2.5-7B)": qwen(3584, 28, 28, 4, 18944, 152064, False),
    }


def table() -> str:
    from dpo_exp.memory import GIB, Batch, estimate

    batch = Batch(token_slots=2 * PAIRS * LENGTH, precision="bf16", device="cuda", gradient_checkpointing=True)
    head = "| model | parameters | strategy | " + " | ".join(f"{n} device{'s' * (n > 1)}" for n in DEVICES) + " |"
    lines = [head, "| --- | --- | --- | " + " | ".join("---" for _ in DEVICES) + " |"]
    for name, config in models().items():
        for strategy in STRATEGIES:
            cells = []
            for n in DEVICES:
                memory = estimate(config, strategy, n, batch)
                cells.append(f"{memory.total / GIB:.1f}")
            count = estimate(config, "ddp", 1, batch).parameters
            lines.append(f"| {name} | {count / 1e9:.2f} B | {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(page: str) -> str:
    block = f"{BEGIN}\n{table()}\n{END}"
    return re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, page, flags=re.S)


if __name__ == "__main__":
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        if BEGIN not in text:
            sys.exit(f"error: {page} has no {BEGIN} marker")
        page.write_text(render(text), encoding="utf-8")
        print(f"wrote the memory table of {page.relative_to(ROOT)}")
