"""SFT warm-start throughput: a hand-written causal-LM loop against the project's TRL SFTTrainer (CPU).

    python benchmarks/bench_sft.py [--quick] [--texts 256] [--steps 12] [--repeats 2]

Same IMDb review texts (../shared/data/imdb/train.jsonl, cut to `--max-length` tokens), same tiny GPT-2 (2 layers,
width 64, GPT-2 vocabulary, same initial weights), batch `--batch`, `--steps` AdamW steps, full fine-tuning.
Contenders, timed in turns (`--repeats`, median reported):

- `hand_written`: the floor: random batches padded to their longest text, `model(..., labels=...)` (full logits,
  cross-entropy), AdamW.
- `project_padding`: `dpo_exp.sft.sft_trainer` as the warm start runs it (TRL SFTTrainer, padded batches).
- `project_packing`: the same with `sft.packing=true` (TRL best-fit-decreasing packing, padding-free rows).

Training tokens/s = real (non-padding) tokens trained on per second of training loop (`trainer.train()`; TRL's
`num_tokens`). Results go to benchmarks/results/sft.json; compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "sft.json"
DATA = Path(os.environ.get("DPO_EXP_SHARED_DATA", ROOT.parent / "shared" / "data")) / "imdb" / "train.jsonl"

from machine_info import machine  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_model(seed: int):
    from omegaconf import OmegaConf

    from dpo_exp.models import build_model

    return build_model(
        OmegaConf.create({"tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256}}), seed=seed
    )


def hand_written(model, tokenizer, texts, args) -> dict:
    encoded = [tokenizer(t, truncation=True, max_length=args.max_length).input_ids for t in texts]
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    model.train()
    rng = random.Random(args.seed)
    order: list[int] = []
    tokens, start = 0, time.perf_counter()
    for _ in range(args.steps):
        if len(order) < args.batch:
            order += rng.sample(range(len(encoded)), len(encoded))
        batch = [encoded[i] for i in order[: args.batch]]
        del order[: args.batch]
        width = max(len(b) for b in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, b in enumerate(batch):
            ids[i, : len(b)] = torch.tensor(b)
            attn[i, : len(b)] = 1
        loss = model(input_ids=ids, attention_mask=attn, labels=ids.masked_fill(attn == 0, -100)).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        tokens += int(attn.sum())
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def project(model, tokenizer, texts, args, packing: bool, workdir: Path) -> dict:
    from omegaconf import OmegaConf

    from dpo_exp.sft import sft_trainer

    cfg = OmegaConf.create(
        {
            "seed": args.seed,
            "lora": {"enabled": False},
            "sft": {
                "enabled": True,
                "lora": False,
                "max_steps": args.steps,
                "batch_size": args.batch,
                "lr": args.lr,
                "max_length": args.max_length,
                "num_texts": len(texts),
                "packing": packing,
            },
        }
    )
    setup = time.perf_counter()
    trainer = sft_trainer(cfg, model, tokenizer, texts, tempfile.mkdtemp(dir=workdir), "cpu")
    trainer.args.logging_steps = 1
    trainer.args.disable_tqdm = True
    setup = time.perf_counter() - setup
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = [row["num_tokens"] for row in trainer.state.log_history if "num_tokens" in row]
    return {"seconds": seconds, "tokens": int(tokens[-1]), "setup_seconds": setup}


CONTENDERS = ("hand_written", "project_padding", "project_packing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 steps, 1 repeat")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=80)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 8, 1
    load_before = os.getloadavg()[0]

    from dpo_exp.models import offline_gpt2_tokenizer

    tokenizer = offline_gpt2_tokenizer()
    texts = [json.loads(line)["text"].replace("<br />", " ") for line in DATA.read_text().splitlines()[: args.texts]]
    workdir = Path(tempfile.mkdtemp(prefix="bench_sft_"))
    runs: dict[str, list[dict]] = {c: [] for c in CONTENDERS}
    for _ in range(args.repeats):  # interleaved, so a change in machine load hits every contender alike
        for name in CONTENDERS:
            model = tiny_model(args.seed)
            if name == "hand_written":
                out = hand_written(model, tokenizer, texts, args)
            else:
                out = project(model, tokenizer, texts, args, name == "project_packing", workdir)
            out["tokens_per_s"] = out["tokens"] / out["seconds"]
            runs[name].append(out)
            print(f"  {name:18s} {out['seconds']:6.1f} s  {out['tokens_per_s']:7.0f} tok/s", flush=True)
    summary = {
        name: {
            "tokens_per_s": statistics.median(o["tokens_per_s"] for o in outs),
            "train_seconds": statistics.median(o["seconds"] for o in outs),
            "tokens": statistics.median(o["tokens"] for o in outs),
            "repeats": outs,
        }
        for name, outs in runs.items()
    }
    floor = summary["hand_written"]["tokens_per_s"]
    for s in summary.values():
        s["vs_hand_written"] = s["tokens_per_s"] / floor
    best = max(("project_padding", "project_packing"), key=lambda k: summary[k]["vs_hand_written"])
    result = {
        "machine": machine() | {"load_average_before": load_before, "load_average_after": os.getloadavg()[0]},
        "model": "tiny GPT-2 (2 layers, width 64, 2 heads, GPT-2 BPE vocabulary 50257), random init, fp32",
        "setup": {
            "texts": len(texts),
            "max_length": args.max_length,
            "batch_size": args.batch,
            "steps": args.steps,
            "repeats": args.repeats,
            "data": "imdb/train.jsonl",
        },
        "target_vs_hand_written": 0.9,
        "contenders": summary,
        "best_project": best,
        "target_met": summary[best]["vs_hand_written"] >= 0.9,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nSFT, {args.steps} steps x batch {args.batch}, texts cut to {args.max_length} tokens, "
        f"median of {args.repeats}:"
    )
    print(f"  {'contender':18s} {'tokens/s':>9s} {'train s':>8s} {'vs hand':>8s}")
    for name, s in summary.items():
        print(f"  {name:18s} {s['tokens_per_s']:9.0f} {s['train_seconds']:8.1f} {s['vs_hand_written']:8.2f}")
    print(
        f"target >= 0.9 ({best}): {'met' if result['target_met'] else 'NOT met'}; load average "
        f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; written to {args.out}"
    )


if __name__ == "__main__":
    main()
