"""torch.ops.moekit.* as PyTorch custom ops: opcheck, torch.compile, and no CUDA at import."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch.library import opcheck

import moekit
import reference as ref
from conftest import H, I, MoeLayer, make_weights, randn

ops = torch.ops.moekit


def opcheck_ok(op, args):
    result = opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


# ----------------------------------------------------------------------------------- opcheck

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_quantize_mxfp4(gen, dtype):
    opcheck_ok(ops.quantize_mxfp4.default, (randn(gen, 3, 5, 64, dtype=dtype),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_dequantize_mxfp4(gen, dtype):
    blocks, scales = moekit.quantize_mxfp4(randn(gen, 4, 6, 96))
    opcheck_ok(ops.dequantize_mxfp4.default, (blocks, scales, dtype))


@pytest.mark.parametrize("E,N,K", [(2, 100, 96), (1, 64, 64), (0, 3, 32)])
def test_opcheck_repack_mxfp4(gen, E, N, K):
    opcheck_ok(ops.repack_mxfp4.default, moekit.quantize_mxfp4(randn(gen, E, N, K)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,E,k", [(7, 4, 2), (0, 32, 4), (64, 32, 1)])
def test_opcheck_route(gen, T, E, k, dtype):
    opcheck_ok(ops.route.default, (randn(gen, T, E, dtype=dtype), k))


@pytest.mark.parametrize("mode", ["gather_swiglu", "scatter_combine", "single_expert"])
@pytest.mark.parametrize("w_kind", ["mxfp4", "bfloat16"])
def test_opcheck_matmul_ogs(gen, w_kind, mode):
    T, E, k = 7, 4, 2
    r = moekit.route(randn(gen, T, E), k)
    if mode == "gather_swiglu":
        w = make_weights(gen, w_kind, E, 2 * I, H)
        x, bias = randn(gen, T, H, dtype=torch.bfloat16), randn(gen, E, 2 * I)
        extra = (r.expert_offsets, r.gather_idx, None, None, True, 1.702, 7.0)
    elif mode == "scatter_combine":
        w = make_weights(gen, w_kind, E, H, I)
        x, bias = randn(gen, T * k, I, dtype=torch.bfloat16), randn(gen, E, H)
        extra = (r.expert_offsets, None, r.scatter_idx, r.expert_weight, False, 0.0, 0.0)
    else:
        w = make_weights(gen, w_kind, 1, H, I)
        x, bias = randn(gen, T, I, dtype=torch.float32), None
        extra = (None, None, None, None, False, 0.0, 0.0)
    values, scales = w.arg if isinstance(w.arg, tuple) else (w.arg, None)
    opcheck_ok(ops.matmul_ogs.default, (x, values, scales, bias, *extra))


@pytest.mark.parametrize("x_dtype,w_kind,T", [(torch.bfloat16, "mxfp4", 7), (torch.float32, "bfloat16", 5),
                                              (torch.bfloat16, "mxfp4", 0)])
def test_opcheck_moe_mlp(gen, x_dtype, w_kind, T):
    layer = MoeLayer(gen, 4, w_kind, x_dtype)
    x = layer.draw_x(gen, T, H, dtype=x_dtype, k=2)
    w1 = layer.w1.arg if isinstance(layer.w1.arg, tuple) else (layer.w1.arg, None)
    w2 = layer.w2.arg if isinstance(layer.w2.arg, tuple) else (layer.w2.arg, None)
    opcheck_ok(ops.moe_mlp.default, (x, layer.gate_weight, layer.gate_bias, w1[0], w1[1], layer.b1, w2[0], w2[1],
                                     layer.b2, 2, 1.702, 7.0))


def test_opcheck_moe_mlp_without_biases(gen):
    layer = MoeLayer(gen, 4, "mxfp4", torch.bfloat16, gate_bias=False, mlp1_bias=False, mlp2_bias=False)
    x = layer.draw_x(gen, 7, H, dtype=torch.bfloat16, k=2)
    (b1, s1), (b2, s2) = layer.w1.arg, layer.w2.arg
    opcheck_ok(ops.moe_mlp.default, (x, layer.gate_weight, None, b1, s1, None, b2, s2, None, 2, 1.702, 7.0))


# ----------------------------------------------------------------------------- torch.compile

@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("x_dtype,w_kind", [(torch.bfloat16, "mxfp4"), (torch.float32, "bfloat16")])
def test_compiled_moe_mlp_equals_eager(gen, x_dtype, w_kind):
    layer = MoeLayer(gen, 32, w_kind, x_dtype)
    compiled = torch.compile(moekit.moe_mlp, fullgraph=True)
    # several batch sizes: the second one makes dynamo recompile with a dynamic T
    for shape in [(7, H), (64, H), (2, 5, H)]:
        x = layer.draw_x(gen, *shape, dtype=x_dtype, k=4)
        args = (x, layer.gate_weight, layer.gate_bias, layer.w1.arg, layer.b1, layer.w2.arg, layer.b2)
        got = compiled(*args, experts_per_token=4)
        want = moekit.moe_mlp(*args, experts_per_token=4)
        assert got.shape == x.shape and got.dtype == x_dtype
        assert torch.equal(got, want)
        assert torch.isfinite(got).all()


class TinyMoeBlock(torch.nn.Module):
    """A residual block calling moekit.moe_mlp with MXFP4 expert weights held as buffers."""

    def __init__(self, gen, E=4, k=2):
        super().__init__()
        self.k = k
        self.gate = torch.nn.Linear(H, E)
        self.out = torch.nn.Linear(H, H)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(randn(gen, *p.shape, scale=H ** -0.5))
        b1, s1 = moekit.quantize_mxfp4(randn(gen, E, 2 * I, H, scale=H ** -0.5))
        b2, s2 = moekit.quantize_mxfp4(randn(gen, E, H, I, scale=I ** -0.5))
        for name, t in dict(b1=b1, s1=s1, b2=b2, s2=s2, bias1=randn(gen, E, 2 * I), bias2=randn(gen, E, H)).items():
            self.register_buffer(name, t)

    def forward(self, x):
        # moe_mlp reads the block's input directly, so eager and compiled route identically
        y = moekit.moe_mlp(x, self.gate.weight, self.gate.bias, (self.b1, self.s1), self.bias1,
                           (self.b2, self.s2), self.bias2, experts_per_token=self.k)
        return self.out(torch.nn.functional.gelu(x + y))


def test_compiled_model_equals_eager(gen):
    model = TinyMoeBlock(gen)
    x = randn(gen, 3, 5, H)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        want = model(x)
        got = compiled(x)
    assert got.shape == want.shape and torch.isfinite(got).all()
    # float32 everywhere; inductor may fuse/reorder the Linear, GELU and add: float32 rounding
    assert ref.rel_err(got, want) < 1e-5


# ------------------------------------------------------------------------- no CUDA at import

def test_import_initialises_no_cuda():
    script = textwrap.dedent("""
        import torch
        calls = []
        real_lazy_init = torch.cuda._lazy_init
        def spy():
            calls.append(1)
            return real_lazy_init()
        torch.cuda._lazy_init = spy
        import moekit
        assert not torch.cuda.is_initialized(), "import moekit initialised CUDA"
        assert not calls, "import moekit asked torch to initialise CUDA"
        # nor does running the ops on CPU tensors
        x = torch.randn(3, 64)
        b, s = moekit.quantize_mxfp4(torch.randn(4, 64, 64))
        b2, s2 = moekit.quantize_mxfp4(torch.randn(4, 64, 32))
        y = moekit.moe_mlp(x, torch.randn(4, 64), None, (b, s), None, (b2, s2), None, experts_per_token=2)
        moekit.route(torch.randn(3, 4), 2)
        moekit.dequantize_mxfp4(b, s)
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert not torch.cuda.is_initialized(), "a CPU op initialised CUDA"
        assert not calls, "a CPU op asked torch to initialise CUDA"
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
