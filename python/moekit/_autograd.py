"""Gradients of moekit's differentiable ops, registered with torch.library.register_autograd.

matmul_ogs takes gradients for x, bias and combine_weight, its expert weights frozen (MXFP4
blocks and scales are integers; float weights that require grad are refused). The backward is
itself a moekit op, ``torch.ops.moekit.matmul_ogs_backward``, whose CPU backend is the
gradients' specification; a gradient of a gradient is refused by it. route passes the gradient
of its expert weights (a softmax over each token's k chosen logits) to those logits, the others
taking none: a few torch ops on [T, k], here. moe_mlp passes gradients to x, the gate's weight
and bias and the experts' biases: moekit.moe_mlp in grad mode runs the op's composition with each
step differentiable (its activations kept), the op called directly recomputes its steps in the
backward; add_rms_norm to x,
residual and scale (torch ops on its rows). Every other moekit op is inference-only (its
Autograd kernel refuses inputs that require grad).
"""

import torch

from moekit import _fake


def _first_order_only(op: str) -> None:
    """Refuses a backward that records its own graph (create_graph=True): the formulas here use
    the forward's saved outputs, which carry no graph back to the inputs, so a gradient of their
    gradient would be silently wrong."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"moekit.{op}: moekit computes first-order gradients only (no gradient of a gradient: "
                           "do not pass create_graph=True through moekit ops)")


def _matmul_ogs_setup_context(ctx, inputs, output) -> None:
    x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight, swiglu, alpha, limit = inputs[:11]
    if w.requires_grad:
        raise ValueError("moekit.matmul_ogs: 'w' requires grad, but expert weights are frozen (moekit computes no "
                         "weight gradient); pass w.detach()")
    ctx.save_for_backward(x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight)
    ctx.swiglu = (swiglu, alpha, limit)


def _matmul_ogs_backward(ctx, grad):
    x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_x, grad_bias, grad_combine_weight = torch.ops.moekit.matmul_ogs_backward(
        grad.contiguous(), x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight, *ctx.swiglu,
        [needs[0], needs[3], needs[7]])
    return (grad_x if needs[0] else None, None, None, grad_bias if needs[3] else None, None, None, None,
            grad_combine_weight if needs[7] else None, None, None, None, None, None, None, None, None)


torch.library.register_autograd("moekit::matmul_ogs", _matmul_ogs_backward, setup_context=_matmul_ogs_setup_context)


def _route_setup_context(ctx, inputs, output) -> None:
    logits, _ = inputs
    expert_idx, expert_weight = output[0], output[1]
    ctx.save_for_backward(expert_idx, expert_weight)
    ctx.logits = (logits.shape, logits.dtype)


def _logits_grad(expert_idx, expert_weight, grad_weight, shape) -> torch.Tensor:
    """The gate logits' gradient (float32 [T, E]) from the expert weights': d w_j / d l_i =
    w_j (delta_ij - w_i) over a token's chosen logits i, j; zero for the others."""
    chosen = expert_weight * (grad_weight - (grad_weight * expert_weight).sum(dim=-1, keepdim=True))
    grad = torch.zeros(shape, dtype=torch.float32, device=expert_weight.device)
    return grad.scatter_(1, expert_idx.long(), chosen)


def _route_backward(ctx, grad_idx, grad_weight, *grad_rest):
    _first_order_only("route")
    expert_idx, expert_weight = ctx.saved_tensors
    shape, dtype = ctx.logits
    if grad_weight is None:
        return None, None
    return _logits_grad(expert_idx, expert_weight, grad_weight, shape).to(dtype), None


torch.library.register_autograd("moekit::route", _route_backward, setup_context=_route_setup_context)


def _refuse_expert_weight_grads(w1, w2) -> None:
    for name, w in (("mlp1_weight", w1), ("mlp2_weight", w2)):
        if w.requires_grad:
            raise ValueError(f"moekit.moe_mlp: '{name}' requires grad, but expert weights are frozen (moekit "
                             f"computes no weight gradient); pass {name}.detach()")


def _gate_grads(grad_logits, x, gate_weight, gate_bias_dtype, needs):
    """The gradients of the float32 logits x W^T + b for x, W and b (where `needs` says)."""
    return ((grad_logits @ gate_weight.float()).to(x.dtype) if needs[0] else None,
            (grad_logits.T @ x.float()).to(gate_weight.dtype) if needs[1] else None,
            grad_logits.sum(dim=0).to(gate_bias_dtype) if needs[2] else None)


class _GateLogits(torch.autograd.Function):
    """moe_mlp's gate: float32 logits from a one-expert matmul_ogs, as the layer computes them;
    the gradients of x and the gate's weight and bias in torch."""

    @staticmethod
    def forward(ctx, x, gate_weight, gate_bias, batch_invariant):
        E, H = gate_weight.shape
        ctx.save_for_backward(x, gate_weight)
        ctx.bias_dtype = gate_bias.dtype if gate_bias is not None else None
        return torch.ops.moekit.matmul_ogs(x, gate_weight.reshape(1, E, H), None,
                                           gate_bias.reshape(1, E) if gate_bias is not None else None,
                                           None, None, None, None, False, 0.0, 0.0, torch.float32, None, None, None,
                                           batch_invariant)

    @staticmethod
    def backward(ctx, grad_logits):
        _first_order_only("moe_mlp")
        x, gate_weight = ctx.saved_tensors
        return (*_gate_grads(grad_logits, x, gate_weight, ctx.bias_dtype, ctx.needs_input_grad), None)


def _layer_front(x, gate_weight, gate_bias, w1, s1, b1, k, alpha, limit, slabs1, batch_invariant):
    """The layer up to mlp1 as the op composes it: the gate's float32 logits, the routing, mlp1's
    SwiGLU rows (slabs1: mlp1's repacked weights, or Nones); differentiable where grad mode is on."""
    routing = torch.ops.moekit.route(_GateLogits.apply(x, gate_weight, gate_bias, batch_invariant), k)
    offsets, gather_idx = routing[3], routing[4]
    return routing, torch.ops.moekit.matmul_ogs(x, w1, s1, b1, offsets, gather_idx, None, None, True, alpha, limit,
                                                None, None, *slabs1, batch_invariant)


def moe_mlp_with_saved_activations(x, gate_weight, gate_bias, w1, s1, b1, w2, s2, b2, k, alpha, limit,
                                   c1, ss1, c2, ss2, batch_invariant):
    """moe_mlp for training (moekit.moe_mlp in grad mode): the op's own composition, each step
    differentiable, so autograd keeps mlp1's output and the routing (T k I elements of x's dtype)
    and the backward recomputes only mlp1's h; the same output as the op on its general path."""
    _refuse_expert_weight_grads(w1, w2)
    try:
        routing, act = _layer_front(x, gate_weight, gate_bias, w1, s1, b1, k, alpha, limit, (c1, ss1),
                                    batch_invariant)
        _, expert_weight, _, offsets, _, scatter_idx = routing
        return torch.ops.moekit.matmul_ogs(act, w2, s2, b2, offsets, None, scatter_idx, expert_weight, False, 0.0,
                                           0.0, None, None, c2, ss2, batch_invariant)
    except (ValueError, TypeError, RuntimeError):
        # A step refused the call, naming its own argument: the layer's checks (off the hot path,
        # ~50 us) name the layer's instead; where they pass, the step's refusal stands.
        _fake._check(torch.ops.moekit.moe_mlp.default, x, gate_weight, gate_bias, w1, s1, b1, w2, s2, b2, k, alpha,
                     limit, c1, ss1, c2, ss2, batch_invariant)
        raise


def _moe_mlp_setup_context(ctx, inputs, output) -> None:
    # torch fills in the schema's defaults: all 17 inputs are here.
    x, gate_weight, gate_bias, w1, s1, b1, w2, s2, b2, k, alpha, limit, c1, ss1, _, _, batch_invariant = inputs
    _refuse_expert_weight_grads(w1, w2)
    ctx.save_for_backward(x, gate_weight, gate_bias, w1, s1, b1, w2, s2, b2, c1, ss1)
    ctx.params = (k, alpha, limit, batch_invariant)


def _moe_mlp_backward(ctx, grad_y):
    """The op's gradients (torch.ops.moekit.moe_mlp called directly; moekit.moe_mlp in grad mode
    keeps its activations instead): the gate's logits, the routing and mlp1's rows recomputed by
    the ops the forward composes, then mlp2's and mlp1's backward, the routing's and the gate's;
    nothing but the inputs is kept from the forward."""
    _first_order_only("moe_mlp")
    x, gate_weight, gate_bias, w1, s1, b1, w2, s2, b2, c1, ss1 = ctx.saved_tensors
    k, alpha, limit, batch_invariant = ctx.params
    ops = torch.ops.moekit
    routing, act = _layer_front(x, gate_weight, gate_bias, w1, s1, b1, k, alpha, limit, (c1, ss1), batch_invariant)
    expert_idx, expert_weight, _, offsets, gather_idx, scatter_idx = routing
    needs = ctx.needs_input_grad
    gate = needs[0] or needs[1] or needs[2]  # the gate's gradients need the combine weights'
    grad_act, grad_b2, grad_weight = ops.matmul_ogs_backward(grad_y.contiguous(), act, w2, s2, b2, offsets, None,
                                                             scatter_idx, expert_weight, False, 0.0, 0.0,
                                                             [True, needs[8], gate])
    grad_x, grad_b1, _ = ops.matmul_ogs_backward(grad_act, x, w1, s1, b1, offsets, gather_idx, None, None, True,
                                                 alpha, limit, [needs[0], needs[5], False])
    grad_gate_weight = grad_gate_bias = None
    if gate:
        grad_logits = _logits_grad(expert_idx, expert_weight, grad_weight,
                                   expert_weight.shape[:1] + gate_weight.shape[:1])
        gate_x, grad_gate_weight, grad_gate_bias = _gate_grads(grad_logits, x, gate_weight,
                                                               gate_bias.dtype if gate_bias is not None else None,
                                                               (needs[0], needs[1], needs[2]))
        if needs[0]:
            grad_x = grad_x + gate_x
    return (grad_x if needs[0] else None, grad_gate_weight, grad_gate_bias, None, None, grad_b1 if needs[5] else None,
            None, None, grad_b2 if needs[8] else None, None, None, None, None, None, None, None, None)


torch.library.register_autograd("moekit::moe_mlp", _moe_mlp_backward, setup_context=_moe_mlp_setup_context)


def _add_rms_norm_setup_context(ctx, inputs, output) -> None:
    x, residual, scale, eps = inputs
    ctx.save_for_backward(output[0], scale)
    ctx.eps = eps
    ctx.dtypes = (x.dtype, residual.dtype)


def _add_rms_norm_backward(ctx, grad_sum, grad_out):
    """sum = residual + x (its rounding differentiated as the identity) and out = sum * r * scale,
    r = 1 / sqrt(mean(sum^2) + eps): d out_i / d sum_j = scale_i (r delta_ij - r^3 sum_i sum_j / H).
    float32, rounded once to each input's dtype."""
    _first_order_only("add_rms_norm")
    total, scale = ctx.saved_tensors
    s = total.float()
    grad = torch.zeros_like(s) if grad_sum is None else grad_sum.float()
    grad_scale = None
    if grad_out is not None:
        r = torch.rsqrt(s.pow(2).mean(dim=-1, keepdim=True) + ctx.eps)
        g = grad_out.float()
        scaled = g * scale
        grad = grad + r * scaled - s * (r.pow(3) / s.shape[-1]) * (scaled * s).sum(dim=-1, keepdim=True)
        grad_scale = (g * s * r).sum(dim=0)
    needs = ctx.needs_input_grad
    return (grad.to(ctx.dtypes[0]) if needs[0] else None, grad.to(ctx.dtypes[1]) if needs[1] else None,
            grad_scale if needs[2] else None, None)


torch.library.register_autograd("moekit::add_rms_norm", _add_rms_norm_backward,
                                setup_context=_add_rms_norm_setup_context)
