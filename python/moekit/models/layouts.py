"""The two layouts gpt-oss is published in, and how each maps onto the other.

- **original** (OpenAI's ``original/`` folder, and moekit's own checkpoints): config.json with
  :class:`GptOssConfig`'s keys; tensors ``embedding.weight``, ``block.N.attn.qkv.weight``,
  ``block.N.mlp.mlp1_weight.blocks`` ... (:func:`moekit.models.checkpoint_tensors`).
- **hf** (the Hugging Face repository's root, what ``from_pretrained`` reads): config.json of
  ``model_type: gpt_oss`` (``num_local_experts``, ``rope_scaling``, ``layer_types``,
  ``quantization_config``...); tensors ``model.embed_tokens.weight``,
  ``model.layers.N.self_attn.{q,k,v,o}_proj.{weight,bias}``, ``...mlp.router.*``,
  ``...mlp.experts.gate_up_proj_blocks`` ..., ``lm_head.weight``; usually sharded over several
  safetensors files with ``model.safetensors.index.json``.

Both hold the same numbers: the MXFP4 blocks and scales are byte for byte the same arrays under
other names, and the original's ``qkv`` is the HF q, k and v projections stacked along rows.
"""

from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Tuple

from moekit.models.gpt_oss import RMS_NORM_EPS, GptOssConfig

ORIGINAL, HF = "original", "hf"


def detect(config_dict: dict) -> str:
    """The layout a checkpoint's config.json belongs to."""
    return HF if config_dict.get("model_type") == "gpt_oss" or "architectures" in config_dict else ORIGINAL


# ------------------------------------------------------------------------------------- config

def _layer_types(n: int) -> List[str]:
    """gpt-oss alternates: even layers slide over a window, odd ones attend to everything."""
    return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]


def config_from_hf(d: dict, source: str = "config.json") -> GptOssConfig:
    """moekit's config of an HF-layout config.json; refuses what moekit's model does not compute."""
    def fail(message: str):
        raise ValueError(f"{source}: {message}")

    if d.get("model_type") != "gpt_oss":
        fail(f"expected model_type 'gpt_oss', got {d.get('model_type')!r}")
    quant = d.get("quantization_config") or {}
    if quant.get("quant_method") != "mxfp4":
        fail("expected MXFP4 experts (quantization_config.quant_method 'mxfp4'), got "
             f"{quant.get('quant_method')!r}: moekit runs the published MXFP4 checkpoints")
    rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
    rope_type = rope.get("rope_type", rope.get("type", "yarn"))
    if rope_type != "yarn" or rope.get("truncate", False):
        fail(f"expected YaRN rotary scaling without truncation (gpt-oss's), got {rope}")
    n_layers = d.get("num_hidden_layers")
    layer_types = d.get("layer_types")
    if layer_types is not None and isinstance(n_layers, int) and layer_types != _layer_types(n_layers):
        fail("expected layer_types alternating sliding_attention (even layers) and full_attention (odd), "
             f"got {layer_types}")
    for key, want in (("rms_norm_eps", RMS_NORM_EPS), ("attention_bias", True), ("tie_word_embeddings", False)):
        if key in d and d[key] != want:
            fail(f"expected {key} {want!r} (gpt-oss's), got {d[key]!r}")
    factor = rope.get("factor", 1.0)
    fields = dict(
        num_hidden_layers=n_layers,
        num_experts=d.get("num_local_experts", d.get("num_experts")),
        experts_per_token=d.get("num_experts_per_tok", d.get("experts_per_token")),
        vocab_size=d.get("vocab_size"),
        hidden_size=d.get("hidden_size"),
        intermediate_size=d.get("intermediate_size"),
        head_dim=d.get("head_dim"),
        num_attention_heads=d.get("num_attention_heads"),
        num_key_value_heads=d.get("num_key_value_heads"),
        swiglu_limit=d.get("swiglu_limit", 7.0),
        sliding_window=d.get("sliding_window") or 0,
        initial_context_length=rope.get("original_max_position_embeddings", d.get("initial_context_length", 4096)),
        rope_theta=rope.get("rope_theta", d.get("rope_theta", 150000.0)),
        rope_scaling_factor=factor,
        rope_ntk_alpha=rope.get("beta_slow", 1.0),
        rope_ntk_beta=rope.get("beta_fast", 32.0),
    )
    missing = sorted(k for k, v in fields.items() if v is None)
    if missing:
        fail(f"missing gpt-oss config key(s) for {missing}")
    try:
        return GptOssConfig(**fields)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{source}: {e}") from None


def config_to_hf(config: GptOssConfig) -> dict:
    """The HF-layout config.json of ``config``, with the published keys."""
    c = config
    return {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "attention_bias": True,
        "attention_dropout": 0.0,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "hidden_size": c.hidden_size,
        "initial_context_length": c.initial_context_length,
        "initializer_range": 0.02,
        "intermediate_size": c.intermediate_size,
        "layer_types": _layer_types(c.num_hidden_layers),
        "max_position_embeddings": c.max_context_length,
        "num_attention_heads": c.num_attention_heads,
        "num_experts_per_tok": c.experts_per_token,
        "experts_per_token": c.experts_per_token,
        "num_hidden_layers": c.num_hidden_layers,
        "num_key_value_heads": c.num_key_value_heads,
        "num_local_experts": c.num_experts,
        "output_router_logits": False,
        "quantization_config": {
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                       "lm_head"],
            "quant_method": "mxfp4",
        },
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_scaling": {
            "beta_fast": c.rope_ntk_beta,
            "beta_slow": c.rope_ntk_alpha,
            "factor": c.rope_scaling_factor,
            "original_max_position_embeddings": c.initial_context_length,
            "rope_type": "yarn",
            "truncate": False,
        },
        "rope_theta": c.rope_theta,
        "router_aux_loss_coef": 0.9,
        "sliding_window": c.sliding_window,
        "swiglu_limit": c.swiglu_limit,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": c.vocab_size,
    }


# ------------------------------------------------------------------------------------ tensors

class Part(NamedTuple):
    """Rows [start, stop) of an original-layout tensor come from HF tensor ``name``."""
    name: str
    start: int
    stop: int


def hf_parts(config: GptOssConfig, name: str) -> List[Part]:
    """Where original-layout tensor ``name`` lives in the HF layout: one tensor, or (qkv) the q, k
    and v projections stacked along rows."""
    if not name.startswith("block."):
        return [Part({"embedding.weight": "model.embed_tokens.weight", "norm.scale": "model.norm.weight",
                      "unembedding.weight": "lm_head.weight"}[name], 0, -1)]
    _, n, short = name.split(".", 2)
    layer = f"model.layers.{n}."
    if short in ("attn.qkv.weight", "attn.qkv.bias"):
        kind = short.rsplit(".", 1)[1]
        d, nq, nkv = config.head_dim, config.num_attention_heads, config.num_key_value_heads
        bounds = [0, nq * d, (nq + nkv) * d, (nq + 2 * nkv) * d]
        return [Part(f"{layer}self_attn.{p}_proj.{kind}", bounds[i], bounds[i + 1]) for i, p in enumerate("qkv")]
    return [Part(layer + {
        "attn.norm.scale": "input_layernorm.weight",
        "attn.sinks": "self_attn.sinks",
        "attn.out.weight": "self_attn.o_proj.weight",
        "attn.out.bias": "self_attn.o_proj.bias",
        "mlp.norm.scale": "post_attention_layernorm.weight",
        "mlp.gate.weight": "mlp.router.weight",
        "mlp.gate.bias": "mlp.router.bias",
        "mlp.mlp1_weight.blocks": "mlp.experts.gate_up_proj_blocks",
        "mlp.mlp1_weight.scales": "mlp.experts.gate_up_proj_scales",
        "mlp.mlp1_bias": "mlp.experts.gate_up_proj_bias",
        "mlp.mlp2_weight.blocks": "mlp.experts.down_proj_blocks",
        "mlp.mlp2_weight.scales": "mlp.experts.down_proj_scales",
        "mlp.mlp2_bias": "mlp.experts.down_proj_bias",
    }[short], 0, -1)]


def split_rows(parts: List[Part], start: int, stop: int) -> List[Tuple[Part, int, int]]:
    """Rows [start, stop) of a stacked tensor as (part, local start, local stop) pieces."""
    pieces = []
    for p in parts:
        lo, hi = max(start, p.start), min(stop, p.stop)
        if lo < hi:
            pieces.append((p, lo - p.start, hi - p.start))
    return pieces


def shard_plan(sizes: Dict[str, int], max_shard_bytes: int) -> List[List[str]]:
    """Tensor names in order, grouped into consecutive shards of at most ``max_shard_bytes`` (a
    tensor larger than that gets a shard of its own)."""
    shards: List[List[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def shard_file_names(n: int) -> List[str]:
    width = max(5, int(math.log10(max(n, 1))) + 1)
    return [f"model-{i + 1:0{width}d}-of-{n:0{width}d}.safetensors" for i in range(n)]
