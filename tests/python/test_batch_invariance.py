"""Batch invariance (docs/semantics.md, "Batch invariance"): a token's output has the same bits
whether it runs alone or inside a batch of any size, at any place in it.

The CPU backend is invariant always, and the flag changes none of its bits. On CUDA,
``batch_invariant=True`` takes one kernel family at every row count (the swap-AB loop for
repacked MXFP4 on sm_90, the gate's 8-token streaming items) and moe_mlp's general path even
for the few tokens of a decode step: issue 22's acceptance test, 64 tokens alone and inside
batches of 16 to 8192 at gpt-oss's sizes, E = 32 and 128.
"""

import pytest
import torch

import moekit
from conftest import (H, SWIGLU_ALPHA, SWIGLU_LIMIT, MoeLayer, cuda_kernels_during, make_weights, randn,
                      where_differ)


def inside_batches(gen, tokens, batch_sizes, draw):
    """For each batch size T: a fresh batch of T rows from `draw`, with the first min(T, len(tokens))
    of `tokens` at random places. Yields (batch, their places)."""
    for T in batch_sizes:
        batch = draw(T)
        at = torch.randperm(T, generator=gen)[: min(T, tokens.shape[0])]
        batch[at] = tokens[: len(at)]
        yield batch, at


@pytest.mark.parametrize("flag", [False, True])
def test_moe_mlp_on_the_cpu_is_batch_invariant(gen, flag):
    """16 tokens alone and inside batches of 16 to 300 tokens (repacked MXFP4 experts, E = 32,
    k = 4): the same bits, with the flag or without."""
    layer = MoeLayer(gen, 32, "slabs", torch.bfloat16)
    k = 4
    tokens = layer.draw_x(gen, 16, H, dtype=torch.bfloat16, k=k)
    alone = torch.cat([layer.run(tokens[t:t + 1], experts_per_token=k, batch_invariant=flag) for t in range(16)])
    draw = lambda T: layer.draw_x(gen, T, H, dtype=torch.bfloat16, k=k)  # noqa: E731
    for batch, at in inside_batches(gen, tokens, (16, 64, 300), draw):
        y = layer.run(batch, experts_per_token=k, batch_invariant=flag)
        assert torch.equal(y[at], alone[: len(at)]), (batch.shape[0], where_differ(y[at], alone[: len(at)]))


def test_the_flag_changes_no_bit_on_the_cpu(gen):
    """The CPU runs the same kernels with or without batch_invariant: matmul_ogs (gather,
    SwiGLU; scatter-combine) and the layer give the same bits."""
    E, N, K, P = 8, 96, 128, 40
    w = make_weights(gen, "slabs", E, N, K).arg
    x = randn(gen, P, K, dtype=torch.bfloat16)
    offsets = torch.tensor([0, 3, 3, 10, 20, 21, 30, 38, 40], dtype=torch.int32)
    gather = torch.randint(0, P, (P,), generator=gen, dtype=torch.int32)
    for kw in (dict(gather_idx=gather, swiglu=(SWIGLU_ALPHA, SWIGLU_LIMIT)),
               dict(scatter_idx=torch.randperm(P, generator=gen).int().reshape(20, 2),
                    combine_weight=torch.rand(20, 2, generator=gen))):
        runs = [moekit.matmul_ogs(x, w, expert_offsets=offsets, batch_invariant=flag, **kw) for flag in (False, True)]
        assert torch.equal(runs[0], runs[1])
    layer = MoeLayer(gen, E, "mxfp4", torch.bfloat16)
    x = layer.draw_x(gen, 33, H, dtype=torch.bfloat16, k=2)
    assert torch.equal(layer.run(x, experts_per_token=2), layer.run(x, experts_per_token=2, batch_invariant=True))


# ------------------------------------------------------------------------------------- CUDA

GPT_OSS_H = GPT_OSS_I = 2880


def cuda_layer(E: int, dev: torch.device, gen: torch.Generator) -> dict:
    """A gpt-oss-sized MoE layer drawn on the GPU: bf16 gate, MXFP4 experts with their
    repack_mxfp4 output, bf16 biases."""
    def experts(n, k):
        w = moekit.quantize_mxfp4(torch.randn(E, n, k, device=dev, generator=gen, dtype=torch.bfloat16) * k ** -0.5)
        return w + moekit.repack_mxfp4(*w)

    def randn_(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).bfloat16()

    H, I = GPT_OSS_H, GPT_OSS_I
    return dict(gate_weight=randn_(E, H, scale=H ** -0.5), gate_bias=randn_(E), mlp1_weight=experts(2 * I, H),
                mlp1_bias=randn_(E, 2 * I, scale=0.1), mlp2_weight=experts(H, I), mlp2_bias=randn_(E, H, scale=0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("E", [32, 128])
def test_moe_mlp_on_cuda_is_batch_invariant(E):
    """Issue 22's acceptance: 64 tokens, each alone and inside batches of 16, 64, 512, 2048 and
    8192 tokens: with batch_invariant=True the same bits. A token alone runs the swap-AB loop, not
    the decode path's kernels; the invariant layer agrees with the default one within bf16's
    rounding."""
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the swap-AB kernels need sm_90")
    dev = torch.device("cuda", 0)
    gen = torch.Generator(device=dev).manual_seed(22 + E)
    layer = cuda_layer(E, dev, gen)
    run = lambda x, **kw: moekit.moe_mlp(x, **layer, experts_per_token=4, **kw)  # noqa: E731
    draw = lambda T: torch.randn(T, GPT_OSS_H, device=dev, generator=gen).bfloat16()  # noqa: E731
    tokens = draw(64)
    y1, ran = cuda_kernels_during(lambda: run(tokens[:1], batch_invariant=True))
    assert any("swapab" in name for name in ran), ran
    assert not any("moe_decode" in name for name in ran), ran
    alone = torch.cat([y1] + [run(tokens[t:t + 1], batch_invariant=True) for t in range(1, 64)])
    assert torch.isfinite(alone).all()
    for batch, at in inside_batches(torch.Generator().manual_seed(E), tokens, (16, 64, 512, 2048, 8192), draw):
        y = run(batch, batch_invariant=True)
        assert torch.equal(y[at.to(dev)], alone[: len(at)]), (batch.shape[0],
                                                               where_differ(y[at.to(dev)], alone[: len(at)]))
        if batch.shape[0] == 512:
            want = run(batch).float()
            assert float((y.float() - want).norm() / want.norm()) < 5e-3
