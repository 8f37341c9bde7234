"""repack_mxfp4: the checkpoint layout into the Hopper main loop's slabs (src/core/mxfp4_slabs.h),
against the layout as docs/semantics.md states it, written here from the thread's side (which
bytes each wgmma A-fragment register takes), every byte compared; the same bytes on CUDA."""

import pytest
import torch

import moekit
from conftest import checkpoint_mxfp4


def logical_codes(blocks: torch.Tensor) -> torch.Tensor:
    """[E, N, K/32, 16] bytes -> [E, N, K] codes (low nibble: the even element)."""
    lo, hi = blocks & 0xF, blocks >> 4
    return torch.stack([lo, hi], dim=-1).reshape(*blocks.shape[:2], blocks.shape[2] * 32)


def bit_place(i: int, h: int, b: int) -> int:
    """Where bit b (0: mantissa, 1-2: exponent, 3: sign) of the word's code i + 4h lies: pair i
    (codes i and i + 4) decodes into one bf16x2 register, each code's bits 0..2 at bf16 bits 6..8
    and its sign at 15 of its half. Pair 0 lies there; pairs 1 and 2 there rotated right by 10 and
    13 bits; pair 3 at bits 4, 0, 1, 3 of each half (one multiply moves them there)."""
    bf16 = (15 if b == 3 else 6 + b) + 16 * h
    return [bf16, (bf16 - 10) % 32, (bf16 - 13) % 32, [4, 0, 1, 3][b] + 16 * h][i]


def expected(blocks: torch.Tensor, scales: torch.Tensor):
    """The slab layout from the thread's side: thread (warp w, lane 4g + t) of a slab step owns 4
    words (little-endian), word q of them row 16w + g + 8(q % 2) and 32-block q / 2; its code
    i + 4h is the code at k = 32(q / 2) + 16(i / 2) + 8(i % 2) + 2t + h, its bits where bit_place
    says. Scales: byte 2r + b, row r's block b."""
    E, N, K = blocks.shape[0], blocks.shape[1], blocks.shape[2] * 32
    slabs, steps = -(-N // 64), -(-K // 64)
    codes = torch.zeros(E, slabs * 64, steps * 64, dtype=torch.int64)
    codes[:, :N, :K] = logical_codes(blocks).long()
    words = torch.zeros(E, slabs, steps, 512, dtype=torch.int64)
    for w in range(4):
        for g in range(8):
            for t in range(4):
                for q in range(4):
                    for i in range(4):
                        for h in range(2):
                            row = 16 * w + g + 8 * (q % 2)
                            k = 32 * (q // 2) + 16 * (i // 2) + 8 * (i % 2) + 2 * t + h
                            word = 128 * w + 4 * (4 * g + t) + q
                            values = codes[:, row::64, k::64][:, :slabs, :steps]
                            for b in range(4):
                                words[..., word] |= ((values >> b) & 1) << bit_place(i, h, b)
    out = torch.stack([(words >> (8 * j)) & 0xFF for j in range(4)], dim=-1).reshape(E, slabs, steps, 2048)
    padded = torch.full((E, slabs * 64, steps * 2), 127, dtype=torch.uint8)
    padded[:, :N, :K // 32] = scales
    slab_scales = padded.reshape(E, slabs, 64, steps, 2).permute(0, 1, 3, 2, 4).reshape(E, slabs, steps, 128)
    return out.to(torch.uint8), slab_scales


@pytest.mark.parametrize("E,N,K", [(2, 128, 128), (3, 100, 96), (1, 64, 2880), (2, 5, 32), (0, 64, 64),
                                   (2, 0, 64)])
def test_the_layout_byte_for_byte(gen, E, N, K):
    blocks, scales = checkpoint_mxfp4(gen, E, N, K) if E * N else (
        torch.zeros(E, N, K // 32, 16, dtype=torch.uint8), torch.zeros(E, N, K // 32, dtype=torch.uint8))
    codes, slab_scales = moekit.repack_mxfp4(blocks, scales)
    want_codes, want_scales = expected(blocks, scales)
    assert codes.shape == (E, -(-N // 64), -(-K // 64), 2048) and slab_scales.shape == (*codes.shape[:3], 128)
    assert torch.equal(codes, want_codes)
    assert torch.equal(slab_scales, want_scales)


def test_padding_is_zero_codes_and_a_finite_scale(gen):
    """Rows past N and k past K read as 0 (code 0, scale 2^0), never NaN (scale byte 255)."""
    blocks, scales = checkpoint_mxfp4(gen, 1, 70, 96)
    scales.fill_(255)
    codes, slab_scales = moekit.repack_mxfp4(blocks, scales)
    want_codes, want_scales = expected(blocks, scales)
    assert torch.equal(codes, want_codes) and torch.equal(slab_scales, want_scales)
    assert (slab_scales == 127).sum() == (2 * 64 * 2 * 2) - 70 * 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("E,N,K", [(32, 5760, 2880), (3, 100, 96), (2, 0, 64)])
def test_cuda_gives_the_same_bytes(gen, E, N, K):
    blocks, scales = checkpoint_mxfp4(gen, E, N, K) if N else (
        torch.zeros(E, N, K // 32, 16, dtype=torch.uint8), torch.zeros(E, N, K // 32, dtype=torch.uint8))
    want = moekit.repack_mxfp4(blocks, scales)
    got = moekit.repack_mxfp4(blocks.cuda(), scales.cuda())
    assert got[0].device.type == "cuda"
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
