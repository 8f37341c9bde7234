"""Tiny random gpt-oss checkpoints for the model tests (not collected: no test_ prefix).

``make_checkpoint(dir, seed)`` writes config.json, model.safetensors (through save_checkpoint,
so the experts are MXFP4) and tokenizer.json (a WordLevel tokenizer trained with the
`tokenizers` library on a few sentences). Sizes: E=4, k=2, hidden 64, intermediate 64,
head_dim 16, 4 q heads over 2 kv heads, vocab 97, sliding window 8 (so the window matters
within 32 generated tokens), gpt-oss's YaRN settings. Weights are fresh normals from the seed,
scaled so activations stay O(1) and logits are spread (distinct argmaxes).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

from moekit.models import GptOssConfig, float_tensor_shapes, save_checkpoint

TINY = dict(num_hidden_layers=2, num_experts=4, experts_per_token=2, vocab_size=97, hidden_size=64,
            intermediate_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2,
            sliding_window=8, swiglu_limit=7.0, initial_context_length=4096, rope_theta=150000.0,
            rope_scaling_factor=32.0, rope_ntk_alpha=1.0, rope_ntk_beta=32.0)

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a small model runs on every rank of the machine",
    "experts share the work of each token in the layer",
    "the window slides over the last eight tokens",
    "sinks take some attention away from every query",
    "weights are stored in blocks of thirty two values",
    "rank zero prints the text and the other ranks agree",
    "greedy decoding picks the most likely next word",
]


def tiny_config(**overrides) -> GptOssConfig:
    return GptOssConfig(**{**TINY, **overrides})


def random_float_state(config: GptOssConfig, seed: int) -> Dict[str, torch.Tensor]:
    """Fresh random float32 weights for every tensor of ``config`` (ReferenceGptOss's names)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in float_tensor_shapes(config).items():
        z = torch.randn(shape, generator=g, dtype=torch.float64)
        if name.endswith("scale"):
            t = 1.0 + 0.1 * z
        elif name.endswith("sinks"):
            t = z
        elif name.endswith("bias"):
            t = 0.1 * z if "gate" not in name else 0.5 * z
        elif name == "embedding.weight":
            t = z
        elif name == "unembedding.weight":
            t = 3.0 * z / math.sqrt(shape[-1])
        else:  # matrices, experts included: unit-variance outputs
            t = z / math.sqrt(shape[-1])
        state[name] = t.float()
    return state


def make_tokenizer(path: Path, vocab_size: int = 97) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["<unk>"]))
    assert tok.get_vocab_size() <= vocab_size
    tok.save(str(path))
    return path


def make_checkpoint(path: Path, seed: int = 0, *, tokenizer: bool = True,
                    **overrides) -> Tuple[GptOssConfig, Dict[str, torch.Tensor]]:
    """Writes a tiny random checkpoint to ``path``; returns its config and float weights."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = tiny_config(**overrides)
    state = random_float_state(config, seed)
    tok = make_tokenizer(path / "tokenizer.source.json") if tokenizer else None
    save_checkpoint(path, config, state, tokenizer_path=tok)
    if tok is not None:
        tok.unlink()
    return config, state


def checkpoint_fixture(name: str, seed: int, **overrides):
    """A module-scoped pytest fixture called ``name``: the folder of a tiny checkpoint that
    make_checkpoint writes once per test module."""
    @pytest.fixture(scope="module", name=name)
    def fixture(tmp_path_factory) -> Path:
        path = tmp_path_factory.mktemp(name)
        make_checkpoint(path, seed=seed, **overrides)
        return path
    return fixture


def safetensors_header(file: Path) -> Tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where its data begins."""
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), 8 + n


# Harmony's markers, added to the published-repository fixture's tokenizer as special tokens.
HARMONY_TOKENS = ["<|start|>", "<|message|>", "<|end|>", "<|return|>", "<|channel|>"]
# A harmony-style chat template (the published one adds a system message and channels).
CHAT_TEMPLATE = ("{%- for m in messages -%}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{%- endfor -%}"
                 "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}")


def make_published_repository(root: Path, seed: int = 0, **overrides) -> Tuple[GptOssConfig, Dict[str, torch.Tensor]]:
    """A tiny random gpt-oss repository laid out as the published one: the Hugging Face layout at
    ``root`` (config.json with HF keys, safetensors shards of real names and dtypes with
    model.safetensors.index.json, tokenizer.json with harmony's markers, chat_template.jinja,
    generation_config.json) and the original layout in ``root/original`` (config.json,
    model.safetensors; no tokenizer there, as published). Returns the config and float weights."""
    from tokenizers import AddedToken, Tokenizer

    from moekit.models import convert_checkpoint

    root = Path(root)
    original = root / "original"
    original.mkdir(parents=True, exist_ok=True)
    tok_path = make_tokenizer(root / "tokenizer.json")
    tok = Tokenizer.from_file(str(tok_path))
    tok.add_special_tokens([AddedToken(t, special=True) for t in HARMONY_TOKENS])
    tok.save(str(tok_path))
    config = tiny_config(**{"vocab_size": tok.get_vocab_size(with_added_tokens=True), **overrides})
    state = random_float_state(config, seed)
    save_checkpoint(original, config, state)
    convert_checkpoint(original, root, "hf", max_shard_bytes=40_000)
    (root / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (root / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.token_to_id("<|return|>")]}))
    return config, state
