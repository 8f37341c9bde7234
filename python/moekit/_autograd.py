"""Gradients of moekit's differentiable ops, registered with torch.library.register_autograd.

matmul_ogs takes gradients for x, bias and combine_weight, its expert weights frozen (MXFP4
blocks and scales are integers; float weights that require grad are refused). The backward is
itself a moekit op, ``torch.ops.moekit.matmul_ogs_backward``, whose CPU backend is the
gradients' specification; a gradient of a gradient is refused by it. route passes the gradient
of its expert weights (a softmax over each token's k chosen logits) to those logits, the others
taking none: a few torch ops on [T, k], here. Every other moekit op is inference-only (its
Autograd kernel refuses inputs that require grad).
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


def _route_setup_context(ctx, inputs, output) -> None:
    logits, _ = inputs
    expert_idx, expert_weight = output[0], output[1]
    ctx.save_for_backward(expert_idx, expert_weight)
    ctx.logits = (logits.shape, logits.dtype)


def _route_backward(ctx, grad_idx, grad_weight, *grad_rest):
    expert_idx, expert_weight = ctx.saved_tensors
    shape, dtype = ctx.logits
    if grad_weight is None:
        return None, None
    # d w_j / d l_i = w_j (delta_ij - w_i) over a token's chosen logits i, j.
    chosen = expert_weight * (grad_weight - (grad_weight * expert_weight).sum(dim=-1, keepdim=True))
    grad = torch.zeros(shape, dtype=torch.float32, device=expert_weight.device)
    return grad.scatter_(1, expert_idx.long(), chosen).to(dtype), None


torch.library.register_autograd("moekit::route", _route_backward, setup_context=_route_setup_context)
