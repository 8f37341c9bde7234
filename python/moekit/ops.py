"""moekit's Python entry points: thin wrappers over torch.ops.moekit.

Each op runs on the device its tensors live on (never the current device) and validates its
arguments in C++; errors name the op, the argument, what was expected and what came. A wrapper
checks its scalars before the call (torch's schema would take True for an int, None for a bool);
its tensors are the op's to refuse, and only once the op refused a call does the wrapper look
for an argument that is not a dense tensor, to name it in moekit's words rather than torch's
schema error: the checks cost no host time on a call that runs (an eager decode step makes
several a layer).
"""

import math
from typing import NamedTuple, Optional, Tuple, Union

import torch

from moekit import _autograd, _eager

# A float tensor, an MXFP4 (blocks, scales) pair, or (blocks, scales, codes, slab_scales).
Weights = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


class Routing(NamedTuple):
    """Result of :func:`route` for T tokens, E experts and k experts per token (P = T*k)."""

    expert_idx: torch.Tensor      # int32 [T, k], best first, ties to the lower expert index
    expert_weight: torch.Tensor   # float32 [T, k], softmax over the k chosen logits
    expert_counts: torch.Tensor   # int32 [E], token-slots per expert
    expert_offsets: torch.Tensor  # int32 [E+1], exclusive prefix sum of the counts
    gather_idx: torch.Tensor      # int32 [P], token of each expert-grouped row
    scatter_idx: torch.Tensor     # int32 [T, k], expert-grouped row of each (token, slot)


_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _tensor_error(op: str, arg: str, value, optional: bool) -> Optional[TypeError]:
    if value is None and optional:
        return None
    if not isinstance(value, torch.Tensor):
        what = "a torch.Tensor or None" if optional else "a torch.Tensor"
        return TypeError(f"moekit.{op}: '{arg}' expected {what}, got {type(value).__name__}")
    if value.layout != torch.strided:
        return TypeError(f"moekit.{op}: '{arg}' expected a dense (strided) tensor, got layout {value.layout}")
    return None


_WEIGHT_PARTS = ("blocks", "scales", "codes", "slab_scales")


def _name_bad_tensor(op: str, tensors=(), weights=(), optional=()) -> None:
    """Where the op refused a call: raises a TypeError naming the first argument that is not a
    dense tensor, in place of the op's error (tensors: required (name, value) pairs; weights:
    (name, Weights) pairs, each part named; optional: None allowed); else returns, for the caller
    to re-raise the op's own error."""
    named = [(arg, value, False) for arg, value in tensors]
    for arg, w in weights:
        if isinstance(w, (tuple, list)):
            named += [(f"{arg}[{i}] ({_WEIGHT_PARTS[i]})", t, False) for i, t in enumerate(w)]
        else:
            named.append((arg, w, False))
    named += [(arg, value, True) for arg, value in optional]
    for arg, value, may_be_none in named:
        error = _tensor_error(op, arg, value, may_be_none)
        if error is not None:
            raise error from None


def _require_int(op: str, arg: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"moekit.{op}: '{arg}' expected an int, got {type(value).__name__} {_short(value)}")
    if not _INT64[0] <= value <= _INT64[1]:
        raise ValueError(f"moekit.{op}: '{arg}' expected an int in int64's range, got {_short(value)}")


def _require_bool(op: str, arg: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"moekit.{op}: '{arg}' expected a bool, got {type(value).__name__} {_short(value)}")


def _require_float(op: str, arg: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"moekit.{op}: '{arg}' expected a float, got {type(value).__name__} {_short(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"moekit.{op}: '{arg}' expected a float, got an int too large for one: "
                         f"{_short(value)}") from None


def _normalize_axis(op: str, axis: int, ndim: int) -> int:
    _require_int(op, "axis", axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"moekit.{op}: 'axis' expected an int in [{-ndim}, {ndim}), got {axis!r}")
    return axis % ndim


def _split_weights(op: str, arg: str, w: Weights) -> Tuple[Optional[torch.Tensor], ...]:
    """A float tensor, an MXFP4 (blocks, scales) pair in the checkpoint layout, or (blocks, scales,
    codes, slab_scales), the last two :func:`repack_mxfp4`'s -> (values, scales, codes, slab_scales),
    None where absent (the parts are the op's to check)."""
    if not isinstance(w, (tuple, list)):
        return w, None, None, None
    if len(w) == 2:
        return w[0], w[1], None, None
    if len(w) == 4:
        return tuple(w)
    raise ValueError(f"moekit.{op}: '{arg}' expected a tensor, a (blocks, scales) pair or (blocks, scales, codes, "
                     f"slab_scales), got a sequence of {len(w)}")


def _requires_grad(tensors) -> bool:
    """Whether autograd must record a call on these tensors (None for an absent one). A loop, not
    any() over a generator: this runs on every eager decode step."""
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return False


def _call(op, args, recorded: bool):
    """op(*args), below the Autograd dispatch key unless autograd must record it: the
    differentiable ops' autograd kernels are Python (torch.library.register_autograd, moekit/
    _autograd.py) and cost ~5 us of host time a call even with nothing to record, which an eager
    decode step pays once a layer. Under torch.compile the op is called as is, for dynamo to trace."""
    if recorded or torch.compiler.is_compiling():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def quantize_mxfp4(w: torch.Tensor, axis: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantizes ``w`` (float32/bfloat16) to MXFP4 along ``axis`` (its size a multiple of 32).

    Returns ``(blocks, scales)`` as uint8: ``axis`` of size K becomes two axes (K/32, 16) in
    ``blocks`` (two e2m1 codes per byte, low nibble = even element) and one axis K/32 in
    ``scales`` (e8m0). For ``axis=-1`` this is the gpt-oss checkpoint layout. Each block's
    scale is the smallest power of two that needs no saturation (see docs/mxfp4.md).
    """
    try:
        axis = _normalize_axis("quantize_mxfp4", axis, max(w.ndim, 1))
        last = axis == w.ndim - 1
        blocks, scales = torch.ops.moekit.quantize_mxfp4(w if last else w.movedim(axis, -1).contiguous())
    except Exception:
        _name_bad_tensor("quantize_mxfp4", (("w", w),))
        raise
    if last:
        return blocks, scales
    return blocks.movedim((-2, -1), (axis, axis + 1)).contiguous(), scales.movedim(-1, axis).contiguous()


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, axis: int = -1,
                     dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Inverse of :func:`quantize_mxfp4`: ``axis`` names the quantized axis of the result."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"moekit.dequantize_mxfp4: 'dtype' expected a torch.dtype, got {type(dtype).__name__} {dtype!r}")
    try:
        axis = _normalize_axis("dequantize_mxfp4", axis, max(scales.ndim, 1))
        last = axis == scales.ndim - 1
        if not last and blocks.ndim == scales.ndim + 1:
            blocks = blocks.movedim((axis, axis + 1), (-2, -1)).contiguous()
            scales = scales.movedim(axis, -1).contiguous()
        out = torch.ops.moekit.dequantize_mxfp4(blocks, scales, dtype)
    except Exception:
        _name_bad_tensor("dequantize_mxfp4", (("blocks", blocks), ("scales", scales)))
        raise
    return out if last else out.movedim(-1, axis)


def repack_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Expert weights in the checkpoint layout (``blocks`` [E, N, K/32, 16], ``scales``
    [E, N, K/32]) -> the layout of moekit's Hopper main loop: ``codes`` [E, ceil(N/64),
    ceil(K/64), 2048] and ``slab_scales`` [E, ceil(N/64), ceil(K/64), 128], each 64-row slab's
    64-k step one contiguous run (docs/semantics.md, "repack_mxfp4"). Same bytes on every device."""
    try:
        return tuple(torch.ops.moekit.repack_mxfp4(blocks, scales))
    except Exception:
        _name_bad_tensor("repack_mxfp4", (("blocks", blocks), ("scales", scales)))
        raise


def route(logits: torch.Tensor, k: int) -> Routing:
    """Top-k routing of ``logits`` [T, E]; see :class:`Routing`. Differentiable: the expert
    weights' gradient reaches each token's k chosen logits (the others take none)."""
    if not torch.compiler.is_compiling():
        # The eager call of plain arguments, read in C (python/csrc/eager_calls.cpp), as moe_mlp's.
        outputs = _eager.route(logits, k)
        if outputs is not NotImplemented:
            return Routing(*outputs)
    _require_int("route", "k", k)
    try:
        return Routing(*_call(torch.ops.moekit.route.default, (logits, k), _requires_grad((logits,))))
    except Exception:
        _name_bad_tensor("route", (("logits", logits),))
        raise


def matmul_ogs(x: torch.Tensor, w: Weights, bias: Optional[torch.Tensor] = None, *,
               expert_offsets: Optional[torch.Tensor] = None,
               gather_idx: Optional[torch.Tensor] = None,
               scatter_idx: Optional[torch.Tensor] = None,
               combine_weight: Optional[torch.Tensor] = None,
               swiglu: Optional[Tuple[float, float]] = None,
               out_dtype: Optional[torch.dtype] = None,
               config: Optional[str] = None,
               batch_invariant: bool = False) -> torch.Tensor:
    """Grouped matmul over experts with optional gather, scatter-combine and fused SwiGLU.

    Row p of the problem reads ``x[gather_idx[p]]`` (or ``x[p]``) and belongs to expert e
    where ``expert_offsets[e] <= p < expert_offsets[e+1]``; ``h[p] = row @ w[e].T + bias[e]``
    with fp32 accumulation. ``w`` is float [E, N, K] or an MXFP4 pair ([E, N, K/32, 16],
    [E, N, K/32]), optionally with its :func:`repack_mxfp4` output as (blocks, scales, codes,
    slab_scales), which the swap-AB kernels (``config="swapab32"``...) read.
    ``swiglu=(alpha, limit)`` turns h's interleaved (glu, linear) column pairs into SwiGLU (N/2
    columns). With ``scatter_idx`` [T, k] the output row t is
    ``sum_j combine_weight[t, j] * h[scatter_idx[t, j]]``. The output has x's dtype, or
    ``out_dtype`` (float32: the fp32 result unrounded). ``config`` forces the CUDA kernel it
    names (``"wgmma128"``, ``"stream16"``...: docs/kernels.md), refused where that kernel cannot
    run the call; by default the kernel is chosen from the problem and the device.
    ``batch_invariant=True``: each output row has the same bits whatever the other rows (their
    number, their values, its place among them); on CUDA this takes one kernel family at every
    row count: the swap-AB loop for repacked MXFP4 weights on sm_90, the gate's streaming kernel
    for bf16 weights, else the SIMT kernel (docs/semantics.md, "Batch invariance"); a ``config``
    given takes precedence. The CPU backend is batch-invariant always.

    Differentiable for ``x``, ``bias`` and ``combine_weight`` (``torch.ops.moekit.matmul_ogs_backward``),
    the weights frozen: float weights that require grad are refused.
    """
    values, scales, codes, slab_scales = _split_weights("matmul_ogs", "w", w)
    if swiglu is not None and (not isinstance(swiglu, (tuple, list)) or len(swiglu) != 2):
        raise TypeError(f"moekit.matmul_ogs: 'swiglu' expected None or an (alpha, limit) pair, got {swiglu!r}")
    alpha, limit = swiglu if swiglu is not None else (0.0, 0.0)
    alpha = _require_float("matmul_ogs", "swiglu_alpha", alpha)
    limit = _require_float("matmul_ogs", "swiglu_limit", limit)
    _require_bool("matmul_ogs", "batch_invariant", batch_invariant)
    args = (x, values, scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight, swiglu is not None, alpha,
            limit, out_dtype, config, codes, slab_scales, batch_invariant)
    try:
        return _call(torch.ops.moekit.matmul_ogs.default, args, _requires_grad((x, values, bias, combine_weight)))
    except Exception:
        _name_bad_tensor("matmul_ogs", (("x", x),), (("w", w),),
                         (("bias", bias), ("expert_offsets", expert_offsets), ("gather_idx", gather_idx),
                          ("scatter_idx", scatter_idx), ("combine_weight", combine_weight)))
        raise


def moe_mlp(x: torch.Tensor, gate_weight: torch.Tensor, gate_bias: Optional[torch.Tensor],
            mlp1_weight: Weights, mlp1_bias: Optional[torch.Tensor],
            mlp2_weight: Weights, mlp2_bias: Optional[torch.Tensor], *,
            experts_per_token: int = 4, swiglu_alpha: float = 1.702,
            swiglu_limit: float = 7.0, batch_invariant: bool = False) -> torch.Tensor:
    """The gpt-oss MoE layer: gate, top-k routing, mlp1 + SwiGLU, mlp2, weighted combine.

    ``x`` is [..., H]; ``gate_weight`` [E, H]; ``mlp1_weight`` [E, 2I, H] and ``mlp2_weight``
    [E, H, I], each float or an MXFP4 (blocks, scales) pair in the gpt-oss checkpoint layout,
    optionally with its :func:`repack_mxfp4` output: (blocks, scales, codes, slab_scales).
    Returns a tensor of x's shape and dtype. ``batch_invariant=True``: each token's output has
    the same bits whatever the other tokens of the call (on CUDA: the general path at every T,
    its matmuls as :func:`matmul_ogs` with ``batch_invariant``; fast with repacked weights).
    """
    if not torch.compiler.is_compiling():
        # The eager call of plain arguments, read in C (python/csrc/eager_calls.cpp); anything
        # else (autograd to record included) comes back NotImplemented and takes the path below.
        y = _eager.moe_mlp(x, gate_weight, gate_bias, mlp1_weight, mlp1_bias, mlp2_weight, mlp2_bias,
                           experts_per_token, swiglu_alpha, swiglu_limit, batch_invariant)
        if y is not NotImplemented:
            return y
    w1, s1, c1, ss1 = _split_weights("moe_mlp", "mlp1_weight", mlp1_weight)
    w2, s2, c2, ss2 = _split_weights("moe_mlp", "mlp2_weight", mlp2_weight)
    _require_int("moe_mlp", "experts_per_token", experts_per_token)
    alpha = _require_float("moe_mlp", "swiglu_alpha", swiglu_alpha)
    limit = _require_float("moe_mlp", "swiglu_limit", swiglu_limit)
    _require_bool("moe_mlp", "batch_invariant", batch_invariant)
    try:
        if x.ndim < 1:
            raise ValueError("moekit.moe_mlp: 'x' expected shape [..., H], got a 0-d tensor")
        # math.prod, not -1: a reshape cannot infer -1 for a tensor without elements (H = 0). A [T, H]
        # x (the decode step's) skips both reshapes: each costs ~1 us of host time a layer.
        flat = x if x.ndim == 2 else x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
        args = (flat, gate_weight, gate_bias, w1, s1, mlp1_bias, w2, s2, mlp2_bias, experts_per_token, alpha, limit,
                c1, ss1, c2, ss2, batch_invariant)
        # Only float tensors can require grad: the MXFP4 bytes never do. In grad mode the layer runs
        # as its composition of differentiable ops, so that autograd keeps its activations instead
        # of the backward recomputing them (moekit/_autograd.py).
        if _requires_grad((x, gate_weight, gate_bias, mlp1_bias, mlp2_bias, w1, w2)):
            y = _autograd.moe_mlp_with_saved_activations(*args)
        else:
            y = _call(torch.ops.moekit.moe_mlp.default, args, False)
    except Exception:
        _name_bad_tensor("moe_mlp", (("x", x), ("gate_weight", gate_weight)),
                         (("mlp1_weight", mlp1_weight), ("mlp2_weight", mlp2_weight)),
                         (("gate_bias", gate_bias), ("mlp1_bias", mlp1_bias), ("mlp2_bias", mlp2_bias)))
        raise
    return y if x.ndim == 2 else y.reshape(x.shape)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, scale: torch.Tensor,
                 eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor]:
    """The residual add and RMSNorm between two blocks, in one pass: returns ``(sum, out)`` with
    ``sum = residual + x`` (rounded to x's dtype) and ``out = sum / sqrt(mean(sum**2) + eps) * scale``
    (float32 arithmetic, rounded to x's dtype). ``x`` and ``residual`` are [T, H] of one dtype
    (float32 or bfloat16), ``scale`` float32 [H].
    """
    if not torch.compiler.is_compiling():
        # The eager call of plain arguments, read in C (python/csrc/eager_calls.cpp), as moe_mlp's.
        outputs = _eager.add_rms_norm(x, residual, scale, eps)
        if outputs is not NotImplemented:
            return outputs
    args = (x, residual, scale, _require_float("add_rms_norm", "eps", eps))
    try:
        return _call(torch.ops.moekit.add_rms_norm.default, args, _requires_grad((x, residual, scale)))
    except Exception:
        _name_bad_tensor("add_rms_norm", (("x", x), ("residual", residual), ("scale", scale)))
        raise


def attention_decode(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor,
                     position: torch.Tensor, inv_freq: torch.Tensor, *, rope_scale: float, sm_scale: float,
                     window: int = 0) -> torch.Tensor:
    """gpt-oss attention of T new tokens against a KV cache, the position read on the device.

    The tokens sit at positions ``p0 .. p0+T-1`` with ``p0 = position[0]`` (int32 [1], on the
    tensors' device, so a captured CUDA graph replays the step at every position). Each token's
    row of ``qkv`` [T, (Hq + 2 Hkv) D] holds its q heads, k heads and v heads; q and k are
    rotated (YaRN: angle ``p * inv_freq``, cos and sin times ``rope_scale``, over the two halves
    of a head), k and v are written into ``k_cache`` and ``v_cache`` [L, Hkv, D] at row p (in
    place), and q head h attends to the keys ``j <= p`` of kv head ``h // (Hq / Hkv)`` (and
    ``j > p - window`` when ``window`` > 0) with a softmax that also counts ``sinks[h]`` (float32
    [Hq]) and scores scaled by ``sm_scale``. Returns [T, Hq D] in qkv's dtype. A position
    outside ``0 <= p0, p0 + T <= L`` writes nothing: the CPU raises, CUDA returns NaN.
    """
    _require_int("attention_decode", "window", window)
    rope_scale = _require_float("attention_decode", "rope_scale", rope_scale)
    sm_scale = _require_float("attention_decode", "sm_scale", sm_scale)
    try:
        return torch.ops.moekit.attention_decode(qkv, k_cache, v_cache, sinks, position, inv_freq, rope_scale,
                                                 sm_scale, window)
    except Exception:
        _name_bad_tensor("attention_decode", (("qkv", qkv), ("k_cache", k_cache), ("v_cache", v_cache),
                                              ("sinks", sinks), ("position", position), ("inv_freq", inv_freq)))
        raise


def greedy_token(logits: torch.Tensor, position: torch.Tensor, token: torch.Tensor, ids: torch.Tensor) -> None:
    """The greedy token of a decode step whose position lives on the device: writes the index of
    the largest of ``logits`` [V] (float32 or bfloat16; the first of equal ones, a NaN counting as
    the largest) into ``token`` (int32 [1]) and into ``ids`` (int32 [L]) at ``position[0]``
    (int32 [1]), in place, with no host read, so a captured CUDA graph replays it. A position
    outside ``[0, L)`` writes no id: the CPU raises before writing anything, CUDA writes ``token``
    alone."""
    try:
        torch.ops.moekit.greedy_token(logits, position, token, ids)
    except Exception:
        _name_bad_tensor("greedy_token", (("logits", logits), ("position", position), ("token", token), ("ids", ids)))
        raise
