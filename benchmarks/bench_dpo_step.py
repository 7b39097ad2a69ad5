"""DPO training throughput: a minimal hand-written PyTorch DPO loop against the project's TRL trainer (CPU).

    python benchmarks/bench_dpo_step.py [--quick] [--pairs 48] [--epochs 1] [--repeats 2] [--profile]

Same pairs (UltraFeedback pairs from ../shared/data/ultrafeedback/sample.jsonl whose prompt+completion fit
`--max-length` tokens), same tiny GPT-2 (2 layers, width 64, GPT-2 vocabulary, same initial weights), batch 8,
full fine-tuning, AdamW, sigmoid DPO loss. Contenders, timed in turns (`--repeats`, median reported):

- `hand_written`: the floor: policy + frozen reference recomputed every step, full logits, log_softmax, gather.
- `trl_plain`: `trl.DPOTrainer` as a user would write it (DPOConfig defaults apart from the shared settings).
- `project_no_precompute`: `dpo_exp.training.trainer.build_trainer` with `trainer.precompute_ref_log_probs=false`.
- `project_precompute`: `dpo_exp.training.trainer.build_trainer` with the default (reference log-probs precomputed; the
  precomputation is one reference forward per pair, reported separately as `precompute_seconds`, and cached
  across sweep jobs).

Training tokens/s = non-padding tokens of the chosen and rejected sequences processed per second of training loop
(`trainer.train()` for the trainers, the loop for the hand-written one). `--profile` prints a torch.profiler table
of one project step. Results go to benchmarks/results/dpo_step.json; compare ratios, not absolute figures, on a
shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "dpo_step.json"
DATA = Path(os.environ.get("DPO_EXP_SHARED_DATA", ROOT.parent / "shared" / "data")) / "ultrafeedback" / "sample.jsonl"

from machine_info import machine  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


def load_pairs(tokenizer, n: int, max_length: int) -> list[dict]:
    """The first `n` pairs whose prompt + chosen/rejected (+EOS) fit `max_length` tokens."""
    from omegaconf import OmegaConf

    from dpo_exp.data.preference import normalize_ultrafeedback

    columns = OmegaConf.create({"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"})
    pairs = []
    for line in DATA.read_text().splitlines():
        row = json.loads(line)
        with contextlib.suppress(Exception):  # a row in another layout: take the plain fields
            row = normalize_ultrafeedback(row, columns)
        prompt, chosen, rejected = (str(row[k]) for k in ("prompt", "chosen", "rejected"))
        p = len(tokenizer(prompt).input_ids)
        longest = max(len(tokenizer(chosen).input_ids), len(tokenizer(rejected).input_ids)) + 1
        if p + longest <= max_length and p > 0:
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        if len(pairs) == n:
            break
    return pairs


def tiny_model(seed: int = 0, n_positions: int = 512):
    from omegaconf import OmegaConf

    from dpo_exp.models import build_model

    return build_model(
        OmegaConf.create({"tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": n_positions}}), seed=seed
    )


# ---- the floor: a minimal hand-written DPO loop ----------------------------------------------------------------


def encode(tokenizer, pairs: list[dict]) -> list[tuple[list[int], list[int], list[int]]]:
    eos = tokenizer.eos_token_id
    return [
        (
            tokenizer(p["prompt"]).input_ids,
            tokenizer(p["chosen"]).input_ids + [eos],
            tokenizer(p["rejected"]).input_ids + [eos],
        )
        for p in pairs
    ]


def collate(batch, pad: int):
    rows = [(p, c) for p, c, _ in batch] + [(p, r) for p, _, r in batch]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    comp = torch.zeros_like(ids)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attn[i, : len(p) + len(c)] = 1
        comp[i, len(p) : len(p) + len(c)] = 1
    return ids, attn, comp


def sequence_logps(model, ids, attn, comp):
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (logps * comp[:, 1:]).sum(-1)


def hand_written(model, encoded, pad: int, epochs: int, batch: int, lr: float, beta: float, seed: int) -> dict:
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    tokens, start = 0, time.perf_counter()
    for _ in range(epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for i in range(0, len(order), batch):
            ids, attn, comp = collate([encoded[j] for j in order[i : i + batch]], pad)
            logps = sequence_logps(model, ids, attn, comp)
            with torch.no_grad():
                ref = sequence_logps(reference, ids, attn, comp)
            chosen, rejected = (logps - ref).chunk(2)
            loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            tokens += int(attn.sum())
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


# ---- the trainers -------------------------------------------------------------------------------------------


def project_cfg(args, precompute: bool, cache_dir: str):
    from omegaconf import OmegaConf

    trainer = OmegaConf.load(ROOT / "conf" / "trainer" / "dpo.yaml")
    trainer.merge_with(
        {
            "beta": args.beta,
            "learning_rate": args.lr,
            "num_train_epochs": args.epochs,
            "max_length": args.max_length,
            "per_device_train_batch_size": args.batch,
            "eval_strategy": "no",
            "save_strategy": "no",
            "precompute_ref_log_probs": precompute,
            "warmup_steps": 0,
            "lr_scheduler_type": "constant",
        }
    )
    return OmegaConf.create(
        {
            "trainer": trainer,
            "train": OmegaConf.load(ROOT / "conf" / "config.yaml").train,  # dpo_exp's own settings (group_by_length)
            "lora": {"enabled": False},
            "on_nonfinite": "stop",
            "seed": args.seed,
            "cache_dir": cache_dir,
        }
    )


def run_project(args, tokenizer, pairs, precompute: bool, workdir: Path) -> dict:
    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.training.ref_logps import RefLogpsCache
    from dpo_exp.training.trainer import build_trainer

    cache = tempfile.mkdtemp(dir=workdir)  # a fresh cache: the precomputation is really done (and timed)
    cfg = project_cfg(args, precompute, cache)
    ref_cache = RefLogpsCache.from_config(cfg)
    start = time.perf_counter()
    trainer = build_trainer(
        cfg,
        tiny_model(args.seed),
        tokenizer,
        ref_cache.dataset(pairs),
        None,
        Path(tempfile.mkdtemp(dir=workdir)),
        Tracker(),
        "fp32",
        "cpu",
    )
    setup = time.perf_counter() - start
    return train_and_count(trainer) | {"setup_seconds": setup}


def run_trl_plain(args, tokenizer, pairs, workdir: Path) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model = tiny_model(args.seed)
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(dir=workdir),
        beta=args.beta,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch,
        max_length=args.max_length,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=args.seed,
        logging_steps=1,
    )
    start = time.perf_counter()
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=config,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
    )
    setup = time.perf_counter() - start
    return train_and_count(trainer) | {"setup_seconds": setup}


def train_and_count(trainer) -> dict:
    tokens = sum(
        len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in trainer.train_dataset
    ) * int(trainer.args.num_train_epochs)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logged = [row for row in trainer.state.log_history if "loss" in row and "train_runtime" not in row]
    return {
        "seconds": seconds,
        "tokens": tokens,
        "steps": trainer.state.global_step,
        "logged_keys": sorted(logged[-1]) if logged else [],
    }


def profile_step(args, tokenizer, pairs, workdir: Path, precompute: bool) -> str:
    from torch.profiler import ProfilerActivity, profile

    from dpo_exp.infra.tracking import Tracker
    from dpo_exp.training.ref_logps import RefLogpsCache
    from dpo_exp.training.trainer import build_trainer

    cfg = project_cfg(args, precompute, tempfile.mkdtemp(dir=workdir))
    cfg.trainer.max_steps = 2
    trainer = build_trainer(
        cfg,
        tiny_model(args.seed),
        tokenizer,
        RefLogpsCache.from_config(cfg).dataset(pairs),
        None,
        Path(tempfile.mkdtemp(dir=workdir)),
        Tracker(),
        "fp32",
        "cpu",
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


CONTENDERS = ("hand_written", "trl_plain", "project_no_precompute", "project_precompute")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="24 pairs, 1 epoch, 1 repeat, no plain-TRL contender")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved timing repeats (median reported)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of the project trainer")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.repeats = 24, 1
        args.contenders = "hand_written,project_no_precompute,project_precompute"
    contenders = [c for c in args.contenders.split(",") if c]
    load_before = os.getloadavg()[0]

    from dpo_exp.models import offline_gpt2_tokenizer

    tokenizer = offline_gpt2_tokenizer()
    pairs = load_pairs(tokenizer, args.pairs, args.max_length)
    encoded = encode(tokenizer, pairs)
    workdir = Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    if args.profile:
        print(profile_step(args, tokenizer, pairs, workdir, precompute=False))
        return

    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    for _ in range(args.repeats):  # interleaved, so a change in machine load hits every contender alike
        for name in contenders:
            torch.manual_seed(args.seed)
            if name == "hand_written":
                out = hand_written(
                    tiny_model(args.seed),
                    encoded,
                    tokenizer.pad_token_id,
                    args.epochs,
                    args.batch,
                    args.lr,
                    args.beta,
                    args.seed,
                )
            elif name == "trl_plain":
                out = run_trl_plain(args, tokenizer, pairs, workdir)
            else:
                out = run_project(args, tokenizer, pairs, name == "project_precompute", workdir)
            out["tokens_per_s"] = out["tokens"] / out["seconds"]
            runs[name].append(out)
            print(f"  {name:24s} {out['seconds']:7.1f} s  {out['tokens_per_s']:7.0f} tok/s", flush=True)

    summary = {}
    for name, outs in runs.items():
        summary[name] = {
            "tokens_per_s": statistics.median(o["tokens_per_s"] for o in outs),
            "train_seconds": statistics.median(o["seconds"] for o in outs),
            "setup_seconds": statistics.median(o.get("setup_seconds", 0.0) for o in outs),
            "tokens": outs[0]["tokens"],
            "repeats": outs,
        }
    floor = summary.get("hand_written", {}).get("tokens_per_s")
    if floor:
        for entry in summary.values():
            entry["vs_hand_written"] = entry["tokens_per_s"] / floor
    targets = {"project_precompute": 1.0, "project_no_precompute": 0.9}
    result = {
        "machine": machine() | {"load_average_before": load_before, "load_average_after": os.getloadavg()[0]},
        "model": "tiny GPT-2 (2 layers, width 64, 2 heads, GPT-2 BPE vocabulary 50257), random init, fp32",
        "setup": {
            "pairs": len(pairs),
            "max_length": args.max_length,
            "batch_size": args.batch,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "data": "ultrafeedback/sample.jsonl",
        },
        "targets_vs_hand_written": targets,
        "contenders": summary,
        "targets_met": {
            k: summary[k]["vs_hand_written"] >= v
            for k, v in targets.items()
            if k in summary and "vs_hand_written" in summary[k]
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nDPO training, {len(pairs)} pairs x {args.epochs} epoch(s), batch {args.batch}, median of {args.repeats}:")
    print(f"  {'contender':24s} {'tokens/s':>9s} {'train s':>8s} {'setup s':>8s} {'vs hand':>8s}  target")
    for name, s in summary.items():
        target = f">= {targets[name]:.1f}" if name in targets else ""
        print(
            f"  {name:24s} {s['tokens_per_s']:9.0f} {s['train_seconds']:8.1f} {s['setup_seconds']:8.1f} "
            f"{s.get('vs_hand_written', float('nan')):8.2f}  {target}"
        )
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; written to {args.out}")


if __name__ == "__main__":
    main()
