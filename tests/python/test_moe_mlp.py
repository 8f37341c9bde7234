"""moekit.moe_mlp (the gpt-oss MoE layer) against the float64 reference.

The reference gates in float64 from the same inputs, routes, runs mlp1 + SwiGLU, rounds the
activation to x's dtype (moekit stores that intermediate in x's dtype), runs mlp2 and combines.
It uses the same dequantized weights, so the only differences are moekit's float32 arithmetic
and its roundings to x's dtype (tolerances in conftest.TOLERANCE).
"""

import itertools

import pytest
import torch

import reference as ref
from conftest import H, MoeLayer as Layer, assert_close_rel

TS = [0, 1, 7, 64]
EK = [(E, k) for E, k in itertools.product([1, 4, 32], [1, 2, 4]) if k <= E]
X_DTYPES = [torch.bfloat16, torch.float32]

@pytest.mark.parametrize("w_kind", ["bfloat16", "mxfp4", "slabs"])
@pytest.mark.parametrize("x_dtype", X_DTYPES)
@pytest.mark.parametrize("E,k", EK)
@pytest.mark.parametrize("T", TS)
def test_moe_mlp(gen, T, E, k, x_dtype, w_kind):
    layer = Layer(gen, E, w_kind, x_dtype)
    x = layer.draw_x(gen, T, H, dtype=x_dtype, k=k)
    y = layer.run(x, experts_per_token=k)
    assert y.shape == (T, H) and y.dtype == x_dtype
    assert_close_rel(y, layer.reference(x, k), x_dtype)


@pytest.mark.parametrize("x_dtype", X_DTYPES)
@pytest.mark.parametrize("E,k", EK)
def test_moe_mlp_checkpoint_layout(gen, E, k, x_dtype):
    # random bytes in the gpt-oss checkpoint layout, never produced by moekit's quantizer
    layer = Layer(gen, E, "checkpoint", x_dtype)
    x = layer.draw_x(gen, 7, H, dtype=x_dtype, k=k)
    assert_close_rel(layer.run(x, experts_per_token=k), layer.reference(x, k), x_dtype)


@pytest.mark.parametrize("w1_kind,w2_kind", [("mxfp4", "bfloat16"), ("bfloat16", "mxfp4"),
                                             ("float32", "checkpoint")])
@pytest.mark.parametrize("x_dtype", X_DTYPES)
def test_moe_mlp_mixed_weight_formats(gen, x_dtype, w1_kind, w2_kind):
    layer = Layer(gen, 4, w1_kind, x_dtype, w2_kind=w2_kind)
    x = layer.draw_x(gen, 7, H, dtype=x_dtype, k=2)
    assert_close_rel(layer.run(x, experts_per_token=2), layer.reference(x, 2), x_dtype)


@pytest.mark.parametrize("missing", ["gate_bias", "mlp1_bias", "mlp2_bias", "all"])
@pytest.mark.parametrize("w_kind", ["bfloat16", "mxfp4"])
@pytest.mark.parametrize("x_dtype", X_DTYPES)
def test_moe_mlp_without_bias(gen, x_dtype, w_kind, missing):
    present = {b: missing not in (b, "all") for b in ("gate_bias", "mlp1_bias", "mlp2_bias")}
    layer = Layer(gen, 4, w_kind, x_dtype, **present)
    x = layer.draw_x(gen, 7, H, dtype=x_dtype, k=2)
    assert_close_rel(layer.run(x, experts_per_token=2), layer.reference(x, 2), x_dtype)


@pytest.mark.parametrize("shape", [(H,), (2, 3, H), (3, 1, 2, H), (2, 0, H), (0, H)])
@pytest.mark.parametrize("x_dtype", X_DTYPES)
def test_moe_mlp_keeps_shape_and_dtype(gen, x_dtype, shape):
    layer = Layer(gen, 4, "mxfp4", x_dtype)
    x = layer.draw_x(gen, *shape, dtype=x_dtype, k=2)
    y = layer.run(x, experts_per_token=2)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_close_rel(y, layer.reference(x, 2), x_dtype)
    # the same as the flattened [T, H] call
    assert torch.equal(y.reshape(-1, H), layer.run(x.reshape(-1, H), experts_per_token=2))


@pytest.mark.parametrize("x_dtype", X_DTYPES)
def test_moe_mlp_defaults_are_gpt_oss(gen, x_dtype):
    # experts_per_token=4, swiglu_alpha=1.702, swiglu_limit=7.0 by default
    layer = Layer(gen, 32, "mxfp4", x_dtype)
    x = layer.draw_x(gen, 7, H, dtype=x_dtype, k=4)
    y = layer.run(x)
    assert_close_rel(y, layer.reference(x, 4, alpha=1.702, limit=7.0), x_dtype)
    assert torch.equal(y, layer.run(x, experts_per_token=4, swiglu_alpha=1.702, swiglu_limit=7.0))


@pytest.mark.parametrize("x_dtype", X_DTYPES)
def test_moe_mlp_swiglu_arguments(gen, x_dtype):
    # a small limit: most pre-activations are clamped, so alpha and limit both matter
    layer = Layer(gen, 4, "bfloat16", x_dtype)
    x = layer.draw_x(gen, 16, H, dtype=x_dtype, k=2)
    y = layer.run(x, experts_per_token=2, swiglu_alpha=0.5, swiglu_limit=0.25)
    assert_close_rel(y, layer.reference(x, 2, alpha=0.5, limit=0.25), x_dtype)
    default = layer.reference(x, 2)
    assert ref.rel_err(y, default) > 0.1   # the arguments did change the result


def test_moe_mlp_tokens_are_independent(gen):
    # a token's output does not depend on the other tokens of the batch (up to rounding: a
    # backend may tile differently for another batch size)
    layer = Layer(gen, 32, "mxfp4", torch.bfloat16)
    x = layer.draw_x(gen, 64, H, dtype=torch.bfloat16, k=4)
    y = layer.run(x, experts_per_token=4)
    for rows in (slice(0, 1), slice(5, 12), slice(40, 64)):
        part = layer.run(x[rows].contiguous(), experts_per_token=4)
        assert_close_rel(part, y[rows].double(), torch.bfloat16)
