"""The device rules of docs/semantics.md on one GPU: current device and stream untouched, the caller's
stream honoured, threads with their own streams, CUDA-graph capture, the ops' workspaces from
torch's allocator, torch.compile, and two torchrun processes sharing the GPU. Skips without a CUDA
GPU."""

import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import moekit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

E, H, I, K = 32, 96, 160, 4


def make_layer(seed: int, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    def w(n, k):
        return moekit.quantize_mxfp4(torch.randn(E, n, k, generator=g) / k ** 0.5)
    layer = dict(gate_weight=torch.randn(E, H, generator=g).bfloat16(), gate_bias=torch.randn(E, generator=g).bfloat16(),
                 mlp1_weight=w(2 * I, H), mlp1_bias=torch.randn(E, 2 * I, generator=g).bfloat16(),
                 mlp2_weight=w(H, I), mlp2_bias=torch.randn(E, H, generator=g).bfloat16())
    return torch.utils._pytree.tree_map(lambda t: t.to(device), layer)


def moe(x, layer):
    return moekit.moe_mlp(x, **layer, experts_per_token=K)


def test_current_device_and_stream_unchanged():
    layer = make_layer(0)
    x = torch.randn(7, H, device="cuda").bfloat16()
    device_before = torch.cuda.current_device()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        stream_before = torch.cuda.current_stream()
        moe(x, layer)
        r = moekit.route(torch.randn(7, E, device="cuda"), K)
        moekit.matmul_ogs(x, layer["mlp1_weight"], expert_offsets=r.expert_offsets, gather_idx=r.gather_idx)
        moekit.dequantize_mxfp4(*moekit.quantize_mxfp4(torch.randn(4, 64, device="cuda")))
        moekit.repack_mxfp4(*moekit.quantize_mxfp4(torch.randn(2, 4, 64, device="cuda")))
        moekit.add_rms_norm(x, x, torch.ones(H, device="cuda"), 1e-5)
        token, ids = (torch.zeros(n, dtype=torch.int32, device="cuda") for n in (1, 4))
        moekit.greedy_token(torch.randn(1000, device="cuda"), torch.ones(1, dtype=torch.int32, device="cuda"), token, ids)
        assert torch.cuda.current_stream() == stream_before
    side.synchronize()
    assert torch.cuda.current_device() == device_before
    with pytest.raises(ValueError):  # an error leaves the device alone too
        moekit.route(torch.randn(7, E, device="cuda"), E + 1)
    assert torch.cuda.current_device() == device_before


def test_inputs_from_a_delayed_side_stream():
    """Inputs written on a side stream after a long sleep, handed over with wait_stream."""
    layer = make_layer(1)
    x_cpu = torch.randn(64, H).bfloat16()
    want = moe(x_cpu, torch.utils._pytree.tree_map(lambda t: t.cpu(), layer))
    producer = torch.cuda.Stream()
    consumer = torch.cuda.Stream()
    x = torch.empty(64, H, device="cuda", dtype=torch.bfloat16)
    with torch.cuda.stream(producer):
        torch.cuda._sleep(50_000_000)  # ~tens of ms of GPU time before the copy lands
        x.copy_(x_cpu, non_blocking=False)
    consumer.wait_stream(producer)
    with torch.cuda.stream(consumer):
        y = moe(x, layer)
    consumer.synchronize()
    rel = float((y.cpu().double() - want.double()).norm() / want.double().norm())
    assert rel < 5e-3


def test_threads_with_own_streams_match_single_thread():
    layer = make_layer(2)
    inputs = [torch.randn(1 + 13 * i, H, device="cuda").bfloat16() for i in range(8)]
    expected = [moe(x, layer) for x in inputs]
    torch.cuda.synchronize()
    failures = []

    def worker(i):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for _ in range(100):
                y = moe(inputs[i], layer)
                stream.synchronize()
                if not torch.equal(y, expected[i]):
                    failures.append(i)
                    return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_cuda_graph_capture_and_replay_equals_eager():
    layer = make_layer(3)
    x = torch.randn(16, H, device="cuda").bfloat16()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        moe(x, layer)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_graph = moe(x, layer)
    for trial in range(3):
        x.copy_(torch.randn(16, H, device="cuda").bfloat16())
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y_graph, moe(x, layer)), f"replay {trial}"


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() != (9, 0), reason="sm_90")
def test_swap_ab_kernels_on_a_side_stream_and_in_a_graph():
    """The swap-AB configs on the caller's side stream with the current device and stream
    untouched, and replayed from a CUDA graph with the eager call's bits: mlp1's call (tile list,
    staged x, the persistent loop) and mlp2's (x read in place through a TMA descriptor, built on
    the host and captured as a kernel argument; then the combine)."""
    layer = make_layer(5)
    w1 = layer["mlp1_weight"] + moekit.repack_mxfp4(*layer["mlp1_weight"])
    w2 = layer["mlp2_weight"] + moekit.repack_mxfp4(*layer["mlp2_weight"])
    x = torch.randn(40, H, device="cuda").bfloat16()
    r = moekit.route(torch.randn(40, E, device="cuda"), K)
    act = torch.randn(40 * K, I, device="cuda").bfloat16()
    calls = {
        "mlp1": lambda config: moekit.matmul_ogs(x, w1, layer["mlp1_bias"], expert_offsets=r.expert_offsets,
                                                 gather_idx=r.gather_idx, swiglu=(1.702, 7.0), config=config),
        "mlp2": lambda config: moekit.matmul_ogs(act, w2, layer["mlp2_bias"], expert_offsets=r.expert_offsets,
                                                 scatter_idx=r.scatter_idx, combine_weight=r.expert_weight,
                                                 config=config),
    }
    for (name, step), config in itertools.product(calls.items(), ("swapab16", "swapab32", "swapab80")):
        call = lambda: step(config)  # noqa: E731
        device_before = torch.cuda.current_device()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            stream_before = torch.cuda.current_stream()
            eager = call()
            assert torch.cuda.current_stream() == stream_before
        torch.cuda.current_stream().wait_stream(side)
        assert torch.cuda.current_device() == device_before
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            replayed = call()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.isfinite(eager).all() and eager.float().abs().sum() > 0, (name, config)
        assert torch.equal(replayed, eager), (name, config)


def allocated_bytes(t: torch.Tensor) -> int:
    """What torch's caching allocator holds for t's storage: its bytes rounded up to 512."""
    return -(-t.untyped_storage().nbytes() // 512) * 512


def test_workspaces_come_from_torchs_allocator_and_go_back():
    """Each op's workspace (the binding's Workspace) is memory of torch's caching allocator on the
    tensors' device, taken during the call (the peak passes the outputs) and given back when the
    call returns: then only the outputs are held, and once they go, nothing."""
    layer = make_layer(6)
    r = moekit.route(torch.randn(40, E, device="cuda"), K)
    act = torch.randn(40 * K, I, device="cuda").bfloat16()
    grad = torch.randn(40, H, device="cuda").bfloat16()
    w2, s2 = layer["mlp2_weight"]
    L, Hq, Hkv, D = 4096, 8, 2, 64  # a cache long enough that the keys are split (a workspace of partials)
    qkv = torch.randn(1, (Hq + 2 * Hkv) * D, device="cuda").bfloat16()
    k_cache, v_cache = (torch.randn(L, Hkv, D, device="cuda").bfloat16() for _ in range(2))
    sinks, inv_freq = torch.randn(Hq, device="cuda"), torch.rand(D // 2, device="cuda")
    position = torch.tensor([L - 1], dtype=torch.int32, device="cuda")
    x5, x40 = (torch.randn(T, H, device="cuda").bfloat16() for T in (5, 40))
    calls = {
        "moe_mlp, decode path": lambda: (moe(x5, layer),),
        "moe_mlp, general path": lambda: (moe(x40, layer),),
        "matmul_ogs, scatter": lambda: (moekit.matmul_ogs(act, layer["mlp2_weight"], layer["mlp2_bias"],
                                                          expert_offsets=r.expert_offsets, scatter_idx=r.scatter_idx,
                                                          combine_weight=r.expert_weight),),
        "matmul_ogs_backward": lambda: torch.ops.moekit.matmul_ogs_backward(
            grad, act, w2, s2, layer["mlp2_bias"], r.expert_offsets, None, r.scatter_idx, r.expert_weight, False,
            1.702, 7.0),
        "attention_decode": lambda: (moekit.attention_decode(qkv, k_cache, v_cache, sinks, position, inv_freq,
                                                             rope_scale=1.0, sm_scale=D ** -0.5),),
    }
    for name, call in calls.items():
        call()  # the first call's lazy state (kernel attributes, the allocator's pools) outside the count
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        outputs = [t for t in call() if t.numel()]
        outputs_bytes = sum(allocated_bytes(t) for t in outputs)
        assert torch.cuda.memory_allocated() - base == outputs_bytes, name
        assert torch.cuda.max_memory_allocated() - base > outputs_bytes, name
        del outputs
        assert torch.cuda.memory_allocated() == base, name


def test_torch_compile_on_cuda():
    layer = make_layer(4)
    x = torch.randn(9, H, device="cuda").bfloat16()
    compiled = torch.compile(moe, fullgraph=True)
    assert torch.equal(compiled(x, layer), moe(x, layer))


def test_two_torchrun_processes_share_one_gpu(tmp_path: Path):
    worker = Path(__file__).with_name("cuda_shared_gpu_worker.py")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(worker), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["rel_err_vs_cpu"] < 5e-3, result
        assert result["device"] == "cuda:0"
