"""The host's cost of a call of moekit's differentiable entry points, nothing computed: each on
empty inputs (no tokens) on the CPU, so the time is Python, the dispatcher and the C++ checks.
Each wrapper (moekit.moe_mlp, route, add_rms_norm) beside its op called through the dispatcher
as torch.ops.moekit.* (which enters the op's Python autograd kernel, torch.library.register_autograd,
even when nothing requires grad: the wrappers skip it then), in one process, grad mode on.

    python3 bench/host_calls.py [--calls 20000] [--out bench/results/host_calls_CPU.json]
"""

import argparse
import json
import platform
import statistics
import time

import torch

import moekit
from common import commit_of


def us_per_call(fn, calls: int) -> float:
    for _ in range(calls // 10):
        fn()
    runs = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--commit", default=None, help="the commit measured (default: git rev-parse HEAD)")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    E, H, I, k = 4, 64, 64, 2
    mx = lambda n, kk: moekit.quantize_mxfp4(torch.randn(E, n, kk))  # noqa: E731
    x = torch.randn(0, H).bfloat16()
    gate_w, gate_b = torch.randn(E, H).bfloat16(), torch.randn(E).bfloat16()
    (w1, s1), b1, (w2, s2), b2 = mx(2 * I, H), torch.randn(E, 2 * I).bfloat16(), mx(H, I), torch.randn(E, H).bfloat16()
    logits, scale = torch.randn(0, E), torch.ones(H)
    layer_args = (x, gate_w, gate_b, w1, s1, b1, w2, s2, b2, k, 1.702, 7.0, None, None, None, None, False)
    rows = [
        ("moe_mlp", lambda: moekit.moe_mlp(x, gate_w, gate_b, (w1, s1), b1, (w2, s2), b2, experts_per_token=k),
         lambda: torch.ops.moekit.moe_mlp.default(*layer_args)),
        ("route", lambda: moekit.route(logits, k), lambda: torch.ops.moekit.route.default(logits, k)),
        ("add_rms_norm", lambda: moekit.add_rms_norm(x, x, scale),
         lambda: torch.ops.moekit.add_rms_norm.default(x, x, scale, 1e-5)),
    ]
    out = dict(cpu=platform.processor() or platform.machine(), torch=torch.__version__,
               commit=commit_of(args), calls=args.calls, rows=[])
    print(f"{'entry point':14s} {'wrapper us':>11s} {'torch.ops us':>13s}")
    for name, wrapper, op in rows:
        w_us, op_us = us_per_call(wrapper, args.calls), us_per_call(op, args.calls)
        out["rows"].append(dict(op=name, wrapper_us=w_us, torch_ops_us=op_us))
        print(f"{name:14s} {w_us:11.2f} {op_us:13.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
