"""A plain-PyTorch gpt-oss, written to be read: the oracle for moekit's gpt-oss and a trainable model.

Independent of :mod:`moekit.models.gpt_oss` except for the config dataclass: no moekit op is
used, no KV cache, the whole sequence at once. Float (float32 or bfloat16) weights throughout,
the experts too (``mlp1_weight`` [E, 2I, H], ``mlp2_weight`` [E, H, I]); the MoE is dense over
the chosen experts (gather their weights, einsum), as OpenAI's torch reference does. Parameter
names are the checkpoint's tensor names, so ``state_dict()`` feeds
:func:`moekit.models.save_checkpoint` directly. Differentiable end to end (the top-k choice
itself is not, the weights of the chosen experts are).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from moekit.models.gpt_oss import GptOssConfig

ALPHA = 1.702

# e2m1 code -> value (code bit 3 is the sign)
_FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def decode_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 [..., G*32] from MXFP4 ``blocks`` [..., G, 16] (low nibble = even element) and e8m0
    ``scales`` [..., G] (value 2^(s-127))."""
    lut = torch.tensor(_FP4_VALUES, dtype=torch.float32, device=blocks.device)
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).flatten(-2).long()   # [..., G, 32]
    values = lut[codes] * torch.exp2(scales.float() - 127.0).unsqueeze(-1)
    return values.flatten(-2)


class Norm(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n))

    def forward(self, x):
        x32 = x.float()
        rms = torch.sqrt((x32 * x32).mean(-1, keepdim=True) + 1e-5)
        return (x32 / rms * self.scale.float()).to(x.dtype)


def rope_tables(config: GptOssConfig, n: int, device) -> tuple:
    """cos and sin [n, head_dim/2] (float32) for positions 0..n-1, YaRN-scaled."""
    half = config.head_dim // 2
    base, s = config.rope_theta, config.rope_scaling_factor
    # wavelength exponent of each rotated pair i: theta^(2i/d)
    freq = base ** (torch.arange(half, dtype=torch.float32, device=device) * 2 / config.head_dim)
    inv_freq = 1.0 / freq
    gain = 1.0
    if s > 1.0:
        gain = 1.0 + 0.1 * math.log(s)

        def pair_at(turns):  # the pair index whose wavelength fits `turns` times in the context
            return half * math.log(config.initial_context_length / (turns * 2 * math.pi)) / math.log(base)

        lo, hi = pair_at(config.rope_ntk_beta), pair_at(config.rope_ntk_alpha)
        # 0 below lo: keep the original frequency (extrapolate); 1 above hi: divide it by s
        t = ((torch.arange(half, dtype=torch.float32, device=device) - lo) / (hi - lo)).clamp(0, 1)
        inv_freq = (1.0 / freq) * (1 - t) + (1.0 / (s * freq)) * t
    angle = torch.outer(torch.arange(n, dtype=torch.float32, device=device), inv_freq)
    return torch.cos(angle) * gain, torch.sin(angle) * gain


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, d]: the first and second halves of d are the two coordinates of each pair."""
    half = x.shape[-1] // 2
    a, b = x.float()[..., :half], x.float()[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: GptOssConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.window = config.sliding_window if layer_idx % 2 == 0 else 0
        nq, nkv, d, H = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.hidden_size
        self.norm = Norm(H)
        self.qkv = nn.Linear(H, (nq + 2 * nkv) * d)
        self.sinks = nn.Parameter(torch.zeros(nq))
        self.out = nn.Linear(nq * d, H)

    def forward(self, x):
        c = self.config
        T, nq, nkv, d = x.shape[0], c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q, k, v = self.qkv(self.norm(x)).split([nq * d, nkv * d, nkv * d], dim=-1)
        cos, sin = rope_tables(c, T, x.device)
        q = apply_rope(q.reshape(T, nq, d), cos, sin)
        k = apply_rope(k.reshape(T, nkv, d), cos, sin)
        v = v.reshape(T, nkv, d)
        # query head h reads kv head h // (nq / nkv)
        k = k.repeat_interleave(nq // nkv, dim=1)
        v = v.repeat_interleave(nq // nkv, dim=1)
        scores = torch.einsum("ihd,jhd->hij", q.float(), k.float()) / math.sqrt(d)
        i = torch.arange(T, device=x.device)[:, None]
        j = torch.arange(T, device=x.device)[None, :]
        visible = j <= i
        if self.window > 0:
            visible = visible & (i - j < self.window)
        scores = scores.masked_fill(~visible, float("-inf"))
        sink = self.sinks.float()[:, None, None].expand(nq, T, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[:, :, :T]
        o = torch.einsum("hij,jhd->ihd", probs, v.float()).reshape(T, nq * d).to(x.dtype)
        return x + self.out(o)


class MoE(nn.Module):
    def __init__(self, config: GptOssConfig):
        super().__init__()
        self.config = config
        E, H, I = config.num_experts, config.hidden_size, config.intermediate_size
        self.norm = Norm(H)
        self.gate = nn.Linear(H, E)
        self.mlp1_weight = nn.Parameter(torch.empty(E, 2 * I, H))
        self.mlp1_bias = nn.Parameter(torch.zeros(E, 2 * I))
        self.mlp2_weight = nn.Parameter(torch.empty(E, H, I))
        self.mlp2_bias = nn.Parameter(torch.zeros(E, H))

    def forward(self, x):
        c = self.config
        h = self.norm(x)
        logits = F.linear(h.float(), self.gate.weight.float(), self.gate.bias.float())
        # top-k, equal logits to the lower expert index (stable sort keeps index order)
        chosen = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, : c.experts_per_token]
        weights = torch.softmax(logits.gather(1, chosen), dim=-1)                  # float32 [T, k]
        u = torch.einsum("tkoh,th->tko", self.mlp1_weight[chosen], h) + self.mlp1_bias[chosen]
        glu = u[..., 0::2].clamp(max=c.swiglu_limit)
        lin = u[..., 1::2].clamp(min=-c.swiglu_limit, max=c.swiglu_limit)
        act = glu * torch.sigmoid(ALPHA * glu) * (lin + 1)
        o = torch.einsum("tkhi,tki->tkh", self.mlp2_weight[chosen], act) + self.mlp2_bias[chosen]
        y = torch.einsum("tkh,tk->th", o.float(), weights)
        return x + y.to(x.dtype)


class Block(nn.Module):
    def __init__(self, config: GptOssConfig, layer_idx: int):
        super().__init__()
        self.attn = Attention(config, layer_idx)
        self.mlp = MoE(config)

    def forward(self, x):
        return self.mlp(self.attn(x))


class ReferenceGptOss(nn.Module):
    """gpt-oss in plain PyTorch: ``forward(tokens [T]) -> logits [T, vocab]`` (float32)."""

    def __init__(self, config: GptOssConfig, dtype: torch.dtype = torch.float32,
                 device: Optional[Union[str, torch.device]] = None):
        super().__init__()
        if not isinstance(config, GptOssConfig):
            raise TypeError(f"ReferenceGptOss: config expected a GptOssConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.block = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = Norm(config.hidden_size)
        self.unembedding = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()
        self.to(device=device, dtype=dtype)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None, std: float = 0.02) -> None:
        """A starting point for training: normal(0, std) matrices (experts: 1/sqrt(fan-in)),
        zero biases and sinks, unit norm scales."""
        for name, p in self.named_parameters():
            if name.endswith("scale"):
                p.fill_(1.0)
            elif name.endswith(("bias", "sinks")):
                p.zero_()
            elif name.endswith(("mlp1_weight", "mlp2_weight")):
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p.shape[-1]))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 1:
            raise ValueError(f"ReferenceGptOss.forward: tokens expected shape [T], got {list(tokens.shape)}")
        x = self.embedding(tokens)
        for block in self.block:
            x = block(x)
        return self.unembedding(self.norm(x)).float()

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], dtype: torch.dtype = torch.float32,
                        device: Union[str, torch.device] = "cpu") -> "ReferenceGptOss":
        """The model of a checkpoint directory, MXFP4 experts decoded to floats."""
        from safetensors import safe_open

        path = Path(path)
        config = GptOssConfig.from_json(path / "config.json")
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.safetensors file")
        raw: Dict[str, torch.Tensor] = {}
        for file in files:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():
                    raw[name] = f.get_tensor(name)
        state = {}
        for name, t in raw.items():
            if name.endswith(".scales"):
                continue
            if name.endswith(".blocks"):
                base = name[: -len(".blocks")]
                state[base] = decode_mxfp4(t, raw[base + ".scales"])
            else:
                state[name] = t.float()
        model = cls(config, dtype=dtype, device=device)
        model.load_state_dict(state, strict=True)
        return model.eval()
