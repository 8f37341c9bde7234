"""OpenAI's gpt_oss.triton (PyPI gpt-oss 0.0.9) as the decode benchmark's peer: its TokenGenerator
(triton_kernels MoE, a triton attention kernel for prefill, the decode step captured in a CUDA
graph) on an original/-layout checkpoint.

Neither package is part of moekit: both are imported from a folder given on the command line
(`gpt_oss-0.0.9/` and `triton_kernels-3.6.0/` beside each other; copy them into an ignored folder
of the tree and carry it). gpt-oss 0.0.9 was written against an older triton_kernels, so two of
its helpers are re-expressed here in 3.6's API, as the package's README describes: ``moe`` (3.6's
routing lives in its benchmark's ``distributed.routing``; FusedActivation takes ``reduction_n`` in
FnSpecs) and ``quantize_mx4`` (3.6's default Hopper layouts through its ``quantize_weight``); a
``triton_kernels.routing`` module stands in for the one its import names. Like triton_kernels,
it launches on the current device, which the benchmark keeps on the tensors' device.
"""

import sys
import types
from pathlib import Path

import torch


def _install(peer_dir: Path) -> None:
    sys.path.insert(0, str(peer_dir / "triton_kernels-3.6.0"))
    sys.path.insert(0, str(peer_dir / "gpt_oss-0.0.9"))
    import triton_kernels
    import triton_kernels.swiglu
    from bench_utils import quantize_weight
    from distributed import routing
    from triton_kernels.matmul_ogs import FlexCtx, FnSpecs, FusedActivation, PrecisionConfig, matmul_ogs
    from triton_kernels.numerics import InFlexData
    from triton_kernels.tensor_details import layout

    shim = types.ModuleType("triton_kernels.routing")
    shim.routing = lambda logits, k, simulated_ep=1: routing(None, logits, k)[1:4]
    sys.modules["triton_kernels.routing"] = shim
    triton_kernels.routing = shim

    vl, vlo = layout.make_default_matmul_mxfp4_w_layout(mx_axis=1)
    sl, slo = layout.make_default_matmul_mxfp4_w_scale_layout(mx_axis=1, num_warps=4)

    def quantize_mx4(w):
        w, _, scale = quantize_weight(w, "mx4", value_layout=vl, value_layout_opts=vlo, scale_layout=sl,
                                      scale_layout_opts=slo)
        return w, scale

    def moe(x, wg, w1, w1_mx, w2, w2_mx, bg, b1, b2, experts_per_token=4, num_experts=128, swiglu_limit=7.0,
            fused_act=True, interleaved=True):
        if x.numel() == 0:
            return x
        pc1 = PrecisionConfig(weight_scale=w1_mx, flex_ctx=FlexCtx(rhs_data=InFlexData()))
        pc2 = PrecisionConfig(weight_scale=w2_mx, flex_ctx=FlexCtx(rhs_data=InFlexData()))
        pcg = PrecisionConfig(flex_ctx=FlexCtx(rhs_data=InFlexData()))
        logits = matmul_ogs(x, wg, bg, precision_config=pcg)
        rdata, gather_indx, scatter_indx = shim.routing(logits, experts_per_token)
        act = FusedActivation(FnSpecs("swiglu", triton_kernels.swiglu.swiglu_fn, ("alpha", "limit"), reduction_n=2),
                              (1.702, swiglu_limit))
        x = matmul_ogs(x, w1, b1, rdata, gather_indx=gather_indx, precision_config=pc1, fused_activation=act)
        return matmul_ogs(x, w2, b2, rdata, scatter_indx=scatter_indx, precision_config=pc2, gammas=rdata.gate_scal)

    import gpt_oss.triton.model as model
    model.moe = moe
    model.quantize_mx4 = quantize_mx4


class PeerGenerator:
    """gpt_oss.triton's TokenGenerator with a cache of ``context`` positions on ``device``."""

    def __init__(self, peer_dir: Path, checkpoint: Path, context: int, device: torch.device):
        _install(Path(peer_dir))
        from gpt_oss.triton.model import TokenGenerator

        self.device = device
        with torch.cuda.device(device):
            self.generator = TokenGenerator(str(checkpoint), context, device)

    def generate(self, prompt, n: int):
        with torch.cuda.device(self.device):
            return list(self.generator.generate(prompt, temperature=0.0, max_tokens=n))
