"""float64 pure-torch references for moekit's ops, written to read as the spec.

Sources: docs/semantics.md (semantics), docs/design.md (the choices it leaves open) and
docs/mxfp4.md (the MXFP4 format and scale rule). Nothing here imports moekit: these functions
are the oracle the tests compare moekit against. They favour plain loops over speed.
"""

import math
from typing import NamedTuple, Optional, Tuple

import torch

F64 = torch.float64

# e2m1 code -> value. Bit 3 is the sign, bits 2..1 the exponent, bit 0 the mantissa; code 8 is -0.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_TABLE = torch.tensor(list(E2M1_VALUES) + [-v for v in E2M1_VALUES], dtype=F64)
E2M1_TABLE[8] = -0.0
BLOCK = 32           # values per scale
NAN_SCALE = 255      # e8m0 byte meaning NaN


# ------------------------------------------------------------------------------------- MXFP4

def e8m0_to_float(scales: torch.Tensor) -> torch.Tensor:
    """e8m0 scale bytes -> 2^(s-127) in float64; s = 255 -> NaN."""
    s = scales.to(torch.int64)
    value = torch.pow(torch.tensor(2.0, dtype=F64), (s - 127).to(F64))
    return torch.where(s == NAN_SCALE, torch.tensor(math.nan, dtype=F64), value)


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Checkpoint layout (blocks u8 [..., K/32, 16], scales u8 [..., K/32]) -> float64 [..., K].

    Byte i of a block holds element 2i in its low nibble and element 2i+1 in its high nibble.
    """
    assert blocks.dtype == torch.uint8 and scales.dtype == torch.uint8
    assert blocks.shape[-1] == 16 and blocks.shape[:-1] == scales.shape
    b = blocks.to(torch.int64)
    low, high = b & 0xF, b >> 4
    codes = torch.stack([low, high], dim=-1).reshape(*blocks.shape[:-1], BLOCK)   # [..., K/32, 32]
    values = E2M1_TABLE[codes] * e8m0_to_float(scales).unsqueeze(-1)
    return values.reshape(*blocks.shape[:-2], blocks.shape[-2] * BLOCK)


def _nearest_e2m1(magnitude: float) -> int:
    """Code (0..7) of the e2m1 value nearest to `magnitude` >= 0; ties go to the even code."""
    best = None
    for code, value in enumerate(E2M1_VALUES):
        d = abs(magnitude - value)
        if best is None or d < best[0] or (d == best[0] and code % 2 == 0):
            best = (d, code)
    return best[1]


def _block_scale(amax: float) -> int:
    """Smallest power of two 2^e with amax <= 6 * 2^e, as the byte e + 127 clamped to [0, 254]."""
    if amax == 0.0:
        return 0
    e = math.ceil(math.log2(amax / 6.0))   # amax / 6 is exact when amax = 6 * 2^e (float32 inputs)
    while 6.0 * 2.0 ** e < amax:           # guard the log against rounding, both ways
        e += 1
    while 6.0 * 2.0 ** (e - 1) >= amax:
        e -= 1
    return min(max(e + 127, 0), 254)


def quantize_mxfp4(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """float tensor [..., K] -> (blocks u8 [..., K/32, 16], scales u8 [..., K/32]), per docs/mxfp4.md.

    A block holding NaN or +-Inf gets scale 255 (its codes are left 0: they do not matter).
    """
    K = w.shape[-1]
    assert K % BLOCK == 0
    lead = w.shape[:-1]
    flat = w.to(F64).reshape(-1, BLOCK)
    codes = torch.zeros(flat.shape, dtype=torch.int64)
    scales = torch.zeros(flat.shape[0], dtype=torch.int64)
    for b in range(flat.shape[0]):
        block = flat[b].tolist()
        if not all(math.isfinite(v) for v in block):
            scales[b] = NAN_SCALE
            continue
        s = _block_scale(max(abs(v) for v in block))
        scales[b] = s
        for i, v in enumerate(block):
            scaled = v / 2.0 ** (s - 127)          # exact: a power of two, float64 range
            sign = 8 if math.copysign(1.0, v) < 0 else 0
            codes[b, i] = sign | _nearest_e2m1(abs(scaled))
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return (packed.to(torch.uint8).reshape(*lead, K // BLOCK, 16),
            scales.to(torch.uint8).reshape(*lead, K // BLOCK))


# ------------------------------------------------------------------------------------- route

class Routing(NamedTuple):
    expert_idx: torch.Tensor      # int64 [T, k]
    expert_weight: torch.Tensor   # float64 [T, k]
    expert_counts: torch.Tensor   # int64 [E]
    expert_offsets: torch.Tensor  # int64 [E+1]
    gather_idx: torch.Tensor      # int64 [T*k]
    scatter_idx: torch.Tensor     # int64 [T, k]


def _rank_key(value: float, expert: int):
    """Sort key: NaN first (as torch.topk), then larger values, equal values by lower expert."""
    if math.isnan(value):
        return (0, 0.0, expert)
    return (1, -value, expert)


def route(logits: torch.Tensor, k: int) -> Routing:
    """Top-k of each row by a full stable sort, softmax over the chosen k, then grouping."""
    T, E = logits.shape
    rows = logits.to(F64).tolist()
    expert_idx = torch.zeros((T, k), dtype=torch.int64)
    expert_weight = torch.zeros((T, k), dtype=F64)
    for t in range(T):
        order = sorted(range(E), key=lambda e: _rank_key(rows[t][e], e))
        chosen = order[:k]
        expert_idx[t] = torch.tensor(chosen)
        expert_weight[t] = torch.softmax(torch.tensor([rows[t][e] for e in chosen], dtype=F64), dim=0)

    counts = torch.zeros(E, dtype=torch.int64)
    for t in range(T):
        for j in range(k):
            counts[expert_idx[t, j]] += 1
    offsets = torch.zeros(E + 1, dtype=torch.int64)
    for e in range(E):
        offsets[e + 1] = offsets[e] + counts[e]

    gather_idx = torch.zeros(T * k, dtype=torch.int64)
    scatter_idx = torch.zeros((T, k), dtype=torch.int64)
    next_row = offsets[:E].clone()
    for t in range(T):            # token order within each expert
        for j in range(k):
            e = int(expert_idx[t, j])
            row = int(next_row[e])
            next_row[e] += 1
            gather_idx[row] = t
            scatter_idx[t, j] = row
    return Routing(expert_idx, expert_weight, counts, offsets, gather_idx, scatter_idx)


# -------------------------------------------------------------------------------- matmul_ogs

def swiglu(h: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """gpt-oss SwiGLU over interleaved (glu, linear) column pairs: [..., N] -> [..., N/2]."""
    g = torch.clamp(h[..., 0::2], max=limit)
    l = torch.clamp(h[..., 1::2], min=-limit, max=limit)
    return g * torch.sigmoid(alpha * g) * (l + 1)


def matmul_ogs(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
               expert_offsets: Optional[torch.Tensor] = None,
               gather_idx: Optional[torch.Tensor] = None,
               scatter_idx: Optional[torch.Tensor] = None,
               combine_weight: Optional[torch.Tensor] = None,
               swiglu_args: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """float64 grouped matmul. `w` is float [E, N, K] (already dequantized); see moekit.matmul_ogs.

    Returns float64; the caller rounds to the output dtype.
    """
    x = x.to(F64)
    w = w.to(F64)
    E, N, _ = w.shape
    rows = x[gather_idx.long()] if gather_idx is not None else x
    P = rows.shape[0]
    offsets = expert_offsets.long().tolist() if expert_offsets is not None else [0, P]
    assert len(offsets) == E + 1
    h = torch.empty((P, N), dtype=F64)
    for e in range(E):
        lo, hi = offsets[e], offsets[e + 1]
        h[lo:hi] = rows[lo:hi] @ w[e].T
        if bias is not None:
            h[lo:hi] += bias[e].to(F64)
    if swiglu_args is not None:
        h = swiglu(h, *swiglu_args)
    if scatter_idx is None:
        return h
    T, k = scatter_idx.shape
    out = torch.zeros((T, h.shape[1]), dtype=F64)
    for t in range(T):
        for j in range(k):
            weight = combine_weight[t, j].to(F64) if combine_weight is not None else 1.0
            out[t] += weight * h[int(scatter_idx[t, j])]
    return out


# ----------------------------------------------------------------------------------- moe_mlp

def moe_mlp(x: torch.Tensor, gate_weight: torch.Tensor, gate_bias: Optional[torch.Tensor],
            mlp1_weight: torch.Tensor, mlp1_bias: Optional[torch.Tensor],
            mlp2_weight: torch.Tensor, mlp2_bias: Optional[torch.Tensor], *,
            experts_per_token: int, swiglu_alpha: float = 1.702, swiglu_limit: float = 7.0,
            act_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The gpt-oss MoE layer in float64 on x [T, H]; weights float (already dequantized).

    `act_dtype`: moekit stores mlp1's SwiGLU output in x's dtype; pass x.dtype to round the
    reference's intermediate activation the same way. Returns float64 [T, H].
    """
    x64 = x.to(F64)
    logits = x64 @ gate_weight.to(F64).T
    if gate_bias is not None:
        logits = logits + gate_bias.to(F64)
    r = route(logits, experts_per_token)
    act = matmul_ogs(x64, mlp1_weight, mlp1_bias, expert_offsets=r.expert_offsets, gather_idx=r.gather_idx,
                     swiglu_args=(swiglu_alpha, swiglu_limit))
    if act_dtype is not None:
        act = act.to(act_dtype).to(F64)
    return matmul_ogs(act, mlp2_weight, mlp2_bias, expert_offsets=r.expert_offsets,
                      scatter_idx=r.scatter_idx, combine_weight=r.expert_weight)


# ----------------------------------------------------------------------------------- compare

def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor,
                 eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(residual + x, its RMSNorm times scale): the sum rounded to x's dtype (what the stream
    holds), the norm computed from that rounded sum in float64."""
    total = (residual.double() + x.double()).to(x.dtype)
    t = total.double()
    return total, t / torch.sqrt(t.pow(2).mean(dim=-1, keepdim=True) + eps) * scale.double()


def attention_decode(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor,
                     p0: int, inv_freq: torch.Tensor, rope_scale: float, sm_scale: float,
                     window: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gpt-oss attention of T tokens at positions p0.. against a cache: (out float64 [T, Hq D],
    the caches after the write, in their dtype). The angle is float32(p) * inv_freq in float32
    (as the op states); cos, sin, the rotation, scores, softmax and values in float64; the rotated
    keys and the values go into the cache rounded to its dtype."""
    T = qkv.shape[0]
    L, Hkv, D = k_cache.shape
    Hq, half = sinks.shape[0], D // 2
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    rows = qkv.double().reshape(T, Hq + 2 * Hkv, D)
    positions = torch.arange(p0, p0 + T)
    angle = (positions.to(torch.float32)[:, None] * inv_freq[None, :]).double()   # [T, D/2]
    cos, sin = (angle.cos() * rope_scale)[:, None, :], (angle.sin() * rope_scale)[:, None, :]
    x1, x2 = rows[:, :Hq + Hkv, :half], rows[:, :Hq + Hkv, half:]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    q = rotated[:, :Hq]
    k_cache[p0:p0 + T] = rotated[:, Hq:].to(k_cache.dtype)
    v_cache[p0:p0 + T] = rows[:, Hq + Hkv:].to(v_cache.dtype)
    keys, values = k_cache.double(), v_cache.double()
    out = torch.empty(T, Hq, D, dtype=F64)
    for t in range(T):
        p = p0 + t
        lo = max(0, p - window + 1) if window > 0 else 0
        for h in range(Hq):
            g = h // (Hq // Hkv)
            scores = keys[lo:p + 1, g] @ q[t, h] * sm_scale
            weights = torch.softmax(torch.cat([scores, sinks[h:h + 1].double()]), dim=0)[:-1]
            out[t, h] = weights @ values[lo:p + 1, g]
    return out.reshape(T, Hq * D), k_cache, v_cache


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative Frobenius error ||got - want|| / ||want|| over every element (float64)."""
    got, want = got.to(F64), want.to(F64)
    denom = torch.linalg.vector_norm(want).item()
    num = torch.linalg.vector_norm(got - want).item()
    if denom == 0.0:
        return num
    return num / denom


def greedy_token(logits: torch.Tensor) -> int:
    """The index of the largest logit, the first of equal ones; a NaN counts as the largest (the
    first NaN)."""
    nan = torch.isnan(logits)
    if bool(nan.any()):
        return int(nan.nonzero()[0])
    return int((logits == logits.max()).nonzero()[0])
