"""moekit.matmul_ogs against the float64 reference: grouped, gather (+SwiGLU), scatter-combine.

The reference computes on the same (dequantized) weights in float64; moekit's output has x's
dtype, compared by relative Frobenius error (tolerances in conftest.TOLERANCE).
"""

import itertools

import pytest
import torch

import moekit
import reference as ref
from conftest import SWIGLU_ALPHA, SWIGLU_LIMIT, assert_close_rel, make_bias, make_weights, randn

TS = [0, 1, 7, 64]
EK = [(E, k) for E, k in itertools.product([1, 4, 32], [1, 2, 4]) if k <= E]
X_DTYPES = [torch.bfloat16, torch.float32]
W_KINDS = ["float32", "bfloat16", "mxfp4", "checkpoint"]
H, I = 96, 160   # multiples of 32, not of 64
MODES = ["grouped", "gather_swiglu", "scatter_combine", "gather_scatter"]


def int32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int32)


def routing(gen, T, E, k):
    """A reference routing of random logits (so matmul_ogs is tested without moekit.route)."""
    return ref.route(randn(gen, T, E), k)


def run_case(gen, T, E, k, x_dtype, w_kind, mode, bias_dtype=torch.float32, with_bias=True):
    r = routing(gen, T, E, k)
    P = T * k
    swiglu = mode == "gather_swiglu"
    K, N = (H, 2 * I) if mode.startswith("gather") else (I, H)
    w = make_weights(gen, w_kind, E, N, K)
    bias = make_bias(gen, E, N, present=with_bias, dtype=bias_dtype)
    kwargs = dict(expert_offsets=int32(r.expert_offsets))
    if mode.startswith("gather"):
        x = randn(gen, T, K, dtype=x_dtype)
        kwargs["gather_idx"] = int32(r.gather_idx)
    else:
        x = randn(gen, P, K, dtype=x_dtype)
    if mode == "scatter_combine":
        kwargs["scatter_idx"] = int32(r.scatter_idx)
        kwargs["combine_weight"] = torch.rand(T, k, generator=gen) + 0.1
    elif mode == "gather_scatter":
        kwargs["scatter_idx"] = int32(r.scatter_idx)   # combine_weight absent: weights 1
    got = moekit.matmul_ogs(x, w.arg, bias, swiglu=(SWIGLU_ALPHA, SWIGLU_LIMIT) if swiglu else None, **kwargs)
    want = ref.matmul_ogs(x, w.dense, bias, swiglu_args=(SWIGLU_ALPHA, SWIGLU_LIMIT) if swiglu else None,
                          **kwargs)
    rows = T if "scatter" in mode else P
    assert got.shape == (rows, N // 2 if swiglu else N)
    assert_close_rel(got, want, x_dtype)
    return got


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("w_kind", W_KINDS)
@pytest.mark.parametrize("x_dtype", X_DTYPES)
@pytest.mark.parametrize("E,k", EK)
@pytest.mark.parametrize("T", TS)
def test_matmul_ogs(gen, T, E, k, x_dtype, w_kind, mode):
    run_case(gen, T, E, k, x_dtype, w_kind, mode)


@pytest.mark.parametrize("bias", ["none", "bfloat16"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("w_kind", ["bfloat16", "mxfp4"])
@pytest.mark.parametrize("x_dtype", X_DTYPES)
def test_matmul_ogs_bias_variants(gen, x_dtype, w_kind, mode, bias):
    run_case(gen, 7, 4, 2, x_dtype, w_kind, mode, bias_dtype=torch.bfloat16, with_bias=bias != "none")


@pytest.mark.parametrize("w_kind", W_KINDS)
@pytest.mark.parametrize("x_dtype", X_DTYPES)
def test_single_expert_without_offsets(gen, x_dtype, w_kind):
    # E == 1: expert_offsets may be left out; a plain x @ w[0].T + bias
    M, K, N = 7, 96, 160
    x = randn(gen, M, K, dtype=x_dtype)
    w = make_weights(gen, w_kind, 1, N, K)
    bias = make_bias(gen, 1, N)
    got = moekit.matmul_ogs(x, w.arg, bias)
    assert_close_rel(got, x.double() @ w.dense[0].T + bias.double(), x_dtype)
    # the same with gather and a 3-slot scatter of one token: rows 0..2 of the gathered x
    gather = torch.tensor([4, 0, 6], dtype=torch.int32)
    got = moekit.matmul_ogs(x, w.arg, None, gather_idx=gather,
                            scatter_idx=torch.tensor([[2, 0, 1]], dtype=torch.int32))
    want = (x.double()[[4, 0, 6]] @ w.dense[0].T).sum(dim=0, keepdim=True)
    assert_close_rel(got, want, x_dtype)


@pytest.mark.parametrize("x_dtype", X_DTYPES)
def test_swiglu_saturates_at_limit(gen, x_dtype):
    # large pre-activations exercise min(g, limit) and clamp(l, -limit, limit): 0.3 limit here
    E, T, k, K, N = 4, 16, 2, 96, 64
    r = routing(gen, T, E, k)
    x = randn(gen, T, K, dtype=x_dtype, scale=4.0)
    w = make_weights(gen, "bfloat16", E, N, K)
    limit, alpha = 0.3, 1.0
    got = moekit.matmul_ogs(x, w.arg, None, expert_offsets=int32(r.expert_offsets),
                            gather_idx=int32(r.gather_idx), swiglu=(alpha, limit))
    want = ref.matmul_ogs(x, w.dense, None, expert_offsets=r.expert_offsets, gather_idx=r.gather_idx,
                          swiglu_args=(alpha, limit))
    h = ref.matmul_ogs(x, w.dense, None, expert_offsets=r.expert_offsets, gather_idx=r.gather_idx)
    assert (h[:, 0::2] > limit).float().mean() > 0.3 and (h[:, 1::2].abs() > limit).float().mean() > 0.5
    assert_close_rel(got, want, x_dtype)
