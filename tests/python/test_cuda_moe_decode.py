"""moe_mlp's CUDA decode path (T <= 8, T * k <= 32: src/cuda/kernels/moe), element by element
against the float64 reference.

The path routes in each block of its expert kernels, splits the expert matmuls into units whose
partial sums a last-arriving warp adds, and writes mlp1's output in a paired order: the grid
covers every T from 1 to 8, experts from k (every token takes them all) to 128, one expert per
token to 4, bias dtypes, a float32 gate, and scale bytes that take the decoder's other paths.

Every output element must lie within its own bound: the bf16 rounding of y (2^-8 relative), plus
what one unit in the last place of each bf16 activation (2^-7 relative; moekit's float32 h and
the reference's float64 h can round to neighbours) moves it through |mlp2| and the combine
weights, plus float32 accumulation (2 * I * 2^-24 of the sum of |terms|). The logits are scaled
so that each token's k-th and (k+1)-th choices are far apart next to float32 error (asserted).
Skips without a CUDA GPU.
"""

import pytest
import torch

import moekit
import reference as ref
from conftest import SWIGLU_ALPHA, SWIGLU_LIMIT, cuda_kernels_during, randn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

F64 = torch.float64


def make_layer(gen, E, H, I, *, bias_dtype=torch.bfloat16, gate_dtype=torch.bfloat16, big_scales=False):
    def experts(N, K):
        """Random checkpoint bytes (conftest.checkpoint_mxfp4's values, made as uint8: the
        gpt-oss sizes are 400 MB)."""
        blocks = torch.randint(0, 256, (E, N, K // 32, 16), generator=gen, dtype=torch.uint8)
        scales = torch.randint(127 - 7, 127 - 3, (E, N, K // 32), generator=gen, dtype=torch.uint8)
        if big_scales:  # bf16-subnormal paths (0, 1) and two-step multipliers (129, 130)
            pick = torch.rand(scales.shape, generator=gen) < 0.1
            special = torch.tensor([0, 1, 129, 130], dtype=torch.uint8)
            scales[pick] = special[torch.randint(0, len(special), (int(pick.sum()),), generator=gen)]
        return blocks, scales

    def bias(*shape):
        return None if bias_dtype is None else randn(gen, *shape, dtype=bias_dtype, scale=0.1)

    return dict(gate_weight=randn(gen, E, H, dtype=gate_dtype, scale=10 * H ** -0.5), gate_bias=bias(E),
                mlp1_weight=experts(2 * I, H), mlp1_bias=bias(E, 2 * I), mlp2_weight=experts(H, I),
                mlp2_bias=bias(E, H))


def reference(x, L, k):
    """(y float64 [T, H], its bound per element, the smallest routing margin)."""
    x64 = x.to(F64)
    logits = x64 @ L["gate_weight"].to(F64).T
    if L["gate_bias"] is not None:
        logits = logits + L["gate_bias"].to(F64)
    top = logits.sort(dim=1, descending=True).values
    margin = (top[:, k - 1] - top[:, k]).min().item() if k < logits.shape[1] else float("inf")
    r = ref.route(logits, k)

    def expert(name, e):  # float64 weights and bias of one routed expert
        blocks, scales = L[name + "_weight"]
        w = ref.dequantize_mxfp4(blocks[e], scales[e])
        b = L[name + "_bias"]
        return w, (b[e].to(F64) if b is not None else torch.zeros(w.shape[0], dtype=F64))

    T, H = x.shape
    I = L["mlp2_weight"][0].shape[2] * 32
    y = torch.zeros(T, H, dtype=F64)
    moved = torch.zeros(T, H, dtype=F64)  # what activation roundings can move y by
    terms = torch.zeros(T, H, dtype=F64)  # the sum of |terms| mlp2 and the combine add
    for t in range(T):
        for j in range(k):
            e, weight = int(r.expert_idx[t, j]), float(r.expert_weight[t, j])
            (w1, b1), (w2, b2) = expert("mlp1", e), expert("mlp2", e)
            act = ref.swiglu(w1 @ x64[t] + b1, SWIGLU_ALPHA, SWIGLU_LIMIT).to(x.dtype).to(F64)
            y[t] += weight * (w2 @ act + b2)
            moved[t] += weight * (w2.abs() @ (act.abs() * 2.0 ** -7 + 1e-6))
            terms[t] += weight * (w2.abs() @ act.abs() + b2.abs())
    bound = y.abs() * 2.0 ** -8 + moved + terms * (2 * I * 2.0 ** -24 + 1e-6)
    return y, bound, margin


def to_cuda(L):
    return {key: (tuple(t.cuda() for t in v) if isinstance(v, tuple) else v.cuda() if v is not None else None)
            for key, v in L.items()}


def kernels_run(x, dev, k):
    """The names of the CUDA kernels one moe_mlp call runs."""
    return cuda_kernels_during(lambda: moekit.moe_mlp(x, **dev, experts_per_token=k))[1]


def check(x, L, k):
    y, bound, margin = reference(x, L, k)
    assert margin > 1e-3, f"test inputs route ambiguously (margin {margin})"
    dev = to_cuda(L)
    got = moekit.moe_mlp(x.cuda(), **dev, experts_per_token=k)
    again = moekit.moe_mlp(x.cuda(), **dev, experts_per_token=k)
    assert torch.equal(got.view(torch.int16), again.view(torch.int16)), "not deterministic"
    assert got.dtype == x.dtype and got.shape == x.shape
    err = (got.cpu().to(F64) - y).abs()
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"an element is {worst:.2f}x its bound (max |err| {err.max().item():.3g})"


@pytest.mark.parametrize("T", range(1, 9))
@pytest.mark.parametrize("E,k", [(32, 4), (128, 4), (4, 4), (64, 1)])
def test_decode_matches_reference(T, E, k):
    gen = torch.Generator().manual_seed(1000 * T + 10 * E + k)
    H, I = 96, 160
    check(randn(gen, T, H, dtype=torch.bfloat16), make_layer(gen, E, H, I), k)


@pytest.mark.parametrize("T,E,k", [(1, 8, 2), (8, 16, 4), (16, 4, 2)])
def test_decode_token_slot_limit(T, E, k):
    """T * k = 32 is the largest the path takes (T = 16 takes the general path)."""
    gen = torch.Generator().manual_seed(T * 31 + E)
    check(randn(gen, T, 64, dtype=torch.bfloat16), make_layer(gen, E, 64, 96), k)


@pytest.mark.parametrize("bias_dtype", [None, torch.float32], ids=["no-bias", "f32-bias"])
@pytest.mark.parametrize("gate_dtype", [torch.bfloat16, torch.float32], ids=["bf16-gate", "f32-gate"])
def test_decode_dtypes(bias_dtype, gate_dtype):
    gen = torch.Generator().manual_seed(7)
    L = make_layer(gen, 32, 128, 64, bias_dtype=bias_dtype, gate_dtype=gate_dtype)
    check(randn(gen, 3, 128, dtype=torch.bfloat16), L, 4)


def test_decode_scales_past_128_and_subnormal():
    gen = torch.Generator().manual_seed(11)
    L = make_layer(gen, 16, 64, 96, big_scales=True)
    check(randn(gen, 5, 64, dtype=torch.bfloat16), L, 4)


@pytest.mark.parametrize("T", [1, 4, 5, 8])
def test_decode_gpt_oss_shapes(T):
    """H = I = 2880, E = 32, k = 4: the real layer's units, splits and counters, on the decode
    path (a path that silently declined the real shape would leave only the general path tested),
    in both ways of filling the MMA (8-row slabs in halves up to 4 tokens, 16 rows from 5)."""
    gen = torch.Generator().manual_seed(2880 + T)
    x, L = randn(gen, T, 2880, dtype=torch.bfloat16), make_layer(gen, 32, 2880, 2880)
    check(x, L, 4)
    names = kernels_run(x.cuda(), to_cuda(L), 4)
    assert sum("moe_decode" in n for n in names) == 3 and not any("matmul_ogs" in n for n in names), names


def test_decode_path_runs_for_few_tokens_only():
    """The three decode kernels run for T <= 8 and the general path's for T = 9."""
    gen = torch.Generator().manual_seed(3)
    dev = to_cuda(make_layer(gen, 32, 64, 64))
    few = kernels_run(randn(gen, 8, 64, dtype=torch.bfloat16).cuda(), dev, 4)
    assert sum("moe_decode" in n for n in few) == 3 and not any("matmul_ogs" in n for n in few), few
    many = kernels_run(randn(gen, 9, 64, dtype=torch.bfloat16).cuda(), dev, 4)
    assert not any("moe_decode" in n for n in many) and any("matmul_ogs" in n for n in many), many
