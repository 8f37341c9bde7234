"""Fake kernels: output shapes and dtypes of each op, so torch.compile can trace them.

They also serve as the ops' Meta kernels, which the dispatcher picks whenever any argument is
on the meta device, so they check devices as the C++ ops do.
"""

import torch


def _same_device(op: str, **tensors) -> None:
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if first is None:
            first = (name, t.device)
        elif t.device != first[1]:
            raise ValueError(f"moekit.{op}: '{name}' expected device {first[1]} (the device of '{first[0]}'), "
                             f"got {t.device}")


@torch.library.register_fake("moekit::quantize_mxfp4")
def _quantize_mxfp4(w):
    lead, k = w.shape[:-1], w.shape[-1]
    torch._check(k % 32 == 0, lambda: f"moekit.quantize_mxfp4: 'w' expected a last dimension that is a multiple of 32, got {k}")
    return (w.new_empty((*lead, k // 32, 16), dtype=torch.uint8),
            w.new_empty((*lead, k // 32), dtype=torch.uint8))


@torch.library.register_fake("moekit::dequantize_mxfp4")
def _dequantize_mxfp4(blocks, scales, dtype):
    _same_device("dequantize_mxfp4", blocks=blocks, scales=scales)
    return blocks.new_empty((*blocks.shape[:-2], blocks.shape[-2] * 32), dtype=dtype)


@torch.library.register_fake("moekit::route")
def _route(logits, k):
    t, e = logits.shape
    if not 1 <= k <= e:
        raise ValueError(f"moekit.route: 'k' expected 1 <= k <= {e} (the number of experts), got {k}")
    i32 = dict(dtype=torch.int32)
    return (logits.new_empty((t, k), **i32), logits.new_empty((t, k), dtype=torch.float32),
            logits.new_empty((e,), **i32), logits.new_empty((e + 1,), **i32),
            logits.new_empty((t * k,), **i32), logits.new_empty((t, k), **i32))


@torch.library.register_fake("moekit::matmul_ogs")
def _matmul_ogs(x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight,
                swiglu, swiglu_alpha, swiglu_limit):
    _same_device("matmul_ogs", x=x, w=w, w_scales=w_scales, bias=bias, expert_offsets=expert_offsets,
                 gather_idx=gather_idx, scatter_idx=scatter_idx, combine_weight=combine_weight)
    rows = scatter_idx.shape[0] if scatter_idx is not None else (
        gather_idx.shape[0] if gather_idx is not None else x.shape[0])
    n = w.shape[1]
    return x.new_empty((rows, n // 2 if swiglu else n))


@torch.library.register_fake("moekit::moe_mlp")
def _moe_mlp(x, gate_weight, gate_bias, mlp1_weight, mlp1_scales, mlp1_bias, mlp2_weight, mlp2_scales,
             mlp2_bias, experts_per_token, swiglu_alpha, swiglu_limit):
    _same_device("moe_mlp", x=x, gate_weight=gate_weight, gate_bias=gate_bias, mlp1_weight=mlp1_weight,
                 mlp1_scales=mlp1_scales, mlp1_bias=mlp1_bias, mlp2_weight=mlp2_weight, mlp2_scales=mlp2_scales,
                 mlp2_bias=mlp2_bias)
    e = gate_weight.shape[0]
    if not 1 <= experts_per_token <= e:
        raise ValueError(f"moekit.moe_mlp: 'experts_per_token' expected 1 <= k <= {e} (the number of experts), "
                         f"got {experts_per_token}")
    return torch.empty_like(x)
