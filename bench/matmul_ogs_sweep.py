"""Every MXFP4 matmul_ogs config forced on mlp1 and mlp2 of issue 22's rows, into one JSON.

    python bench/matmul_ogs_sweep.py [--experts 32 128] [--tokens 8 32 128 512 2048 8192]
        [--configs stream8,...,swapab80] [--out bench/results/matmul_ogs_configs_<GPU>.json]

Each (E, T, mlp) row is one run of bench/matmul_ogs_configs.cpp (each config's median time per
call of a 20-call CUDA graph, its weight rate, FLOP/s and largest difference from the first
config's output), built here where the library is (`make install`), or the binary copied to
build/mb beforehand (a GPU machine without the build). The ceilings are measured in the same run
(common.ceilings: a device-to-device copy, an 8192^3 bf16 matmul), and each config's floor is its
routed weight bytes at the copy rate or its FLOPs at the matmul rate, whichever is longer. The
JSON holds the GPU, driver, commit and ceilings; the table printed shows each row's configs
fastest first.
"""

import datetime
import json
import re
import subprocess
from pathlib import Path

import torch

from common import ceilings, commit_of, driver_version, sweep_arguments

BINARY = Path("build/mb/matmul_ogs_configs")
CONFIGS = "stream8,stream16,stream32,tiled64,wgmma128,swapab16,swapab32,swapab80"
HEADER = re.compile(r"mlp(\d) E=(\d+) T=(\d+) \(P=(\d+), N=(\d+), K=(\d+)\), (\d+) experts routed")
TIMED = re.compile(r"^(\S+)\s+([\d.]+) us\s+([\d.]+) TB/s of weights\s+([\d.]+) TFLOP/s\s+max diff ([-+.\de]+) of max")
REFUSED = re.compile(r"^(\S+)\s+refused: (.*)$")


def build() -> None:
    if Path("build/python/libmoekit.a").is_file():
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["g++", "-O2", "-std=c++17", "-I", "include", "-I", "src", "-I", "/usr/local/cuda/include",
                        "bench/matmul_ogs_configs.cpp", "build/python/libmoekit.a", "-L", "/usr/local/cuda/lib64",
                        "-lcudart", "-lpthread", "-o", str(BINARY)], check=True)
    if not BINARY.is_file():
        raise SystemExit(f"no {BINARY}: run `make install` here, or build it where the library is and copy it")


def run_row(E: int, T: int, mlp: int, configs: str, ceil: dict) -> list:
    """The configs' rows of one (E, T, mlp) run, each with its floor; a run that fails (a fault
    ends the process) is one row saying so, and the sweep goes on."""
    run = subprocess.run([str(BINARY), "--experts", str(E), "--tokens", str(T), "--mlp", str(mlp),
                          "--configs", configs], capture_output=True, text=True)
    print(run.stdout, end="", flush=True)
    lines = run.stdout.splitlines()
    head = HEADER.search(lines[0]) if lines else None
    if run.returncode != 0 or head is None:
        print(run.stderr, end="", flush=True)
        return [dict(E=E, T=T, mlp=mlp, failed=f"exit {run.returncode}: {(run.stderr or run.stdout)[-2000:]}")]
    _, _, _, P, N, K, routed = map(int, head.groups())
    shape = dict(E=E, T=T, mlp=mlp, P=P, N=N, K=K, experts_routed=routed)
    weight_bytes, flops = routed * N * K * (0.5 + 1 / 32), 2.0 * P * N * K  # as mlp_layer.h counts them
    rows = []
    for line in lines[1:]:
        if (m := TIMED.match(line)) is not None:
            config, us, tbps, tflops, diff = m.group(1), *map(float, m.groups()[1:])
            floor_us = max(weight_bytes / (ceil["copy_GBps"] * 1e3), flops / (ceil["bf16_gemm_TFLOPs"] * 1e6))
            rows.append(dict(shape, config=config, us=us, weight_TBps=tbps, TFLOPs=tflops, max_rel_diff=diff,
                             floor_us=floor_us, floor_over_time=floor_us / us))
        elif (m := REFUSED.match(line)) is not None:
            rows.append(dict(shape, config=m.group(1), refused=m.group(2)))
    return rows


def main():
    parser = sweep_arguments(__doc__.splitlines()[0])
    parser.set_defaults(tokens=[8, 32, 128, 512, 2048, 8192])
    parser.add_argument("--configs", default=CONFIGS)
    args = parser.parse_args()
    build()
    dev = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(dev)
    ceil = ceilings(dev)
    torch.cuda.empty_cache()  # the ceilings' buffers, before the binary runs
    rows = []
    for E in args.experts:
        for T in args.tokens:
            for mlp in (1, 2):
                row = run_row(E, T, mlp, args.configs, ceil)
                rows += row
                timed = sorted((r for r in row if "us" in r), key=lambda r: r["us"])
                print("  fastest first: " + ", ".join(f"{r['config']} {r['us']:.1f} us ({r['floor_over_time']:.2f} "
                                                      f"of the floor)" for r in timed), flush=True)
    result = dict(gpu=props.name, driver=driver_version(), commit=commit_of(args),
                  date=datetime.date.today().isoformat(), torch=torch.__version__, ceilings=ceil,
                  timing="median time per call of a 20-call CUDA graph (bench/matmul_ogs_configs.cpp)", rows=rows)
    out = args.out or Path("bench/results") / f"matmul_ogs_configs_{props.name.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"ceilings: copy {ceil['copy_GBps']:.0f} GB/s, bf16 GEMM {ceil['bf16_gemm_TFLOPs']:.0f} TFLOP/s; wrote {out}")


if __name__ == "__main__":
    main()
