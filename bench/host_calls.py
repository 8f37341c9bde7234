"""The host's cost of a call of moekit's differentiable entry points. Each wrapper (moekit.moe_mlp,
route, add_rms_norm) beside its op called through the dispatcher as torch.ops.moekit.* (which
enters the op's Python autograd kernel, torch.library.register_autograd, even when nothing
requires grad: the wrappers skip it then), in one process, grad mode on.

On the CPU (the default) each runs on empty inputs (no tokens): the time is Python, the
dispatcher and the C++ checks. With --device cuda bench/moe_layer.py's layer also runs (gpt-oss's
shapes, repacked MXFP4 experts, --experts E) on one token, the decode step's call: each
call's host time alone (the time until the call returns, its kernels queued, never waited
for), beside the op called below the Autograd key as the wrapper calls it, so that the
difference is the wrapper's Python, and a control: one torch op's call (an in-place add on the
GPU, one launch), whose host time says how fast the process's host is (on the lent machines it
wandered 1.5x between processes, moekit's calls with it:
bench/results/eager_overhead_H100_processes.txt). --trace DIR also writes, per E, a
torch.profiler trace (Chrome JSON) of ten one-token calls each started on an idle GPU, eager and
then as a CUDA graph's replay: where eager minus graph goes (the host's spans, the launches, the
kernels).

    python3 bench/host_calls.py [--device cpu|cuda] [--experts 32 128] [--calls 20000] [--trace DIR]
        [--out bench/results/host_calls_<CPU or GPU>.json]
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import moekit
from common import commit_of
from moe_layer import ALPHA, H, K, LIMIT, make_layer


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


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


def host_us(fn, calls: int, dev: torch.device) -> float:
    """The median host time of a call (us): each call timed alone, the GPU's queue drained every
    64 calls so that a launch never waits for room in it."""
    times = []
    for i in range(calls + 100):
        if i % 64 == 0:
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        fn()
        if i >= 100:
            times.append(time.perf_counter() - start)
    torch.cuda.synchronize(dev)
    return statistics.median(times) * 1e6


def empty_inputs_rows(calls: int) -> list:
    torch.manual_seed(0)
    E, H, I, k = 4, 64, 64, 2
    mx = lambda n, kk: moekit.quantize_mxfp4(torch.randn(E, n, kk))  # noqa: E731
    x = torch.randn(0, H).bfloat16()
    gate_w, gate_b = torch.randn(E, H).bfloat16(), torch.randn(E).bfloat16()
    (w1, s1), b1, (w2, s2), b2 = mx(2 * I, H), torch.randn(E, 2 * I).bfloat16(), mx(H, I), torch.randn(E, H).bfloat16()
    logits, scale = torch.randn(0, E), torch.ones(H)
    layer_args = (x, gate_w, gate_b, w1, s1, b1, w2, s2, b2, k, 1.702, 7.0, None, None, None, None, False)
    x3 = x.reshape(1, 0, H)  # transformers' layers pass [batch, tokens, H]
    rows = [
        ("moe_mlp", lambda: moekit.moe_mlp(x, gate_w, gate_b, (w1, s1), b1, (w2, s2), b2, experts_per_token=k),
         lambda: torch.ops.moekit.moe_mlp.default(*layer_args)),
        ("moe_mlp 3-d x", lambda: moekit.moe_mlp(x3, gate_w, gate_b, (w1, s1), b1, (w2, s2), b2, experts_per_token=k),
         lambda: torch.ops.moekit.moe_mlp.default(*layer_args)),
        ("route", lambda: moekit.route(logits, k), lambda: torch.ops.moekit.route.default(logits, k)),
        ("add_rms_norm", lambda: moekit.add_rms_norm(x, x, scale),
         lambda: torch.ops.moekit.add_rms_norm.default(x, x, scale, 1e-5)),
    ]
    print(f"{'entry point':14s} {'wrapper us':>11s} {'torch.ops us':>13s}")
    out = []
    for name, wrapper, op in rows:
        w_us, op_us = us_per_call(wrapper, calls), us_per_call(op, calls)
        out.append(dict(op=name, wrapper_us=w_us, torch_ops_us=op_us))
        print(f"{name:14s} {w_us:11.2f} {op_us:13.2f}")
    return out


def write_trace(path, eager, dev: torch.device) -> None:
    """Ten idle-start eager calls, then ten replays of one captured in a graph, in one trace."""
    for _ in range(3):
        y = eager()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = eager()
    torch.cuda.synchronize(dev)
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for name, fn in (("eager", eager), ("graph", graph.replay)):
            for _ in range(10):
                torch.cuda.synchronize(dev)
                with torch.profiler.record_function(name):
                    fn()
                torch.cuda.synchronize(dev)
    prof.export_chrome_trace(str(path))
    del graph, y


def decode_step_rows(experts: list, calls: int, dev: torch.device, trace_dir) -> list:
    """The one-token layer of bench/moe_layer.py (its make_layer, repacked experts), and the
    empty call beside it."""
    out = []
    small = torch.zeros(16, device=dev)
    torch_us = host_us(lambda: small.add_(1), calls, dev)
    out.append(dict(op="torch add_ (control)", torch_us=torch_us))
    print(f"one torch op (add_, one launch): {torch_us:.2f} us")
    print(f"{'E':>4s} {'T':>2s} {'wrapper us':>11s} {'op below Autograd us':>21s}")
    op = torch.ops.moekit.moe_mlp.default
    for E in experts:
        gen = torch.Generator(device=dev).manual_seed(E)
        layer = make_layer(E, dev, gen, repacked=True)
        w1, w2 = layer["mlp1_weight"], layer["mlp2_weight"]
        for T in (0, 1):
            x = torch.randn(T, H, device=dev, generator=gen).bfloat16()
            args = (x, layer["gate_weight"], layer["gate_bias"], *w1[:2], layer["mlp1_bias"], *w2[:2],
                    layer["mlp2_bias"], K, ALPHA, LIMIT, *w1[2:], *w2[2:], False)

            def wrapper():
                return moekit.moe_mlp(x, **layer, experts_per_token=K)

            def below():
                with torch._C._AutoDispatchBelowAutograd():
                    return op(*args)
            w_us, op_us = host_us(wrapper, calls, dev), host_us(below, calls, dev)
            out.append(dict(op="moe_mlp", E=E, T=T, wrapper_us=w_us, torch_ops_below_autograd_us=op_us))
            print(f"{E:4d} {T:2d} {w_us:11.2f} {op_us:21.2f}")
            if trace_dir is not None and T == 1:
                trace_dir.mkdir(parents=True, exist_ok=True)
                write_trace(trace_dir / f"moe_mlp_E{E}_T1.json", wrapper, dev)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--experts", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--trace", type=Path, default=None, help="with --device cuda: write profiler traces here")
    parser.add_argument("--commit", default=None, help="the commit measured (default: git rev-parse HEAD)")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    out = dict(cpu=cpu_model(), torch=torch.__version__,
               commit=commit_of(args), calls=args.calls)
    out["rows"] = empty_inputs_rows(args.calls)
    if args.device == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
        out["gpu"] = torch.cuda.get_device_name(dev)
        out["decode_step_rows"] = decode_step_rows(args.experts, min(args.calls, 5000), dev, args.trace)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
