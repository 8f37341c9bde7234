"""Shared fixtures: a fresh, per-test seeded generator and weight factories.

Every test draws fresh random normal inputs from `gen` (seeded from the test's node id, so a
failure reproduces, and no two tests share data). MXFP4 weights come in two flavours:
`quantized`, made by moekit.quantize_mxfp4 from random normal weights, and `checkpoint`, random
bytes written directly in the gpt-oss checkpoint layout (not touched by moekit's quantizer).
"""

import zlib
from typing import NamedTuple, Optional, Tuple, Union

import pytest
import torch

import moekit
import reference as ref

SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0

# Tolerances on the relative Frobenius error against the float64 reference, by output dtype.
# bf16: the output is rounded to bf16 (relative 2^-9 per element) and so is moe_mlp's intermediate
# activation (the reference rounds it too, but its float64 h can land on the other side of a bf16
# rounding boundary than moekit's float32 h), so ~4e-3 is the expected size; 1e-2 leaves 2.5x.
# float32: fp32 accumulation over K <= 160 terms, relative ~1e-6.
TOLERANCE = {torch.bfloat16: 1e-2, torch.float32: 1e-5}

# MoE layer sizes: multiples of 32, not of 64.
H, I = 96, 160


def cuda_kernels_during(fn) -> tuple:
    """fn()'s result and the names of the CUDA kernels it ran (the profiler sees them)."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        result = fn()
        torch.cuda.synchronize()
    return result, [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.fixture
def gen(request) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    return g


def randn(gen: torch.Generator, *shape: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Fresh standard normal values (never all zero), times `scale`, rounded to `dtype`."""
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


class Weights(NamedTuple):
    """Expert weights as handed to moekit (`arg`) and the exact float64 values they stand for."""

    arg: Union[torch.Tensor, Tuple[torch.Tensor, ...]]
    dense: torch.Tensor  # float64 [E, N, K]


def checkpoint_mxfp4(gen: torch.Generator, E: int, N: int, K: int, scale_exp: int = -5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random MXFP4 bytes in the checkpoint layout: blocks [E, N, K/32, 16], scales [E, N, K/32].

    Codes are uniform over all 16 (incl. -0); scales are 2^(scale_exp + {-2..1}), so values stay
    in the range a normal-weight layer has.
    """
    blocks = torch.randint(0, 256, (E, N, K // 32, 16), generator=gen, dtype=torch.int64).to(torch.uint8)
    scales = (127 + scale_exp + torch.randint(-2, 2, (E, N, K // 32), generator=gen)).to(torch.uint8)
    return blocks, scales


def make_weights(gen: torch.Generator, kind: str, E: int, N: int, K: int) -> Weights:
    """Expert weights [E, N, K] of `kind`: 'float32', 'bfloat16', 'mxfp4' (quantize_mxfp4 of
    random normals), 'slabs' (those with their repack_mxfp4 output: the swap-AB kernels'
    operand) or 'checkpoint' (random checkpoint-layout bytes). Scaled by 1/sqrt(K) so
    activations stay O(1) and SwiGLU works in its interesting range."""
    scale = K ** -0.5
    if kind in ("float32", "bfloat16"):
        w = randn(gen, E, N, K, dtype=getattr(torch, kind), scale=scale)
        return Weights(w, w.to(torch.float64))
    if kind == "slabs":
        mx = make_weights(gen, "mxfp4", E, N, K)
        return Weights(mx.arg + moekit.repack_mxfp4(*mx.arg), mx.dense)
    if kind == "mxfp4":
        blocks, scales = moekit.quantize_mxfp4(randn(gen, E, N, K, scale=scale))
    elif kind == "checkpoint":
        blocks, scales = checkpoint_mxfp4(gen, E, N, K)
    else:
        raise AssertionError(kind)
    assert blocks.shape == (E, N, K // 32, 16) and scales.shape == (E, N, K // 32)
    return Weights((blocks, scales), ref.dequantize_mxfp4(blocks, scales))


def make_bias(gen: torch.Generator, *shape: int, present: bool = True, dtype=torch.float32) -> Optional[torch.Tensor]:
    return randn(gen, *shape, dtype=dtype, scale=0.5) if present else None


def where_set(mask: torch.Tensor) -> str:
    """Where a boolean mask holds: how many elements, and per dimension how many of its indices hold
    one, the first few listed, so a failure's message shows its pattern (whole rows, a column every
    64, one tile) without a rerun."""
    mask = mask.detach().cpu()
    hit = torch.nonzero(mask)
    parts = [f"{len(hit)} of {mask.numel()} elements"]
    for d in range(mask.dim()):
        at = torch.unique(hit[:, d])
        parts.append(f"dim {d}: {len(at)} of {mask.shape[d]} indices {at[:8].tolist()}")
    return "; ".join(parts)


def where_differ(a: torch.Tensor, b: torch.Tensor) -> str:
    """where_set of the elements two same-shaped tensors differ in (NaN equal to NaN)."""
    a, b = a.detach().cpu(), b.detach().cpu()
    mask = a != b
    if a.is_floating_point():
        mask &= ~(a.isnan() & b.isnan())
    return "differ: " + where_set(mask)


def assert_close_rel(got: torch.Tensor, want64: torch.Tensor, dtype: torch.dtype) -> None:
    """Every element finite (the inputs are) and the relative Frobenius error within TOLERANCE."""
    assert got.dtype == dtype
    assert got.shape == want64.shape, (got.shape, want64.shape)
    assert torch.isfinite(want64).all(), "reference not finite: the test's inputs are wrong"
    assert torch.isfinite(got).all(), f"non-finite outputs at {torch.nonzero(~torch.isfinite(got))[:8].tolist()}"
    if got.numel() == 0:
        return
    err = ref.rel_err(got, want64)
    assert err < TOLERANCE[dtype], f"relative error {err:.3g} >= {TOLERANCE[dtype]} for {dtype}"


# moekit's gate logits are float32, the reference's float64: they agree to ~1e-6 (relative to
# logits of size ~1), so a token whose k-th and (k+1)-th logits are closer than that may be
# routed to a different expert, which no tolerance covers. Test inputs are drawn away from such
# ties (see MoeLayer.draw_x); this margin is 100x the float32 error, and rejects ~1% of tokens.
ROUTING_MARGIN = 1e-4


class MoeLayer:
    """Random gpt-oss MoE layer weights: moekit arguments and their float64 values."""

    def __init__(self, gen, E, w_kind, x_dtype, *, w2_kind=None, gate_bias=True, mlp1_bias=True,
                 mlp2_bias=True):
        self.E = E
        self.gate_weight = randn(gen, E, H, dtype=x_dtype, scale=H ** -0.5)
        self.gate_bias = make_bias(gen, E, present=gate_bias, dtype=x_dtype)
        self.w1 = make_weights(gen, w_kind, E, 2 * I, H)
        self.b1 = make_bias(gen, E, 2 * I, present=mlp1_bias, dtype=x_dtype)
        self.w2 = make_weights(gen, w2_kind or w_kind, E, H, I)
        self.b2 = make_bias(gen, E, H, present=mlp2_bias, dtype=x_dtype)

    def run(self, x, **kwargs):
        return moekit.moe_mlp(x, self.gate_weight, self.gate_bias, self.w1.arg, self.b1, self.w2.arg, self.b2,
                              **kwargs)

    def logits64(self, x):
        logits = x.double() @ self.gate_weight.double().T
        return logits + self.gate_bias.double() if self.gate_bias is not None else logits

    def draw_x(self, gen, *shape, dtype, k):
        """Fresh random normal x [*shape[:-1], H] whose tokens all route unambiguously:
        rows whose k-th and (k+1)-th float64 logits are within ROUTING_MARGIN are redrawn."""
        x = randn(gen, *shape, dtype=dtype).reshape(-1, H)
        while k < self.E and x.shape[0]:
            top = torch.sort(self.logits64(x), dim=1, descending=True).values
            tied = (top[:, k - 1] - top[:, k]) < ROUTING_MARGIN
            if not tied.any():
                break
            x[tied] = randn(gen, int(tied.sum()), H, dtype=dtype)
        return x.reshape(shape)

    def reference(self, x, k, alpha=SWIGLU_ALPHA, limit=SWIGLU_LIMIT):
        x2 = x.reshape(-1, H)
        y = ref.moe_mlp(x2, self.gate_weight, self.gate_bias, self.w1.dense, self.b1, self.w2.dense, self.b2,
                        experts_per_token=k, swiglu_alpha=alpha, swiglu_limit=limit, act_dtype=x.dtype)
        return y.reshape(x.shape)


@pytest.fixture(scope="session")
def published_repo(tmp_path_factory):
    """A tiny random gpt-oss repository laid out as the published one (gpt_oss_fixtures.py):
    (its root, its config)."""
    from gpt_oss_fixtures import make_published_repository

    root = tmp_path_factory.mktemp("gpt-oss-tiny")
    config, _ = make_published_repository(root, seed=5)
    return root, config


@pytest.fixture(scope="session")
def transformers_dequantized(published_repo):
    """transformers' own GptOssForCausalLM of that repository: its CPU path dequantizes the MXFP4
    experts; everything in float32 (the dequantized values are exact in any float dtype)."""
    from transformers import GptOssForCausalLM

    return GptOssForCausalLM.from_pretrained(published_repo[0], dtype=torch.float32).float().eval()
