"""torchrun worker for test_cuda_device_rules: two ranks (gloo) on the same GPU, each computing
its own MoE layer on cuda:0 and checking it against the CPU backend, then agreeing via
all_reduce that both succeeded."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import moekit

E, H, I, K = 32, 96, 160, 4


def main(outdir: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(100 + rank)
    def w(n, k):
        return moekit.quantize_mxfp4(torch.randn(E, n, k, generator=g) / k ** 0.5)
    layer = dict(gate_weight=torch.randn(E, H, generator=g).bfloat16(), gate_bias=None,
                 mlp1_weight=w(2 * I, H), mlp1_bias=torch.randn(E, 2 * I, generator=g).bfloat16(),
                 mlp2_weight=w(H, I), mlp2_bias=torch.randn(E, H, generator=g).bfloat16())
    x = torch.randn(33, H, generator=g).bfloat16()
    want = moekit.moe_mlp(x, **layer, experts_per_token=K)
    on_gpu = torch.utils._pytree.tree_map(lambda t: t.to("cuda:0") if t is not None else None, layer)
    y = moekit.moe_mlp(x.to("cuda:0"), **on_gpu, experts_per_token=K)
    rel = float((y.cpu().double() - want.double()).norm() / want.double().norm())
    ok = torch.tensor([1.0 if rel < 5e-3 else 0.0])
    dist.all_reduce(ok)
    (outdir / f"rank{rank}.json").write_text(json.dumps({"rel_err_vs_cpu": rel, "device": str(y.device),
                                                         "ranks_ok": float(ok)}))
    dist.destroy_process_group()
    if float(ok) != 2.0:
        sys.exit(1)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
