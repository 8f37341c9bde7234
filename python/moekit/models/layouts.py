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

from moekit.models.gpt_oss import RMS_NORM_EPS, GptOssConfig, whole_as_int

ORIGINAL, HF = "original", "hf"


def detect(config_dict: dict) -> str:
    """The layout a checkpoint's config.json belongs to."""
    return HF if config_dict.get("model_type") == "gpt_oss" or "architectures" in config_dict else ORIGINAL


# ------------------------------------------------------------------------------------- config

def dtypes_of(specs: Dict[str, str]) -> Dict[str, str]:
    """original/dtypes.json: each tensor's element type as OpenAI's folder names it (MXFP4 blocks
    FP4, their scales UE8), from its safetensors dtype."""
    return {name: "FP4" if name.endswith(".blocks") else "UE8" if name.endswith(".scales") else dtype
            for name, dtype in specs.items()}


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
    if not isinstance(quant, dict) or quant.get("quant_method") != "mxfp4":
        fail("expected MXFP4 experts (quantization_config.quant_method 'mxfp4'), got quantization_config "
             f"{quant!r}: moekit runs the published MXFP4 checkpoints")
    rope = _rope_as_transformers_reads_it(d, fail)
    n_layers = d.get("num_hidden_layers")
    layer_types = d.get("layer_types")
    if layer_types is not None and isinstance(n_layers, int) and layer_types != _layer_types(n_layers):
        fail("expected layer_types alternating sliding_attention (even layers) and full_attention (odd), "
             f"got {layer_types}")
    for key, want in (("rms_norm_eps", RMS_NORM_EPS), ("attention_bias", True), ("tie_word_embeddings", False)):
        if key in d and d[key] != want:
            fail(f"expected {key} {want!r} (gpt-oss's), got {d[key]!r}")
    for hf_key, our_key in (("num_experts_per_tok", "experts_per_token"), ("num_local_experts", "num_experts")):
        if d.get(hf_key) is not None and d.get(our_key) is not None and d[hf_key] != d[our_key]:
            fail(f"{hf_key} ({d[hf_key]!r}) and {our_key} ({d[our_key]!r}) disagree; give one, or both equal")
    factor = rope["factor"]
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
        sliding_window=d.get("sliding_window", HF_DEFAULTS["sliding_window"]),
        initial_context_length=rope["original_max_position_embeddings"],
        rope_theta=rope.get("rope_theta", d.get("rope_theta", HF_DEFAULTS["rope_theta"])),
        rope_scaling_factor=factor,
        rope_ntk_alpha=rope.get("beta_slow", 1.0),
        rope_ntk_beta=rope.get("beta_fast", 32.0),
    )
    if fields["sliding_window"] is None:
        fail("sliding_window is null, but gpt-oss's even layers are sliding_attention layers and need a window "
             "(transformers refuses it too)")
    missing = sorted(k for k, v in fields.items() if v is None)
    if missing:
        fail(f"missing gpt-oss config key(s) for {missing}")
    try:
        config = GptOssConfig(**fields)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{source}: {e}") from None
    limit = d.get("max_position_embeddings")
    if limit is not None and limit != config.max_context_length:
        fail(f"max_position_embeddings {limit!r} differs from the context YaRN gives, original_max_position_embeddings "
             f"({config.initial_context_length}) x factor ({factor}) = {config.max_context_length}, the only "
             "context moekit's gpt-oss runs")
    return config


# What transformers' GptOssConfig takes for keys a config.json leaves out.
HF_DEFAULTS = {
    "sliding_window": 128,
    "rope_theta": 150000.0,
    "max_position_embeddings": 131072,
    "rope_parameters": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                        "original_max_position_embeddings": 4096},
}


def _rope_as_transformers_reads_it(d: dict, fail) -> dict:
    """The YaRN parameters transformers 5 computes from config.json (``rope_scaling``, or
    ``rope_parameters``; its class default when both are absent or null), refusing, with the key
    named, what gpt-oss's rotary embedding does not compute: another rotary type, the truncated
    correction range (transformers truncates unless ``truncate`` is false), an attention factor
    other than gpt-oss's ``0.1 ln(factor) + 1``."""
    key = "rope_scaling" if d.get("rope_scaling") is not None else "rope_parameters"
    given = d.get(key)
    if given is None:
        return dict(HF_DEFAULTS["rope_parameters"])
    if not isinstance(given, dict):
        fail(f"{key}: expected an object of YaRN parameters, got {type(given).__name__} {given!r}")
    rope = dict(given)
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type is None:
        fail(f"{key}.rope_type is missing: transformers would then apply plain rotary and ignore the YaRN keys; "
             "gpt-oss's is \"yarn\"")
    if rope_type != "yarn":
        fail(f"{key}.rope_type: expected \"yarn\" (gpt-oss's rotary scaling), got {rope_type!r}")
    if rope.get("factor") is None:
        fail(f"{key}.factor is missing: YaRN needs its context factor (gpt-oss's is 32)")
    if rope.get("truncate", True) is not False:
        fail(f"{key}.truncate: transformers truncates YaRN's correction range unless it is false, and gpt-oss's "
             f"rotary does not; got {rope.get('truncate', '(absent)')!r}")
    # transformers' rule for the factor that scales cos and sin.
    factor = float(rope["factor"])

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    theirs, named = rope.get("attention_factor"), "attention_factor"
    if theirs is None:
        m, m_all = rope.get("mscale"), rope.get("mscale_all_dim")
        theirs, named = (mscale(factor, m) / mscale(factor, m_all), "mscale / mscale_all_dim") if m and m_all \
            else (mscale(factor), "")
    ours = mscale(factor)
    if not math.isclose(float(theirs), ours, rel_tol=1e-12):
        fail(f"{key}.{named} gives an attention factor of {float(theirs)!r}; gpt-oss's rotary scales by "
             f"0.1 ln(factor) + 1 = {ours!r}")
    # The pretraining context: a top-level original_max_position_embeddings wins, then the
    # parameters' own, then max_position_embeddings (transformers' standardize_rope_params).
    if d.get("original_max_position_embeddings") is not None:
        rope["original_max_position_embeddings"] = d["original_max_position_embeddings"]
    elif rope.get("original_max_position_embeddings") is None:
        rope["original_max_position_embeddings"] = d.get("max_position_embeddings",
                                                         HF_DEFAULTS["max_position_embeddings"])
    return rope


# Keys of an HF config.json that moekit's config does not hold (the tokenizer's ids, the writer's
# version): the converter carries them from an HF source.
HF_PASSTHROUGH_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "transformers_version")


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
            "beta_fast": float(c.rope_ntk_beta),
            "beta_slow": float(c.rope_ntk_alpha),
            "factor": float(c.rope_scaling_factor),
            "original_max_position_embeddings": c.initial_context_length,
            "rope_type": "yarn",
            "truncate": False,
        },
        "rope_theta": whole_as_int(c.rope_theta),
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
