"""The CUDA backend's gradients against the CPU backend's (the specification), every element, on
fresh random inputs: matmul_ogs_backward over its modes (mlp1's gather + SwiGLU, mlp2's scatter +
combine weights, and index maps with repeats), weight kinds, dtypes and shapes that reach each
of its kernels (the forward's for the recompute, the transposed product's wgmma and SIMT forms);
the same bits on every run; moe_mlp's gradients through autograd on both backends. Skips
without a CUDA GPU."""

import pytest
import torch

import moekit
import reference as ref
from conftest import TOLERANCE, H, MoeLayer, make_weights, randn
from test_autograd import matmul_case, moe_reference_grads, moekit_grads, reference_grads

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def index_maps(gen, T, E, k, M, mode):
    """(expert_offsets, gather_idx, scatter_idx, combine_weight) for `mode`: route's maps
    ("mlp1", "mlp2"), or random ones where rows read x rows and slots read rows any number of
    times, zero included ("repeats")."""
    P = T * k
    if mode == "plain":
        return None, None, None, None
    if mode == "repeats":
        cuts = torch.sort(torch.randint(0, P + 1, (E - 1,), generator=gen)).values
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.full((1,), P)]).int()
        gather = torch.randint(0, max(M, 1), (P,), generator=gen).int()
        scatter = torch.randint(0, max(P, 1), (T, k), generator=gen).int()
        return offsets, gather, scatter, torch.rand(T, k, generator=gen)
    r = moekit.route(randn(gen, T, E), k)
    if mode == "mlp1":
        return r.expert_offsets, r.gather_idx, None, None
    return r.expert_offsets, None, r.scatter_idx, r.expert_weight


# mode: which maps and SwiGLU; "mlp2_plain": scatter without combine weights or bias.
MODES = {
    "mlp1": dict(gather=True, scatter=False, swiglu=True, cw=False, bias=True),
    "mlp2": dict(gather=False, scatter=True, swiglu=False, cw=True, bias=True),
    "mlp2_plain": dict(gather=False, scatter=True, swiglu=False, cw=False, bias=False),
    "repeats_swiglu": dict(gather=True, scatter=True, swiglu=True, cw=True, bias=True),
    "repeats": dict(gather=True, scatter=True, swiglu=False, cw=True, bias=True),
    "plain": dict(gather=False, scatter=False, swiglu=False, cw=False, bias=True),
}


def backward_args(gen, T, E, k, N, K, mode, kind, dtype):
    m = MODES[mode]
    maps = index_maps(gen, T, E, k, T, "repeats" if mode.startswith("repeats") else mode.removesuffix("_plain"))
    offsets, gather, scatter, cw = maps
    P = T * k if mode != "plain" else T
    M = T if m["gather"] else P
    w = make_weights(gen, kind, E, N, K)
    x = randn(gen, M, K, dtype=dtype)
    bias = randn(gen, E, N, dtype=dtype, scale=0.5) if m["bias"] else None
    out_rows, out_cols = (T if m["scatter"] else P), (N // 2 if m["swiglu"] else N)
    grad_out = randn(gen, out_rows, out_cols, dtype=dtype)
    w_arg = w.arg if isinstance(w.arg, tuple) else (w.arg, None)
    return (grad_out, x, *w_arg, bias, offsets, gather if m["gather"] else None, scatter if m["scatter"] else None,
            cw if m["cw"] else None, m["swiglu"], 1.702, 1.0)


def on(device, args):
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


def assert_matches_cpu(got, want, dtype, name):
    assert got.dtype == want.dtype and got.shape == want.shape, name
    got = got.cpu()
    assert torch.isfinite(want).all(), name
    assert torch.isfinite(got).all(), (name, torch.nonzero(~torch.isfinite(got))[:8].tolist())
    if want.numel():
        assert ref.rel_err(got, want.double()) <= TOLERANCE[dtype] / 2, (name, ref.rel_err(got, want.double()))


# (T, E, k, N, K): many rows per expert (the forward's wgmma recompute, the transposed product's
# 128-row tiles with a partial column tile), a few (the streaming recompute), a reduction that is
# not a multiple of 64, one that is not of 8 (the SIMT product for bf16 too), no tokens.
SHAPES = [(1000, 32, 4, 192, 96), (7, 4, 2, 64, 64), (200, 2, 2, 72, 160), (50, 3, 2, 60, 64), (0, 4, 2, 64, 64)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("kind", ["mxfp4", "bfloat16", "float32"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("T,E,k,N,K", SHAPES)
def test_matmul_ogs_backward_matches_cpu(gen, T, E, k, N, K, mode, kind, dtype):
    if mode == "plain":
        E, k = 1, 1
    if MODES[mode]["swiglu"] and N % 2:
        pytest.skip("SwiGLU takes an even N")
    args = backward_args(gen, T, E, k, N, K, mode, kind, dtype)
    want = torch.ops.moekit.matmul_ogs_backward(*args)
    runs = [torch.ops.moekit.matmul_ogs_backward(*on("cuda", args)) for _ in range(3)]
    for got in runs[1:]:  # the same bits every run
        for a, b in zip(runs[0], got):
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    for name, g, w in zip(("grad_x", "grad_bias", "grad_combine_weight"), runs[0], want):
        assert_matches_cpu(g, w, dtype if name != "grad_combine_weight" else torch.float32, name)


@pytest.mark.parametrize("mode", ["mlp1", "mlp2", "repeats_swiglu"])
@pytest.mark.parametrize("mask", [[True, False, False], [False, True, False], [False, False, True]])
def test_matmul_ogs_backward_asked_gradients_match_cpu(gen, mode, mask):
    """Each gradient alone (output_mask), against the CPU's."""
    args = backward_args(gen, 300, 8, 4, 128, 96, mode, "mxfp4", torch.bfloat16) + ([*mask],)
    want = torch.ops.moekit.matmul_ogs_backward(*args)
    got = torch.ops.moekit.matmul_ogs_backward(*on("cuda", args))
    for name, asked, g, w in zip(("grad_x", "grad_bias", "grad_combine_weight"), mask, got, want):
        if asked and w.numel():
            assert_matches_cpu(g, w, torch.bfloat16 if name != "grad_combine_weight" else torch.float32, name)
        else:
            assert g.numel() == 0 and w.numel() == 0, name


@pytest.mark.parametrize("path", ["layer", "op"])
@pytest.mark.parametrize("T,E,k", [(600, 32, 4), (5, 8, 2)])
def test_moe_mlp_gradients_on_cuda_match_cpu(gen, T, E, k, path):
    """x, the gate's weight and bias and the experts' biases through autograd, bf16, MXFP4 experts:
    many tokens per expert (the tensor-core kernels) and a decode-sized batch; moekit.moe_mlp in
    grad mode (activations kept) and the op called directly (its steps recomputed)."""
    layer = MoeLayer(gen, E, "mxfp4", torch.bfloat16)
    x = layer.draw_x(gen, T, H, dtype=torch.bfloat16, k=k)
    grad_y = randn(gen, T, H, dtype=torch.bfloat16)
    grads = []
    for device in ("cpu", "cuda"):
        leaves = {"x": x.detach().to(device).requires_grad_()}
        for name in ("gate_weight", "gate_bias", "b1", "b2"):
            leaves[name] = getattr(layer, name).detach().to(device).requires_grad_()
        w1, w2 = (tuple(t.to(device) for t in w.arg) for w in (layer.w1, layer.w2))
        args = (leaves["x"], leaves["gate_weight"], leaves["gate_bias"], w1, leaves["b1"], w2, leaves["b2"])
        if path == "layer":
            y = moekit.moe_mlp(*args, experts_per_token=k)
        else:
            y = torch.ops.moekit.moe_mlp(*args[:3], *w1, args[4], *w2, args[6], k, 1.702, 7.0)
        y.backward(grad_y.to(device))
        grads.append({name: t.grad for name, t in leaves.items()})
    for name, want in grads[0].items():
        assert_matches_cpu(grads[1][name], want, torch.bfloat16, name)


@pytest.mark.parametrize("mode", ["swiglu", "combine"])
def test_matmul_ogs_gradients_on_cuda_against_float64_autograd(gen, mode):
    """bf16 on CUDA against torch autograd through the float64 dequantized reference (the
    acceptance's 1e-2), many rows per expert: the tensor-core kernels."""
    T, k, N = 600, 4, 256
    x, w, args = matmul_case(gen, "mxfp4", T, 8, k, N, 192, mode, dtype=torch.bfloat16)
    grad_out = randn(gen, *((T * k, N // 2) if mode == "swiglu" else (T, N)), dtype=torch.bfloat16)
    want = reference_grads(x, w, args, grad_out)
    cuda_args = {n: (v.detach().cuda().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v)
                 for n, v in args.items()}
    w_cuda = type(w)(tuple(t.cuda() for t in w.arg), w.dense)
    _, got = moekit_grads(x.detach().cuda().requires_grad_(), w_cuda, cuda_args, grad_out.cuda())
    for name, g in got.items():
        assert ref.rel_err(g.cpu(), want[name]) <= TOLERANCE[torch.bfloat16], (name, ref.rel_err(g.cpu(), want[name]))


def test_moe_mlp_gradients_on_cuda_against_float64_autograd(gen):
    layer = MoeLayer(gen, 32, "mxfp4", torch.bfloat16)
    x = layer.draw_x(gen, 500, H, dtype=torch.bfloat16, k=4)
    leaves = {"gate_weight": layer.gate_weight, "gate_bias": layer.gate_bias, "b1": layer.b1, "b2": layer.b2}
    grad_y = randn(gen, 500, H, dtype=torch.bfloat16)
    want = moe_reference_grads(layer, x, 4, grad_y, leaves)
    on_gpu = {name: t.detach().cuda().requires_grad_() for name, t in {"x": x, **leaves}.items()}
    y = moekit.moe_mlp(on_gpu["x"], on_gpu["gate_weight"], on_gpu["gate_bias"], tuple(t.cuda() for t in layer.w1.arg),
                       on_gpu["b1"], tuple(t.cuda() for t in layer.w2.arg), on_gpu["b2"], experts_per_token=4)
    y.backward(grad_y.cuda())
    for name, t in on_gpu.items():
        assert ref.rel_err(t.grad.cpu(), want[name]) <= TOLERANCE[torch.bfloat16], (name, ref.rel_err(t.grad.cpu(), want[name]))
