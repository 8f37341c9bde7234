"""moe_mlp under torch.distributed (gloo, CPU, 2 ranks): the intermediate dimension sharded
across ranks, partial outputs summed with all_reduce, equals the unsharded layer.

See tp_worker.py for the sharding; docs/design.md, "Tensor parallelism".
"""

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().with_name("tp_worker.py")

# Each rank rounds its partial output to x's dtype before the sum: bf16 adds ~2^-9 relative per
# rank on top of the unsharded output's own rounding; float32 sums two fp32 partials.
TOLERANCE = {"bfloat16": 1e-2, "float32": 1e-5}


def test_tensor_parallel_moe_mlp_matches_unsharded(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    for dtype, tol in TOLERANCE.items():
        ranks = result[dtype]
        assert len(ranks) == 2
        for rank, r in enumerate(ranks):
            assert r["finite"], (dtype, rank)
            assert r["same_full_on_all_ranks"], (dtype, rank)
            assert r["partial_differs"], (dtype, rank)   # the shard alone is not the answer
            assert r["rel_err"] < tol, (dtype, rank, r["rel_err"])
