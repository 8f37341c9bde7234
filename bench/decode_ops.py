"""The decode step's own ops alone, at gpt-oss's shapes: attention_decode (64 q heads over 8 kv
heads of 64, one token, caches of several lengths, with and without the 128-key window) and
add_rms_norm (one row of 2880), each captured in a CUDA graph of 20 calls, median per call over
replays. For a sweep that costs seconds; under ncu, -k regex:attention_decode.
Then one decode layer at the 20b shapes (random weights; one layer's weights serve all 24, so
they sit in L2 when the graph replays: the host's side is what this row is for): the runner's
ops for one token, 24 layers a step, eager (the host's launches, synchronised once a step) and
replayed as a graph.

    python3 bench/decode_ops.py [--positions 259 4095 32767] [--steps 20]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import moekit

HQ, HKV, D, H = 64, 8, 64, 2880


def per_call_us(fn, calls: int = 20, replays: int = 30) -> float:
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--positions", type=int, nargs="+", default=[259, 4095, 32767])
    p.add_argument("--steps", type=int, default=20, help="steps of 24 layers a timed eager run")
    args = p.parse_args()
    dev = torch.device("cuda", torch.cuda.current_device())
    with torch.inference_mode():
        for pos in args.positions:
            L = pos + 1
            qkv = torch.randn(1, (HQ + 2 * HKV) * D, device=dev, dtype=torch.bfloat16)
            k_cache = torch.randn(L, HKV, D, device=dev, dtype=torch.bfloat16)
            v_cache = torch.randn_like(k_cache)
            sinks = torch.randn(HQ, device=dev)
            position = torch.tensor([pos], device=dev, dtype=torch.int32)
            inv_freq = torch.rand(D // 2, device=dev)
            for window in (0, 128):
                us = per_call_us(lambda: moekit.attention_decode(qkv, k_cache, v_cache, sinks, position, inv_freq,
                                                                 rope_scale=1.3, sm_scale=0.125, window=window))
                keys = min(L, window) if window else L
                print(f"attention_decode position {pos:6d} window {window:3d}: {us:7.2f} us "
                      f"({keys * HKV * D * 2 * 2 / us / 1e3:.0f} GB/s of keys and values)", flush=True)
        x = torch.randn(1, H, device=dev, dtype=torch.bfloat16)
        residual, scale = torch.randn_like(x), torch.rand(H, device=dev)
        print(f"add_rms_norm 1 x {H}: {per_call_us(lambda: moekit.add_rms_norm(x, residual, scale)):.2f} us")
        decode_layer(dev, args.steps)


def decode_layer(dev: torch.device, steps: int, layers: int = 24, E: int = 32) -> None:
    bf16 = torch.bfloat16

    def rand(*shape, dtype=bf16, scale=0.02):
        return (torch.randn(*shape, device=dev) * scale).to(dtype)

    scale = torch.rand(H, device=dev)
    w_qkv, b_qkv = rand((HQ + 2 * HKV) * D, H), rand((HQ + 2 * HKV) * D)
    w_out, b_out = rand(H, HQ * D), rand(H)
    L = 512
    k_cache, v_cache = rand(L, HKV, D, scale=1.0), rand(L, HKV, D, scale=1.0)
    sinks, inv_freq = torch.randn(HQ, device=dev), torch.rand(D // 2, device=dev)
    position = torch.tensor([200], device=dev, dtype=torch.int32)
    gate_w, gate_b = rand(E, H), rand(E)
    mlp1 = moekit.quantize_mxfp4(rand(E, 2 * H, H, dtype=torch.float32))
    mlp2 = moekit.quantize_mxfp4(rand(E, H, H, dtype=torch.float32))
    b1, b2 = rand(E, 2 * H), rand(E, H)
    x, residual = rand(1, H, scale=1.0), rand(1, H, scale=1.0)

    def step():
        h, r = x, residual
        for _ in range(layers):
            r, n = moekit.add_rms_norm(h, r, scale)
            a = moekit.attention_decode(F.linear(n, w_qkv, b_qkv), k_cache, v_cache, sinks, position, inv_freq,
                                        rope_scale=1.0, sm_scale=0.125, window=128)
            r, n = moekit.add_rms_norm(F.linear(a, w_out, b_out), r, scale)
            h = moekit.moe_mlp(n, gate_w, gate_b, mlp1, b1, mlp2, b2)
        return h

    step()
    torch.cuda.synchronize()
    eager = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        eager.append((time.perf_counter() - start) / steps * 1e6)
    graph_us = per_call_us(step, calls=1)
    print(f"decode step at 20b shapes ({layers} layers, weights in L2): eager {statistics.median(eager):.0f} us "
          f"(runs {', '.join(f'{t:.0f}' for t in eager)}), graph {graph_us:.0f} us", flush=True)


if __name__ == "__main__":
    main()
