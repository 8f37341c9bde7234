"""moekit: quantized Mixture-of-Experts kernels, correct on any device, stream, thread or rank.

Importing moekit loads the op library and registers ``torch.ops.moekit``; it makes no CUDA call.
"""

from moekit import _library  # noqa: F401  (registers torch.ops.moekit and the fake kernels)
from moekit.ops import (
    Routing,
    add_rms_norm,
    attention_decode,
    dequantize_mxfp4,
    greedy_token,
    matmul_ogs,
    moe_mlp,
    quantize_mxfp4,
    repack_mxfp4,
    route,
)

__all__ = ["Routing", "add_rms_norm", "attention_decode", "dequantize_mxfp4", "greedy_token", "matmul_ogs", "moe_mlp",
           "quantize_mxfp4", "repack_mxfp4", "route"]
__version__ = "0.1.0"
