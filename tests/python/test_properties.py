"""Property tests: route, matmul_ogs and moe_mlp against the float64 reference (reference.py) on
shapes hypothesis draws, empty dimensions included (T = 0, N = 0, K = 0, experts without rows);
then matmul_ogs's and moe_mlp's gradients against torch autograd through the same references.

Values are fresh random normals from a seed hypothesis draws too, so a failure reproduces from
hypothesis's report. Every output element is checked: integers exactly, floats within a bound
relative to the output's RMS (float32: 1e-5; bfloat16 outputs: 1e-2, two bf16 roundings).
Examples are bounded (derandomized, no database) so CI stays fast and repeatable.
"""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moekit
import reference as ref

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def normal(seed: int, *shape, dtype=torch.float32, scale=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def assert_every_element_close(got: torch.Tensor, want64: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.shape == want64.shape and got.dtype == dtype, (got.shape, want64.shape, got.dtype)
    if got.numel() == 0:
        return
    assert torch.isfinite(got).all()
    rms = want64.pow(2).mean().sqrt().item()
    bound = TOL[dtype] * (want64.abs() + rms + 1e-30)
    bad = (got.double() - want64).abs() > bound
    assert not bad.any(), f"{int(bad.sum())} of {got.numel()} elements off, first at {bad.nonzero()[0].tolist()}"


@st.composite
def route_problems(draw):
    E = draw(st.integers(1, 40))
    return draw(st.integers(0, 40)), E, draw(st.integers(1, E)), draw(st.integers(0, 2 ** 31 - 1))


@SETTINGS
@given(route_problems(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_route(problem, dtype):
    T, E, k, seed = problem
    logits = normal(seed, T, E).to(dtype)
    got, want = moekit.route(logits, k), ref.route(logits, k)
    for name in ("expert_idx", "expert_counts", "expert_offsets", "gather_idx", "scatter_idx"):
        assert torch.equal(getattr(got, name).long(), getattr(want, name)), name
    assert_every_element_close(got.expert_weight, want.expert_weight, torch.float32)


@st.composite
def matmul_problems(draw):
    w_kind = draw(st.sampled_from(["float32", "bfloat16", "mxfp4"]))
    E = draw(st.integers(1, 6))
    swiglu = draw(st.booleans())
    N = 2 * draw(st.integers(0, 24)) if swiglu else draw(st.integers(0, 40))
    K = 32 * draw(st.integers(0, 3)) if w_kind == "mxfp4" else draw(st.integers(0, 80))
    T = draw(st.integers(0, 24))
    k = draw(st.integers(1, E))
    mode = draw(st.sampled_from(["gather", "scatter", "plain"]))
    x_dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    return dict(w_kind=w_kind, E=E, N=N, K=K, T=T, k=k, mode=mode, swiglu=swiglu, x_dtype=x_dtype,
                bias=draw(st.booleans()), combine=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 31 - 1)))


def expert_weights(kind: str, seed: int, E: int, N: int, K: int):
    w = normal(seed, E, N, K, scale=max(K, 1) ** -0.5)
    if kind == "mxfp4":
        blocks, scales = moekit.quantize_mxfp4(w)
        return (blocks, scales), ref.dequantize_mxfp4(blocks, scales)
    w = w.to(getattr(torch, kind))
    return w, w.double()


def draw_matmul(p):
    """The drawn problem's call: (x, w, w64, bias, combine_weight, index kwargs, swiglu), the
    bias and combine weights tensors of their own (leaves a test may make require grad)."""
    E, N, K, T, k, seed = p["E"], p["N"], p["K"], p["T"], p["k"], p["seed"]
    w, w64 = expert_weights(p["w_kind"], seed + 1, E, N, K)
    bias = normal(seed + 2, E, N) if p["bias"] else None
    r = moekit.route(normal(seed + 3, T, E), k)
    combine, kwargs = None, {}
    if p["mode"] == "plain":  # one expert, rows in order
        w, w64 = (tuple(t[:1] for t in w) if isinstance(w, tuple) else w[:1]), w64[:1]
        bias = bias[:1].clone() if bias is not None else None
        x = normal(seed + 4, T, K, dtype=p["x_dtype"])
    elif p["mode"] == "gather":
        x = normal(seed + 4, T, K, dtype=p["x_dtype"])
        kwargs = dict(expert_offsets=r.expert_offsets, gather_idx=r.gather_idx)
    else:
        x = normal(seed + 4, T * k, K, dtype=p["x_dtype"])
        combine = r.expert_weight.clone() if p["combine"] else None
        kwargs = dict(expert_offsets=r.expert_offsets, scatter_idx=r.scatter_idx)
    return x, w, w64, bias, combine, kwargs, (1.702, 7.0) if p["swiglu"] else None


@SETTINGS
@given(matmul_problems())
def test_matmul_ogs(p):
    x, w, w64, bias, combine, kwargs, swiglu = draw_matmul(p)
    got = moekit.matmul_ogs(x, w, bias, swiglu=swiglu, combine_weight=combine, **kwargs)
    want = ref.matmul_ogs(x, w64, bias, swiglu_args=swiglu, combine_weight=combine, **kwargs)
    assert_every_element_close(got, want, p["x_dtype"])


@st.composite
def layer_problems(draw):
    E = draw(st.integers(1, 8))
    return dict(T=draw(st.integers(0, 12)), E=E, k=draw(st.integers(1, E)), H=32 * draw(st.integers(0, 2)),
                I=32 * draw(st.integers(1, 2)), w_kind=draw(st.sampled_from(["mxfp4", "bfloat16"])),
                x_dtype=draw(st.sampled_from([torch.float32, torch.bfloat16])), biases=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 31 - 1)))


def draw_layer(p):
    """The drawn problem's layer: (x, gate, gate_bias, w1, w1_64, b1, w2, w2_64, b2), tokens whose
    k-th and (k+1)-th float64 logits nearly tie redrawn (float32 may order them apart)."""
    T, E, k, H, I, seed, dtype = p["T"], p["E"], p["k"], p["H"], p["I"], p["seed"], p["x_dtype"]
    gate = normal(seed, E, H, dtype=dtype, scale=max(H, 1) ** -0.5)
    w1, w1_64 = expert_weights(p["w_kind"], seed + 1, E, 2 * I, H)
    w2, w2_64 = expert_weights(p["w_kind"], seed + 2, E, H, I)
    b1 = normal(seed + 3, E, 2 * I, dtype=dtype) if p["biases"] else None
    b2 = normal(seed + 4, E, H, dtype=dtype) if p["biases"] else None
    gate_bias = normal(seed + 5, E, dtype=dtype) if p["biases"] else None
    x = normal(seed + 6, T, H, dtype=dtype)
    for attempt in range(20):
        logits = x.double() @ gate.double().T + (gate_bias.double() if gate_bias is not None else 0)
        if k == E or T == 0 or H == 0:
            break
        top = torch.sort(logits, dim=1, descending=True).values
        tied = (top[:, k - 1] - top[:, k]) < 1e-4
        if not tied.any():
            break
        x[tied] = normal(seed + 7 + attempt, int(tied.sum()), H, dtype=dtype)
    return x, gate, gate_bias, w1, w1_64, b1, w2, w2_64, b2


@SETTINGS
@given(layer_problems())
def test_moe_mlp(p):
    k, dtype = p["k"], p["x_dtype"]
    x, gate, gate_bias, w1, w1_64, b1, w2, w2_64, b2 = draw_layer(p)
    got = moekit.moe_mlp(x, gate, gate_bias, w1, b1, w2, b2, experts_per_token=k)
    want = ref.moe_mlp(x, gate, gate_bias, w1_64, b1, w2_64, b2, experts_per_token=k, act_dtype=dtype)
    assert_every_element_close(got, want, dtype)


# ---------------------------------------------------------------------------------- gradients
# The ops' gradients against torch autograd through the same float64 references, on the same
# drawn problems: the relative error over each gradient (float32: 1e-5; bfloat16 inputs: 1e-2).

GRAD_SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow])


def assert_gradient_close(got: torch.Tensor, want64, dtype: torch.dtype) -> None:
    """`want64` None: no path reached the leaf in the reference (no rows), so zeros."""
    assert got is not None and torch.isfinite(got).all()
    if want64 is None:
        assert (got == 0).all()
        return
    assert got.shape == want64.shape
    assert ref.rel_err(got, want64) <= TOL[dtype], ref.rel_err(got, want64)


def leaf64(t):
    return None if t is None else t.detach().double().requires_grad_()


@GRAD_SETTINGS
@given(matmul_problems())
def test_matmul_ogs_gradients(p):
    """x, bias and combine_weight; the weights frozen."""
    x, w, w64, bias, combine, kwargs, swiglu = draw_matmul(p)
    leaves = {"x": x, "bias": bias, "combine_weight": combine}
    for t in leaves.values():
        if t is not None:
            t.requires_grad_()
    out = moekit.matmul_ogs(x, w, bias, swiglu=swiglu, combine_weight=combine, **kwargs)
    grad = normal(p["seed"] + 5, *out.shape, dtype=out.dtype)
    out.backward(grad)
    ref_leaves = {name: leaf64(t) for name, t in leaves.items()}
    want = ref.matmul_ogs(ref_leaves["x"], w64, ref_leaves["bias"], swiglu_args=swiglu,
                          combine_weight=ref_leaves["combine_weight"], **kwargs)
    if want.requires_grad:
        want.backward(grad.double())
    for name, t in leaves.items():
        if t is not None:
            assert_gradient_close(t.grad, ref_leaves[name].grad, p["x_dtype"])


@GRAD_SETTINGS
@given(layer_problems())
def test_moe_mlp_gradients(p):
    """x, the gate's weight and bias, mlp1's and mlp2's biases; the experts frozen. The reference
    routes by its own float64 logits (tokens drawn away from ties, as test_moe_mlp draws them)."""
    T, k, H, seed, dtype = p["T"], p["k"], p["H"], p["seed"], p["x_dtype"]
    x, gate, gate_bias, w1, w1_64, b1, w2, w2_64, b2 = draw_layer(p)
    leaves = {"x": x, "gate": gate, "gate_bias": gate_bias, "b1": b1, "b2": b2}
    for t in leaves.values():
        if t is not None:
            t.requires_grad_()
    y = moekit.moe_mlp(x, gate, gate_bias, w1, b1, w2, b2, experts_per_token=k)
    grad = normal(seed + 30, T, H, dtype=dtype)
    y.backward(grad)
    r64 = {name: leaf64(t) for name, t in leaves.items()}
    logits = r64["x"] @ r64["gate"].T
    if gate_bias is not None:
        logits = logits + r64["gate_bias"]
    routing = ref.route(logits.detach(), k)
    weight = torch.softmax(logits.gather(1, routing.expert_idx), dim=-1)
    act = ref.matmul_ogs(r64["x"], w1_64, r64["b1"], expert_offsets=routing.expert_offsets,
                         gather_idx=routing.gather_idx, swiglu_args=(1.702, 7.0)).to(dtype).double()
    want = ref.matmul_ogs(act, w2_64, r64["b2"], expert_offsets=routing.expert_offsets,
                          scatter_idx=routing.scatter_idx, combine_weight=weight)
    if want.requires_grad and want.numel():
        want.backward(grad.double())
    for name, t in leaves.items():
        if t is not None:
            assert_gradient_close(t.grad, r64[name].grad, dtype)
