"""OpenAI's triton_kernels 3.6 as the benchmark's peer: its whole MoE layer (a bf16 gate, its
routing, matmul_ogs with fused SwiGLU and gather, matmul_ogs with the weighted scatter), built
from the same float weights moekit quantizes, as its own benchmark builds it.

The package is not part of moekit: it is imported from a folder given on the command line (the
GPU machine has triton 3.6, not this package; copy it into an ignored folder of the tree and
carry it). It launches on the current device and its current stream, so the benchmark keeps the
tensors' device current.
"""

import sys
from pathlib import Path

import torch

ALPHA, LIMIT = 1.702, 7.0


class TritonKernelsLayer:
    def __init__(self, peer_dir: Path, gate_weight, gate_bias, w1, b1, w2, b2, k: int):
        """w1 [E, 2I, H] and w2 [E, H, I] float (moekit's layout); biases [E, 2I], [E, H]."""
        sys.path.insert(0, str(peer_dir))
        import triton_kernels.swiglu
        from bench_utils import quantize_weight
        from distributed import routing
        from triton_kernels.matmul_ogs import FlexCtx, FnSpecs, FusedActivation, PrecisionConfig, matmul_ogs
        from triton_kernels.tensor_details import layout

        self._routing, self._matmul_ogs, self.k = routing, matmul_ogs, k
        vl, vlo = layout.make_default_matmul_mxfp4_w_layout(mx_axis=1)
        sl, slo = layout.make_default_matmul_mxfp4_w_scale_layout(mx_axis=1, num_warps=4)
        opt = dict(value_layout=vl, value_layout_opts=vlo, scale_layout=sl, scale_layout_opts=slo)
        # triton_kernels takes weights [E, K, N], MXFP4 along K.
        self.w1, f1, s1 = quantize_weight(w1.transpose(1, 2).contiguous(), "mx4", **opt)
        self.w2, f2, s2 = quantize_weight(w2.transpose(1, 2).contiguous(), "mx4", **opt)
        self.pc1 = PrecisionConfig(flex_ctx=FlexCtx(rhs_data=f1), weight_scale=s1)
        self.pc2 = PrecisionConfig(flex_ctx=FlexCtx(rhs_data=f2), weight_scale=s2)
        self.act = FusedActivation(FnSpecs("swiglu", triton_kernels.swiglu.swiglu_fn, ("alpha", "limit"),
                                           reduction_n=2), (ALPHA, LIMIT))
        self.gate_weight, self.gate_bias = gate_weight, gate_bias
        self.b1, self.b2 = b1.float(), b2.float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # The gate as moekit computes it (float32 logits), handed over in bf16: with bf16 logits
        # near-ties route some tokens to other experts than the float32 reference's, and those
        # tokens' errors would measure the gate's precision, not the MoE kernels.
        logits = (x.float() @ self.gate_weight.float().T + self.gate_bias.float()).to(torch.bfloat16)
        xx, rdata, gi, si, _ = self._routing(x, logits, self.k)
        h = self._matmul_ogs(xx, self.w1, self.b1, rdata, gather_indx=gi, precision_config=self.pc1,
                             fused_activation=self.act)
        return self._matmul_ogs(h, self.w2, self.b2, rdata, scatter_indx=si, precision_config=self.pc2,
                                gammas=rdata.gate_scal)
