"""One gpt-oss MoE layer call per (E, T), for a kernel profiler to read.

    ncu --profile-from-start off --clock-control none python bench/profile_layer.py --experts 32 --tokens 8192

Builds the benchmark's layer, warms up, then runs moe_mlp once per row between
cudaProfilerStart and cudaProfilerStop, so the profiler sees exactly one layer per row.
"""

import torch

import moekit
from common import sweep_arguments
from moe_layer import K, H, make_layer


def main():
    args = sweep_arguments(__doc__.splitlines()[0]).parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    for E in args.experts:
        layer = make_layer(E, dev, gen)
        for T in args.tokens:
            x = torch.randn(T, H, device=dev, generator=gen).bfloat16()
            for _ in range(3):
                moekit.moe_mlp(x, **layer, experts_per_token=K)
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
            moekit.moe_mlp(x, **layer, experts_per_token=K)
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            print(f"E={E} T={T} done", flush=True)


if __name__ == "__main__":
    main()
