"""The decode step's own ops alone, at gpt-oss's shapes: attention_decode (64 q heads over 8 kv
heads of 64, one token, caches of several lengths, with and without the 128-key window) and
add_rms_norm (one row of 2880), each captured in a CUDA graph of 20 calls, median per call over
replays. For a sweep that costs seconds; under ncu, -k regex:attention_decode.

    python3 bench/decode_ops.py [--positions 259 4095 32767]
"""

import argparse
import statistics

import torch

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


if __name__ == "__main__":
    main()
