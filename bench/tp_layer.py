"""The MoE layer of docs/benchmark.md with every expert's intermediate dimension split over the ranks of
torchrun (NCCL): time per layer on each rank's shard, and the all_reduce that sums the shards.

    torchrun --nproc-per-node W bench/tp_layer.py [--experts 32 128] [--tokens ...] [--out PATH]

Each rank holds rows [r*2I/W, (r+1)*2I/W) of mlp1 (whole SwiGLU pairs) and the matching K-blocks
of mlp2 (mlp2_bias on rank 0 only). Timed with CUDA events over CUDA-graph replays, L2 flushed
before each: the shard's moe_mlp, the all_reduce of y alone, and both together. Rank 0 writes
JSON (GPU, world size, commit, every row).
"""

import datetime
import json
import os
import statistics
from pathlib import Path

import torch
import torch.distributed as dist

import moekit
from common import commit_of, sweep_arguments

H = I = 2880
K = 4


def median_us(fn, reps, flush, group):
    times = []
    for _ in range(reps):
        flush()
        dist.barrier(group)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def graph_of(fn):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def main():
    args = sweep_arguments(__doc__.splitlines()[0]).parse_args()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    # moekit runs on its tensors' device whatever the current one is, but torch.cuda.graph
    # captures the current device's stream: without this, rank 1 captured an empty graph and its
    # replays never joined rank 0's all_reduce (the first 2-GPU run hung).
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", device_id=dev)
    if (2 * I) % (2 * world) or (I // world) % 32:
        raise SystemExit(f"world size {world} does not split I={I} into MXFP4 blocks of 32")
    i_shard = I // world
    gen = torch.Generator(device=dev).manual_seed(0)  # the same full weights on every rank
    flush_buf = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    rows = []
    for E in args.experts:
        w1 = [torch.randn(2 * I, H, device=dev, generator=gen) / H ** 0.5 for _ in range(E)]
        w2 = [torch.randn(H, I, device=dev, generator=gen) / I ** 0.5 for _ in range(E)]
        def mx(ws):
            pairs = [moekit.quantize_mxfp4(w) for w in ws]
            return torch.stack([b for b, _ in pairs]), torch.stack([s for _, s in pairs])
        layer = dict(
            gate_weight=(torch.randn(E, H, device=dev, generator=gen) / H ** 0.5).bfloat16(), gate_bias=None,
            mlp1_weight=mx([w[rank * 2 * i_shard:(rank + 1) * 2 * i_shard] for w in w1]),
            mlp1_bias=(0.1 * torch.randn(E, 2 * I, device=dev, generator=gen))[:, rank * 2 * i_shard:(rank + 1) * 2 * i_shard].bfloat16(),
            mlp2_weight=mx([w[:, rank * i_shard:(rank + 1) * i_shard].contiguous() for w in w2]),
            mlp2_bias=(0.1 * torch.randn(E, H, device=dev, generator=gen)).bfloat16() if rank == 0 else None)
        del w1, w2
        for T in args.tokens:
            x = torch.randn(T, H, device=dev, generator=gen).bfloat16()
            y = torch.empty_like(x)
            def shard():
                y.copy_(moekit.moe_mlp(x, **layer, experts_per_token=K))
            def reduce():
                dist.all_reduce(y)
            def both():
                shard()
                reduce()
            reps = args.reps if T <= 512 else max(3, args.reps // 4)
            times = {name: median_us(graph_of(fn).replay, reps, flush_buf.zero_, None)
                     for name, fn in (("shard_us", shard), ("all_reduce_us", reduce), ("layer_us", both))}
            rows.append(dict(E=E, T=T, **times))
            if rank == 0:
                print(f"W={world} E={E:4d} T={T:5d}  shard {times['shard_us']:9.1f} us  all_reduce "
                      f"{times['all_reduce_us']:8.1f} us  layer {times['layer_us']:9.1f} us", flush=True)
        del layer
    if rank == 0:
        result = dict(gpu=torch.cuda.get_device_name(dev), world_size=world, date=datetime.date.today().isoformat(),
                      commit=commit_of(args),
                      torch=torch.__version__, H=H, I=I, k=K, rows=rows)
        out = args.out or Path("bench/results") / f"tp_layer_W{world}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
