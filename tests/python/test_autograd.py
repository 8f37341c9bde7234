"""Gradients through moekit's differentiable ops (issue 21): matmul_ogs, route, moe_mlp and
add_rms_norm against torch autograd through the float64 references; the same bits on every run;
the refusals (weights that require grad, a gradient of a gradient); opcheck's autograd checks;
torch.compile of a training step; the runner's model and PEFT's LoRA training on the CPU. The
CUDA backend's gradients against these: test_cuda_backward.py."""

from pathlib import Path

import pytest
import torch
from torch.library import opcheck

import moekit
import reference as ref
from conftest import TOLERANCE, H, MoeLayer, make_weights, randn

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def matmul_case(gen, kind, T, E, k, N, K, mode, dtype=torch.float32, limit=1.0):
    """matmul_ogs's arguments for `mode` ("swiglu": gather + SwiGLU as mlp1, "combine": scatter +
    combine weights as mlp2, "plain": one expert, no indices), leaves that require grad, and the
    reference's float64 weights. A small SwiGLU limit makes its clamps bite."""
    w = make_weights(gen, kind, E, N, K)
    r = ref.route(randn(gen, T, E), k)
    x = randn(gen, T if mode != "combine" else T * k, K, dtype=dtype).requires_grad_()
    bias = randn(gen, E, N, dtype=dtype, scale=0.5).requires_grad_()
    args = dict(bias=bias)
    if mode == "swiglu":
        args.update(expert_offsets=r.expert_offsets.int(), gather_idx=r.gather_idx.int(), swiglu=(1.702, limit))
    elif mode == "combine":
        args.update(expert_offsets=r.expert_offsets.int(), scatter_idx=r.scatter_idx.int(),
                    combine_weight=r.expert_weight.float().requires_grad_())
    return x, w, args


def reference_grads(x, w, args, grad_out):
    """The float64 reference's gradients for the leaves of `args` and x."""
    leaves = {"x": x.detach().double().requires_grad_()}
    kw = {}
    for name in ("bias", "combine_weight"):
        if name in args:
            leaves[name] = args[name].detach().double().requires_grad_()
            kw[name] = leaves[name]
    for name in ("expert_offsets", "gather_idx", "scatter_idx"):
        if name in args:
            kw[name] = args[name]
    if "swiglu" in args:
        kw["swiglu_args"] = args["swiglu"]
    out = ref.matmul_ogs(leaves["x"], w.dense, **kw)
    if not out.requires_grad:  # no rows: nothing reaches the leaves
        return {name: torch.zeros_like(t) for name, t in leaves.items()}
    out.backward(grad_out.double())
    return {name: t.grad for name, t in leaves.items()}


def moekit_grads(x, w, args, grad_out):
    leaves = {"x": x, **{n: args[n] for n in ("bias", "combine_weight") if n in args}}
    for t in leaves.values():
        t.grad = None
    out = moekit.matmul_ogs(x, w.arg, **args)
    out.backward(grad_out)
    return out, {name: t.grad for name, t in leaves.items()}


# (kind, T, E, k, N, K, mode): both weight kinds, a layer's shapes scaled down, one expert
# without rows, no tokens at all.
CASES = [
    ("mxfp4", 9, 4, 2, 48, 64, "swiglu"), ("mxfp4", 9, 4, 2, 64, 48 * 2, "combine"),
    ("float32", 7, 3, 2, 24, 40, "swiglu"), ("float32", 7, 3, 3, 40, 24, "combine"),
    ("mxfp4", 5, 1, 1, 32, 64, "plain"), ("mxfp4", 1, 8, 2, 32, 32, "swiglu"),
    ("mxfp4", 0, 4, 2, 32, 64, "swiglu"), ("float32", 0, 3, 2, 16, 8, "combine"),
]


@pytest.mark.parametrize("kind,T,E,k,N,K,mode", CASES)
def test_matmul_ogs_gradients_against_float64_autograd(gen, kind, T, E, k, N, K, mode):
    x, w, args = matmul_case(gen, kind, T, E, k, N, K, mode)
    out_shape = moekit.matmul_ogs(x.detach(), w.arg, **{n: (v.detach() if isinstance(v, torch.Tensor) else v)
                                                          for n, v in args.items()}).shape
    grad_out = randn(gen, *out_shape)
    _, got = moekit_grads(x, w, args, grad_out)
    want = reference_grads(x, w, args, grad_out)
    assert set(got) == set(want)
    for name, g in got.items():
        assert g is not None and g.shape == want[name].shape and g.dtype == torch.float32, name
        assert torch.isfinite(g).all(), name
        assert ref.rel_err(g, want[name]) <= TOLERANCE[torch.float32], (name, ref.rel_err(g, want[name]))
    if mode == "swiglu" and T > 0:  # the clamps were active somewhere, and their gradient is zero there
        h = ref.matmul_ogs(x.detach(), w.dense, args["bias"].detach(), expert_offsets=args["expert_offsets"],
                           gather_idx=args["gather_idx"])
        assert (h[:, 0::2] > 1.0).any() and (h[:, 1::2].abs() > 1.0).any()


def test_matmul_ogs_gradients_bf16(gen):
    x, w, args = matmul_case(gen, "mxfp4", 9, 4, 2, 64, 64, "combine", dtype=torch.bfloat16)
    grad_out = randn(gen, 9, 64, dtype=torch.bfloat16)
    _, got = moekit_grads(x, w, args, grad_out)
    want = reference_grads(x, w, args, grad_out)
    assert got["x"].dtype == torch.bfloat16 and got["bias"].dtype == torch.bfloat16
    for name, g in got.items():
        assert ref.rel_err(g, want[name]) <= TOLERANCE[torch.bfloat16], name


def test_matmul_ogs_gradients_same_bits_every_run(gen):
    x, w, args = matmul_case(gen, "mxfp4", 12, 4, 3, 64, 64, "combine")
    grad_out = randn(gen, 12, 64)
    runs = [moekit_grads(x, w, args, grad_out)[1] for _ in range(3)]
    for other in runs[1:]:
        for name in runs[0]:
            assert torch.equal(runs[0][name].view(torch.int32), other[name].view(torch.int32)), name


def test_only_the_asked_gradients_flow(gen):
    """Leaves that do not require grad get none; the integer indices never do."""
    x, w, args = matmul_case(gen, "mxfp4", 6, 4, 2, 64, 64, "combine")
    args["bias"] = args["bias"].detach()
    out = moekit.matmul_ogs(x, w.arg, **args)
    out.sum().backward()
    assert x.grad is not None and args["combine_weight"].grad is not None
    assert args["bias"].grad is None


@pytest.mark.parametrize("mode", ["swiglu", "combine"])
def test_backward_computes_only_the_gradients_asked_for(gen, mode):
    """output_mask: a gradient not asked for comes back without elements, the others with the
    bits of a call that asks for all three."""
    x, w, args = matmul_case(gen, "mxfp4", 9, 4, 2, 64, 64, mode)
    call = (x.detach(), *w.arg, args["bias"].detach(), args["expert_offsets"], args.get("gather_idx"),
            args.get("scatter_idx"), args["combine_weight"].detach() if "combine_weight" in args else None,
            mode == "swiglu", 1.702, 1.0)
    rows = 9 if mode == "combine" else 18
    grad_out = randn(gen, rows, 32 if mode == "swiglu" else 64)
    full = torch.ops.moekit.matmul_ogs_backward(grad_out, *call)
    for mask in ([False, True, True], [True, False, False], [False, False, True]):
        got = torch.ops.moekit.matmul_ogs_backward(grad_out, *call, mask)
        for asked, g, f in zip(mask, got, full):
            if asked:
                assert torch.equal(g, f)
            else:
                assert g.numel() == 0


def test_frozen_float_weights_requiring_grad_are_refused(gen):
    x = randn(gen, 4, 32).requires_grad_()
    w = randn(gen, 1, 16, 32).requires_grad_()
    with pytest.raises(ValueError, match=r"moekit.matmul_ogs: 'w' requires grad, but expert weights are frozen"):
        moekit.matmul_ogs(x, w)


def test_gradient_of_a_gradient_is_refused(gen):
    x, w, args = matmul_case(gen, "mxfp4", 5, 4, 2, 64, 64, "swiglu")
    out = moekit.matmul_ogs(x, w.arg, **args)
    with pytest.raises(RuntimeError, match=r"moekit.matmul_ogs_backward: '\w+' requires grad, but moekit computes "
                                           r"first-order gradients only"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


def test_gradient_of_a_gradient_is_refused_by_every_differentiable_op(gen):
    layer = MoeLayer(gen, 8, "mxfp4", torch.float32)
    x = layer.draw_x(gen, 5, H, dtype=torch.float32, k=2).requires_grad_()
    logits = randn(gen, 5, 8).requires_grad_()
    residual = randn(gen, 5, H)
    op_call = (x, layer.gate_weight, layer.gate_bias, *layer.w1.arg, layer.b1, *layer.w2.arg, layer.b2, 2, 1.702, 7.0)
    for op, out in (("moe_mlp", torch.ops.moekit.moe_mlp(*op_call)),
                    ("route", moekit.route(logits, 2).expert_weight),
                    ("add_rms_norm", moekit.add_rms_norm(x, residual, torch.ones(H), 1e-5)[1]),
                    ("matmul_ogs_backward", layer.run(x, experts_per_token=2))):  # its last step's backward
        with pytest.raises(RuntimeError, match=rf"moekit.{op}: (\S+ requires grad, but )?moekit computes first-order "
                                               r"gradients only"):
            torch.autograd.grad(out.sum(), x if op != "route" else logits, create_graph=True)


def test_opcheck_moe_mlp_and_add_rms_norm_with_gradients(gen):
    layer = MoeLayer(gen, 8, "mxfp4", torch.float32)
    x = layer.draw_x(gen, 4, H, dtype=torch.float32, k=2).requires_grad_()
    layer.gate_weight.requires_grad_()
    call = (x, layer.gate_weight, layer.gate_bias, *layer.w1.arg, layer.b1, *layer.w2.arg, layer.b2, 2, 1.702, 7.0)
    for op, args in ((torch.ops.moekit.moe_mlp.default, call),
                     (torch.ops.moekit.add_rms_norm.default, (x, randn(gen, 4, H), torch.ones(H).requires_grad_(),
                                                              1e-5))):
        result = opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), (op, result)


def test_repacked_weights_change_no_gradient(gen):
    """moe_mlp given each expert weight with its repack_mxfp4 output too, through both training
    paths (moekit.moe_mlp's composition, the op's own backward) and opcheck: the output and every
    gradient the same bits as without."""
    layer = MoeLayer(gen, 8, "mxfp4", torch.float32)
    x = layer.draw_x(gen, 6, H, dtype=torch.float32, k=2)
    slabs = (*moekit.repack_mxfp4(*layer.w1.arg), *moekit.repack_mxfp4(*layer.w2.arg))
    w1, w2 = layer.w1.arg + slabs[:2], layer.w2.arg + slabs[2:]
    runs = {}
    for name, w in (("plain", (layer.w1.arg, layer.w2.arg)), ("repacked", (w1, w2))):
        for path in ("composed", "op"):
            leaves = [x.clone().requires_grad_(), layer.gate_weight.clone().requires_grad_(),
                      layer.b1.clone().requires_grad_()]
            if path == "composed":
                y = moekit.moe_mlp(leaves[0], leaves[1], layer.gate_bias, w[0], leaves[2], w[1], layer.b2,
                                   experts_per_token=2)
            else:
                extra = slabs if name == "repacked" else ()
                y = torch.ops.moekit.moe_mlp(leaves[0], leaves[1], layer.gate_bias, *layer.w1.arg, leaves[2],
                                             *layer.w2.arg, layer.b2, 2, 1.702, 7.0, *extra)
            y.backward(torch.ones_like(y))
            runs[name, path] = [y.detach()] + [t.grad for t in leaves]
    for path in ("composed", "op"):
        for plain, repacked in zip(runs["plain", path], runs["repacked", path]):
            assert torch.equal(plain, repacked), path
    call = (x, layer.gate_weight.requires_grad_(), layer.gate_bias, *layer.w1.arg, layer.b1, *layer.w2.arg, layer.b2,
            2, 1.702, 7.0, *slabs)
    result = opcheck(torch.ops.moekit.moe_mlp.default, call)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_backward_op_checks_its_gradient(gen):
    x, w, args = matmul_case(gen, "mxfp4", 5, 4, 2, 64, 64, "swiglu")
    with pytest.raises(ValueError, match=r"moekit.matmul_ogs_backward: 'grad_out' expected shape \[10, 32\]"):
        torch.ops.moekit.matmul_ogs_backward(randn(gen, 5, 64), x.detach(), *w.arg, args["bias"].detach(),
                                             args["expert_offsets"], args["gather_idx"], None, None, True, 1.702, 1.0)


def test_opcheck_matmul_ogs_with_gradients(gen):
    x, w, args = matmul_case(gen, "mxfp4", 6, 4, 2, 64, 64, "combine")
    call = (x, *w.arg, args["bias"], args["expert_offsets"], None, args["scatter_idx"], args["combine_weight"],
            False, 0.0, 0.0)
    result = opcheck(torch.ops.moekit.matmul_ogs.default, call)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_torch_compile_of_a_training_step(gen):
    """A loss through matmul_ogs compiled whole (fullgraph) gives eager's gradients."""
    x, w, args = matmul_case(gen, "mxfp4", 6, 4, 2, 64, 64, "combine")
    bias, combine_weight = args["bias"], args["combine_weight"]
    target = randn(gen, 6, 64)

    def step(x, bias, combine_weight):
        out = moekit.matmul_ogs(x, w.arg, bias, expert_offsets=args["expert_offsets"],
                                scatter_idx=args["scatter_idx"], combine_weight=combine_weight)
        return ((out - target) ** 2).mean()

    grads = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        for t in (x, bias, combine_weight):
            t.grad = None
        fn(x, bias, combine_weight).backward()
        grads.append([t.grad.clone() for t in (x, bias, combine_weight)])
    for eager, compiled in zip(*grads):
        assert torch.allclose(eager, compiled, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------- route

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,E,k,ties", [(9, 8, 2, False), (7, 32, 4, True), (5, 4, 4, False), (0, 6, 2, False)])
def test_route_gradient_against_float64_autograd(gen, T, E, k, ties, dtype):
    """The expert weights' gradient reaches the chosen logits as the softmax over them says;
    with ties the forward's choice (the lower expert) is the one differentiated."""
    values = randn(gen, T, E)
    if ties:
        values = (values * 2).round() / 2  # many equal logits
    logits = values.to(dtype).requires_grad_()
    grad_weight = randn(gen, T, k)
    r = moekit.route(logits, k)
    r.expert_weight.backward(grad_weight)
    logits64 = logits.detach().double().requires_grad_()
    idx = ref.route(logits64.detach(), k).expert_idx
    assert torch.equal(r.expert_idx.long(), idx)
    torch.softmax(logits64.gather(1, idx), dim=-1).backward(grad_weight.double())
    assert logits.grad.dtype == dtype and logits.grad.shape == (T, E)
    assert ref.rel_err(logits.grad, logits64.grad) <= TOLERANCE[dtype]
    unchosen = torch.ones(T, E, dtype=torch.bool).scatter_(1, idx, False)
    assert (logits.grad[unchosen] == 0).all()


def test_opcheck_route_with_gradients(gen):
    """opcheck's AOT-dispatch check is left out: its harness sums every output in place into one
    tensor, and route's first output is an integer one (torch's optests, aot_autograd.py)."""
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    result = opcheck(torch.ops.moekit.route.default, (randn(gen, 6, 8).requires_grad_(), 3), test_utils=utils)
    assert set(result) == set(utils) and all(v == "SUCCESS" for v in result.values()), result


@cuda
def test_route_gradient_on_cuda_matches_cpu(gen):
    """The same routing on both backends, the same gradient to float32 rounding (torch's sums)."""
    logits, grad_weight = randn(gen, 33, 32), randn(gen, 33, 4)
    grads = []
    for device in ("cpu", "cuda"):
        leaf = logits.to(device).detach().requires_grad_()
        moekit.route(leaf, 4).expert_weight.backward(grad_weight.to(device))
        grads.append(leaf.grad.cpu())
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------- moe_mlp

def moe_reference_grads(layer, x, k, grad_y, leaves):
    """The float64 reference layer's gradients for x and `leaves` (name -> moekit tensor): the
    gate, the routing the reference chooses (x is drawn away from ties), mlp1 with its SwiGLU
    output rounded to x's dtype as moekit stores it, mlp2 with the combine."""
    x64 = x.detach().double().requires_grad_()
    p = {name: t.detach().double().requires_grad_() for name, t in leaves.items()}
    gate_bias = p.get("gate_bias", layer.gate_bias.double() if layer.gate_bias is not None else None)
    logits = x64 @ p["gate_weight"].T + gate_bias
    r = ref.route(logits.detach(), k)
    weight = torch.softmax(logits.gather(1, r.expert_idx), dim=-1)
    act = ref.matmul_ogs(x64, layer.w1.dense, p["b1"], expert_offsets=r.expert_offsets, gather_idx=r.gather_idx,
                         swiglu_args=(1.702, 7.0)).to(x.dtype).to(torch.float64)
    y = ref.matmul_ogs(act, layer.w2.dense, p["b2"], expert_offsets=r.expert_offsets, scatter_idx=r.scatter_idx,
                       combine_weight=weight)
    if y.requires_grad:
        y.backward(grad_y.double())
    return {"x": x64.grad, **{name: t.grad for name, t in p.items()}}


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("E,k,T", [(8, 2, 9), (32, 4, 5), (4, 4, 3), (8, 2, 0)])
def test_moe_mlp_gradients_against_float64_autograd(gen, E, k, T, x_dtype):
    """x, the gate's weight and bias and both experts' biases, the experts MXFP4 and frozen."""
    layer = MoeLayer(gen, E, "mxfp4", x_dtype)
    x = layer.draw_x(gen, T, H, dtype=x_dtype, k=k).requires_grad_()
    leaves = {"gate_weight": layer.gate_weight, "gate_bias": layer.gate_bias, "b1": layer.b1, "b2": layer.b2}
    for t in leaves.values():
        t.requires_grad_()
    grad_y = randn(gen, T, H, dtype=x_dtype)
    layer.run(x, experts_per_token=k).backward(grad_y)
    want = moe_reference_grads(layer, x, k, grad_y, leaves)
    got = {"x": x.grad, **{name: t.grad for name, t in leaves.items()}}
    for name, g in got.items():
        assert g is not None and g.dtype == x_dtype, name
        if T == 0:  # no token: nothing reaches the parameters
            assert (g == 0).all(), name
            continue
        assert g.shape == want[name].shape, name
        assert ref.rel_err(g, want[name]) <= TOLERANCE[x_dtype], (name, ref.rel_err(g, want[name]))


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_moe_mlp_op_and_its_training_composition_agree(gen, x_dtype):
    """moekit.moe_mlp in grad mode (the op's composition, activations kept) and the op called
    directly (its steps recomputed in the backward): the same output, the same gradients up to
    where x's gradient is rounded (once, or per step)."""
    layer = MoeLayer(gen, 8, "mxfp4", x_dtype)
    x = layer.draw_x(gen, 11, H, dtype=x_dtype, k=2).requires_grad_()
    leaves = [x, layer.gate_weight, layer.gate_bias, layer.b1, layer.b2]
    for t in leaves:
        t.requires_grad_()
    grad_y = randn(gen, 11, H, dtype=x_dtype)
    results = []
    for fn in (lambda: layer.run(x, experts_per_token=2),
               lambda: torch.ops.moekit.moe_mlp(x, layer.gate_weight, layer.gate_bias, *layer.w1.arg, layer.b1,
                                                *layer.w2.arg, layer.b2, 2, 1.702, 7.0)):
        y = fn()
        grads = torch.autograd.grad(y, leaves, grad_y)
        results.append((y.detach(), grads))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        assert ref.rel_err(a, b.double()) <= TOLERANCE[x_dtype] / 10


def test_moe_mlp_in_grad_mode_refuses_as_the_op_does(gen):
    """Bad input to the training composition is refused with the layer's own message."""
    layer = MoeLayer(gen, 8, "mxfp4", torch.float32)
    x = layer.draw_x(gen, 5, H, dtype=torch.float32, k=2).requires_grad_()
    with pytest.raises(ValueError, match=r"moekit.moe_mlp: 'gate_bias' expected shape \[8\], got \[7\]"):
        moekit.moe_mlp(x, layer.gate_weight, layer.gate_bias[:7], layer.w1.arg, layer.b1, layer.w2.arg, layer.b2,
                       experts_per_token=2)


def test_moe_mlp_gradients_same_bits_every_run(gen):
    layer = MoeLayer(gen, 8, "mxfp4", torch.bfloat16)
    x = layer.draw_x(gen, 17, H, dtype=torch.bfloat16, k=2).requires_grad_()
    layer.gate_weight.requires_grad_()
    grad_y = randn(gen, 17, H, dtype=torch.bfloat16)
    runs = []
    for _ in range(3):
        x.grad = layer.gate_weight.grad = None
        layer.run(x, experts_per_token=2).backward(grad_y)
        runs.append((x.grad.clone(), layer.gate_weight.grad.clone()))
    for other in runs[1:]:
        assert all(torch.equal(a.view(torch.int16), b.view(torch.int16)) for a, b in zip(runs[0], other))


# ------------------------------------------------------------------------------ add_rms_norm

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,H", [(5, 64), (3, 33), (0, 16)])
def test_add_rms_norm_gradients_against_float64_autograd(gen, T, H, dtype):
    """x, residual and scale from both outputs' gradients (the residual stream's and the norm's)."""
    x, residual = randn(gen, T, H, dtype=dtype).requires_grad_(), randn(gen, T, H, dtype=dtype, scale=3.0).requires_grad_()
    scale = (torch.rand(H, generator=gen) + 0.5).requires_grad_()
    grad_sum, grad_out = randn(gen, T, H, dtype=dtype), randn(gen, T, H, dtype=dtype)
    total, out = moekit.add_rms_norm(x, residual, scale, 1e-5)
    torch.autograd.backward([total, out], [grad_sum, grad_out])
    leaves64 = [t.detach().double().requires_grad_() for t in (x, residual, scale)]
    total64, out64 = ref.add_rms_norm(*leaves64[:2], leaves64[2], 1e-5)
    if T > 0:
        torch.autograd.backward([total64, out64], [grad_sum.double(), grad_out.double()])
    for got, want in zip((x.grad, residual.grad, scale.grad), leaves64):
        assert got is not None and got.shape == want.shape
        if T == 0:
            assert (got == 0).all()
        else:
            assert ref.rel_err(got, want.grad) <= TOLERANCE[dtype], ref.rel_err(got, want.grad)


# ------------------------------------------------------------------------- the runner's model

def test_runner_model_trains_what_the_user_unfreezes():
    """The runner's GptOss keeps its weights as buffers (frozen); a buffer made a Parameter trains
    through the whole model (its norms, attention and MXFP4 MoE layers) on the CPU."""
    from moekit.models import load_model

    shipped = Path(moekit.__file__).parent / "models" / "tiny_gpt_oss"
    model = load_model(shipped, "cpu", dtype=torch.float32, progress=False)
    model.norm.scale = torch.nn.Parameter(model.norm.scale.clone())
    model.block[0].mlp.gate.bias = torch.nn.Parameter(model.block[0].mlp.gate.bias.clone())
    assert [name for name, _ in model.named_parameters()] == ["block.0.mlp.gate.bias", "norm.scale"]
    tokens = torch.tensor([5, 17, 300, 41, 9, 1200, 77, 3, 64, 2])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(tokens[:-1]), tokens[1:])
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                   for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_peft_lora_on_the_attention_projections_trains():
    """transformers' model with moekit's MoE, frozen, with PEFT's LoRA on q_proj and v_proj: the
    adapters train (the loss falls), the MXFP4 experts stay as loaded."""
    from peft import LoraConfig, get_peft_model

    from moekit.transformers_gpt_oss import from_pretrained

    shipped = Path(moekit.__file__).parent / "models" / "tiny_gpt_oss"
    model = from_pretrained(shipped, dtype=torch.float32)
    model.requires_grad_(False)
    experts = {n: b.clone() for n, b in model.named_buffers() if "experts" in n}
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    trained = [p for p in lora.parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n, p in lora.named_parameters() if p.requires_grad)
    ids = torch.tensor([[5, 17, 300, 41, 9, 1200, 77, 3, 64, 2]])
    optimizer = torch.optim.AdamW(trained, lr=1e-2)
    losses = []
    for _ in range(6):
        loss = lora(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(torch.equal(b, experts[n]) for n, b in model.named_buffers() if n in experts)


def test_tensor_parallel_blocks_refuse_gradients():
    """A block whose ranks' outputs are all-reduced in place refuses to be differentiated (the
    reduction would drop out of the gradient), whether the input or a parameter wants one."""
    from gpt_oss_fixtures import tiny_config
    from moekit.models.gpt_oss import AttentionBlock, MLPBlock, TensorParallel

    config = tiny_config()
    tp = TensorParallel.plan(config, rank=0, world_size=2)
    assert tp.shard_heads
    blocks = (MLPBlock(config, tp, "cpu", torch.float32, None),
              AttentionBlock(config, 0, tp, "cpu", torch.float32, None))
    for block in blocks:
        args = (None, None) if isinstance(block, AttentionBlock) else ()
        with pytest.raises(RuntimeError, match="gradients through a tensor-parallel block are not supported"):
            block(torch.zeros(3, config.hidden_size, requires_grad=True), *args)
        block.norm.scale = torch.nn.Parameter(block.norm.scale.clone())
        with pytest.raises(RuntimeError, match="gradients through a tensor-parallel block are not supported"):
            block(torch.zeros(3, config.hidden_size), *args)
