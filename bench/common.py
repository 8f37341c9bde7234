"""What the benchmarks share: the sweep's arguments and the commit a result belongs to."""

import argparse
import subprocess
from pathlib import Path
from typing import Optional


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
