"""Tensor-parallel moe_mlp on CPU with gloo; launched by test_tensor_parallel.py through
`python -m torch.distributed.run --standalone --nproc-per-node W tp_worker.py OUTDIR`.

Every rank builds the same full layer from one seed, keeps its slice of every expert's
intermediate dimension, runs moekit.moe_mlp on the shard, sums the partial outputs with
all_reduce and compares with the unsharded moe_mlp run in the same process. Rank 0 writes
OUTDIR/result.json. Not collected by pytest (no test_ prefix).
"""

import json
import os
import sys

import torch
import torch.distributed as dist

import moekit

E, H, I, T, K = 4, 96, 128, 7, 2
SEED = 1234


def full_layer(x_dtype):
    g = torch.Generator().manual_seed(SEED)

    def randn(*shape, scale=1.0, dtype=torch.float32):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return dict(
        x=randn(T, H, dtype=x_dtype),
        gate_weight=randn(E, H, scale=H ** -0.5, dtype=x_dtype),
        gate_bias=randn(E, scale=0.5, dtype=x_dtype),
        mlp1_weight=moekit.quantize_mxfp4(randn(E, 2 * I, H, scale=H ** -0.5)),
        mlp1_bias=randn(E, 2 * I, scale=0.5, dtype=x_dtype),
        mlp2_weight=moekit.quantize_mxfp4(randn(E, H, I, scale=I ** -0.5)),
        mlp2_bias=randn(E, H, scale=0.5, dtype=x_dtype),
    )


def shard(layer, rank, world):
    """Rank r keeps mlp1 rows [r*2I/W, (r+1)*2I/W) (whole interleaved glu/linear pairs), the
    matching SwiGLU outputs [r*I/W, (r+1)*I/W), i.e. mlp2 columns, which for MXFP4 are the K/32
    blocks [r*I/W/32, (r+1)*I/W/32). mlp2_bias only on rank 0."""
    assert (2 * I) % (2 * world) == 0 and (I // world) % 32 == 0
    rows = slice(rank * 2 * I // world, (rank + 1) * 2 * I // world)
    kb = slice(rank * I // world // 32, (rank + 1) * I // world // 32)
    (b1, s1), (b2, s2) = layer["mlp1_weight"], layer["mlp2_weight"]
    return dict(
        layer,
        mlp1_weight=(b1[:, rows].contiguous(), s1[:, rows].contiguous()),
        mlp1_bias=layer["mlp1_bias"][:, rows].contiguous(),
        mlp2_weight=(b2[:, :, kb].contiguous(), s2[:, :, kb].contiguous()),
        mlp2_bias=layer["mlp2_bias"] if rank == 0 else None,
    )


def rel_err(got, want):
    got, want = got.double(), want.double()
    return (torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want)).item()


def main():
    outdir = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {"world_size": world}
    for name, x_dtype in [("bfloat16", torch.bfloat16), ("float32", torch.float32)]:
        layer = full_layer(x_dtype)
        full = moekit.moe_mlp(**layer, experts_per_token=K)
        part = moekit.moe_mlp(**shard(layer, rank, world), experts_per_token=K)
        assert part.shape == full.shape and part.dtype == x_dtype
        summed = part.clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        # every rank's view, gathered on rank 0
        mine = {"rel_err": rel_err(summed, full), "finite": bool(torch.isfinite(summed).all()),
                "partial_differs": rel_err(part, full) > 0.1,
                "same_full_on_all_ranks": None}
        fulls = [torch.empty_like(full) for _ in range(world)]
        dist.all_gather(fulls, full)
        mine["same_full_on_all_ranks"] = all(torch.equal(f, full) for f in fulls)
        per_rank = [None] * world
        dist.all_gather_object(per_rank, mine)
        results[name] = per_rank
    if rank == 0:
        with open(os.path.join(outdir, "result.json"), "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
