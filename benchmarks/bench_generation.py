"""Batched vs one-prompt-at-a-time sampling and scoring on the same prompts (tiny GPT-2, CPU).

    python benchmarks/bench_generation.py [--quick] [--prompts 64] [--samples 4] [--new-tokens 24] [--repeats 3]

Sampling: `dpo_exp.generation.generate_samples` with its default CPU batching (prompts sorted by length,
`--batch-size` prompts per left-padded, KV-cached generate() call) against the one-prompt-at-a-time loop (a plain
`model.generate` per prompt, drawing that prompt's `--samples` completions); timed in turns (`--repeats`, median
reported). `generate_samples` is timed with both draws of `dpo_exp.sampler`: the default (pair building,
best-of-N) and `paired=True` (evaluation and the app: the draw that keeps two similar models' samples alike). Also recorded: `generate_samples` run twice gives the same samples, and given the prompts in reverse
order gives each prompt the same samples. Scoring: the tfidf_logreg scorer and a transformers text-classification
pipeline (a tiny random DistilBERT standing in for sst2), called
once on all completions against once per completion. Figures are printed and written to
benchmarks/results/generation.json. The load average is recorded: on a shared machine, compare ratios, not
absolute throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from machine_info import machine
from omegaconf import OmegaConf

from dpo_exp import DEMO_DIR
from dpo_exp.data.imdb import load_prompt_sets
from dpo_exp.generation import _strip, generate_samples
from dpo_exp.models import build_model, offline_gpt2_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "generation.json"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def tiny_classifier(folder: Path, tokenizer) -> None:
    """A randomly initialised 2-layer DistilBERT classifier (the sst2 scorer's architecture), saved locally."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        n_layers=2,
        dim=64,
        hidden_dim=128,
        n_heads=2,
        max_position_embeddings=512,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 prompts, 2 repeats")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per generate() call (the CPU default)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats (median reported)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--single-texts", type=int, default=32, help="texts scored one at a time")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.repeats = 32, 2
    load_before = os.getloadavg()[0]

    tokenizer = offline_gpt2_tokenizer()
    cache = tempfile.mkdtemp(prefix="bench_gen_")
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "cache_dir": cache,
            "data_size": args.prompts,
            "dataset": {
                "path": str(DEMO_DIR / "reviews.jsonl"),
                "columns": {"text": "text", "label": "label"},
                "prompt_tokens_min": 2,
                "prompt_tokens_max": 8,
                "eval_fraction": 0.1,
                "eval_size": 8,
                "eval_prompts": 8,
                "data_size": args.prompts,
                "hub_id": None,
            },
        }
    )
    prompts = load_prompt_sets(cfg, tokenizer).train_prompts
    model_cfg = OmegaConf.create({"tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 256}})
    model = build_model(model_cfg, seed=0)  # the tiny_gpt2 preset's size
    gen = OmegaConf.create(
        {
            "num_samples": args.samples,
            "max_new_tokens": args.new_tokens,
            "temperature": 1.0,
            "top_k": 0,
            "top_p": 1.0,
            "batch_size": args.batch_size,
        }
    )
    generate_samples(model, tokenizer, prompts[:2], gen, seed=0, progress=False)  # warm-up

    def one_prompt_at_a_time():
        """The floor: a plain model.generate per prompt, seeded per prompt."""
        out = []
        with torch.no_grad():
            for i, prompt in enumerate(prompts):
                enc = tokenizer(prompt, return_tensors="pt")
                torch.manual_seed(i)
                gen_ids = model.generate(
                    **enc,
                    do_sample=True,
                    max_new_tokens=args.new_tokens,
                    top_k=0,
                    num_return_sequences=args.samples,
                    pad_token_id=tokenizer.eos_token_id,
                )
                out.append([_strip(row[enc.input_ids.shape[1] :].tolist(), tokenizer.eos_token_id) for row in gen_ids])
        return out

    runs: dict[str, list[float]] = {"batched": [], "batched_paired": [], "one_prompt_at_a_time": []}
    for _ in range(args.repeats):  # interleaved, so a change in machine load hits every mode alike
        batched, t = timed(lambda: generate_samples(model, tokenizer, prompts, gen, seed=0, progress=False))
        runs["batched"].append(t)
        paired, t = timed(lambda: generate_samples(model, tokenizer, prompts, gen, seed=0, progress=False, paired=True))
        runs["batched_paired"].append(t)
        single, t = timed(one_prompt_at_a_time)
        runs["one_prompt_at_a_time"].append(t)
    t_batched, t_single = statistics.median(runs["batched"]), statistics.median(runs["one_prompt_at_a_time"])
    t_paired = statistics.median(runs["batched_paired"])
    tokens_p = sum(len(ids) for row in paired.token_ids for ids in row)
    n = len(prompts) * args.samples
    tokens_b = sum(len(ids) for row in batched.token_ids for ids in row)
    tokens_s = sum(len(ids) for row in single for ids in row)
    again = generate_samples(model, tokenizer, prompts, gen, seed=0, progress=False)
    reverse = generate_samples(model, tokenizer, prompts[::-1], gen, seed=0, progress=False)
    same_seed_same_samples = again.token_ids == batched.token_ids
    order_independent = reverse.token_ids[::-1] == batched.token_ids
    generation = {
        "prompts": len(prompts),
        "samples_per_prompt": args.samples,
        "max_new_tokens": args.new_tokens,
        "batched": {"seconds": t_batched, "samples_per_s": n / t_batched, "tokens_per_s": tokens_b / t_batched},
        "one_prompt_at_a_time": {
            "seconds": t_single,
            "samples_per_s": n / t_single,
            "tokens_per_s": tokens_s / t_single,
        },
        "batched_paired": {"seconds": t_paired, "samples_per_s": n / t_paired, "tokens_per_s": tokens_p / t_paired},
        "speedup": t_single / t_batched,
        "speedup_paired": t_single / t_paired,
        "speedup_target": 5.0,
        "batch_size": args.batch_size,
        "tokens_per_s_speedup": (tokens_b / t_batched) / (tokens_s / t_single),
        "same_seed_same_samples": same_seed_same_samples,
        "prompt_order_independent": order_independent,
        "seconds_per_repeat": runs,
    }

    from dpo_exp.judges.sentiment import Sst2Scorer, TfidfLogRegScorer

    texts = [p + t for p, row in zip(batched.prompts, batched.texts) for t in row]
    scoring = {"texts_batched": len(texts), "texts_one_at_a_time": min(len(texts), args.single_texts)}
    tfidf = TfidfLogRegScorer(OmegaConf.create({"kind": "tfidf_logreg"}), cfg)
    with tempfile.TemporaryDirectory() as folder:
        tiny_classifier(Path(folder), tokenizer)
        hf = Sst2Scorer(OmegaConf.create({"hub_id": folder, "score": "probability", "batch_size": 64, "device": "cpu"}))
        for name, scorer in (("tfidf_logreg", tfidf), ("hf_pipeline_tiny_classifier", hf)):
            scorer.score(texts[:4])  # warm-up
            all_at_once, t_b = timed(lambda: scorer.score(texts))  # noqa: B023 (called at once)
            few = texts[: args.single_texts]  # one at a time is slow: time a subset, compare per-text rates
            each, t_s = timed(lambda: [scorer.score([t])[0] for t in few])  # noqa: B023 (called at once)
            scoring[name] = {
                "max_abs_diff_batched_vs_single": max(abs(a - b) for a, b in zip(all_at_once, each)),
                "batched_texts_per_s": len(texts) / t_b,
                "one_at_a_time_texts_per_s": len(few) / t_s,
                "speedup": (t_s / len(few)) / (t_b / len(texts)),
            }

    result = {
        "machine": machine(load_average_before=load_before, load_average_after=os.getloadavg()[0]),
        "model": "tiny GPT-2 (4 layers, width 128, 4 heads, GPT-2 BPE), random init",
        "generation": generation,
        "scoring": scoring,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    g = generation
    print(f"generation ({g['prompts']} prompts x {args.samples} samples, {args.new_tokens} new tokens):")
    b = g["batched"]
    print(f"  batched            {b['samples_per_s']:7.1f} samples/s  {b['tokens_per_s']:7.0f} tok/s")
    bp = g["batched_paired"]
    print(f"  batched, paired    {bp['samples_per_s']:7.1f} samples/s  {bp['tokens_per_s']:7.0f} tok/s")
    print(
        f"  one prompt a time  {g['one_prompt_at_a_time']['samples_per_s']:7.1f} samples/s  "
        f"{g['one_prompt_at_a_time']['tokens_per_s']:7.0f} tok/s"
    )
    print(
        f"  speed-up x{g['speedup']:.2f} (target x5), paired x{g['speedup_paired']:.2f}; same seed -> same samples: {same_seed_same_samples}; "
        f"prompt order independent: {order_independent}"
    )
    for name in ("tfidf_logreg", "hf_pipeline_tiny_classifier"):
        s = scoring[name]
        print(
            f"scoring {name}: batched {s['batched_texts_per_s']:.0f} texts/s, one at a time "
            f"{s['one_at_a_time_texts_per_s']:.0f} texts/s, speed-up x{s['speedup']:.2f}"
        )
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; written to {args.out}")


if __name__ == "__main__":
    main()
