"""Gradients of moekit's differentiable ops, registered with torch.library.register_autograd.

matmul_ogs takes gradients for x, bias and combine_weight, its expert weights frozen (MXFP4
blocks and scales are integers; float weights that require grad are refused). The backward is
itself a moekit op, ``torch.ops.moekit.matmul_ogs_backward``, whose CPU backend is the
gradients' specification; a gradient of a gradient is refused by it. Every other moekit op is
inference-only (its Autograd kernel refuses inputs that require grad).
"""

import torch


def _matmul_ogs_setup_context(ctx, inputs, output) -> None:
    x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight, swiglu, alpha, limit = inputs
    if w.requires_grad:
        raise ValueError("moekit.matmul_ogs: 'w' requires grad, but expert weights are frozen (moekit computes no "
                         "weight gradient); pass w.detach()")
    ctx.save_for_backward(x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight)
    ctx.swiglu = (swiglu, alpha, limit)


def _matmul_ogs_backward(ctx, grad):
    x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight = ctx.saved_tensors
    grad_x, grad_bias, grad_combine_weight = torch.ops.moekit.matmul_ogs_backward(
        grad.contiguous(), x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight, *ctx.swiglu)
    needs = ctx.needs_input_grad
    return (grad_x if needs[0] else None, None, None, grad_bias if needs[3] else None, None, None, None,
            grad_combine_weight if needs[7] else None, None, None, None)


torch.library.register_autograd("moekit::matmul_ogs", _matmul_ogs_backward, setup_context=_matmul_ogs_setup_context)
