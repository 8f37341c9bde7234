"""Device rules that need two GPUs. Each test skips, with its reason shown, on fewer GPUs.

Run: python -m pytest -rs tests/multigpu
"""

import subprocess
import sys
import textwrap
import threading

import pytest
import torch

import moekit

N_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = pytest.mark.skipif(N_GPUS < 2, reason=f"needs 2 CUDA GPUs, found {N_GPUS}")

E, H, I, K = 32, 96, 160, 4


def make_layer(seed: int):
    g = torch.Generator().manual_seed(seed)
    def w(n, k):
        return moekit.quantize_mxfp4(torch.randn(E, n, k, generator=g) / k ** 0.5)
    return dict(gate_weight=torch.randn(E, H, generator=g).bfloat16(), gate_bias=torch.randn(E, generator=g).bfloat16(),
                mlp1_weight=w(2 * I, H), mlp1_bias=torch.randn(E, 2 * I, generator=g).bfloat16(),
                mlp2_weight=w(H, I), mlp2_bias=torch.randn(E, H, generator=g).bfloat16())


def on(layer, device):
    return torch.utils._pytree.tree_map(lambda t: t.to(device), layer)


def rel_err(got, want):
    return float((got.cpu().double() - want.double()).norm() / want.double().norm())


def test_tensors_on_cuda1_while_current_is_0():
    layer = make_layer(0)
    x = torch.randn(17, H).bfloat16()
    want = moekit.moe_mlp(x, **layer, experts_per_token=K)
    torch.cuda.set_device(0)
    layer1, x1 = on(layer, "cuda:1"), x.to("cuda:1")
    torch.cuda.synchronize(0)
    allocated0, allocated1 = torch.cuda.memory_allocated(0), torch.cuda.memory_allocated(1)
    for d in (0, 1):
        torch.cuda.reset_peak_memory_stats(d)
    y = moekit.moe_mlp(x1, **layer1, experts_per_token=K)
    r = moekit.route(torch.randn(5, E, device="cuda:1"), K)
    assert y.device == torch.device("cuda:1") and r.expert_idx.device == torch.device("cuda:1")
    assert torch.cuda.current_device() == 0
    # Never anything on cuda:0, not even for the call's time; the layer's workspace on cuda:1.
    assert torch.cuda.max_memory_allocated(0) == allocated0, "something was allocated on cuda:0"
    assert torch.cuda.max_memory_allocated(1) - allocated1 > y.untyped_storage().nbytes()
    assert rel_err(y, want) < 5e-3


def test_arguments_on_two_devices_rejected():
    layer = on(make_layer(1), "cuda:1")
    x = torch.randn(3, H, device="cuda:0").bfloat16()
    with pytest.raises(ValueError, match=r"moekit\.moe_mlp: '.*' expected device cuda:0 .* got cuda:1"):
        moekit.moe_mlp(x, **layer, experts_per_token=K)
    assert torch.cuda.current_device() == 0


@pytest.mark.parametrize("set_device", [False, True])
def test_one_thread_per_gpu(set_device):
    layer = make_layer(2)
    x = torch.randn(29, H).bfloat16()
    want = moekit.moe_mlp(x, **layer, experts_per_token=K)
    errors = {}

    def worker(d):
        if set_device:
            torch.cuda.set_device(d)
        y = moekit.moe_mlp(x.to(f"cuda:{d}"), **on(layer, f"cuda:{d}"), experts_per_token=K)
        errors[d] = (rel_err(y, want), y.device.index)

    threads = [threading.Thread(target=worker, args=(d,)) for d in range(N_GPUS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for d in range(N_GPUS):
        assert errors[d][1] == d and errors[d][0] < 5e-3, (d, errors[d])


def test_shared_memory_limit_is_raised_per_device():
    """The tiled matmul kernels need more than 48 KB of shared memory, a limit raised per device.
    In a fresh process (so no earlier test raised it), run a many-rows-per-expert layer first on
    cuda:1, then on cuda:0: both must be right, so cuda:0 got its own raise."""
    script = textwrap.dedent("""
        import torch, moekit
        g = torch.Generator().manual_seed(3)
        E, H, I = 4, 256, 256
        w = lambda n, k: moekit.quantize_mxfp4(torch.randn(E, n, k, generator=g) / k ** 0.5)
        layer = dict(gate_weight=torch.randn(E, H, generator=g).bfloat16(), gate_bias=None,
                     mlp1_weight=w(2 * I, H), mlp1_bias=None, mlp2_weight=w(H, I), mlp2_bias=None)
        x = torch.randn(2000, H, generator=g).bfloat16()  # 2000 rows per expert: tiled kernels
        want = moekit.moe_mlp(x, **layer, experts_per_token=4).double()
        for d in (1, 0):
            on = torch.utils._pytree.tree_map(lambda t: t.to(f"cuda:{d}") if t is not None else t, layer)
            y = moekit.moe_mlp(x.to(f"cuda:{d}"), **on, experts_per_token=4).cpu().double()
            err = float((y - want).norm() / want.norm())
            assert err < 5e-3, (d, err)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
