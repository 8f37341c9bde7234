"""Every op on the GPU against the CPU backend (the oracle) on fresh random inputs.

Grid: T in {0, 1, 7, 128, 1000}, E in {1, 32, 128}, k in {1, 4}, N and K multiples of 32 that
are not multiples of 64, bf16 and MXFP4 weights. Each GPU op also runs 3 times and must give
bitwise identical results. Skips without a CUDA GPU.
"""

import itertools
import zlib

import pytest
import torch

import moekit
from conftest import cuda_kernels_during

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TS = [0, 1, 7, 128, 1000]
ES = [1, 32, 128]
KS = [1, 4]
H, I = 96, 160  # multiples of 32, not of 64


def generator(*key) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, so NaNs compare equal to themselves."""
    return t.contiguous().view(torch.uint8)


def run3(fn):
    """Runs a GPU op 3 times; all results must be bitwise identical. Returns the first."""
    outs = [fn() for _ in range(3)]
    for other in outs[1:]:
        for a, b in zip(torch.utils._pytree.tree_leaves(outs[0]), torch.utils._pytree.tree_leaves(other)):
            assert torch.equal(bits(a), bits(b)), "not deterministic"
    return outs[0]


def to_cuda(obj):
    return torch.utils._pytree.tree_map(lambda t: t.cuda() if isinstance(t, torch.Tensor) else t, obj)


def layer(gen, E, mxfp4, dtype=torch.bfloat16):
    def w(n, k):
        dense = torch.randn(E, n, k, generator=gen) / k ** 0.5
        return moekit.quantize_mxfp4(dense) if mxfp4 else dense.to(dtype)
    return dict(gate_weight=torch.randn(E, H, generator=gen).to(dtype),
                gate_bias=torch.randn(E, generator=gen).to(dtype),
                mlp1_weight=w(2 * I, H), mlp1_bias=torch.randn(E, 2 * I, generator=gen).to(dtype),
                mlp2_weight=w(H, I), mlp2_bias=torch.randn(E, H, generator=gen).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [0, 1, 7, 1000])
def test_mxfp4_roundtrip_matches_cpu(rows, dtype):
    w = torch.randn(rows, 3, 96, generator=generator(rows, dtype)).to(dtype)
    w[0:1, 0, 5] = float("nan") if rows else 0.0  # one NaN block when there are rows
    blocks, scales = moekit.quantize_mxfp4(w)
    gb, gs = run3(lambda: moekit.quantize_mxfp4(w.cuda()))
    assert torch.equal(gb.cpu(), blocks) and torch.equal(gs.cpu(), scales)
    for out_dtype in (torch.float32, torch.bfloat16):
        want = moekit.dequantize_mxfp4(blocks, scales, dtype=out_dtype)
        got = run3(lambda: moekit.dequantize_mxfp4(blocks.cuda(), scales.cuda(), dtype=out_dtype))
        got = got.cpu()
        assert torch.equal(got.isnan(), want.isnan())  # NaN payloads may differ between CPU and GPU
        assert torch.equal(bits(got.masked_fill(got.isnan(), 0)), bits(want.masked_fill(want.isnan(), 0)))


@pytest.mark.parametrize("T,E,k", [(t, e, k) for t, e, k in itertools.product(TS, ES, KS) if k <= e])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_route_matches_cpu(T, E, k, dtype):
    logits = torch.randn(T, E, generator=generator(T, E, k, dtype)).to(dtype)
    want = moekit.route(logits, k)
    got = run3(lambda: moekit.route(logits.cuda(), k))
    for name in ("expert_idx", "expert_counts", "expert_offsets", "gather_idx", "scatter_idx"):
        assert torch.equal(getattr(got, name).cpu(), getattr(want, name)), name
    torch.testing.assert_close(got.expert_weight.cpu(), want.expert_weight, rtol=1e-6, atol=1e-7)


# Up to 32 tokens one block routes them (top-k and grouping in one launch); beyond, two kernels.
@pytest.mark.parametrize("T,E,k", [(20000, 32, 4), (3000, 2048, 4), (5000, 1, 1), (32, 2048, 4), (33, 32, 4)])
def test_route_many_tokens_matches_cpu(T, E, k):
    """Grouping splits the slots into per-warp chunks (fewer when E is large): the chunk
    boundaries must not change the stable order."""
    logits = torch.randn(T, E, generator=generator("many", T, E, k))
    want = moekit.route(logits, k)
    got = run3(lambda: moekit.route(logits.cuda(), k))
    for name in ("expert_idx", "expert_counts", "expert_offsets", "gather_idx", "scatter_idx"):
        assert torch.equal(getattr(got, name).cpu(), getattr(want, name)), name


def test_route_ties_and_nan_match_cpu():
    logits = torch.zeros(5, 32)
    logits[1, 7] = float("nan")
    logits[2] = torch.arange(32) % 3  # many equal values
    logits[3, :] = float("-inf")
    logits[4, 31] = float("inf")
    want = moekit.route(logits, 4)
    got = moekit.route(logits.cuda(), 4)
    assert torch.equal(got.expert_idx.cpu(), want.expert_idx)
    assert torch.equal(got.expert_weight.cpu().isnan(), want.expert_weight.isnan())


@pytest.mark.parametrize("E,k", [(32, 4), (33, 5), (128, 4), (128, 40), (256, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [6, 64])  # one block routes up to 32 tokens, two kernels beyond
def test_route_rank_order_matches_cpu(T, E, k, dtype):
    """The GPU top-k ranks logits by a key (NaN above numbers, -0 equal to +0, ties to the lower
    expert) whether a lane holds its logits in registers (E <= 128) or reloads them (E > 128)."""
    gen = generator("rank order", T, E, k, dtype)
    # every row draws from a few values (ties inside and at the top-k boundary, -0 beside +0,
    # subnormals); a third of the rows add NaN and +inf now and then, a third normals
    pool = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 1.5, -1.5, 2.0, float("-inf")])
    logits = pool[torch.randint(len(pool), (T, E), generator=gen)]
    third = T // 3
    special = torch.rand(third, E, generator=gen)
    logits[:third] = torch.where(special < 0.02, float("nan"), torch.where(special < 0.04, float("inf"), logits[:third]))
    mixed = torch.rand(T - 2 * third, E, generator=gen) < 0.5
    logits[2 * third :] = torch.where(mixed, logits[2 * third :], torch.randn(T - 2 * third, E, generator=gen))
    logits = logits.to(dtype)
    want = moekit.route(logits, k)
    got = run3(lambda: moekit.route(logits.cuda(), k))
    assert torch.equal(got.expert_idx.cpu(), want.expert_idx)
    nan = want.expert_weight.isnan()
    assert torch.equal(got.expert_weight.cpu().isnan(), nan)
    torch.testing.assert_close(got.expert_weight.cpu()[~nan], want.expert_weight[~nan], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("T,E,k", [(t, e, k) for t, e, k in itertools.product(TS, ES, KS) if k <= e])
@pytest.mark.parametrize("mxfp4", [False, True], ids=["bf16", "mxfp4"])
def test_matmul_ogs_matches_cpu(T, E, k, mxfp4):
    gen = generator(T, E, k, mxfp4)
    x = torch.randn(T, H, generator=gen).bfloat16()
    r = moekit.route(torch.randn(T, E, generator=gen), k)
    L = layer(gen, E, mxfp4)
    # mlp1: gather + bias + SwiGLU
    args1 = dict(expert_offsets=r.expert_offsets, gather_idx=r.gather_idx, swiglu=(1.702, 7.0))
    want1 = moekit.matmul_ogs(x, L["mlp1_weight"], L["mlp1_bias"], **args1)
    got1 = run3(lambda: moekit.matmul_ogs(x.cuda(), to_cuda(L["mlp1_weight"]), L["mlp1_bias"].cuda(), **to_cuda(args1)))
    assert got1.shape == want1.shape and got1.dtype == want1.dtype
    if want1.numel():
        assert rel_err(got1, want1) < 5e-3  # both fp32 accumulation; bf16 output rounding may differ by 1 ulp
    # mlp2: scatter + combine
    a = torch.randn(T * k, I, generator=gen).bfloat16()
    args2 = dict(expert_offsets=r.expert_offsets, scatter_idx=r.scatter_idx, combine_weight=r.expert_weight)
    want2 = moekit.matmul_ogs(a, L["mlp2_weight"], L["mlp2_bias"], **args2)
    got2 = run3(lambda: moekit.matmul_ogs(a.cuda(), to_cuda(L["mlp2_weight"]), L["mlp2_bias"].cuda(), **to_cuda(args2)))
    assert got2.shape == want2.shape == (T, H)
    if want2.numel():
        assert rel_err(got2, want2) < 5e-3
        assert torch.isfinite(got2).all()


@pytest.mark.parametrize("invariant", [False, True], ids=["default", "batch_invariant"])
@pytest.mark.parametrize("T,E", [(4, 32), (7, 32), (128, 32), (1000, 128)])
def test_moe_mlp_with_repacked_weights_matches_cpu(T, E, invariant):
    """The layer given each expert weight with its repack_mxfp4 output too (the operand of the
    swap-AB kernels), on the decode path and the matmul path, by default and batch-invariant (on
    sm_90 the swap-AB kernels for mlp1 and mlp2 past 4 tokens, and with the flag always:
    K = 96 and 160, partial k steps; mlp2's N = 96, a partial slab): the CPU's result (which
    reads the checkpoint layout) within the layer's bound, bitwise stable."""
    sm90 = torch.cuda.get_device_capability() == (9, 0)
    if invariant and not sm90:
        pytest.skip("the swap-AB kernels need sm_90")
    gen = generator("moe-slabs", T, E)
    x = torch.randn(T, H, generator=gen).bfloat16()
    L = layer(gen, E, True)
    want = moekit.moe_mlp(x, **L, experts_per_token=4)
    for name in ("mlp1_weight", "mlp2_weight"):
        L[name] = L[name] + moekit.repack_mxfp4(*L[name])
    got, ran = cuda_kernels_during(lambda: run3(lambda: moekit.moe_mlp(x.cuda(), **to_cuda(L), experts_per_token=4,
                                                                        batch_invariant=invariant)))
    # Where the choice takes each path: the swap-AB kernels always with the flag; by default the
    # decode kernels up to 4 tokens beside repacked weights on sm_90 (8 elsewhere), then on sm_90
    # the swap-AB kernels (here 1, 16 and 32 rows per expert, which they take). Each case says
    # which path its T takes, so a change of the decode path's limit fails here, not silently.
    decode_path = not invariant and T <= (4 if sm90 else 8)
    assert any("moe_decode" in name for name in ran) == decode_path, ran
    assert any("swapab" in name for name in ran) == (sm90 and not decode_path), ran
    assert torch.isfinite(got).all()
    assert rel_err(got, want) < 5e-3


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_matmul_ogs_plain_float32(wdtype):
    """One expert, no gather/scatter, float32 x and K not a multiple of 32: tight tolerance."""
    gen = generator("plain", wdtype)
    x = torch.randn(77, 33, generator=gen)
    w = torch.randn(1, 45, 33, generator=gen).to(wdtype)
    b = torch.randn(1, 45, generator=gen)
    want = moekit.matmul_ogs(x, w, b)
    got = run3(lambda: moekit.matmul_ogs(x.cuda(), w.cuda(), b.cuda()))
    assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("T,E,k", [(t, e, k) for t, e, k in itertools.product(TS, ES, KS) if k <= e])
@pytest.mark.parametrize("mxfp4", [False, True], ids=["bf16", "mxfp4"])
def test_moe_mlp_matches_cpu(T, E, k, mxfp4):
    gen = generator("moe", T, E, k, mxfp4)
    x = torch.randn(T, H, generator=gen).bfloat16()
    L = layer(gen, E, mxfp4)
    want = moekit.moe_mlp(x, **L, experts_per_token=k)
    got = run3(lambda: moekit.moe_mlp(x.cuda(), **to_cuda(L), experts_per_token=k))
    assert got.shape == x.shape and got.dtype == x.dtype and got.device.type == "cuda"
    if T:
        assert torch.isfinite(got).all()
        assert rel_err(got, want) < 5e-3
