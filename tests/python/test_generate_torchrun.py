"""The CLI `python -m moekit.generate`, alone and tensor-parallel under torchrun (gloo, CPU).

Greedy tokens must agree across ranks and with one process. The comparisons with one process
use --dtype float32: with bf16, each rank rounds its partial sums to bf16 before all_reduce,
which can legitimately flip a near-tied argmax; in float32 the sharded and unsharded sums
differ by ~1e-7 relative, far below the margins of the tiny model's logits.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from gpt_oss_fixtures import make_checkpoint
from moekit.models import load_model

PROMPT = "the window slides over the last eight tokens"
NEW = 24
TIMEOUT = 240


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """kv2: 4 q heads over 2 kv heads, sharded across 2 ranks; kv1: 1 kv head, so attention is
    replicated and only the MoE is sharded."""
    kv2 = tmp_path_factory.mktemp("kv2")
    kv1 = tmp_path_factory.mktemp("kv1")
    make_checkpoint(kv2, seed=21, num_hidden_layers=4)
    make_checkpoint(kv1, seed=22, num_key_value_heads=1)
    return {"kv2": kv2, "kv1": kv1}


def run_generate(ckpt, out, *extra, nproc=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd = [sys.executable, *launcher, "-m", "moekit.generate", "--checkpoint", str(ckpt), "--device", "cpu",
           "--prompt", PROMPT, "--max-new-tokens", str(NEW), "--output-json", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc, json.loads(out.read_text())


def test_two_ranks_agree_with_each_other_and_with_one_process(ckpts, tmp_path):
    one_proc, one = run_generate(ckpts["kv2"], tmp_path / "one.json", "--dtype", "float32")
    two_proc, two = run_generate(ckpts["kv2"], tmp_path / "two.json", "--dtype", "float32", "--no-set-device",
                                 nproc=2)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["prompt_ids"] == two["prompt_ids"] and len(one["prompt_ids"]) == 8
    (single,) = one["ranks"]
    assert len(single) == NEW and len(set(single)) > 3
    assert two["ranks"] == [single, single]
    # what rank 0 prints
    assert "rank 0: " + two["text"] in two_proc.stdout
    assert f"rank 1: agrees with rank 0 token for token ({NEW} tokens)" in two_proc.stdout
    assert "tokens/s" in two_proc.stdout and "tokens/s" in one_proc.stdout
    assert one["text"] and one["text"] in one_proc.stdout


def test_replicated_attention_sharded_moe_matches_in_process_model(ckpts, tmp_path):
    _, two = run_generate(ckpts["kv1"], tmp_path / "two.json", "--dtype", "float32", nproc=2)
    model = load_model(ckpts["kv1"], "cpu", dtype=torch.float32, progress=False)
    want = model.generate(two["prompt_ids"], NEW)
    assert two["ranks"] == [want, want]


def test_sampling_bf16_ranks_agree(ckpts, tmp_path):
    proc, two = run_generate(ckpts["kv2"], tmp_path / "two.json", "--temperature", "0.8", "--top-p", "0.9",
                             "--seed", "5", nproc=2)
    assert two["dtype"] == "bfloat16"
    r0, r1 = two["ranks"]
    assert r0 == r1 and len(r0) == NEW
    assert "rank 1: agrees with rank 0" in proc.stdout


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    proc = subprocess.run([sys.executable, "-m", "moekit.generate", "--checkpoint", str(missing), "--device", "cpu"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2
    assert f"checkpoint directory not found: {missing}" in proc.stderr
    assert "Traceback" not in proc.stderr
