"""On the GPU, a call the CUDA backend cannot run is refused before its first launch: the layer's
route limit (E > 2048) and misaligned MXFP4 codes used to be found after the gate matmul (and
route) had run. The profiler shows which kernels ran. Skips without a CUDA GPU.
"""

import pytest
import torch

import moekit
from bad_inputs import misaligned
from conftest import cuda_kernels_during

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

T, H, I, K = 5, 64, 64, 2


def layer_args(E: int, misaligned_codes: bool = False):
    g = torch.Generator().manual_seed(E)
    dev = torch.device("cuda", 0)
    w1 = moekit.quantize_mxfp4((torch.randn(E, 2 * I, H, generator=g) / 8).to(dev))
    w2 = moekit.quantize_mxfp4((torch.randn(E, H, I, generator=g) / 8).to(dev))
    blocks1 = misaligned(w1[0]) if misaligned_codes else w1[0]
    return (torch.randn(T, H, generator=g).to(dev, torch.bfloat16),
            (torch.randn(E, H, generator=g) / 8).to(dev, torch.bfloat16), None, blocks1, w1[1], None,
            w2[0], w2[1], None, K, 1.702, 7.0)


def moekit_kernels_during(fn) -> tuple:
    """moekit's kernels that ran before fn() raised its ValueError, and the message."""
    refusal = {}

    def refused():
        with pytest.raises(ValueError) as info:
            fn()
        refusal["message"] = str(info.value)

    return [n for n in cuda_kernels_during(refused)[1] if "moekit" in n], refusal["message"]


@pytest.mark.parametrize("case", ["experts_4096", "misaligned_mlp1_codes"])
def test_layer_refused_before_its_first_launch(case):
    args = layer_args(4096) if case == "experts_4096" else layer_args(4, misaligned_codes=True)
    launched, message = moekit_kernels_during(lambda: torch.ops.moekit.moe_mlp(*args))
    assert launched == [], f"kernels ran before the refusal: {launched}"
    assert "moekit.moe_mlp" in message
    assert ("'gate_weight'" in message and "2048" in message) if case == "experts_4096" else \
        ("'mlp1_weight'" in message and "aligned to 16 bytes" in message), message
    # the same arguments, valid, do launch (the profiler sees moekit's kernels)
    good = layer_args(4)
    assert any("moekit" in n for n in cuda_kernels_during(lambda: torch.ops.moekit.moe_mlp(*good))[1])
