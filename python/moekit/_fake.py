"""Fake (meta) kernels: output shapes and dtypes of each op, so torch.compile can trace them."""

import torch


@torch.library.register_fake("moekit::quantize_mxfp4")
def _quantize_mxfp4(w):
    lead, k = w.shape[:-1], w.shape[-1]
    torch._check(k % 32 == 0, lambda: f"moekit.quantize_mxfp4: 'w' expected a last dimension that is a multiple of 32, got {k}")
    return (w.new_empty((*lead, k // 32, 16), dtype=torch.uint8),
            w.new_empty((*lead, k // 32), dtype=torch.uint8))


@torch.library.register_fake("moekit::dequantize_mxfp4")
def _dequantize_mxfp4(blocks, scales, dtype):
    return blocks.new_empty((*blocks.shape[:-2], blocks.shape[-2] * 32), dtype=dtype)


@torch.library.register_fake("moekit::route")
def _route(logits, k):
    t, e = logits.shape
    i32 = dict(dtype=torch.int32)
    return (logits.new_empty((t, k), **i32), logits.new_empty((t, k), dtype=torch.float32),
            logits.new_empty((e,), **i32), logits.new_empty((e + 1,), **i32),
            logits.new_empty((t * k,), **i32), logits.new_empty((t, k), **i32))


@torch.library.register_fake("moekit::matmul_ogs")
def _matmul_ogs(x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight,
                swiglu, swiglu_alpha, swiglu_limit):
    rows = scatter_idx.shape[0] if scatter_idx is not None else (
        gather_idx.shape[0] if gather_idx is not None else x.shape[0])
    n = w.shape[1]
    return x.new_empty((rows, n // 2 if swiglu else n))


@torch.library.register_fake("moekit::moe_mlp")
def _moe_mlp(x, gate_weight, gate_bias, mlp1_weight, mlp1_scales, mlp1_bias, mlp2_weight, mlp2_scales,
             mlp2_bias, experts_per_token, swiglu_alpha, swiglu_limit):
    return torch.empty_like(x)
