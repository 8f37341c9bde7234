"""examples/train_soft_prompt.py: a soft prompt trained through the frozen shipped model (its MoE
layers MXFP4, run by moekit) lowers the loss, on the CPU and on a GPU; two gloo ranks under DDP
end with the prompt one process gets from the whole batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run_example(out: Path, nproc: int, steps: int, sentences: int = 4, device: str = "cpu") -> dict:
    # Each process its share of the cores this test has: all of them, or what OMP_NUM_THREADS
    # gives it (tools/gpu_check.sh runs the tests in several processes side by side).
    cores = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // nproc)), PYTHONUNBUFFERED="1")
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    proc = subprocess.run([sys.executable, *launcher, str(ROOT / "examples" / "train_soft_prompt.py"),
                           "--steps", str(steps), "--sentences", str(sentences), "--output-json", str(out),
                           "--device", device],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    print(proc.stdout)
    return json.loads(out.read_text())


def test_the_loss_falls(tmp_path):
    result = run_example(tmp_path / "one.json", 1, steps=20)
    losses = result["losses"]
    print(f"first loss {losses[0]:.4f}, last {losses[-1]:.4f}")
    assert losses[-1] < 0.5 * losses[0], losses


def test_two_gloo_ranks_train_the_prompt_one_process_does(tmp_path):
    """The same 4 sentences: split 2 and 2 over the ranks (DDP averages their gradients) or all in
    one process. Both compute the same mean loss's gradient, summed in another order (per rank,
    then across ranks): after 4 SGD steps the prompts agree to 1e-5 of their size."""
    one = torch.tensor(run_example(tmp_path / "one.json", 1, steps=4)["prompt"])
    two = torch.tensor(run_example(tmp_path / "two.json", 2, steps=4)["prompt"])
    assert (one - two).abs().max() <= 1e-5 * one.abs().max(), (one - two).abs().max()
    assert not torch.equal(one, torch.tensor(run_example(tmp_path / "zero.json", 1, steps=0)["prompt"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_loss_falls_on_a_gpu(tmp_path):
    """The same training on CUDA (moekit's CUDA backward): the same first loss as the CPU's, to
    float32 rounding, and the same fall."""
    gpu = run_example(tmp_path / "gpu.json", 1, steps=20, device="cuda")["losses"]
    cpu = run_example(tmp_path / "cpu.json", 1, steps=1)["losses"]
    print(f"first loss {gpu[0]:.4f} (CPU {cpu[0]:.4f}), last {gpu[-1]:.4f}")
    assert abs(gpu[0] - cpu[0]) <= 1e-4 * cpu[0]
    assert gpu[-1] < 0.5 * gpu[0], gpu


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_nccl_ranks_on_two_gpus_train_the_prompt_one_gpu_does(tmp_path, monkeypatch):
    """As the gloo test, over NCCL: rank r on cuda:r (no set_device), against one process on
    cuda:0 with the whole batch; the same 1e-5 bound (float32 sums in another order)."""
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    monkeypatch.setenv("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    one = torch.tensor(run_example(tmp_path / "one.json", 1, steps=4, device="cuda")["prompt"])
    two = torch.tensor(run_example(tmp_path / "two.json", 2, steps=4, device="cuda")["prompt"])
    assert (one - two).abs().max() <= 1e-5 * one.abs().max(), (one - two).abs().max()
