"""Evaluation sampling after FSDP training: which is faster, sampling from the shards on every process, or gathering
the model once and sampling from the consolidated copy on process 0 (what dpo_exp does: docs/clusters.md)?

    torchrun --nproc_per_node 2 benchmarks/bench_sharded_generation.py --out benchmarks/results/sharded_generation_cpu.json

Both sample the same prompts greedily for the same number of new tokens (min_new_tokens = max_new_tokens, so every
process runs the same number of forward passes, as FSDP's collectives require). `sharded`: FSDP2 `fully_shard` per
block, each process samples its share of the prompts, every forward pass all-gathers each block. `consolidated`: the
full state dict gathered to process 0 (timed too), which samples every prompt with a plain model.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from transformers import GPT2Config, GPT2LMHeadModel


def build(args: argparse.Namespace) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=args.layers,
        n_embd=args.width,
        n_head=4,
        vocab_size=args.vocab,
        n_positions=args.prompt + args.new,
        bos_token_id=1,
        eos_token_id=2,
    )
    return GPT2LMHeadModel(config).eval()


def sample(model, prompts: torch.Tensor, new: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=32, help="new tokens per prompt")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1)
    prompts = torch.randint(1, args.vocab, (args.prompts, args.prompt))

    model = build(args)
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    share = prompts.chunk(world)[rank]
    sample(model, share[:1], 2)  # warm-up (first all-gathers)
    dist.barrier()
    start = time.perf_counter()
    sharded_out = sample(model, share, args.new)
    dist.barrier()
    sharded_s = time.perf_counter() - start

    dist.barrier()
    start = time.perf_counter()
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    gathered_s = time.perf_counter() - start
    result = None
    if rank == 0:
        plain = build(args)
        plain.load_state_dict(state)
        sample(plain, prompts[:1], 2)
        start = time.perf_counter()
        consolidated_out = sample(plain, prompts, args.new)
        consolidated_s = time.perf_counter() - start
        same = torch.equal(consolidated_out.chunk(world)[0], sharded_out)
        result = {
            "processes": world,
            "threads_per_process": torch.get_num_threads(),
            "model": {"layers": args.layers, "width": args.width, "vocab": args.vocab},
            "prompts": args.prompts,
            "new_tokens": args.new,
            "sharded_s": round(sharded_s, 3),
            "consolidated_s": round(gathered_s + consolidated_s, 3),
            "consolidated_gather_s": round(gathered_s, 3),
            "faster": "consolidated" if gathered_s + consolidated_s < sharded_s else "sharded",
            "same_tokens": same,
            "device": "cpu",
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
        }
        print(json.dumps(result, indent=2))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    main()
