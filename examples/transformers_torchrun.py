"""The scenario moekit exists for, in transformers: one gpt-oss model per rank under torchrun.

Every rank loads transformers' GptOssForCausalLM with moekit's MoE (moekit.transformers_gpt_oss)
on its own device, cuda:LOCAL_RANK (without torch.cuda.set_device: the current device stays 0
on every rank) or the CPU, and generates greedily. Rank 0 prints its text and whether every
rank produced the same tokens; with triton_kernels' MoE, ranks 1+ would write garbage here.

    torchrun --nproc-per-node 2 examples/transformers_torchrun.py --checkpoint DIR [--device cuda|cpu]
        [--prompt TEXT] [--max-new-tokens N] [--dtype bfloat16|float32] [--output-json FILE]

Exit status 0 if every rank agrees, 1 if not. NCCL on CUDA, gloo on the CPU.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="gpt-oss repository root or its original/ folder")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--prompt", default="The old man walked into the city and")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--output-json", type=Path, default=None)
    args = p.parse_args()

    from tokenizers import Tokenizer

    from moekit.models import find_tokenizer
    from moekit.transformers_gpt_oss import from_pretrained

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if args.device == "cuda" else torch.device("cpu")
    if world > 1:
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    try:
        tokenizer = Tokenizer.from_file(str(find_tokenizer(args.checkpoint)))
        model = from_pretrained(args.checkpoint, device=device, dtype=getattr(torch, args.dtype))
        ids = torch.tensor([tokenizer.encode(args.prompt).ids], device=device)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
        mine = out[0, ids.shape[1]:]
        ranks = [mine]
        if world > 1:  # tensors on this rank's device: NCCL never consults the current device
            ranks = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(ranks, mine)
        ranks = [r.tolist() for r in ranks]
        agree = all(r == ranks[0] for r in ranks)
        if rank == 0:
            print(f"rank 0 on {device}: {tokenizer.decode(ranks[0])}")
            print(f"{world} rank(s): {'every rank agrees token for token' if agree else 'RANKS DIFFER'}; "
                  f"current device {torch.cuda.current_device() if torch.cuda.is_available() else 'n/a'}")
            if args.output_json is not None:
                args.output_json.write_text(json.dumps({"world_size": world, "device": str(device), "ranks": ranks}))
        return 0 if agree else 1
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
