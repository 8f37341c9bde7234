"""Fake kernels: the output shapes and dtypes of each op, so torch.compile can trace them.

They also serve as the ops' Meta kernels, which the dispatcher picks whenever an argument is on
the meta device. They restate no rule: every call is first checked by the C++ op itself, run on
meta tensors of the arguments' shapes and strides (it validates and returns without running),
and the devices by ``torch.ops.moekit.check_devices``, the C++ device rule. So fake, meta and
real calls are accepted and refused alike, with the same messages. Sizes that torch.compile made
symbolic are checked at the values it traced with.
"""

from typing import List, NamedTuple, Optional

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.fx.experimental.symbolic_shapes import size_hint

# The C++ implementation serves every device; called on meta tensors it only validates.
_IMPLEMENTATION = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _hints(sizes) -> Optional[List[int]]:
    """Concrete values of (possibly symbolic) sizes; None where one has no hint (data-dependent)."""
    try:
        return [size_hint(s) for s in sizes]
    except RuntimeError:  # an unbacked size (data-dependent): nothing to check it against until the real call
        return None


class _TensorSpec(NamedTuple):
    """A fake tensor's concrete sizes, strides and dtype, to make a meta tensor of."""

    sizes: List[int]
    strides: List[int]
    dtype: torch.dtype


def _check(op: torch._ops.OpOverload, *args) -> None:
    """Runs the C++ op's own checks on a call with fake or meta tensors."""
    names = [a.name for a in op._schema.arguments]
    tensors = [(name, a) for name, a in zip(names, args) if isinstance(a, torch.Tensor)]
    shaped = []
    for a in args:
        if isinstance(a, torch.Tensor):
            sizes, strides = _hints(a.shape), _hints(a.stride())
            if sizes is None or strides is None:
                return
            shaped.append(_TensorSpec(sizes, strides, a.dtype))
        else:
            shaped.append(a)
    with unset_fake_temporarily():
        torch.ops.moekit.check_devices(op._schema.name.split("::")[1], [n for n, _ in tensors],
                                       [str(t.device) for _, t in tensors])
        metas = [torch.empty_strided(a.sizes, a.strides, dtype=a.dtype, device="meta") if isinstance(a, _TensorSpec)
                 else a for a in shaped]
        op.redispatch(_IMPLEMENTATION, *metas)


@torch.library.register_fake("moekit::quantize_mxfp4")
def _quantize_mxfp4(w):
    _check(torch.ops.moekit.quantize_mxfp4.default, w)
    lead, k = w.shape[:-1], w.shape[-1]
    return (w.new_empty((*lead, k // 32, 16), dtype=torch.uint8),
            w.new_empty((*lead, k // 32), dtype=torch.uint8))


@torch.library.register_fake("moekit::dequantize_mxfp4")
def _dequantize_mxfp4(blocks, scales, dtype):
    _check(torch.ops.moekit.dequantize_mxfp4.default, blocks, scales, dtype)
    return blocks.new_empty((*blocks.shape[:-2], blocks.shape[-2] * 32), dtype=dtype)


@torch.library.register_fake("moekit::repack_mxfp4")
def _repack_mxfp4(blocks, scales):
    _check(torch.ops.moekit.repack_mxfp4.default, blocks, scales)
    e, n, k = blocks.shape[0], blocks.shape[1], blocks.shape[2] * 32
    slabs, steps = (n + 63) // 64, (k + 63) // 64
    return (blocks.new_empty((e, slabs, steps, 2048)), blocks.new_empty((e, slabs, steps, 128)))


@torch.library.register_fake("moekit::route")
def _route(logits, k):
    _check(torch.ops.moekit.route.default, logits, k)
    t, e = logits.shape
    i32 = dict(dtype=torch.int32)
    return (logits.new_empty((t, k), **i32), logits.new_empty((t, k), dtype=torch.float32),
            logits.new_empty((e,), **i32), logits.new_empty((e + 1,), **i32),
            logits.new_empty((t * k,), **i32), logits.new_empty((t, k), **i32))


@torch.library.register_fake("moekit::matmul_ogs")
def _matmul_ogs(x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight,
                swiglu, swiglu_alpha, swiglu_limit, out_dtype=None, config=None, w_codes=None, w_slab_scales=None,
                batch_invariant=False):
    _check(torch.ops.moekit.matmul_ogs.default, x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx,
           combine_weight, swiglu, swiglu_alpha, swiglu_limit, out_dtype, config, w_codes, w_slab_scales,
           batch_invariant)
    rows = scatter_idx.shape[0] if scatter_idx is not None else (
        gather_idx.shape[0] if gather_idx is not None else x.shape[0])
    n = w.shape[1]
    return x.new_empty((rows, n // 2 if swiglu else n), dtype=out_dtype or x.dtype)


@torch.library.register_fake("moekit::matmul_ogs_backward")
def _matmul_ogs_backward(grad_out, x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight,
                         swiglu, swiglu_alpha, swiglu_limit, output_mask=(True, True, True)):
    _check(torch.ops.moekit.matmul_ogs_backward.default, grad_out, x, w, w_scales, bias, expert_offsets, gather_idx,
           scatter_idx, combine_weight, swiglu, swiglu_alpha, swiglu_limit, output_mask)
    grad_x = x.new_empty(x.shape if output_mask[0] else (0,))
    grad_bias = (bias.new_empty(bias.shape if output_mask[1] else (0,)) if bias is not None
                 else x.new_empty((0,)))
    grad_combine_weight = x.new_empty(combine_weight.shape if combine_weight is not None and output_mask[2] else (0,),
                                      dtype=torch.float32)
    return grad_x, grad_bias, grad_combine_weight


@torch.library.register_fake("moekit::moe_mlp")
def _moe_mlp(x, gate_weight, gate_bias, mlp1_weight, mlp1_scales, mlp1_bias, mlp2_weight, mlp2_scales,
             mlp2_bias, experts_per_token, swiglu_alpha, swiglu_limit, mlp1_codes=None, mlp1_slab_scales=None,
             mlp2_codes=None, mlp2_slab_scales=None, batch_invariant=False):
    _check(torch.ops.moekit.moe_mlp.default, x, gate_weight, gate_bias, mlp1_weight, mlp1_scales, mlp1_bias,
           mlp2_weight, mlp2_scales, mlp2_bias, experts_per_token, swiglu_alpha, swiglu_limit, mlp1_codes,
           mlp1_slab_scales, mlp2_codes, mlp2_slab_scales, batch_invariant)
    return torch.empty_like(x)


@torch.library.register_fake("moekit::add_rms_norm")
def _add_rms_norm(x, residual, scale, eps):
    _check(torch.ops.moekit.add_rms_norm.default, x, residual, scale, eps)
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.register_fake("moekit::attention_decode")
def _attention_decode(qkv, k_cache, v_cache, sinks, position, inv_freq, rope_scale, sm_scale, window):
    _check(torch.ops.moekit.attention_decode.default, qkv, k_cache, v_cache, sinks, position, inv_freq, rope_scale,
           sm_scale, window)
    return qkv.new_empty((qkv.shape[0], sinks.shape[0] * k_cache.shape[2]))


@torch.library.register_fake("moekit::greedy_token")
def _greedy_token(logits, position, token, ids):
    _check(torch.ops.moekit.greedy_token.default, logits, position, token, ids)
