"""moekit.route against the float64 reference: top-k, ties, softmax weights and the grouping."""

import itertools

import pytest
import torch

import moekit
import reference as ref
from conftest import randn

TS = [0, 1, 7, 64]
EK = [(E, k) for E, k in itertools.product([1, 4, 32], [1, 2, 4]) if k <= E]
DTYPES = [torch.float32, torch.bfloat16]

# float32 softmax over k <= 4 chosen logits: rounding l_j - l_0 (|.| < 8 for the N(0, 2^2)
# logits below) costs at most 2^-22 absolute, i.e. 2.4e-7 relative after exp; exp, the sum and
# the division add a few ulp (6e-8 each). 1e-6 bounds the relative error against float64.
WEIGHT_RTOL = 1e-6


def check_against_reference(logits: torch.Tensor, k: int) -> None:
    T, E = logits.shape
    got = moekit.route(logits, k)
    want = ref.route(logits, k)
    assert isinstance(got, moekit.Routing)

    assert got.expert_idx.dtype == torch.int32 and got.expert_idx.shape == (T, k)
    assert got.expert_weight.dtype == torch.float32 and got.expert_weight.shape == (T, k)
    assert got.expert_counts.dtype == torch.int32 and got.expert_counts.shape == (E,)
    assert got.expert_offsets.dtype == torch.int32 and got.expert_offsets.shape == (E + 1,)
    assert got.gather_idx.dtype == torch.int32 and got.gather_idx.shape == (T * k,)
    assert got.scatter_idx.dtype == torch.int32 and got.scatter_idx.shape == (T, k)

    assert torch.equal(got.expert_idx.long(), want.expert_idx)
    assert torch.equal(got.expert_counts.long(), want.expert_counts)
    assert torch.equal(got.expert_offsets.long(), want.expert_offsets)
    assert torch.equal(got.gather_idx.long(), want.gather_idx)
    assert torch.equal(got.scatter_idx.long(), want.scatter_idx)

    w, w_ref = got.expert_weight.double(), want.expert_weight
    nan = torch.isnan(w_ref)
    assert torch.equal(torch.isnan(w), nan)
    rel = ((w - w_ref).abs() / w_ref.abs().clamp_min(1e-30))[~nan]
    assert rel.numel() == 0 or rel.max().item() <= WEIGHT_RTOL, rel.max().item()

    # the grouping is a permutation: each (token, slot) has exactly one row and comes back
    if T:
        rows = got.scatter_idx.long().reshape(-1)
        assert torch.equal(torch.sort(rows).values, torch.arange(T * k))
        assert torch.equal(got.gather_idx.long()[rows], torch.arange(T).repeat_interleave(k))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E,k", EK)
@pytest.mark.parametrize("T", TS)
def test_route_random_logits(gen, T, E, k, dtype):
    logits = randn(gen, T, E, dtype=dtype, scale=2.0)
    check_against_reference(logits, k)
    if T:
        w = moekit.route(logits, k).expert_weight
        torch.testing.assert_close(w.sum(dim=1), torch.ones(T), rtol=0, atol=4e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E,k", EK)
@pytest.mark.parametrize("T", [1, 7, 64])
def test_route_ties_go_to_the_lower_expert(gen, T, E, k, dtype):
    # logits drawn from 3 values: most rows have ties at the top-k boundary and inside it
    levels = randn(gen, 3, dtype=dtype)
    logits = levels[torch.randint(0, 3, (T, E), generator=gen)].contiguous()
    check_against_reference(logits, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E,k", [(4, 2), (32, 4), (4, 4)])
def test_route_all_equal_rows(gen, E, k, dtype):
    T = 5
    logits = randn(gen, T, 1, dtype=dtype).expand(T, E).contiguous()
    got = moekit.route(logits, k)
    assert torch.equal(got.expert_idx.long(), torch.arange(k).expand(T, k))
    torch.testing.assert_close(got.expert_weight, torch.full((T, k), 1.0 / k), rtol=0, atol=1e-7)
    check_against_reference(logits, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_route_non_finite_logits(gen, dtype):
    # NaN ranks above every number, +-Inf are ordinary extremes; softmax as in float64
    T, E, k = 8, 6, 2
    logits = randn(gen, T, E, dtype=dtype)
    logits[0, 3] = float("nan")                 # chosen first, weights NaN
    logits[1, 2] = logits[1, 4] = float("nan")  # two NaN: both chosen, lower index first
    logits[2, 5] = float("inf")                 # chosen first, weights NaN (inf - inf)
    logits[3, 1] = float("-inf")                # never chosen, finite weights
    logits[4, :] = float("-inf")
    logits[4, 5] = 0.5                          # one finite: weights [1, 0]
    check_against_reference(logits, k)
    got = moekit.route(logits, k)
    assert got.expert_idx[0, 0] == 3 and got.expert_idx[1].tolist() == [2, 4]
    assert torch.isnan(got.expert_weight[:3]).all()
    assert torch.isfinite(got.expert_weight[3:]).all()
    assert got.expert_weight[4].tolist() == [1.0, 0.0]


def test_route_counts_for_empty_batch():
    for E, k in EK:
        r = moekit.route(torch.empty(0, E).normal_(), k)
        assert torch.equal(r.expert_counts, torch.zeros(E, dtype=torch.int32))
        assert torch.equal(r.expert_offsets, torch.zeros(E + 1, dtype=torch.int32))
        assert r.gather_idx.shape == (0,) and r.scatter_idx.shape == (0, k)
