"""moekit as the MoE of Hugging Face transformers' gpt-oss models.

    import torch
    from moekit.transformers_gpt_oss import from_pretrained

    model = from_pretrained("path/to/gpt-oss-20b", device="cuda:1", dtype=torch.bfloat16)
    ids = model.generate(input_ids.to("cuda:1"), max_new_tokens=32, do_sample=False)

:func:`from_pretrained` builds transformers' ``GptOssForCausalLM`` from a checkpoint in either
published layout (the repository's root or its ``original/`` folder) with every ``GptOssMLP``
replaced by :class:`MoekitGptOssMLP`: the router and the experts run as one
``moekit.moe_mlp`` call on the checkpoint's MXFP4 blocks and scales, which are never
dequantized (transformers' own MXFP4 path needs triton_kernels, or dequantizes to bf16). The
rest of the model (attention, norms, embeddings, ``generate``) is transformers' own. It works on
the CPU and on any CUDA device, whichever device is current. Needs ``pip install
moekit[transformers]`` (transformers 5.17).

:func:`use_moekit` does the replacement on a model you built yourself (its experts' MXFP4
tensors are then yours to load into the buffers named as in the checkpoint).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

import moekit
from moekit.models import GptOssConfig, layouts, read_config
from moekit.models.checkpoint import CheckpointError, CheckpointTensors, find_beside
from moekit.models.gpt_oss import RepackableMXFP4

try:
    from transformers import GenerationConfig
    from transformers import GptOssConfig as HfGptOssConfig
    from transformers import GptOssForCausalLM
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP, GptOssRotaryEmbedding, GptOssTopKRouter
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("moekit.transformers_gpt_oss needs transformers 5.17: pip install 'moekit[transformers]'") from e

MXFP4_BLOCK = 32


class MoekitGptOssExperts(RepackableMXFP4):
    """The experts of one layer as the checkpoint stores them: MXFP4 blocks and scales (uint8) and
    float biases, as buffers named like the checkpoint's tensors; :meth:`repack` adds the MXFP4
    weights' layout for moekit's Hopper main loop (outside the state_dict)."""

    mxfp4_weights = (("gate_up_proj_blocks", "gate_up_proj_scales", "gate_up_proj_"),
                     ("down_proj_blocks", "down_proj_scales", "down_proj_"))

    def __init__(self, config: HfGptOssConfig):
        super().__init__()
        E, H, I = config.num_local_experts, config.hidden_size, config.intermediate_size
        u8 = dict(dtype=torch.uint8)
        self.register_buffer("gate_up_proj_blocks", torch.empty(E, 2 * I, H // MXFP4_BLOCK, 16, **u8))
        self.register_buffer("gate_up_proj_scales", torch.empty(E, 2 * I, H // MXFP4_BLOCK, **u8))
        self.register_buffer("gate_up_proj_bias", torch.empty(E, 2 * I))
        self.register_buffer("down_proj_blocks", torch.empty(E, H, I // MXFP4_BLOCK, 16, **u8))
        self.register_buffer("down_proj_scales", torch.empty(E, H, I // MXFP4_BLOCK, **u8))
        self.register_buffer("down_proj_bias", torch.empty(E, H))
        self.limit = float(getattr(config, "swiglu_limit", 7.0))


class MoekitGptOssMLP(nn.Module):
    """A drop-in for transformers' GptOssMLP: router (transformers' module, for its parameters)
    and experts, computed by one moekit.moe_mlp call. Returns (hidden_states, None): the router
    scores transformers' MLP also returns are only used for training losses."""

    def __init__(self, config: HfGptOssConfig):
        super().__init__()
        self.router = GptOssTopKRouter(config)
        self.experts = MoekitGptOssExperts(config)
        self.experts_per_token = config.num_experts_per_tok

    def forward(self, hidden_states: torch.Tensor):
        e = self.experts
        y = moekit.moe_mlp(hidden_states, self.router.weight, self.router.bias, e.mxfp4_operand(0), e.gate_up_proj_bias,
                           e.mxfp4_operand(1), e.down_proj_bias,
                           experts_per_token=self.experts_per_token, swiglu_limit=e.limit)
        return y, None


def use_moekit(model: GptOssForCausalLM) -> int:
    """Replaces every GptOssMLP of ``model`` by a :class:`MoekitGptOssMLP` (on the meta device
    if the model is there, else uninitialised on the MLP's device); returns how many."""
    config = model.config
    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, GptOssMLP):
            device = module.router.weight.device
            with torch.device(device):
                model.set_submodule(name, MoekitGptOssMLP(config))
            replaced += 1
    return replaced


def hf_config(ours: GptOssConfig) -> HfGptOssConfig:
    """transformers' config for moekit's config of a checkpoint in either layout."""
    config = layouts.config_to_hf(ours)
    config.pop("quantization_config")  # the experts are moekit's; nothing for transformers to quantize
    for key in ("architectures", "model_type"):
        config.pop(key)
    return HfGptOssConfig.from_dict(config)


@torch.no_grad()
def from_pretrained(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                    dtype: torch.dtype = torch.bfloat16, attn_implementation: Optional[str] = "eager",
                    repack_experts: bool = False) -> GptOssForCausalLM:
    """transformers' GptOssForCausalLM from checkpoint ``path`` on ``device``, its MoE layers run by
    moekit on the checkpoint's MXFP4 weights; everything else in ``dtype``. Every tensor of the
    model comes from the checkpoint (checked: a missing or misshapen one is a CheckpointError).
    Its generation settings (the end-of-sequence ids above all) are the checkpoint's
    generation_config.json, read by transformers as its own from_pretrained reads it (beside an
    ``original/`` folder for that layout). ``repack_experts``: every layer's experts also in the
    layout of moekit's Hopper main loop (:meth:`MoekitGptOssExperts.repack`), which moe_mlp reads
    on sm_90 wherever it is the faster (bf16 activations: prefill, training; docs/kernels.md), at
    twice the experts' memory."""
    path, device = Path(path), torch.device(device)
    ours = read_config(path)
    config = hf_config(ours)
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = GptOssForCausalLM(config)
    use_moekit(model)
    model.to_empty(device=device)
    model.to(dtype)  # floats only: the MXFP4 buffers stay uint8
    targets = dict(model.named_parameters())
    targets.update(model.named_buffers())
    loaded = set()
    with contextlib.ExitStack() as stack:
        tensors = CheckpointTensors(path, ours, stack)
        for name in tensors.specs:
            whole = tensors.read_checked(name, (slice(None),))
            for part in layouts.hf_parts(ours, name):
                t = whole if part.stop < 0 else whole[part.start:part.stop]
                target = targets[part.name]
                target.copy_(t.to(target.dtype) if t.is_floating_point() else t)
                loaded.add(part.name)
    # Rotary tables are not in checkpoints: computed again on the device.
    with torch.device(device):
        model.model.rotary_emb = GptOssRotaryEmbedding(config=config)
    left = sorted(n for n in targets if n not in loaded and not n.startswith("model.rotary_emb."))
    if left:
        raise RuntimeError(f"moekit.transformers_gpt_oss: tensors the checkpoint did not fill: {left[:6]}")
    model.generation_config = generation_config(path)
    model.eval()
    if repack_experts:
        for module in model.modules():
            if isinstance(module, MoekitGptOssExperts):
                module.repack()
    return model


def generation_config(path: Path) -> GenerationConfig:
    """The checkpoint's generation_config.json as transformers reads it; transformers' defaults
    where the checkpoint has none."""
    found = find_beside(path, "generation_config.json")
    if found is None:
        return GenerationConfig()
    try:
        return GenerationConfig.from_pretrained(found.parent)
    except (OSError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{found}: not a generation config transformers reads ({first})") from None
