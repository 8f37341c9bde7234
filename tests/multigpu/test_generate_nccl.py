"""torchrun generation with NCCL on 2 and 4 GPUs: every rank's tokens equal the 1-GPU run, with
and without torch.cuda.set_device, with the decode step (its all_reduces included) replayed from a
CUDA graph and run eagerly. Skips, with its reason, on fewer GPUs.

float32 activations, as in tests/python/test_generate_torchrun.py: in bf16 each rank rounds its
partial sums before the all_reduce, which may flip a near-tied argmax against one GPU.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

N_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
PROMPT = "The old man walked into the city and"


def generate(out, *extra, nproc=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1")
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd = [sys.executable, *launcher, "-m", "moekit.generate", "--device", "cuda", "--dtype", "float32",
           "--no-progress", "--prompt", PROMPT, "--max-new-tokens", "48", "--output-json", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("decode", [(), ("--eager",)], ids=["graph", "eager"])
@pytest.mark.parametrize("set_device", [True, False], ids=["set_device", "no_set_device"])
@pytest.mark.parametrize("nproc", [2, 4])
def test_ranks_match_one_gpu(tmp_path, nproc, set_device, decode):
    if N_GPUS < nproc:
        pytest.skip(f"needs {nproc} CUDA GPUs, found {N_GPUS}")
    one = generate(tmp_path / "one.json")
    many = generate(tmp_path / "many.json", *decode, *(() if set_device else ("--no-set-device",)), nproc=nproc)
    assert many["world_size"] == nproc
    for rank, ids in enumerate(many["ranks"]):
        assert ids == one["ranks"][0], f"rank {rank} differs from the 1-GPU run"
