"""The gpt-oss architecture for inference, with its MoE layers run by :func:`moekit.moe_mlp`.

The model follows OpenAI's reference (gpt_oss/torch/model.py): pre-norm residual blocks
``x + attn(norm(x))`` and ``x + mlp(norm(x))``; attention with grouped K/V heads, YaRN rotary
embeddings, a learned per-head "sink" logit and a sliding window on even layers; MoE layers
with MXFP4 experts and SwiGLU; untied embedding and unembedding.

Device rule (docs/design.md): the model lives on the one device given to it and every tensor it
creates names that device explicitly; nothing depends on the current CUDA device.

Tensor parallelism (when built for world size W > 1, see :class:`TensorParallel`): every rank
holds 1/W of each expert's intermediate dimension (and of the attention heads when both head
counts divide by W); partial outputs are summed with ``all_reduce`` after the attention output
projection and after ``moe_mlp``. All ranks must run the same calls in the same order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import moekit

SWIGLU_ALPHA = 1.702
RMS_NORM_EPS = 1e-5
MXFP4_BLOCK = 32
# Calls of at most this many tokens against a KV cache (the decode step) run attention as one
# moekit.attention_decode; longer ones (prefill chunks) as float32 einsums.
DECODE_TOKENS = 16
# Up to this many rows of bf16 on a GPU, the attention's output projection runs moekit.matmul_ogs
# with one expert, which takes its GEMV there (kGemvMaxRows in src/core/matmul_ogs_config.h): its
# weights stream in while attention runs (docs/decode.md). The QKV projection stays with torch
# (cuBLAS): the kernels before it leave its GEMV no time to start early.
GEMV_ROWS = 8


# --------------------------------------------------------------------------------------- config

@dataclass
class GptOssConfig:
    """gpt-oss hyper-parameters, with the key names of the published ``config.json``.

    Defaults after ``num_key_value_heads`` are gpt-oss's own (both published sizes share them).
    """

    num_hidden_layers: int
    num_experts: int
    experts_per_token: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    head_dim: int
    num_attention_heads: int
    num_key_value_heads: int
    swiglu_limit: float = 7.0
    sliding_window: int = 128
    initial_context_length: int = 4096
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0
    rope_ntk_beta: float = 32.0

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raises ValueError (TypeError for a value of the wrong type) naming the bad field."""
        ints = ("num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
                "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads",
                "sliding_window", "initial_context_length")
        floats = ("swiglu_limit", "rope_theta", "rope_scaling_factor", "rope_ntk_alpha", "rope_ntk_beta")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"GptOssConfig.{name}: expected an int, got {type(value).__name__} {value!r}")
            if value < (0 if name == "sliding_window" else 1):
                what = ">= 0 (0: no sliding window)" if name == "sliding_window" else ">= 1"
                raise ValueError(f"GptOssConfig.{name}: expected {what}, got {value}")
        for name in floats:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"GptOssConfig.{name}: expected a number, got {type(value).__name__} {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"GptOssConfig.{name}: expected a finite number > 0, got {value}")
            setattr(self, name, float(value))
        if self.num_hidden_layers > MAX_LAYERS:
            raise ValueError(f"GptOssConfig.num_hidden_layers: expected at most {MAX_LAYERS} (the tensor list of "
                             f"a checkpoint is built from it before any file is read), got {self.num_hidden_layers}")
        if self.max_context_length > MAX_POSITIONS:
            raise ValueError(f"GptOssConfig.initial_context_length: {self.initial_context_length} x "
                             f"rope_scaling_factor {self.rope_scaling_factor} = {self.max_context_length} positions; "
                             f"expected at most {MAX_POSITIONS} (positions are int32)")
        if self.experts_per_token > self.num_experts:
            raise ValueError(f"GptOssConfig.experts_per_token: expected <= num_experts ({self.num_experts}), "
                             f"got {self.experts_per_token}")
        for name in ("hidden_size", "intermediate_size"):
            value = getattr(self, name)
            if value % MXFP4_BLOCK:
                raise ValueError(f"GptOssConfig.{name}: expected a multiple of {MXFP4_BLOCK} (the MXFP4 block "
                                 f"size along the experts' reduction axis), got {value}")
        if self.head_dim % 2:
            raise ValueError(f"GptOssConfig.head_dim: expected an even number (rotary embedding rotates "
                             f"the two halves), got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"GptOssConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple "
                             f"of num_key_value_heads ({self.num_key_value_heads})")
        if self.rope_theta <= 1.0:
            raise ValueError(f"GptOssConfig.rope_theta: expected > 1, got {self.rope_theta}")
        if self.rope_scaling_factor > 1.0 and not self.rope_ntk_alpha < self.rope_ntk_beta:
            raise ValueError(f"GptOssConfig.rope_ntk_alpha ({self.rope_ntk_alpha}) must be smaller than "
                             f"rope_ntk_beta ({self.rope_ntk_beta}) when rope_scaling_factor > 1 (YaRN ramp)")

    # ------------------------------------------------------------------------------- json i/o
    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "GptOssConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        known = cls.field_names()
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown gpt-oss config key(s) {unknown}; known keys are {known}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"{source}: missing gpt-oss config key(s) {missing}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "GptOssConfig":
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"gpt-oss config file not found: {path}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict:
        """The fields as OpenAI's original config.json writes them (rope_theta and the NTK betas
        as integers when they are whole)."""
        d = dataclasses.asdict(self)
        for name in ("rope_theta", "rope_ntk_alpha", "rope_ntk_beta"):
            d[name] = whole_as_int(d[name])
        return d

    def to_json(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @property
    def max_context_length(self) -> int:
        """Positions the model supports: YaRN stretches ``initial_context_length`` by
        ``rope_scaling_factor`` (gpt-oss: 4096 x 32 = 131072)."""
        return int(self.initial_context_length * max(self.rope_scaling_factor, 1.0))

    @property
    def qkv_dim(self) -> int:
        return self.head_dim * (self.num_attention_heads + 2 * self.num_key_value_heads)


MAX_LAYERS = 4096
MAX_POSITIONS = 2 ** 31 - 1


def whole_as_int(value: float):
    """``value`` as an int when it is a whole number (how the published configs write it)."""
    return int(value) if float(value).is_integer() else value


def layer_sliding_window(config: GptOssConfig, layer_idx: int) -> int:
    """The window of layer ``layer_idx``: ``sliding_window`` on even layers, 0 (none) on odd ones."""
    return config.sliding_window if layer_idx % 2 == 0 else 0


# ---------------------------------------------------------------------------- tensor parallel

@dataclass(frozen=True)
class TensorParallel:
    """What rank ``rank`` of ``world_size`` holds (see the module docstring).

    MoE: rows ``[r*2I/W, (r+1)*2I/W)`` of every expert's mlp1 (whole interleaved glu/linear
    pairs), the matching mlp1_bias slice and K-blocks ``[r*I/W/32, (r+1)*I/W/32)`` of mlp2;
    mlp2_bias on rank 0 only. Attention, when both head counts divide by W: the rank's q heads
    and kv heads (qkv rows and bias), its sinks, the matching out columns; out bias on rank 0
    only. Otherwise attention is replicated on every rank (and not all-reduced).
    """

    rank: int
    world_size: int
    shard_heads: bool

    @classmethod
    def plan(cls, config: GptOssConfig, rank: int = 0, world_size: int = 1) -> "TensorParallel":
        for name, value in (("rank", rank), ("world_size", world_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"moekit gpt-oss: {name} expected an int, got {type(value).__name__} {value!r}")
        if world_size < 1:
            raise ValueError(f"moekit gpt-oss: world_size expected >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"moekit gpt-oss: rank expected in [0, {world_size}), got {rank}")
        I = config.intermediate_size
        if I % world_size or (I // world_size) % MXFP4_BLOCK:
            raise ValueError(
                f"moekit gpt-oss: world size {world_size} cannot shard the MoE intermediate size {I}: each rank "
                f"needs intermediate_size / world_size to be a whole multiple of {MXFP4_BLOCK} (the MXFP4 block), "
                f"got {I} / {world_size} = {I / world_size:g}")
        shard_heads = (world_size > 1 and config.num_attention_heads % world_size == 0
                       and config.num_key_value_heads % world_size == 0)
        return cls(rank, world_size, shard_heads)

    # per-rank ranges
    def _range(self, n: int) -> Tuple[int, int]:
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size

    def q_heads(self, config: GptOssConfig) -> Tuple[int, int]:
        return self._range(config.num_attention_heads) if self.shard_heads else (0, config.num_attention_heads)

    def kv_heads(self, config: GptOssConfig) -> Tuple[int, int]:
        return self._range(config.num_key_value_heads) if self.shard_heads else (0, config.num_key_value_heads)

    def owns_replicated_bias(self, sharded: bool) -> bool:
        """A bias added after a sharded sum lives on rank 0 only."""
        return not sharded or self.rank == 0

    def slices(self, config: GptOssConfig, name: str) -> Optional[List[tuple]]:
        """How this rank reads checkpoint tensor ``name``: a list of index tuples whose results
        are concatenated along dim 0, or None if this rank holds none of it."""
        all_ = (slice(None),)
        short = name.split(".", 2)[-1] if name.startswith("block.") else name
        if self.world_size == 1:
            return [all_]
        if short in ("mlp.mlp1_weight.blocks", "mlp.mlp1_weight.scales", "mlp.mlp1_bias"):
            lo, hi = self._range(2 * config.intermediate_size)
            return [(slice(None), slice(lo, hi))]
        if short in ("mlp.mlp2_weight.blocks", "mlp.mlp2_weight.scales"):
            lo, hi = self._range(config.intermediate_size // MXFP4_BLOCK)
            return [(slice(None), slice(None), slice(lo, hi))]
        if short == "mlp.mlp2_bias":
            return [all_] if self.rank == 0 else None
        if not self.shard_heads:
            return [all_]
        d = config.head_dim
        (q0, q1), (k0, k1) = self.q_heads(config), self.kv_heads(config)
        nq, nkv = config.num_attention_heads, config.num_key_value_heads
        if short in ("attn.qkv.weight", "attn.qkv.bias"):
            return [(slice(q0 * d, q1 * d),), (slice((nq + k0) * d, (nq + k1) * d),),
                    (slice((nq + nkv + k0) * d, (nq + nkv + k1) * d),)]
        if short == "attn.sinks":
            return [(slice(q0, q1),)]
        if short == "attn.out.weight":
            return [(slice(None), slice(q0 * d, q1 * d))]
        if short == "attn.out.bias":
            return [all_] if self.rank == 0 else None
        return [all_]


# ------------------------------------------------------------------------------------- layers

def _empty(shape, device, dtype) -> torch.Tensor:
    return torch.empty(shape, device=device, dtype=dtype)


class RMSNorm(nn.Module):
    """The residual add and the RMSNorm after it, in one :func:`moekit.add_rms_norm`: returns
    ``(residual + x, rmsnorm(residual + x) * scale)``, float32 arithmetic, results in x's dtype
    (eps 1e-5)."""

    def __init__(self, num_features: int, device: torch.device, eps: float = RMS_NORM_EPS):
        super().__init__()
        self.eps = eps
        self.register_buffer("scale", torch.ones(num_features, device=device, dtype=torch.float32))

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return moekit.add_rms_norm(x, residual, self.scale, self.eps)


@functools.lru_cache(maxsize=None)
def has_gemv(device_index: int) -> bool:
    """Whether matmul_ogs runs a few dense bf16 rows on its GEMV on this GPU: on sm_90 only
    (src/core/matmul_ogs_config.h); elsewhere its general kernels are slower than torch's."""
    return torch.cuda.get_device_capability(device_index)[0] == 9


class Linear(nn.Module):
    """``x @ weight.T + bias`` with uninitialised storage (the loader fills it). With ``gemv``, a
    few bf16 rows (at most GEMV_ROWS) on a GPU with matmul_ogs's GEMV (has_gemv) run it instead of
    torch's."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device, dtype, gemv: bool = False):
        super().__init__()
        self.register_buffer("weight", _empty((out_features, in_features), device, dtype))
        self.register_buffer("bias", _empty((out_features,), device, dtype) if bias else None)
        self.gemv = gemv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.gemv and x.is_cuda and x.dim() == 2 and x.shape[0] <= GEMV_ROWS and x.dtype == torch.bfloat16
                and has_gemv(x.device.index)):
            bias = None if self.bias is None else self.bias.unsqueeze(0)
            return moekit.matmul_ogs(x, self.weight.unsqueeze(0), bias)
        return F.linear(x, self.weight, self.bias)


class RepackableMXFP4(nn.Module):
    """A module holding MXFP4 expert weights as the checkpoint stores them, in uint8 buffers named
    by ``mxfp4_weights``: (blocks, scales, stem) triples. :meth:`repack` adds each one's
    :func:`moekit.repack_mxfp4` layout, the operand of moekit's Hopper main loop, as buffers
    ``<stem>codes`` and ``<stem>slab_scales`` outside the state_dict (whose names stay the
    checkpoint's); :meth:`mxfp4_operand` hands a weight to moekit.moe_mlp with it."""

    mxfp4_weights: Tuple[Tuple[str, str, str], ...] = ()

    def __init__(self):
        super().__init__()
        self._repacked_from = None  # per weight, the versions of the tensors its repacked layout was made from

    def repack(self) -> int:
        """Adds the repacked layout of the weights as they are now; returns its bytes (as many as
        the weights hold)."""
        added = 0
        for blocks, scales, stem in self.mxfp4_weights:
            with torch.no_grad():
                codes, slab_scales = moekit.repack_mxfp4(self._tensor(blocks), self._tensor(scales))
            self.register_buffer(stem + "codes", codes, persistent=False)
            self.register_buffer(stem + "slab_scales", slab_scales, persistent=False)
            added += codes.nbytes + slab_scales.nbytes
        self._repacked_from = self._versions()
        return added

    def _tensor(self, name: str) -> torch.Tensor:
        # The weights are buffers: their dict, not nn.Module.__getattr__ (~1 us a name, twice a
        # weight a decode step), unless one was made something else since.
        t = self._buffers.get(name)
        return t if t is not None else getattr(self, name)

    @staticmethod
    def _versions_of(tensors) -> tuple:
        # Inference tensors keep no version (and are written in place only under inference mode).
        return tuple(None if t.is_inference() else t._version for t in tensors)

    def _versions(self) -> tuple:
        return tuple(self._versions_of((self._tensor(blocks), self._tensor(scales)))
                     for blocks, scales, _ in self.mxfp4_weights)

    def _apply(self, fn, recurse=True):
        # .to(), .cuda() and the like make new tensors of both layouts alike: they still agree.
        super()._apply(fn, recurse)
        if self._repacked_from is not None:
            self._repacked_from = self._versions()
        return self

    def mxfp4_operand(self, i: int) -> Tuple[torch.Tensor, ...]:
        """Weight i as moekit.moe_mlp takes it: (blocks, scales), and (codes, slab_scales) after
        them once repacked. Refuses a repacked layout older than the weights (written in place
        since, e.g. by load_state_dict), which would compute with other weights."""
        blocks, scales, stem = self.mxfp4_weights[i]
        pair = self._tensor(blocks), self._tensor(scales)
        if self._repacked_from is None:
            return pair
        if not torch.compiler.is_compiling() and self._repacked_from[i] != self._versions_of(pair):
            raise RuntimeError(f"{type(self).__name__}: its MXFP4 weights were written after repack(); call repack() "
                               "again so that the repacked layout holds the same weights")
        return pair + (self._tensor(stem + "codes"), self._tensor(stem + "slab_scales"))


class MXFP4Weight(RepackableMXFP4):
    """Experts' weights [E, N, K] as the checkpoint stores them: ``blocks`` [E, N, K/32, 16] and
    ``scales`` [E, N, K/32], both uint8 (and once repacked, ``codes`` and ``slab_scales``)."""

    mxfp4_weights = (("blocks", "scales", ""),)

    def __init__(self, experts: int, rows: int, cols: int, device):
        super().__init__()
        self.register_buffer("blocks", _empty((experts, rows, cols // MXFP4_BLOCK, 16), device, torch.uint8))
        self.register_buffer("scales", _empty((experts, rows, cols // MXFP4_BLOCK), device, torch.uint8))


class Rotary(nn.Module):
    """YaRN rotary embedding exactly as gpt-oss's reference computes it (float32): concentration
    ``0.1 ln(s) + 1`` scales cos and sin; inv_freq blends interpolation ``1/(s f)`` and
    extrapolation ``1/f`` by NTK-by-parts with a linear ramp between the dims whose wavelengths
    fit ``ntk_beta`` and ``ntk_alpha`` times into ``initial_context_length``."""

    def __init__(self, config: GptOssConfig, device: torch.device):
        super().__init__()
        self.head_dim = config.head_dim
        concentration, inv_freq = yarn_concentration_and_inv_freq(config, device)
        self.concentration = concentration
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        return freqs.cos() * self.concentration, freqs.sin() * self.concentration

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [T, heads, head_dim]; cos/sin [T, head_dim/2]; rotates (first half, second half)."""
        cos, sin = cos[:, None, :], sin[:, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def yarn_concentration_and_inv_freq(config: GptOssConfig, device=None) -> Tuple[float, torch.Tensor]:
    d, base, factor = config.head_dim, config.rope_theta, config.rope_scaling_factor
    freq = base ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d)
    if factor <= 1.0:
        return 1.0, 1.0 / freq
    concentration = 0.1 * math.log(factor) + 1.0
    d_half = d / 2
    low = d_half * math.log(config.initial_context_length / (config.rope_ntk_beta * 2 * math.pi)) / math.log(base)
    high = d_half * math.log(config.initial_context_length / (config.rope_ntk_alpha * 2 * math.pi)) / math.log(base)
    interpolation = 1.0 / (factor * freq)
    extrapolation = 1.0 / freq
    ramp = (torch.arange(d_half, dtype=torch.float32, device=device) - low) / (high - low)
    mask = 1 - ramp.clamp(0, 1)
    return concentration, interpolation * (1 - mask) + extrapolation * mask


class KVCache:
    """Keys and values of every layer, preallocated for ``max_len`` positions.

    ``pos`` is the number of positions already written, as the host counts it; ``position`` (int32
    [1] on the model's device) is the same count where the decode step reads it, so a captured
    step needs no host value. :meth:`GptOss.forward` appends the tokens it is given at ``pos`` and
    advances both (prefill: many tokens, then one token per step).
    """

    def __init__(self, model: "GptOss", max_len: int):
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"KVCache: max_len expected an int >= 1, got {max_len!r}")
        self.max_len = max_len
        self.pos = 0
        self.position = torch.zeros(1, device=model.device, dtype=torch.int32)
        shape = (max_len, model.attn_local_kv_heads, model.config.head_dim)
        n = model.config.num_hidden_layers
        self.k = [torch.zeros(shape, device=model.device, dtype=model.dtype) for _ in range(n)]
        self.v = [torch.zeros(shape, device=model.device, dtype=model.dtype) for _ in range(n)]

    def reset(self) -> None:
        self.pos = 0
        self.position.zero_()

    def advance(self, tokens: int) -> None:
        self.pos += tokens
        self.position.add_(tokens)


def refuse_gradients_across_ranks(block: nn.Module, h: torch.Tensor) -> None:
    """A tensor-parallel block sums its ranks' partial outputs with an in-place all_reduce, which
    autograd does not differentiate: a gradient through it would be silently wrong, so it is
    refused (train one model per rank instead, e.g. with DDP)."""
    if torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in block.parameters())):
        raise RuntimeError("moekit gpt-oss: gradients through a tensor-parallel block are not supported (its "
                           "ranks' all-reduce is not differentiated); train with one model per rank (e.g. DDP)")


class AttentionBlock(nn.Module):
    def __init__(self, config: GptOssConfig, layer_idx: int, tp: TensorParallel, device, dtype, group):
        super().__init__()
        q0, q1 = tp.q_heads(config)
        k0, k1 = tp.kv_heads(config)
        self.n_q, self.n_kv, self.d = q1 - q0, k1 - k0, config.head_dim
        self.layer_idx = layer_idx
        self.sliding_window = layer_sliding_window(config, layer_idx)
        self.sm_scale = 1.0 / math.sqrt(config.head_dim)
        self.reduce = tp.shard_heads
        self.group = group
        self.norm = RMSNorm(config.hidden_size, device)
        self.qkv = Linear(config.hidden_size, (self.n_q + 2 * self.n_kv) * self.d, True, device, dtype)
        self.register_buffer("sinks", _empty((self.n_q,), device, torch.float32))
        self.out = Linear(self.n_q * self.d, config.hidden_size, tp.owns_replicated_bias(self.reduce), device, dtype,
                          gemv=True)

    def forward(self, h: torch.Tensor, rotary: Rotary, cache: Optional[KVCache]) -> torch.Tensor:
        """The attention output (projected, summed over the ranks) of the normed input ``h``: the
        block adds it to the residual stream. With a cache, the tokens continue it at ``cache.pos``
        (the caller advances the cache); a few tokens run as one moekit.attention_decode, which
        reads the position on the device."""
        if self.reduce:
            refuse_gradients_across_ranks(self, h)
        qkv = self.qkv(h)
        if cache is not None and h.shape[0] <= DECODE_TOKENS:
            attn = moekit.attention_decode(qkv, cache.k[self.layer_idx], cache.v[self.layer_idx], self.sinks,
                                           cache.position, rotary.inv_freq, rope_scale=rotary.concentration,
                                           sm_scale=self.sm_scale, window=self.sliding_window)
        else:
            attn = self._attend(qkv, rotary, cache)
        out = self.out(attn)
        if self.reduce:
            dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def _attend(self, qkv: torch.Tensor, rotary: Rotary, cache: Optional[KVCache]) -> torch.Tensor:
        """Attention of many tokens (a prefill chunk, or a whole sequence without a cache) in
        float32 einsums, the cache position read on the host."""
        T, nq, nkv, d = qkv.shape[0], self.n_q, self.n_kv, self.d
        q = qkv[:, : nq * d].reshape(T, nq, d)
        k = qkv[:, nq * d: (nq + nkv) * d].reshape(T, nkv, d)
        v = qkv[:, (nq + nkv) * d:].reshape(T, nkv, d)
        start = cache.pos if cache is not None else 0
        positions = torch.arange(start, start + T, device=qkv.device)
        cos, sin = rotary.cos_sin(positions)
        q, k = Rotary.rotate(q, cos, sin), Rotary.rotate(k, cos, sin)
        key_pos = positions
        if cache is not None:
            ck, cv = cache.k[self.layer_idx], cache.v[self.layer_idx]
            ck[start:start + T] = k
            cv[start:start + T] = v
            lo = max(0, start - self.sliding_window + 1) if self.sliding_window else 0
            k, v = ck[lo:start + T], cv[lo:start + T]
            key_pos = torch.arange(lo, start + T, device=qkv.device)
        # scores [kv head, q per kv, query, key] in float32
        qg = q.float().reshape(T, nkv, nq // nkv, d)
        scores = torch.einsum("tgmd,sgd->gmts", qg, k.float()) * self.sm_scale
        allowed = key_pos[None, :] <= positions[:, None]
        if self.sliding_window:
            allowed &= key_pos[None, :] > positions[:, None] - self.sliding_window
        scores = scores.masked_fill(~allowed, float("-inf"))
        sinks = self.sinks.reshape(nkv, nq // nkv, 1, 1).expand(-1, -1, T, 1)
        weights = torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]
        return torch.einsum("gmts,sgd->tgmd", weights, v.float()).reshape(T, nq * d).to(qkv.dtype)


class MLPBlock(nn.Module):
    def __init__(self, config: GptOssConfig, tp: TensorParallel, device, dtype, group):
        super().__init__()
        E, H, I = config.num_experts, config.hidden_size, config.intermediate_size // tp.world_size
        self.k = config.experts_per_token
        self.swiglu_limit = config.swiglu_limit
        self.reduce = tp.world_size > 1
        self.group = group
        self.norm = RMSNorm(H, device)
        self.gate = Linear(H, E, True, device, dtype)
        self.mlp1_weight = MXFP4Weight(E, 2 * I, H, device)
        self.register_buffer("mlp1_bias", _empty((E, 2 * I), device, dtype))
        self.mlp2_weight = MXFP4Weight(E, H, I, device)
        self.register_buffer("mlp2_bias", _empty((E, H), device, dtype) if tp.rank == 0 else None)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The MoE output (summed over the ranks) of the normed input ``h``."""
        if self.reduce:
            refuse_gradients_across_ranks(self, h)
        y = moekit.moe_mlp(h, self.gate.weight, self.gate.bias, self.mlp1_weight.mxfp4_operand(0),
                           self.mlp1_bias, self.mlp2_weight.mxfp4_operand(0), self.mlp2_bias, experts_per_token=self.k,
                           swiglu_alpha=SWIGLU_ALPHA, swiglu_limit=self.swiglu_limit)
        if self.reduce:
            dist.all_reduce(y, op=dist.ReduceOp.SUM, group=self.group)
        return y


class TransformerBlock(nn.Module):
    def __init__(self, config, layer_idx, tp, device, dtype, group):
        super().__init__()
        self.attn = AttentionBlock(config, layer_idx, tp, device, dtype, group)
        self.mlp = MLPBlock(config, tp, device, dtype, group)

    def forward(self, x: torch.Tensor, h: torch.Tensor, rotary: Rotary, cache: Optional[KVCache],
                next_norm: RMSNorm) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x`` the residual stream, ``h`` its norm for this block's attention: returns the stream
        after the block and its norm by ``next_norm`` (the next block's, or the final one)."""
        x, h = self.mlp.norm(self.attn(h, rotary, cache), x)
        return next_norm(self.mlp(h), x)


# -------------------------------------------------------------------------------------- model

class GptOss(nn.Module):
    """gpt-oss for inference on one device. Build it with :func:`moekit.models.load_model`.

    Its state_dict names are the checkpoint's (``block.N.mlp.mlp1_weight.blocks`` ...), each
    holding this rank's shard. ``dtype`` (bfloat16 like the checkpoint, or float32) is the
    activations' and the dense weights' dtype; norms and sinks are float32, experts MXFP4.
    """

    def __init__(self, config: GptOssConfig, device: Union[str, torch.device], *,
                 dtype: torch.dtype = torch.bfloat16, tp: Optional[TensorParallel] = None,
                 group: Optional["dist.ProcessGroup"] = None):
        super().__init__()
        if dtype not in (torch.bfloat16, torch.float32):
            raise TypeError(f"GptOss: dtype expected torch.bfloat16 or torch.float32, got {dtype}")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            raise ValueError("GptOss: give the CUDA device with its index (e.g. cuda:0); the model never "
                             "uses the current device")
        self.config = config
        self.device = device
        self.dtype = dtype
        self.tp = tp or TensorParallel.plan(config)
        self.group = group
        self.embedding = nn.Module()
        self.embedding.register_buffer("weight", _empty((config.vocab_size, config.hidden_size), device, dtype))
        self.block = nn.ModuleList(TransformerBlock(config, i, self.tp, device, dtype, group)
                                   for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, device)
        self.unembedding = Linear(config.hidden_size, config.vocab_size, False, device, dtype)
        self.rotary = Rotary(config, device)
        self.attn_local_kv_heads = self.block[0].attn.n_kv if config.num_hidden_layers else 0
        self._decoder = None  # generate()'s decode state, kept while its capacity and sampling fit

    def repack_experts(self) -> int:
        """Adds to every layer's experts the layout of moekit's Hopper main loop
        (:func:`moekit.repack_mxfp4`), which moe_mlp then reads on sm_90 wherever it is the faster
        (bf16 activations past 4 tokens a call: the prefill; the one-token decode step keeps its
        kernels): as many bytes again as the experts' MXFP4 weights, returned. The checkpoint
        layout stays (the other kernels and the backward read it). Load new weights after it and
        call it again."""
        return sum(w.repack() for block in self.block for w in (block.mlp.mlp1_weight, block.mlp.mlp2_weight))

    # ----------------------------------------------------------------------------- forward
    def _check_distributed(self) -> None:
        if self.tp.world_size > 1:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError(f"GptOss: this model holds shard {self.tp.rank} of {self.tp.world_size}; "
                                   "torch.distributed must be initialised to run it")
            world = dist.get_world_size(self.group)
            if world != self.tp.world_size:
                raise RuntimeError(f"GptOss: built for world size {self.tp.world_size}, but the process group "
                                   f"has {world} ranks")

    def forward(self, tokens: torch.Tensor, cache: Optional[KVCache] = None, *,
                last_only: bool = False) -> torch.Tensor:
        """Logits (float32) of ``tokens`` (int [T]): [T, vocab], or [1, vocab] with ``last_only``.

        Without ``cache`` the tokens are a whole sequence from position 0; with it they continue
        the cached sequence at ``cache.pos``, which then advances by T.
        """
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"GptOss.forward: tokens expected a 1-d int64 tensor, got "
                             f"{getattr(tokens, 'shape', type(tokens).__name__)} {getattr(tokens, 'dtype', '')}")
        T = tokens.shape[0]
        if T == 0:
            raise ValueError("GptOss.forward: tokens is empty")
        start = 0 if cache is None else cache.pos
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"GptOss.forward: {T} more tokens would exceed the KV cache's {cache.max_len} "
                             f"positions ({start} used)")
        self._check_distributed()
        tokens = tokens.to(self.device)
        self.check_token_ids("GptOss.forward", int(tokens.min()), int(tokens.max()))
        return self.logits(tokens, cache, last_only=last_only).float()

    def check_token_ids(self, caller: str, lo: int, hi: int) -> None:
        """Raises ValueError unless token ids from ``lo`` to ``hi`` are in the vocabulary."""
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"{caller}: token ids expected in [0, {self.config.vocab_size}), "
                             f"got values in [{lo}, {hi}]")

    def logits(self, tokens: torch.Tensor, cache: Optional[KVCache], *, last_only: bool) -> torch.Tensor:
        """:meth:`forward` without its checks and host reads, the logits in the model's dtype
        (sample_token takes them so; greedy decode's argmax needs no float copy of the
        vocabulary): the decode step, which a CUDA graph captures. ``tokens`` must be valid ids on
        the model's device and fit in the cache."""
        x = F.embedding(tokens, self.embedding.weight)
        x, h = self.block[0].attn.norm(x, torch.zeros_like(x))  # the residual stream starts at zero
        for i, block in enumerate(self.block):
            x, h = block(x, h, self.rotary, cache, self.block[i + 1].attn.norm if i + 1 < len(self.block) else self.norm)
        if cache is not None:
            cache.advance(tokens.shape[0])
        if last_only:
            h = h[-1:]
        return self.unembedding(h)

    # ---------------------------------------------------------------------------- generate
    @torch.inference_mode()
    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: Optional[int] = None,
                 stop_ids: Iterable[int] = (), prefill_chunk: int = 512, graph: Optional[bool] = None) -> List[int]:
        """New token ids after ``prompt_ids``: greedy for ``temperature == 0``, else sampled from
        softmax(logits / temperature) restricted to the top-p nucleus, with draws from a CPU
        generator seeded by ``seed`` (the same on every rank; drawn on rank 0 and broadcast if None).
        Stops after ``max_new_tokens`` or after emitting a token of ``stop_ids``. The prompt is
        prefilled ``prefill_chunk`` tokens at a time (bounds the attention scores' memory); then
        each new token is one decode step (see :class:`moekit.models.decode.Decoder`), replayed
        from a CUDA graph when ``graph`` is True (default: wherever it can be, see
        :func:`moekit.models.decode.graph_capable`), else run eagerly: the same kernels, the same
        tokens."""
        from moekit.models.decode import Decoder, graph_capable

        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("GptOss.generate: prompt_ids is empty")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"GptOss.generate: max_new_tokens expected an int >= 0, got {max_new_tokens!r}")
        context = self.config.max_context_length
        if len(prompt) + max_new_tokens > context:
            raise ValueError(f"GptOss.generate: {len(prompt)} prompt tokens + max_new_tokens {max_new_tokens} exceed "
                             f"the {context} positions the model supports")
        check_sampling(temperature, top_p)
        if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise ValueError(f"GptOss.generate: prefill_chunk expected an int >= 1, got {prefill_chunk!r}")
        if graph is None:
            graph = graph_capable(self)
        elif graph and not graph_capable(self):
            raise ValueError(f"GptOss.generate: graph=True needs the model on a CUDA device and, across ranks, the "
                             f"NCCL backend (this model: {self.device})")
        if max_new_tokens == 0:
            return []
        if temperature > 0 and seed is None:
            seed = self._shared_seed()
        capacity = len(prompt) + max_new_tokens
        decoder = self._decoder
        if decoder is None or not decoder.fits(capacity, temperature, top_p, graph):
            self._decoder = None  # frees the old cache and graph first
            decoder = self._decoder = Decoder(self, capacity, temperature, top_p, graph)
        return decoder.generate(prompt, max_new_tokens, seed, set(int(s) for s in stop_ids), prefill_chunk)

    def _shared_seed(self) -> int:
        seed = random.SystemRandom().randrange(2 ** 62)
        if self.tp.world_size > 1:
            self._check_distributed()
            t = torch.tensor([seed], dtype=torch.int64, device=self.device)
            dist.broadcast(t, src=dist.get_global_rank(self.group, 0) if self.group is not None else 0,
                           group=self.group)
            seed = int(t.item())
        return seed


def check_sampling(temperature: float, top_p: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"temperature expected a finite number >= 0 (0: greedy), got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p expected a number in (0, 1], got {top_p!r}")


def sample_token(logits: torch.Tensor, temperature: float, top_p: float,
                 uniform: torch.Tensor) -> torch.Tensor:
    """The next token (int64 [1], on logits' device) from ``logits`` [vocab]: argmax (first on
    ties, in the logits' own dtype) when ``temperature == 0``, where ``uniform`` is not read;
    otherwise the token whose interval of the cumulative distribution of softmax(logits /
    temperature) in float32, restricted to the smallest set of most likely tokens whose
    probability reaches ``top_p`` (nucleus) and renormalised, holds ``uniform`` (float32 [1] in
    [0, 1)). Device ops only, no host read: a CUDA graph captures it."""
    if temperature == 0:
        return torch.argmax(logits.reshape(-1)).reshape(1)
    logits = logits.reshape(-1).float()
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True, stable=True)
    if top_p < 1.0:
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs   # mass of the more likely tokens
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    cdf = torch.cumsum(sorted_probs, dim=-1)
    choice = torch.searchsorted(cdf, uniform.reshape(1) * cdf[-1:], right=True).clamp_(max=cdf.shape[0] - 1)
    return order[choice]


def sample_next(logits: torch.Tensor, temperature: float, top_p: float = 1.0,
                generator: Optional[torch.Generator] = None) -> int:
    """One token id from ``logits`` [vocab] by :func:`sample_token`, with the uniform drawn from
    ``generator`` (a CPU generator, so the same state gives the same draw on any device)."""
    check_sampling(temperature, top_p)
    uniform = torch.rand(1, generator=generator).to(logits.device)
    return int(sample_token(logits.detach(), temperature, top_p, uniform))
