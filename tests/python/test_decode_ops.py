"""The decode step's ops, add_rms_norm, attention_decode and greedy_token: the CPU backend against
the reference, the GPU against the CPU (every element, bitwise-identical repeats), opcheck, and the
out-of-range position. GPU tests skip without a CUDA GPU."""

import math

import pytest
import torch
from torch.library import opcheck

import moekit
import reference as ref
from conftest import TOLERANCE, cuda_kernels_during, randn
from reference import rel_err

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DTYPES = [torch.float32, torch.bfloat16]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


# ------------------------------------------------------------------------------- add_rms_norm

def norm_inputs(gen, T, H, dtype):
    return (randn(gen, T, H, dtype=dtype), randn(gen, T, H, dtype=dtype, scale=3.0),
            torch.rand(H, generator=gen) + 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,H", [(1, 2880), (5, 64), (3, 33), (0, 64), (2, 0)])
def test_add_rms_norm_cpu_against_reference(gen, T, H, dtype):
    x, residual, scale = norm_inputs(gen, T, H, dtype)
    total, out = moekit.add_rms_norm(x, residual, scale, 1e-5)
    want_total, want_out = ref.add_rms_norm(x, residual, scale, 1e-5)
    assert total.dtype == out.dtype == dtype and out.shape == (T, H)
    assert torch.equal(total, want_total)  # one rounding of an exact sum
    if T * H:
        assert rel_err(out, want_out) < TOLERANCE[dtype] / 4


def test_add_rms_norm_propagates_nan(gen):
    x, residual, scale = norm_inputs(gen, 2, 64, torch.float32)
    x[1, 5] = math.nan
    _, out = moekit.add_rms_norm(x, residual, scale)
    assert not out[0].isnan().any() and out[1].isnan().all()


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,H", [(1, 2880), (7, 320), (300, 33)])
def test_add_rms_norm_gpu_against_cpu(gen, T, H, dtype):
    x, residual, scale = norm_inputs(gen, T, H, dtype)
    want_total, want_out = moekit.add_rms_norm(x, residual, scale)
    runs = [moekit.add_rms_norm(x.cuda(), residual.cuda(), scale.cuda()) for _ in range(3)]
    for total, out in runs[1:]:
        assert torch.equal(bits(total), bits(runs[0][0])) and torch.equal(bits(out), bits(runs[0][1]))
    total, out = (t.cpu() for t in runs[0])
    assert torch.equal(total, want_total)
    assert rel_err(out, want_out) < TOLERANCE[dtype] / 4
    # every element, not just the norm of the difference: at most one rounding step apart
    step = 2.0 ** -7 if dtype == torch.bfloat16 else 1e-5
    assert ((out.double() - want_out.double()).abs() <= step * want_out.double().abs() + 1e-6).all()


def test_opcheck_add_rms_norm(gen):
    x, residual, scale = norm_inputs(gen, 3, 64, torch.bfloat16)
    result = opcheck(torch.ops.moekit.add_rms_norm.default, (x, residual, scale, 1e-5))
    assert all(v == "SUCCESS" for v in result.values()), result


# --------------------------------------------------------------------------- attention_decode

YARN = dict(theta=150000.0, factor=32.0)


def inv_freq_of(D: int) -> torch.Tensor:
    return 1.0 / (YARN["theta"] ** (torch.arange(0, D, 2, dtype=torch.float32) / D)) / YARN["factor"] ** 0.5


def attention_inputs(gen, T, Hq, Hkv, D, L, dtype):
    return dict(qkv=randn(gen, T, (Hq + 2 * Hkv) * D, dtype=dtype), k_cache=randn(gen, L, Hkv, D, dtype=dtype),
                v_cache=randn(gen, L, Hkv, D, dtype=dtype), sinks=randn(gen, Hq), inv_freq=inv_freq_of(D))


def run_attention(inputs, p0, window, device="cpu"):
    """The op on copies of the caches: (out, k_cache, v_cache)."""
    a = {k: v.clone().to(device) for k, v in inputs.items()}
    D = a["k_cache"].shape[2]
    out = moekit.attention_decode(a["qkv"], a["k_cache"], a["v_cache"], a["sinks"],
                                  torch.tensor([p0], dtype=torch.int32, device=device), a["inv_freq"],
                                  rope_scale=1.35, sm_scale=D ** -0.5, window=window)
    return out, a["k_cache"], a["v_cache"]


# (T, Hq, Hkv, D, L, p0, window): decode steps, a few tokens, windows cut inside the range or
# not at all, caches whose keys the CUDA backend splits over up to 16 blocks a kv head (merged
# within their cluster on sm_90, several tokens in a row: 2 and 13 splits) and over 32 (merged
# by a second kernel), with tokens on both sides of a split, the first and the last position,
# odd head counts and sizes. One token takes attention_decode_one_kernel where its group and
# heads fit (heads of 2 to 64 values, groups of 1 to 8 heads), else the general kernel (16).
CASES = [
    (1, 64, 8, 64, 300, 120, 128), (1, 64, 8, 64, 300, 299, 0), (1, 4, 2, 16, 40, 0, 8),
    (3, 4, 2, 16, 40, 20, 8), (16, 8, 1, 8, 64, 48, 0), (5, 6, 3, 4, 30, 7, 5), (2, 2, 2, 2, 9, 7, 0),
    (4, 12, 4, 48, 400, 300, 0), (1, 64, 8, 64, 3000, 2500, 0), (8, 16, 8, 32, 2100, 1020, 0),
    (4, 8, 4, 64, 2100, 2050, 1500), (1, 12, 4, 48, 400, 300, 0), (1, 16, 1, 32, 64, 63, 0),
    (1, 2, 2, 2, 9, 8, 0), (1, 6, 3, 4, 30, 7, 5), (1, 8, 8, 64, 2100, 1700, 1500),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,Hq,Hkv,D,L,p0,window", CASES)
def test_attention_decode_cpu_against_reference(gen, T, Hq, Hkv, D, L, p0, window, dtype):
    inputs = attention_inputs(gen, T, Hq, Hkv, D, L, dtype)
    out, k_cache, v_cache = run_attention(inputs, p0, window)
    want, want_k, want_v = ref.attention_decode(inputs["qkv"], inputs["k_cache"], inputs["v_cache"], inputs["sinks"],
                                                p0, inputs["inv_freq"], 1.35, D ** -0.5, window)
    assert out.dtype == dtype and out.shape == (T, Hq * D)
    assert rel_err(out, want) < TOLERANCE[dtype]
    assert torch.equal(v_cache, want_v)
    assert rel_err(k_cache, want_k) < TOLERANCE[dtype] / 4
    untouched = torch.ones(L, dtype=torch.bool)
    untouched[p0:p0 + T] = False
    assert torch.equal(k_cache[untouched], inputs["k_cache"][untouched])


def test_attention_decode_window_and_sink_matter(gen):
    """The window hides exactly the keys before p - window + 1, and the sink takes probability."""
    inputs = attention_inputs(gen, 1, 4, 2, 16, 40, torch.float32)
    base = run_attention(inputs, 30, 8)[0]
    changed = dict(inputs, k_cache=inputs["k_cache"].clone())
    changed["k_cache"][22] += 5.0  # outside the window of position 30 (keys 23..30)
    assert torch.equal(run_attention(changed, 30, 8)[0], base)
    changed["k_cache"][23] += 5.0
    assert not torch.allclose(run_attention(changed, 30, 8)[0], base)
    sunk = dict(inputs, sinks=inputs["sinks"] + 3.0)
    assert run_attention(sunk, 30, 8)[0].norm() < base.norm()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_attention_decode_window_past_the_cache_is_no_window(gen, device):
    inputs = attention_inputs(gen, 3, 4, 2, 16, 40, torch.float32)
    unwindowed = run_attention(inputs, 20, 0, device)[0]
    for window in (40, 2 ** 62):
        assert torch.equal(run_attention(inputs, 20, window, device)[0], unwindowed)


def test_attention_decode_position_out_of_range_cpu(gen):
    inputs = attention_inputs(gen, 3, 4, 2, 16, 40, torch.float32)
    for p0 in (38, -1):
        with pytest.raises(ValueError, match=r"moekit.attention_decode: 'position' expected p0 with 0 <= p0"):
            run_attention(inputs, p0, 0)


def test_opcheck_attention_decode(gen):
    a = attention_inputs(gen, 2, 4, 2, 16, 40, torch.bfloat16)
    args = (a["qkv"], a["k_cache"], a["v_cache"], a["sinks"], torch.tensor([5], dtype=torch.int32), a["inv_freq"],
            1.35, 0.25, 8)
    result = opcheck(torch.ops.moekit.attention_decode.default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,Hq,Hkv,D,L,p0,window", CASES)
def test_attention_decode_gpu_against_cpu(gen, T, Hq, Hkv, D, L, p0, window, dtype):
    inputs = attention_inputs(gen, T, Hq, Hkv, D, L, dtype)
    want, want_k, want_v = run_attention(inputs, p0, window)
    runs = [run_attention(inputs, p0, window, "cuda") for _ in range(3)]
    for other in runs[1:]:
        assert all(torch.equal(bits(a), bits(b)) for a, b in zip(runs[0], other)), "not deterministic"
    out, k_cache, v_cache = (t.cpu() for t in runs[0])
    assert torch.equal(v_cache, want_v)
    # Rotated keys: float32 cos/sin on either side; at most one rounding step of the dtype apart.
    step = 2.0 ** -7 if dtype == torch.bfloat16 else 2e-6
    assert ((k_cache.double() - want_k.double()).abs() <= step * want_k.double().abs() + 1e-6).all()
    assert rel_err(out, want) < TOLERANCE[dtype] / 2
    assert ((out.double() - want.double()).abs() <= 4 * step * want.double().abs().amax() + 1e-5).all()


@cuda
@pytest.mark.parametrize("L,p0,window", [(2100, 1020, 0), (300, 120, 128), (300, 250, 0), (40, 3, 8)])
def test_attention_decode_batch_invariant_on_gpu(gen, L, p0, window):
    """A token's output is bit-identical whether it is decoded alone (attention_decode_one_kernel
    where it fits) or with others (attention_decode_kernel): split over 32 blocks (the merge
    kernel), merged in a cluster, windowed, and with small heads."""
    Hq, Hkv, D = (64, 8, 64) if L > 40 else (4, 2, 16)
    inputs = attention_inputs(gen, 8, Hq, Hkv, D, L, torch.bfloat16)
    together = run_attention(inputs, p0, window, "cuda")[0]
    alone = run_attention(dict(inputs, qkv=inputs["qkv"][:1]), p0, window, "cuda")[0]
    assert torch.equal(bits(alone[0]), bits(together[0]))


@cuda
def test_attention_decode_merges_splits_in_their_cluster_on_sm90(gen):
    """On sm_90 a kv head's splits, up to 16 (300 keys: 10), merge within their thread block
    cluster and no merge kernel runs; 32 (3000 keys) go through the merge kernel. One token takes
    attention_decode_one_kernel, two attention_decode_kernel. All paths are checked against the
    CPU above."""
    if torch.cuda.get_device_capability(0)[0] != 9:
        pytest.skip("thread block clusters merge the splits on sm_90 only")
    for T, L, merge_kernel in ((1, 300, False), (1, 3000, True), (2, 300, False)):
        inputs = attention_inputs(gen, T, 64, 8, 64, L, torch.bfloat16)
        _, names = cuda_kernels_during(lambda: run_attention(inputs, L - T, 0, "cuda"))
        kernel = "attention_decode_one_kernel" if T == 1 else "attention_decode_kernel"
        assert any(kernel in n for n in names), names
        assert any("attention_decode_merge" in n for n in names) == merge_kernel, names


@cuda
def test_attention_decode_position_out_of_range_gpu(gen):
    """The device cannot raise: out is NaN and the caches are left as they were."""
    for L in (20, 40, 3000):  # one split (which writes out), two (merged in a cluster on sm_90), 32 (the merge kernel)
        inputs = attention_inputs(gen, 3, 4, 2, 16, L, torch.bfloat16)
        out, k_cache, v_cache = run_attention(inputs, L - 2, 0, "cuda")
        assert out.isnan().all()
        assert torch.equal(k_cache.cpu(), inputs["k_cache"]) and torch.equal(v_cache.cpu(), inputs["v_cache"])


# ------------------------------------------------------------------------------- greedy_token

def greedy_logits(gen, V, dtype, kind):
    """Random logits; "ties": the largest value at three places; "nan": NaNs at two."""
    logits = randn(gen, V, dtype=dtype)
    places = torch.randperm(V, generator=gen)[:3]
    if kind == "ties":
        logits[places] = logits.max() + 1
    elif kind == "nan":
        logits[places[:2]] = math.nan
    return logits


def run_greedy(logits, at, L, device="cpu"):
    """The op on fresh token and ids (filled with -1): (token, ids) on the CPU."""
    token = torch.full((1,), -1, dtype=torch.int32, device=device)
    ids = torch.full((L,), -1, dtype=torch.int32, device=device)
    moekit.greedy_token(logits.to(device), torch.tensor([at], dtype=torch.int32, device=device), token, ids)
    return token.cpu(), ids.cpu()


def expected_ids(L, at, token):
    ids = torch.full((L,), -1, dtype=torch.int32)
    ids[at] = token
    return ids


GREEDY_V = [1, 7, 4096, 201088]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", GREEDY_V)
@pytest.mark.parametrize("kind", ["random", "ties", "nan"])
def test_greedy_token_cpu_against_reference(gen, V, dtype, kind):
    logits = greedy_logits(gen, V, dtype, kind)
    want = ref.greedy_token(logits)
    token, ids = run_greedy(logits, 5, 9)
    assert token.tolist() == [want]
    assert torch.equal(ids, expected_ids(9, 5, want))


def test_greedy_token_position_out_of_range_cpu(gen):
    logits = greedy_logits(gen, 50, torch.bfloat16, "random")
    for at in (9, -1):
        token = torch.full((1,), -1, dtype=torch.int32)
        ids = torch.full((9,), -1, dtype=torch.int32)
        with pytest.raises(ValueError, match=r"moekit.greedy_token: 'position' expected a position in \[0, 9\)"):
            moekit.greedy_token(logits, torch.tensor([at], dtype=torch.int32), token, ids)
        assert token.tolist() == [-1] and (ids == -1).all()  # nothing written


def test_opcheck_greedy_token(gen):
    args = (randn(gen, 300, dtype=torch.bfloat16), torch.tensor([2], dtype=torch.int32),
            torch.zeros(1, dtype=torch.int32), torch.zeros(6, dtype=torch.int32))
    result = opcheck(torch.ops.moekit.greedy_token.default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", GREEDY_V + [201087])
@pytest.mark.parametrize("kind", ["random", "ties", "nan"])
def test_greedy_token_gpu_against_cpu(gen, V, dtype, kind):
    """Blocks of a cluster (one block for small vocabularies), 16-byte loads or, on logits that
    start off 16 bytes, one element at a time."""
    logits = greedy_logits(gen, V + 1, dtype, kind)
    on_gpu = logits.cuda()
    for view in (slice(0, V), slice(1, V + 1)):  # aligned, then not
        assert (on_gpu[view].data_ptr() % 16 == 0) == (view.start == 0)
        want = run_greedy(logits[view], 4, 9)
        for _ in range(2):
            got = run_greedy(on_gpu[view], 4, 9, "cuda")
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@cuda
def test_greedy_token_position_out_of_range_gpu(gen):
    """The device cannot raise: the token is written, the ids are left as they were."""
    logits = greedy_logits(gen, 201088, torch.bfloat16, "random")
    want = ref.greedy_token(logits)
    for at in (9, -1):
        token, ids = run_greedy(logits, at, 9, "cuda")
        assert token.tolist() == [want] and (ids == -1).all()
