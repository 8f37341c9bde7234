"""moekit._eager (python/csrc/eager_calls.cpp): the eager calls of moekit.moe_mlp, route and
add_rms_norm with their arguments read in C. A call of plain arguments runs the op there and
gives the op's bits; any other call comes back NotImplemented, and the wrapper's general path
then gives what it always gave: the same result, the same error, autograd's record."""

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

import moekit
from moekit import _eager
from conftest import H, MoeLayer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def layer_on(gen, device, w_kind, **bias):
    layer = MoeLayer(gen, 4, w_kind, torch.bfloat16, **bias)
    move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    w1 = tuple(map(move, layer.w1.arg)) if isinstance(layer.w1.arg, tuple) else move(layer.w1.arg)
    w2 = tuple(map(move, layer.w2.arg)) if isinstance(layer.w2.arg, tuple) else move(layer.w2.arg)
    return [move(layer.gate_weight), move(layer.gate_bias), w1, move(layer.b1), w2, move(layer.b2)], layer


def op_result(x, args, k=2, alpha=1.702, limit=7.0, batch_invariant=False):
    """torch.ops.moekit.moe_mlp on the same arguments, below the Autograd key (as the wrapper calls it)."""
    gw, gb, w1, b1, w2, b2 = args
    parts = lambda w: (list(w) + [None] * (4 - len(w))) if isinstance(w, tuple) else [w, None, None, None]  # noqa: E731
    (v1, s1, c1, ss1), (v2, s2, c2, ss2) = parts(w1), parts(w2)
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.moekit.moe_mlp.default(x, gw, gb, v1, s1, b1, v2, s2, b2, k, alpha, limit, c1, ss1, c2, ss2,
                                                batch_invariant)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("w_kind", ["bfloat16", "mxfp4", "slabs"])
@pytest.mark.parametrize("biases", [True, False])
def test_plain_call_runs_the_op(gen, device, w_kind, biases):
    args, layer = layer_on(gen, device, w_kind, gate_bias=biases, mlp1_bias=biases, mlp2_bias=biases)
    x = layer.draw_x(gen, 9, H, dtype=torch.bfloat16, k=2).to(device)
    y = _eager.moe_mlp(x, *args, 2, 1.702, 7.0, False)
    assert isinstance(y, torch.Tensor) and y.device == x.device
    assert torch.equal(y, op_result(x, args))
    assert torch.equal(moekit.moe_mlp(x, *args, experts_per_token=2), y)
    # an int where a float goes, as the wrapper takes it; a list of weight parts as a tuple
    y_int = _eager.moe_mlp(x, *args[:4], list(args[4]) if isinstance(args[4], tuple) else args[4], args[5], 2, 2, 7,
                           True)
    assert torch.equal(y_int, op_result(x, args, alpha=2.0, limit=7.0, batch_invariant=True))


class Marked(torch.Tensor):
    """A tensor subclass: its __torch_function__ is the subclass's to run."""


class Counting(TorchFunctionMode):
    """A torch function mode that counts the calls it sees."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lead", [(2, 3), (3, 1, 2), (), (0, 4), "strided"],
                         ids=["3-d", "4-d", "1-d", "no tokens", "3-d strided"])
def test_x_of_any_rank_runs_in_c(gen, device, lead):
    """x [..., H] (transformers' layers pass [batch, tokens, H]): its leading dimensions flattened for
    the op and restored on y, as the wrapper's general path reshapes them (a copy where x's leading
    dimensions do not flatten in place)."""
    args, layer = layer_on(gen, device, "mxfp4")
    if lead == "strided":
        lead, x = (3, 2), layer.draw_x(gen, 2, 3, H, dtype=torch.bfloat16, k=2).to(device).transpose(0, 1)
        assert not x.is_contiguous()
    else:
        x = layer.draw_x(gen, *lead, H, dtype=torch.bfloat16, k=2).to(device)
    want = op_result(x.reshape(math.prod(lead), H), args).reshape(x.shape)
    y = _eager.moe_mlp(x, *args, 2, 1.702, 7.0, False)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.is_contiguous()
    assert torch.equal(y, want)
    assert torch.equal(moekit.moe_mlp(x, *args, experts_per_token=2), want)


@pytest.mark.parametrize("case", ["subclass", "x 0-d", "bool k", "float k", "three weight parts",
                                  "int batch_invariant", "string alpha", "huge int alpha", "requires grad",
                                  "function mode"])
def test_other_calls_take_the_general_path(gen, case):
    args, layer = layer_on(gen, "cpu", "mxfp4")
    x = layer.draw_x(gen, 6, H, dtype=torch.bfloat16, k=2)
    scalars = dict(experts_per_token=2, swiglu_alpha=1.702, swiglu_limit=7.0, batch_invariant=False)
    want = op_result(x, args)
    if case == "subclass":
        x = x.as_subclass(Marked)
    elif case == "x 0-d":
        x = x[0, 0]
    elif case == "bool k":
        scalars["experts_per_token"] = True
    elif case == "float k":
        scalars["experts_per_token"] = 2.0
    elif case == "three weight parts":
        args[2] = args[2] + (args[2][0],)
    elif case == "int batch_invariant":
        scalars["batch_invariant"] = 0
    elif case == "string alpha":
        scalars["swiglu_alpha"] = "1.702"
    elif case == "huge int alpha":
        scalars["swiglu_alpha"] = 10 ** 400
    elif case == "requires grad":
        args[1] = args[1].float().requires_grad_()  # gate_bias
        want = op_result(x, args)

    def general_path():
        return moekit.moe_mlp(x, *args, **scalars)

    if case == "function mode":
        with Counting() as mode:
            assert _eager.moe_mlp(x, *args, *scalars.values()) is NotImplemented
            y = moekit.moe_mlp(x, *args, **scalars)
        assert mode.calls > 0 and torch.equal(y, want)
        return
    assert _eager.moe_mlp(x, *args, *scalars.values()) is NotImplemented
    if case in ("bool k", "float k", "int batch_invariant", "string alpha"):
        with pytest.raises(TypeError, match="moekit.moe_mlp: '(experts_per_token|batch_invariant|swiglu_alpha)'"):
            general_path()
    elif case == "huge int alpha":
        with pytest.raises(ValueError, match="an int too large"):
            general_path()
    elif case == "x 0-d":
        with pytest.raises(ValueError, match="moekit.moe_mlp: 'x' expected shape \\[..., H\\], got a 0-d tensor"):
            general_path()
    elif case == "three weight parts":
        with pytest.raises(ValueError, match="a sequence of 3"):
            general_path()
    elif case == "requires grad":
        y = general_path()
        assert y.grad_fn is not None and torch.equal(y.detach(), want)
        y.float().sum().backward()
        assert args[1].grad is not None and torch.isfinite(args[1].grad).all()
    else:
        y = general_path()
        assert type(y) is torch.Tensor or case == "subclass"
        assert torch.equal(y.as_subclass(torch.Tensor), want)


@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_call_of_a_trainable_layer_runs_in_c(gen, device):
    args, layer = layer_on(gen, device, "bfloat16")
    args[0].requires_grad_()
    x = layer.draw_x(gen, 5, H, dtype=torch.bfloat16, k=2).to(device)
    assert _eager.moe_mlp(x, *args, 2, 1.702, 7.0, False) is NotImplemented
    with torch.no_grad():
        y = _eager.moe_mlp(x, *args, 2, 1.702, 7.0, False)
        assert isinstance(y, torch.Tensor) and y.grad_fn is None
        assert torch.equal(y, op_result(x, args))


@pytest.mark.parametrize("bad", ["x dtype", "gate shape", "k too large", "alpha beyond float32"])
def test_errors_are_the_ops(gen, bad):
    args, layer = layer_on(gen, "cpu", "mxfp4")
    x = layer.draw_x(gen, 6, H, dtype=torch.bfloat16, k=2)
    k, alpha = 2, 1.702
    if bad == "x dtype":
        x = x.half()
    elif bad == "gate shape":
        args[0] = args[0][:, :-1]
    elif bad == "k too large":
        k = 5
    else:
        alpha = 1e39
    with pytest.raises(Exception) as eager_error:
        _eager.moe_mlp(x, *args, k, alpha, 7.0, False)
    with pytest.raises(Exception) as op_error:
        op_result(x, args, k=k, alpha=alpha)
    assert type(eager_error.value) is type(op_error.value) and str(eager_error.value) == str(op_error.value)
    assert str(eager_error.value).startswith("moekit.moe_mlp: ")
    assert isinstance(eager_error.value, (TypeError, ValueError))


def test_arity_is_checked():
    with pytest.raises(TypeError, match="expected 11 arguments, got 2"):
        _eager.moe_mlp(torch.zeros(1, H), None)


def test_the_gil_is_released_while_the_op_runs(gen):
    """Another Python thread runs while a call's op works (a rank a thread, another GPU's layer),
    as torch.ops lets it: the main thread's loop keeps counting between the call's start and end."""
    import threading
    import time

    args, layer = layer_on(gen, "cpu", "mxfp4")
    x = layer.draw_x(gen, 2048, H, dtype=torch.bfloat16, k=2)
    span, ticks, done = [], [], threading.Event()

    def call():
        time.sleep(0.01)
        start = time.perf_counter()
        y = _eager.moe_mlp(x, *args, 2, 1.702, 7.0, False)
        span.extend([start, time.perf_counter()])
        assert isinstance(y, torch.Tensor)
        done.set()

    worker = threading.Thread(target=call)
    worker.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
    worker.join()
    start, end = span
    inside = [t for t in ticks if start + 0.25 * (end - start) < t < end - 0.25 * (end - start)]
    assert end - start > 0.005, "the call was too short to tell"
    assert len(inside) > 100


def test_the_profiler_sees_the_op(gen):
    """The call goes through the dispatcher, so torch.profiler records moekit::moe_mlp as before."""
    args, layer = layer_on(gen, "cpu", "mxfp4")
    x = layer.draw_x(gen, 3, H, dtype=torch.bfloat16, k=2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], acc_events=True) as prof:
        moekit.moe_mlp(x, *args, experts_per_token=2)
    assert [e.name for e in prof.events() if e.name.startswith("moekit::")] == ["moekit::moe_mlp"]


def test_a_dispatch_mode_sees_the_op(gen):
    """The call goes through the dispatcher, so a TorchDispatchMode sees the op as it did through torch.ops."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Recording(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    args, layer = layer_on(gen, "cpu", "mxfp4")
    x = layer.draw_x(gen, 3, H, dtype=torch.bfloat16, k=2)
    with Recording():
        y = _eager.moe_mlp(x, *args, 2, 1.702, 7.0, False)
    assert "moekit.moe_mlp.default" in seen and torch.equal(y, op_result(x, args))


# route and add_rms_norm: their entries, each call's plain arguments, and the op below the Autograd key.
def route_call(gen, device):
    logits = torch.randn(7, 8, generator=gen).to(device)
    return (logits, 3)


def add_rms_norm_call(gen, device):
    x = torch.randn(5, H, generator=gen).bfloat16().to(device)
    residual = torch.randn(5, H, generator=gen).bfloat16().to(device)
    return (x, residual, torch.rand(H, generator=gen).to(device) + 0.5, 1e-5)


SMALL_OPS = {  # name -> (arguments, wrapper, entry, op)
    "route": (route_call, moekit.route, _eager.route, torch.ops.moekit.route.default),
    "add_rms_norm": (add_rms_norm_call, moekit.add_rms_norm, _eager.add_rms_norm,
                     torch.ops.moekit.add_rms_norm.default),
}


def below_autograd(op, args):
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def same_outputs(got, want):
    return len(got) == len(want) and all(type(g) is torch.Tensor and torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SMALL_OPS))
def test_plain_call_of_route_and_add_rms_norm_runs_the_op(gen, device, name):
    make, wrapper, entry, op = SMALL_OPS[name]
    args = make(gen, device)
    want = below_autograd(op, args)
    got = entry(*args)
    assert type(got) is tuple and same_outputs(got, want)
    result = wrapper(*args)
    assert type(result) is (moekit.Routing if name == "route" else tuple) and same_outputs(tuple(result), want)
    if name == "add_rms_norm":  # an int eps, as the wrapper takes it
        assert same_outputs(entry(*args[:3], 1), below_autograd(op, (*args[:3], 1.0)))


@pytest.mark.parametrize("name,case", [(name, case) for name in SMALL_OPS
                                       for case in ("subclass", "bool scalar", "float k" if name == "route" else
                                                    "string eps", "huge int scalar", "requires grad", "function mode")])
def test_other_calls_of_route_and_add_rms_norm_take_the_general_path(gen, name, case):
    make, wrapper, entry, op = SMALL_OPS[name]
    args = list(make(gen, "cpu"))
    want = below_autograd(op, args)
    error = None
    if case == "subclass":
        args[0] = args[0].as_subclass(Marked)
    elif case == "bool scalar":
        args[-1] = True
        error = TypeError
    elif case in ("float k", "string eps"):
        args[-1] = float(args[-1]) if name == "route" else "1e-5"
        error = TypeError
    elif case == "huge int scalar":
        args[-1] = 10 ** 400
        error = ValueError
    elif case == "requires grad":
        args[0] = args[0].float().requires_grad_() if name == "route" else args[0]
        if name == "add_rms_norm":
            args[2] = args[2].clone().requires_grad_()
        want = below_autograd(op, [a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    if case == "function mode":
        with Counting() as mode:
            assert entry(*args) is NotImplemented
            got = wrapper(*args)
        assert mode.calls > 0 and same_outputs(tuple(got), want)
        return
    assert entry(*args) is NotImplemented
    if error is not None:
        with pytest.raises(error, match=f"moekit.{name}: '(k|eps)'"):
            wrapper(*args)
        return
    got = tuple(wrapper(*args))
    assert all(torch.equal(g.detach().as_subclass(torch.Tensor), w) for g, w in zip(got, want))
    if case == "requires grad":
        floats = [g for g in got if g.is_floating_point()]
        assert all(g.grad_fn is not None for g in floats)
        sum(g.float().sum() for g in floats).backward()
        leaf = args[0] if name == "route" else args[2]
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


@pytest.mark.parametrize("name", list(SMALL_OPS))
def test_errors_of_route_and_add_rms_norm_are_the_ops(gen, name):
    make, wrapper, entry, op = SMALL_OPS[name]
    args = list(make(gen, "cpu"))
    if name == "route":
        args[1] = 9  # k past E = 8
    else:
        args[1] = args[1][:, :-1]  # residual's shape
    with pytest.raises(Exception) as eager_error:
        entry(*args)
    with pytest.raises(Exception) as op_error:
        below_autograd(op, args)
    assert type(eager_error.value) is type(op_error.value) and str(eager_error.value) == str(op_error.value)
    assert str(eager_error.value).startswith(f"moekit.{name}: ")


@pytest.mark.parametrize("name,count", [("route", 2), ("add_rms_norm", 4)])
def test_arity_of_route_and_add_rms_norm_is_checked(name, count):
    with pytest.raises(TypeError, match=f"moekit._eager.{name}: expected {count} arguments, got 1"):
        getattr(_eager, name)(torch.zeros(1, 1))


@pytest.mark.parametrize("name", list(SMALL_OPS))
def test_the_profiler_and_a_dispatch_mode_see_route_and_add_rms_norm(gen, name):
    from torch.utils._python_dispatch import TorchDispatchMode

    make, wrapper, entry, op = SMALL_OPS[name]
    args = make(gen, "cpu")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], acc_events=True) as prof:
        wrapper(*args)
    assert [e.name for e in prof.events() if e.name.startswith("moekit::")] == [f"moekit::{name}"]
    seen = []

    class Recording(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Recording():
        entry(*args)
    assert f"moekit.{name}.default" in seen
