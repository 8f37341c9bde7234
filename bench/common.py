"""What the benchmarks share: the sweep's arguments, the commit and driver a result belongs to, the
ceilings measured in the same run, and event timing."""

import argparse
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch


def sweep_arguments(description: str) -> argparse.ArgumentParser:
    """The sweep of docs/benchmark.md (expert counts, token counts), repetitions and where results go."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--experts", type=int, nargs="+", default=[32, 128])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 32, 128, 512, 2048, 8192])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--peer-dir", type=Path, default=Path(".peers/triton_kernels-3.6.0"),
                   help="folder holding OpenAI's triton_kernels 3.6 (its package, bench_utils.py, distributed.py); "
                        "timed beside moekit when present")
    p.add_argument("--commit", default=None, help="the commit measured (default: git rev-parse HEAD; the "
                                                  "device machine's copy of the tree has no .git)")
    return p


def commit_of(args: argparse.Namespace) -> Optional[str]:
    if args.commit:
        return args.commit
    git = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], capture_output=True, text=True)
    return git.stdout.strip() if git.returncode == 0 else None


def driver_version() -> str:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True)
    return smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else "unknown"


def call_ms(fn, flush=None, idle_start=False, host_ms=None) -> float:
    """The CUDA-event time of one fn() (ms), flush() before it. By default the host queues fn()
    while the flush still runs, so the time is the GPU's alone (the host's launching hidden behind
    the flush). idle_start waits for the GPU before the call instead: the time then counts the
    host's launching too, what eager minus graph measures. host_ms, a list, gets the host's time
    until fn() returned (its kernels queued, not waited for)."""
    if flush is not None:
        flush()
    if idle_start:
        torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    began = time.perf_counter()
    fn()
    if host_ms is not None:
        host_ms.append((time.perf_counter() - began) * 1e3)
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def median_ms(fn, reps, flush=None):
    """The median of reps GPU times of fn() (call_ms)."""
    return statistics.median(call_ms(fn, flush) for _ in range(reps))


@dataclass
class Overhead:
    """eager()'s time over its graph's (ms): the median of the paired differences, their quartiles,
    and the median host time of the eager call (until it returned)."""
    ms: float
    quartiles_ms: Tuple[float, float]
    eager_host_ms: float


def eager_overhead(eager, replay, reps, flush=None) -> Overhead:
    """eager()'s time over replay()'s (a CUDA graph of it), each call started on an idle GPU: the
    median of reps paired differences, the two calls of a pair back to back (in turn which first),
    so that a drift of the host's or the GPU's clocks over the run cancels."""
    diffs, host = [], []
    for i in range(reps):
        pair = (eager, replay) if i % 2 == 0 else (replay, eager)
        times = {fn: call_ms(fn, flush, idle_start=True, host_ms=host if fn is eager else None) for fn in pair}
        diffs.append(times[eager] - times[replay])
    q1, _, q3 = statistics.quantiles(diffs, n=4)
    return Overhead(statistics.median(diffs), (q1, q3), statistics.median(host))


def ceilings(dev):
    src = torch.empty(2 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), 10)
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    mm_ms = median_ms(lambda: a @ b, 10)
    del src, dst, a, b
    return {"copy_GBps": 2 * (2 << 30) / copy_ms / 1e6, "bf16_gemm_TFLOPs": 2 * 8192 ** 3 / mm_ms / 1e9}
