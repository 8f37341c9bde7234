"""Bad input beyond the matrix (tests/python/bad_inputs.py, run by test_bad_input_matrix.py):
NaN/Inf propagate to the affected tokens only; empty batches return empty outputs; all-meta calls
give meta outputs; inputs are never modified, also when a call is refused.
"""

import pytest
import torch

import moekit
import reference as ref
from bad_inputs import BF16, CASES, OPS, build, call, meta, moe_base
from conftest import TOLERANCE, MoeLayer, make_bias, make_weights, randn


def test_mixed_device_message_names_both_devices(gen):
    # docs/semantics.md, rule 1: the error names the op, the argument and both devices
    args = moe_base(gen)
    args["mlp1_bias"] = meta(args["mlp1_bias"])
    with pytest.raises(ValueError) as info:
        moekit.moe_mlp(**args)
    msg = str(info.value)
    assert "moe_mlp" in msg and "'mlp1_bias'" in msg and "meta" in msg and "cpu" in msg, msg


# ------------------------------------------------------------------- all on the meta device

@pytest.mark.parametrize("op", sorted(OPS))
def test_all_meta_inputs_give_meta_outputs(gen, op):
    # Every tensor on 'meta' is shape propagation (the fake kernels): outputs are meta tensors
    # of the shapes and dtypes the CPU run gives.
    args = OPS[op][0](gen)
    want = call(op, dict(args))
    meta_args = {k: (meta(v) if isinstance(v, torch.Tensor) else
                     tuple(meta(t) for t in v) if isinstance(v, tuple) else v) for k, v in args.items()}
    got = call(op, meta_args)
    if op == "greedy_token":  # writes in place, returns nothing
        assert got is None and want is None
        return
    got = list(got) if isinstance(got, tuple) else [got]
    want = list(want) if isinstance(want, tuple) else [want]
    assert len(got) == len(want)
    for g_, w_ in zip(got, want):
        assert g_.device.type == "meta"
        assert g_.shape == w_.shape and g_.dtype == w_.dtype


# --------------------------------------------------------------------- empty inputs (T = 0)

@pytest.mark.parametrize("x_dtype", [BF16, torch.float32])
def test_empty_batches(gen, x_dtype):
    layer = MoeLayer(gen, 4, "mxfp4", x_dtype)
    for shape in [(0, 96), (2, 0, 96), (0, 3, 96)]:
        x = randn(gen, *shape, dtype=x_dtype)
        y = layer.run(x, experts_per_token=2)
        assert y.shape == shape and y.dtype == x_dtype

    r = moekit.route(randn(gen, 0, 4), 2)
    assert r.expert_idx.shape == (0, 2) and r.expert_weight.shape == (0, 2) and r.gather_idx.shape == (0,)
    assert torch.equal(r.expert_offsets, torch.zeros(5, dtype=torch.int32))

    w = make_weights(gen, "mxfp4", 4, 64, 96)
    x = randn(gen, 0, 96, dtype=x_dtype)
    offsets = r.expert_offsets
    out = moekit.matmul_ogs(x, w.arg, make_bias(gen, 4, 64), expert_offsets=offsets, gather_idx=r.gather_idx,
                            swiglu=(1.702, 7.0))
    assert out.shape == (0, 32) and out.dtype == x_dtype
    out = moekit.matmul_ogs(x, w.arg, None, expert_offsets=offsets, gather_idx=r.gather_idx,
                            scatter_idx=r.scatter_idx, combine_weight=r.expert_weight)
    assert out.shape == (0, 64) and out.dtype == x_dtype


def test_empty_quantize_and_dequantize(gen):
    for shape in [(0, 64), (2, 0, 32)]:
        blocks, scales = moekit.quantize_mxfp4(randn(gen, *shape))
        assert blocks.shape == (*shape[:-1], shape[-1] // 32, 16) and scales.shape == (*shape[:-1], shape[-1] // 32)
        assert moekit.dequantize_mxfp4(blocks, scales).shape == shape


def test_empty_quantized_axis(gen):
    # K = 0 is a multiple of 32; torch calls every empty tensor contiguous
    w = randn(gen, 3, 0)
    assert w.is_contiguous()
    blocks, scales = moekit.quantize_mxfp4(w)
    assert blocks.shape == (3, 0, 16) and scales.shape == (3, 0)
    assert moekit.dequantize_mxfp4(blocks, scales, dtype=torch.float32).shape == (3, 0)


# ------------------------------------------------------------------------ NaN / Inf propagate

def assert_same_nonfinite_pattern(got, want64, dtype):
    """NaN exactly where the float64 reference has NaN, the same infinities, and the finite part
    within the usual tolerance."""
    assert torch.equal(torch.isnan(got), torch.isnan(want64))
    assert torch.equal(torch.isposinf(got), torch.isposinf(want64))
    assert torch.equal(torch.isneginf(got), torch.isneginf(want64))
    finite = torch.isfinite(want64)
    assert ref.rel_err(got[finite], want64[finite]) < TOLERANCE[dtype]


@pytest.mark.parametrize("x_dtype", [BF16, torch.float32])
@pytest.mark.parametrize("w_kind", ["bfloat16", "mxfp4"])
def test_nonfinite_x_poisons_its_token_only(gen, x_dtype, w_kind):
    layer = MoeLayer(gen, 32, w_kind, x_dtype)
    x = layer.draw_x(gen, 16, 96, dtype=x_dtype, k=4)
    bad = {2: float("nan"), 5: float("inf"), 11: float("-inf")}
    for t, v in bad.items():
        x[t, int(torch.randint(0, 96, (1,), generator=gen))] = v
    y = layer.run(x, experts_per_token=4)
    bad_rows = torch.zeros(16, dtype=torch.bool)
    bad_rows[list(bad)] = True
    assert torch.isnan(y[bad_rows]).all()
    assert torch.isfinite(y[~bad_rows]).all()
    assert_same_nonfinite_pattern(y, layer.reference(x, 4), x_dtype)


@pytest.mark.parametrize("x_dtype", [BF16, torch.float32])
@pytest.mark.parametrize("where", ["mlp1_dense", "mlp1_mxfp4_scale", "mlp2_dense", "mlp2_mxfp4_scale",
                                   "mlp1_bias", "mlp2_bias"])
def test_nan_weights_poison_the_tokens_of_that_expert_only(gen, x_dtype, where):
    E, k, T = 8, 2, 32
    layer = MoeLayer(gen, E, "mxfp4" if "mxfp4" in where else "bfloat16", x_dtype)
    x = layer.draw_x(gen, T, 96, dtype=x_dtype, k=k)
    e = 3
    nan = float("nan")
    if where == "mlp1_dense":
        layer.w1.arg[e, 5, 17] = nan
        layer.w1.dense[e, 5, 17] = nan
    elif where == "mlp2_dense":
        layer.w2.arg[e, 7, 100] = nan
        layer.w2.dense[e, 7, 100] = nan
    elif where == "mlp1_mxfp4_scale":
        layer.w1.arg[1][e, 9, 2] = 255
        layer.w1.dense[e, 9, 64:96] = nan
    elif where == "mlp2_mxfp4_scale":
        layer.w2.arg[1][e, 7, 4] = 255
        layer.w2.dense[e, 7, 128:160] = nan
    elif where == "mlp1_bias":
        layer.b1[e, 11] = nan
    else:
        layer.b2[e, 7] = nan
    y = layer.run(x, experts_per_token=k)
    routed = (ref.route(layer.logits64(x), k).expert_idx == e).any(dim=1)
    assert 0 < int(routed.sum()) < T, "the test needs tokens on both sides"
    assert torch.isnan(y[routed]).any(dim=1).all()
    assert torch.isfinite(y[~routed]).all()
    assert_same_nonfinite_pattern(y, layer.reference(x, k), x_dtype)


@pytest.mark.parametrize("x_dtype", [BF16, torch.float32])
def test_inf_weights_follow_swiglu_clamps(gen, x_dtype):
    # +-Inf in mlp1 is clamped by SwiGLU (min(g, limit), clamp(l)) or turns into NaN (-Inf * 0):
    # exactly as in the float64 reference
    layer = MoeLayer(gen, 4, "bfloat16", x_dtype)
    x = layer.draw_x(gen, 16, 96, dtype=x_dtype, k=2)
    for row, v in [(4, float("inf")), (5, float("-inf")), (10, float("inf"))]:
        layer.w1.arg[1, row, 3] = v
        layer.w1.dense[1, row, 3] = v
    y = layer.run(x, experts_per_token=2)
    assert_same_nonfinite_pattern(y, layer.reference(x, 2), x_dtype)


@pytest.mark.parametrize("where", ["gate_weight", "gate_bias"])
def test_nan_gate_poisons_every_token(gen, where):
    # a NaN logit ranks first (docs/design.md), so every token takes that expert with NaN weights
    layer = MoeLayer(gen, 4, "mxfp4", BF16)
    x = layer.draw_x(gen, 7, 96, dtype=BF16, k=2)
    if where == "gate_weight":
        layer.gate_weight[2, 0] = float("nan")
    else:
        layer.gate_bias[2] = float("nan")
    y = layer.run(x, experts_per_token=2)
    assert torch.isnan(y).all()


def test_matmul_ogs_nan_row_stays_in_its_rows(gen):
    r = ref.route(randn(gen, 9, 4), 2)
    x = randn(gen, 9, 64, dtype=BF16)
    x[4, 10] = float("nan")
    w = make_weights(gen, "mxfp4", 4, 32, 64)
    out = moekit.matmul_ogs(x, w.arg, None, expert_offsets=r.expert_offsets.int(), gather_idx=r.gather_idx.int())
    rows = r.gather_idx == 4
    assert torch.isnan(out[rows]).all() and torch.isfinite(out[~rows]).all()
    out = moekit.matmul_ogs(x, w.arg, None, expert_offsets=r.expert_offsets.int(), gather_idx=r.gather_idx.int(),
                            scatter_idx=r.scatter_idx.int(), combine_weight=r.expert_weight.float())
    assert torch.isnan(out[4]).all() and torch.isfinite(out[torch.arange(9) != 4]).all()


# ----------------------------------------------------------------- the caller's state is kept

def snapshot(args):
    out = {}
    for k, v in args.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.clone()
        elif isinstance(v, tuple) and all(isinstance(t, torch.Tensor) for t in v):
            out[k] = tuple(t.clone() for t in v)
    return out


def assert_unchanged(args, before):
    for k, v in before.items():
        now = args[k]
        pairs = zip(v, now) if isinstance(v, tuple) else [(v, now)]
        for a, b in pairs:
            assert torch.equal(a, b), f"'{k}' was modified"


@pytest.mark.parametrize("op", sorted(OPS))
def test_inputs_are_not_modified(gen, op):
    """No op changes its inputs, but attention_decode the cache rows of its tokens and greedy_token
    its token and the id at its position (their contracts); on an error nothing changes."""
    args = OPS[op][0](gen)
    before = snapshot(args)
    threads = torch.get_num_threads()
    call(op, dict(args))
    if op == "attention_decode":
        p0, tokens = int(args["position"]), args["qkv"].shape[0]
        for cache in ("k_cache", "v_cache"):
            written = args[cache][p0:p0 + tokens]
            assert not torch.equal(written, before[cache][p0:p0 + tokens]), f"'{cache}' rows not written"
            written.copy_(before[cache][p0:p0 + tokens])  # the rest must be as it was
    if op == "greedy_token":
        at = int(args["position"])
        assert int(args["token"]) == int(args["ids"][at]) == int(torch.argmax(args["logits"]))
        args["token"].copy_(before["token"])
        args["ids"][at] = before["ids"][at]
    assert_unchanged(args, before)
    # and not on error either: the first case of this op that keeps the tensors on the CPU
    for case in CASES:
        if case.op == op and case.exc is ValueError and "meta" not in case.name and case.custom is None:
            bad = build(case, gen)
            before = snapshot(bad)
            with pytest.raises(ValueError):
                call(op, dict(bad))
            assert_unchanged(bad, before)
    assert torch.get_num_threads() == threads
