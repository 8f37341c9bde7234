"""The scenario in transformers (examples/transformers_torchrun.py): one GptOssForCausalLM with
moekit's MoE per rank, each on cuda:LOCAL_RANK without torch.cuda.set_device, NCCL; every
rank's greedy tokens equal the 1-GPU run's (bf16: each rank runs the whole model, as one GPU
does). Skips, with its reason, on fewer GPUs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt_oss_fixtures import make_published_repository

ROOT = Path(__file__).resolve().parents[2]
N_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_example(repo, out, nproc):
    env = dict(os.environ, PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1")
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    proc = subprocess.run([sys.executable, *launcher, str(ROOT / "examples" / "transformers_torchrun.py"),
                           "--checkpoint", str(repo), "--device", "cuda", "--dtype", "bfloat16",
                           "--max-new-tokens", "24", "--prompt", "the quick brown fox", "--output-json", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("nproc", [2, 4])
def test_every_rank_matches_one_gpu(tmp_path, nproc):
    if N_GPUS < nproc:
        pytest.skip(f"needs {nproc} CUDA GPUs, found {N_GPUS}")
    repo = tmp_path / "repo"
    make_published_repository(repo, seed=9)
    one = run_example(repo, tmp_path / "one.json", 1)
    many = run_example(repo, tmp_path / "many.json", nproc)
    assert many["world_size"] == nproc and many["device"] == "cuda:0"
    for rank, ids in enumerate(many["ranks"]):
        assert ids == one["ranks"][0], f"rank {rank} differs from the 1-GPU run"
