"""moekit.quantize_mxfp4 / dequantize_mxfp4 against the float64 reference (docs/mxfp4.md)."""

import pytest
import torch

import moekit
import reference as ref
from conftest import checkpoint_mxfp4, randn

DTYPES = [torch.float32, torch.bfloat16]


def per_block_magnitudes(gen, lead, K, low, high):
    """2^e with e uniform in [low, high), one per block of 32 along the last axis, broadcast to [*lead, K]."""
    e = torch.randint(low, high, (*lead, K // 32, 1), generator=gen).to(torch.float64)
    return torch.pow(2.0, e).expand(*lead, K // 32, 32).reshape(*lead, K)


def exact_mxfp4_values(gen, lead, K, dtype):
    """Blocks of e2m1 values times one power of two per block: exactly representable in MXFP4."""
    codes = torch.randint(0, 16, (*lead, K), generator=gen)
    return (ref.E2M1_TABLE[codes] * per_block_magnitudes(gen, lead, K, -20, 20)).to(dtype)


# ------------------------------------------------------------------------------- quantize

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(32,), (3, 64), (2, 3, 96), (2, 1, 2, 160)])
def test_quantize_matches_reference(gen, dtype, shape):
    lead, K = shape[:-1], shape[-1]
    # normal values with a different magnitude per block, from subnormal float32 to ~1e36:
    # covers the scale clamp at s = 0 and the whole regular range.
    w = (randn(gen, *shape, dtype=torch.float64) * per_block_magnitudes(gen, lead, K, -150, 120)).to(dtype)
    blocks, scales = moekit.quantize_mxfp4(w)
    want_blocks, want_scales = ref.quantize_mxfp4(w)
    assert blocks.dtype == torch.uint8 and scales.dtype == torch.uint8
    assert blocks.shape == (*lead, K // 32, 16) and scales.shape == (*lead, K // 32)
    assert torch.equal(scales, want_scales)
    assert torch.equal(blocks, want_blocks)


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_rounding_ties_and_scale_rule(gen, dtype):
    # Each block: one element that fixes the scale at 2^e (magnitude 6 * 2^e, or a value in
    # (3, 6] * 2^e), the rest exact ties between e2m1 values or random values; signs random.
    n_blocks = 64
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=torch.float64)
    pick = torch.randint(0, len(ties), (n_blocks, 32), generator=gen)
    mags = ties[pick]
    random_mags = torch.rand(n_blocks, 32, generator=gen, dtype=torch.float64) * 6
    use_random = torch.rand(n_blocks, 32, generator=gen) < 0.3
    mags = torch.where(use_random, random_mags, mags)
    mags[:, 0] = 3.0 + 3.0 * (1 - torch.rand(n_blocks, generator=gen, dtype=torch.float64))  # (3, 6]
    mags[::2, 0] = 6.0
    signs = torch.where(torch.rand(n_blocks, 32, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
    e = torch.randint(-30, 30, (n_blocks, 1), generator=gen).to(torch.float64)
    w = (signs * mags * torch.pow(2.0, e)).to(dtype).reshape(4, n_blocks * 32 // 4)
    blocks, scales = moekit.quantize_mxfp4(w)
    want_blocks, want_scales = ref.quantize_mxfp4(w)
    # the scale is 2^e exactly for blocks whose largest element is exactly 6 * 2^e
    assert torch.equal(scales.reshape(-1)[::2].long(), (e[::2, 0] + 127).long())
    assert torch.equal(scales, want_scales)
    assert torch.equal(blocks, want_blocks)


@pytest.mark.parametrize("dtype", DTYPES)
def test_checkpoint_byte_layout(gen, dtype):
    # Codes picked at random, each block holding a +-6 so its scale is exactly 2^e; the bytes
    # must be code[2i] | code[2i+1] << 4 and the scale byte e + 127.
    E, N, K = 3, 5, 128
    codes = torch.randint(0, 16, (E, N, K), generator=gen)
    codes[..., ::32] = torch.where(torch.rand(E, N, K // 32, generator=gen) < 0.5, 7, 15)
    e = torch.randint(-40, 40, (E, N, K // 32), generator=gen)
    w = (ref.E2M1_TABLE[codes] * torch.pow(2.0, e.to(torch.float64)).repeat_interleave(32, dim=-1)).to(dtype)
    blocks, scales = moekit.quantize_mxfp4(w)
    assert blocks.shape == (E, N, K // 32, 16) and scales.shape == (E, N, K // 32)
    assert blocks.is_contiguous() and scales.is_contiguous()
    want_bytes = (codes[..., 0::2] | (codes[..., 1::2] << 4)).reshape(E, N, K // 32, 16)
    assert torch.equal(blocks.long(), want_bytes)
    assert torch.equal(scales.long(), e + 127)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_and_zero_blocks(gen, dtype):
    lead, K = (4, 8), 96
    w = randn(gen, *lead, K, dtype=torch.float64)
    n_blocks = 4 * 8 * 3
    flat = w.view(n_blocks, 32)
    kinds = torch.randint(0, 5, (n_blocks,), generator=gen)  # 0,1: normal; 2: NaN; 3: +Inf; 4: -Inf
    kinds[0], kinds[1], kinds[2] = 2, 3, 4
    where = torch.randint(0, 32, (n_blocks,), generator=gen)
    specials = {2: float("nan"), 3: float("inf"), 4: float("-inf")}
    for b in range(n_blocks):
        if int(kinds[b]) in specials:
            flat[b, int(where[b])] = specials[int(kinds[b])]
    zero_block = int(torch.nonzero(kinds < 2)[0])
    flat[zero_block] = 0.0
    w = w.to(dtype)
    blocks, scales = moekit.quantize_mxfp4(w)
    bad = (kinds >= 2).reshape(*lead, 3)
    assert torch.equal(scales == 255, bad)
    assert int(scales.view(-1)[zero_block]) == 0
    for out_dtype in DTYPES:
        got = moekit.dequantize_mxfp4(blocks, scales, dtype=out_dtype)
        assert got.dtype == out_dtype and got.shape == w.shape
        got_blocks = got.view(n_blocks, 32)
        assert torch.isnan(got_blocks[kinds.view(-1) >= 2]).all()
        assert not torch.isnan(got_blocks[kinds.view(-1) < 2]).any()
        assert (got_blocks[zero_block] == 0).all()
        want = ref.dequantize_mxfp4(*ref.quantize_mxfp4(w)).to(out_dtype)
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


# ----------------------------------------------------------------------------- dequantize

@pytest.mark.parametrize("out_dtype", DTYPES)
def test_dequantize_matches_reference_all_codes_and_scales(gen, out_dtype):
    # random bytes: every code, and every scale byte 0..255 (254 overflows float32 for codes >= 2,
    # 255 is NaN, 0 is 2^-127), each at least once.
    blocks = torch.randint(0, 256, (4, 256, 2, 16), generator=gen).to(torch.uint8)
    scales = torch.randint(0, 256, (4, 256, 2), generator=gen).to(torch.uint8)
    scales[0, :, 0] = torch.arange(256, dtype=torch.uint8)
    got = moekit.dequantize_mxfp4(blocks, scales, dtype=out_dtype)
    assert got.dtype == out_dtype and got.shape == (4, 256, 64)
    want = ref.dequantize_mxfp4(blocks, scales).to(out_dtype)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_dequantize_default_dtype_is_bfloat16(gen):
    blocks, scales = checkpoint_mxfp4(gen, 2, 3, 64)
    got = moekit.dequantize_mxfp4(blocks, scales)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 3, 64)
    assert torch.equal(got, ref.dequantize_mxfp4(blocks, scales).to(torch.bfloat16))


# ------------------------------------------------------------------------- exact round trip

ROUNDTRIP_CASES = [
    ((64,), 0),
    ((96,), -1),
    ((5, 96), -1),
    ((64, 3), 0),
    ((5, 96), 1),
    ((3, 5, 64), -1),
    ((3, 5, 64), 2),
    ((64, 3, 5), 0),
    ((3, 64, 5), 1),
    ((3, 64, 5), -2),
    ((2, 3, 5, 32), 3),
    ((2, 96, 3, 5), 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", ROUNDTRIP_CASES)
def test_exactly_representable_values_round_trip(gen, dtype, shape, axis):
    a = axis % len(shape)
    K = shape[a]
    # build with the quantized axis last, then move it into place
    moved = [s for d, s in enumerate(shape) if d != a]
    w = exact_mxfp4_values(gen, moved, K, dtype).movedim(-1, a).contiguous()
    assert w.shape == shape

    blocks, scales = moekit.quantize_mxfp4(w, axis=axis)
    assert blocks.shape == (*shape[:a], K // 32, 16, *shape[a + 1:])
    assert scales.shape == (*shape[:a], K // 32, *shape[a + 1:])
    # the same bytes the reference gives for the tensor with that axis last
    want_blocks, want_scales = ref.quantize_mxfp4(w.movedim(a, -1))
    assert torch.equal(blocks.movedim((a, a + 1), (-2, -1)), want_blocks)
    assert torch.equal(scales.movedim(a, -1), want_scales)

    back = moekit.dequantize_mxfp4(blocks, scales, axis=axis, dtype=dtype)
    assert back.dtype == dtype and back.shape == w.shape
    assert torch.equal(back, w)
    # the sign of zero is kept (code 8 is -0)
    assert torch.equal(torch.signbit(back), torch.signbit(w))


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_error_is_bounded(gen, dtype):
    # Not exact in general: rounding moves each element by at most half an e2m1 step times its
    # block's scale, and the largest step is 2 (between 4 and 6).
    w = randn(gen, 16, 256, dtype=dtype)
    blocks, scales = moekit.quantize_mxfp4(w)
    back = moekit.dequantize_mxfp4(blocks, scales, dtype=torch.float32).to(torch.float64)
    scale = ref.e8m0_to_float(scales).repeat_interleave(32, dim=-1)
    assert ((back - w.to(torch.float64)).abs() <= scale).all()
    # and the result equals the reference quantize-dequantize exactly
    assert torch.equal(back, ref.dequantize_mxfp4(*ref.quantize_mxfp4(w)))
