"""The bad-input matrix: every case of a bad argument to every op, and a runner that calls each
case in its own process (forked from one that has imported torch and moekit but run nothing).

A case must end in an exception (TypeError, ValueError or RuntimeError) whose message names the
op and the argument, never a crash. On the CPU each case also runs with its tensors on the meta
device, where the fake kernels must refuse it with the same exception and message (index values
are data, so their cases are CPU-only). `python tests/python/bad_inputs.py --device cpu|cuda`
prints one JSON line per case; tests/python/test_bad_input_matrix.py runs it and asserts.
"""

import argparse
import json
import math
import os
import sys
import zlib
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import torch

import moekit
import reference as ref
from conftest import randn

BF16 = torch.bfloat16
E, H, I, T, K = 4, 64, 64, 5, 2     # small layer for the error cases


# ---------------------------------------------------------------------------- base arguments

def moe_base(gen):
    return dict(
        x=randn(gen, T, H, dtype=BF16),
        gate_weight=randn(gen, E, H, dtype=BF16, scale=H ** -0.5),
        gate_bias=randn(gen, E, dtype=BF16),
        mlp1_weight=moekit.quantize_mxfp4(randn(gen, E, 2 * I, H, scale=H ** -0.5)),
        mlp1_bias=randn(gen, E, 2 * I, dtype=BF16),
        mlp2_weight=moekit.quantize_mxfp4(randn(gen, E, H, I, scale=I ** -0.5)),
        mlp2_bias=randn(gen, E, H, dtype=BF16),
        experts_per_token=K,
    )


def matmul_base(gen):
    r = ref.route(randn(gen, T, E), K)
    return dict(
        x=randn(gen, T, H, dtype=BF16),
        w=moekit.quantize_mxfp4(randn(gen, E, 2 * I, H, scale=H ** -0.5)),
        bias=randn(gen, E, 2 * I),
        expert_offsets=r.expert_offsets.int(),
        gather_idx=r.gather_idx.int(),
        scatter_idx=r.scatter_idx.int(),
        combine_weight=r.expert_weight.float(),
    )


def route_base(gen):
    return dict(logits=randn(gen, T, E), k=K)


def quantize_base(gen):
    return dict(w=randn(gen, 3, H), axis=-1)


def dequantize_base(gen):
    blocks, scales = moekit.quantize_mxfp4(randn(gen, 3, H))
    return dict(blocks=blocks, scales=scales, axis=-1, dtype=torch.float32)


def repack_base(gen):
    blocks, scales = moekit.quantize_mxfp4(randn(gen, 2, 3, H))
    return dict(blocks=blocks, scales=scales)


def norm_base(gen):
    return dict(x=randn(gen, T, H, dtype=BF16), residual=randn(gen, T, H, dtype=BF16),
                scale=torch.rand(H, generator=gen) + 0.5, eps=1e-5)


AHQ, AHKV, AD, AL, AT = 4, 2, 16, 12, 2   # attention_decode: heads, head size, cache, tokens


def attention_base(gen):
    return dict(qkv=randn(gen, AT, (AHQ + 2 * AHKV) * AD, dtype=BF16), k_cache=randn(gen, AL, AHKV, AD, dtype=BF16),
                v_cache=randn(gen, AL, AHKV, AD, dtype=BF16), sinks=randn(gen, AHQ),
                position=torch.tensor([3], dtype=torch.int32), inv_freq=torch.rand(AD // 2, generator=gen),
                rope_scale=1.3, sm_scale=0.25, window=4)


GV, GL = 50, 8   # greedy_token: logits, ids


def greedy_base(gen):
    return dict(logits=randn(gen, GV, dtype=BF16), position=torch.tensor([3], dtype=torch.int32),
                token=torch.full((1,), -1, dtype=torch.int32), ids=torch.full((GL,), -1, dtype=torch.int32))


OPS = {
    "add_rms_norm": (norm_base, moekit.add_rms_norm),
    "greedy_token": (greedy_base, moekit.greedy_token),
    "attention_decode": (attention_base, moekit.attention_decode),
    "moe_mlp": (moe_base, moekit.moe_mlp),
    "matmul_ogs": (matmul_base, moekit.matmul_ogs),
    "route": (route_base, moekit.route),
    "quantize_mxfp4": (quantize_base, moekit.quantize_mxfp4),
    "dequantize_mxfp4": (dequantize_base, moekit.dequantize_mxfp4),
    "repack_mxfp4": (repack_base, moekit.repack_mxfp4),
}


def call(op, args):
    fn = OPS[op][1]
    if op == "matmul_ogs":
        x, w, bias = args.pop("x"), args.pop("w"), args.pop("bias")
        return fn(x, w, bias, **args)
    return fn(**args)


# --------------------------------------------------------------------------------- helpers

def noncontig(t: torch.Tensor) -> torch.Tensor:
    """Same shape and values, strides that are not contiguous."""
    out = torch.stack([t, t], dim=-1)[..., 0]
    assert not out.is_contiguous()
    return out


def meta(t: torch.Tensor) -> torch.Tensor:
    return t.to("meta")


def replace_pair(pair, i, value):
    p = list(pair)
    p[i] = value
    return tuple(p)


def dense(gen, *shape, dtype=BF16):
    return randn(gen, *shape, dtype=dtype, scale=shape[-1] ** -0.5)


class Case(NamedTuple):
    op: str
    name: str
    mutate: Callable       # (args dict, gen) -> None, edits the op's base arguments in place
    exc: type
    arg: str               # the argument the message must name
    came: Sequence[str]    # the message must contain one of these (what came), case-insensitive
    data: bool = False     # about index values (data): checked on the CPU, not on meta or CUDA
    devices: Tuple[str, ...] = ("cpu", "cuda")
    # Instead of base + mutate: (gen) -> (function, keyword arguments), e.g. a raw torch.ops call.
    custom: Optional[Callable] = None


def set_(key, fn):
    def mutate(a, g):
        a[key] = fn(a[key], g)
    return mutate


def set_mxfp4(key, i, fn):
    def mutate(a, g):
        a[key] = replace_pair(a[key], i, fn(a[key][i], g))
    return mutate


def set_slab(i, fn, key="w"):
    """The MXFP4 weights a[key] with their repack_mxfp4 output (blocks, scales, codes,
    slab_scales), part i (2: codes, 3: slab_scales) replaced by fn of it."""
    def mutate(a, g):
        w = tuple(a[key]) + moekit.repack_mxfp4(*a[key])
        a[key] = w[:i] + (fn(w[i], g),) + w[i + 1:]
    return mutate


TE, VE = TypeError, ValueError
F16, F64 = torch.float16, torch.float64
HALF, DOUBLE = ("float16", "half"), ("float64", "double")

CASES = [
    # ---------------------------------------------------------------- moe_mlp: dtype
    Case("moe_mlp", "x_float16", set_("x", lambda t, g: t.to(F16)), TE, "x", HALF),
    Case("moe_mlp", "x_float64", set_("x", lambda t, g: t.to(F64)), TE, "x", DOUBLE),
    Case("moe_mlp", "x_int32", set_("x", lambda t, g: t.int()), TE, "x", ("int32", "int")),
    Case("moe_mlp", "gate_weight_float16", set_("gate_weight", lambda t, g: t.to(F16)), TE, "gate_weight", HALF),
    Case("moe_mlp", "gate_bias_float64", set_("gate_bias", lambda t, g: t.to(F64)), TE, "gate_bias", DOUBLE),
    Case("moe_mlp", "mlp1_dense_float16", set_("mlp1_weight", lambda t, g: dense(g, E, 2 * I, H, dtype=F16)),
         TE, "mlp1_weight", HALF),
    Case("moe_mlp", "mlp1_blocks_int8", set_mxfp4("mlp1_weight", 0, lambda t, g: t.to(torch.int8)),
         TE, "mlp1_weight", ("int8", "char")),
    Case("moe_mlp", "mlp1_scales_int32", set_mxfp4("mlp1_weight", 1, lambda t, g: t.int()), TE, "mlp1_scales",
         ("int32", "int")),
    Case("moe_mlp", "mlp2_blocks_float32", set_mxfp4("mlp2_weight", 0, lambda t, g: t.float()), TE, "mlp2_weight",
         ("float32", "float")),
    Case("moe_mlp", "mlp1_bias_float16", set_("mlp1_bias", lambda t, g: t.to(F16)), TE, "mlp1_bias", HALF),
    Case("moe_mlp", "mlp2_bias_float64", set_("mlp2_bias", lambda t, g: t.to(F64)), TE, "mlp2_bias", DOUBLE),
    # ---------------------------------------------------------------- moe_mlp: shape
    Case("moe_mlp", "x_0d", set_("x", lambda t, g: t[0, 0]), VE, "x", ("0-d",)),
    Case("moe_mlp", "gate_weight_wrong_H", set_("gate_weight", lambda t, g: dense(g, E, H + 32)), VE,
         "gate_weight", ("[4, 96]",)),
    Case("moe_mlp", "gate_weight_1d", set_("gate_weight", lambda t, g: dense(g, E * H)), VE, "gate_weight",
         ("[256]",)),
    Case("moe_mlp", "gate_bias_wrong", set_("gate_bias", lambda t, g: randn(g, E + 1, dtype=BF16)), VE,
         "gate_bias", ("[5]",)),
    Case("moe_mlp", "mlp1_dense_wrong_H", set_("mlp1_weight", lambda t, g: dense(g, E, 2 * I, H + 32)), VE,
         "mlp1_weight", ("[4, 128, 96]",)),
    Case("moe_mlp", "mlp1_odd_rows", set_("mlp1_weight", lambda t, g: dense(g, E, 2 * I - 1, H)), VE,
         "mlp1_weight", ("127",)),
    Case("moe_mlp", "mlp1_blocks_last_dim", set_mxfp4("mlp1_weight", 0, lambda t, g: t[..., :8].contiguous()), VE,
         "mlp1_weight", ("[4, 128, 2, 8]",)),
    Case("moe_mlp", "mlp1_blocks_3d", set_mxfp4("mlp1_weight", 0, lambda t, g: t.reshape(E, 2 * I, -1)), VE,
         "mlp1_weight", ("[4, 128, 32]",)),
    Case("moe_mlp", "mlp1_scales_wrong", set_mxfp4("mlp1_weight", 1, lambda t, g: t[:, :I].contiguous()), VE,
         "mlp1_scales", ("[4, 64, 2]",)),
    Case("moe_mlp", "mlp1_bias_wrong", set_("mlp1_bias", lambda t, g: randn(g, E, I, dtype=BF16)), VE,
         "mlp1_bias", ("[4, 64]",)),
    Case("moe_mlp", "mlp2_wrong_H", set_("mlp2_weight", lambda t, g: dense(g, E, H + 32, I)), VE, "mlp2_weight",
         ("[4, 96, 64]",)),
    Case("moe_mlp", "mlp2_bias_wrong", set_("mlp2_bias", lambda t, g: randn(g, E, H + 1, dtype=BF16)), VE,
         "mlp2_bias", ("[4, 65]",)),
    Case("moe_mlp", "mlp1_pair_of_3", set_("mlp1_weight", lambda t, g: (*t, t[1])), VE, "mlp1_weight", ("3",)),
    # mlp1 and mlp2 disagree on I (mlp1 [E, 2I, H] says I = 64; mlp2 [E, H, 96] says 96)
    Case("moe_mlp", "mlp1_mlp2_mismatch_dense", set_("mlp2_weight", lambda t, g: dense(g, E, H, I + 32)), VE,
         "mlp2_weight", ("[4, 64, 96]",)),
    Case("moe_mlp", "mlp1_mlp2_mismatch_mxfp4",
         set_("mlp2_weight", lambda t, g: moekit.quantize_mxfp4(dense(g, E, H, I + 32))), VE, "mlp2_weight",
         ("[4, 64, 3, 16]",)),
    # ---------------------------------------------------------------- moe_mlp: experts
    Case("moe_mlp", "mlp1_3_experts", set_("mlp1_weight", lambda t, g: (t[0][:3].contiguous(), t[1][:3].contiguous())),
         VE, "mlp1_weight", ("3",)),
    Case("moe_mlp", "mlp1_dense_5_experts", set_("mlp1_weight", lambda t, g: dense(g, E + 1, 2 * I, H)), VE,
         "mlp1_weight", ("5",)),
    Case("moe_mlp", "mlp2_3_experts", set_("mlp2_weight", lambda t, g: dense(g, E - 1, H, I)), VE, "mlp2_weight",
         ("[3, 64, 64]",)),
    Case("moe_mlp", "mlp1_bias_3_experts", set_("mlp1_bias", lambda t, g: t[:3].contiguous()), VE, "mlp1_bias",
         ("[3, 128]",)),
    Case("moe_mlp", "mlp2_bias_5_experts", set_("mlp2_bias", lambda t, g: randn(g, E + 1, H, dtype=BF16)), VE,
         "mlp2_bias", ("[5, 64]",)),
    Case("moe_mlp", "zero_experts", lambda a, g: a.update(gate_weight=dense(g, 0, H), gate_bias=None,
                                                           mlp1_weight=dense(g, 0, 2 * I, H), mlp1_bias=None,
                                                           mlp2_weight=dense(g, 0, H, I), mlp2_bias=None,
                                                           experts_per_token=1),
         VE, "gate_weight", ("[0, 64]",)),
    # ---------------------------------------------------------------- moe_mlp: k
    Case("moe_mlp", "k_0", set_("experts_per_token", lambda t, g: 0), VE, "experts_per_token", ("got 0",)),
    Case("moe_mlp", "k_gt_E", set_("experts_per_token", lambda t, g: E + 1), VE, "experts_per_token", ("got 5",)),
    Case("moe_mlp", "k_negative", set_("experts_per_token", lambda t, g: -3), VE, "experts_per_token",
         ("got -3",)),
    Case("moe_mlp", "k_huge", set_("experts_per_token", lambda t, g: 2 ** 40), VE, "experts_per_token",
         ("got 1099511627776",)),
    # ---------------------------------------------------------------- moe_mlp: K % 32 for MXFP4
    Case("moe_mlp", "mxfp4_mlp1_H_48",
         lambda a, g: a.update(x=randn(g, T, 48, dtype=BF16), gate_weight=dense(g, E, 48),
                               mlp1_weight=replace_pair(a["mlp1_weight"], 0, a["mlp1_weight"][0][:, :, :1]
                                                        .contiguous()),
                               mlp2_weight=dense(g, E, 48, I), mlp2_bias=None),
         VE, "mlp1_weight", ("48",)),
    Case("moe_mlp", "mxfp4_mlp2_I_48",
         lambda a, g: a.update(mlp1_weight=dense(g, E, 96, H), mlp1_bias=None,
                               mlp2_weight=(torch.randint(0, 256, (E, H, 1, 16), generator=g).to(torch.uint8),
                                            torch.randint(120, 130, (E, H, 1), generator=g).to(torch.uint8))),
         VE, "mlp2_weight", ("48",)),
    # ---------------------------------------------------------------- moe_mlp: contiguity
    Case("moe_mlp", "x_noncontig", set_("x", lambda t, g: noncontig(t)), VE, "x", ("contiguous",)),
    Case("moe_mlp", "gate_weight_noncontig", set_("gate_weight", lambda t, g: noncontig(t)), VE, "gate_weight",
         ("contiguous",)),
    Case("moe_mlp", "gate_bias_noncontig", set_("gate_bias", lambda t, g: noncontig(t)), VE, "gate_bias",
         ("contiguous",)),
    Case("moe_mlp", "mlp1_dense_noncontig", set_("mlp1_weight", lambda t, g: dense(g, E, H, 2 * I).transpose(1, 2)),
         VE, "mlp1_weight", ("contiguous",)),
    Case("moe_mlp", "mlp1_blocks_noncontig", set_mxfp4("mlp1_weight", 0, lambda t, g: noncontig(t)), VE,
         "mlp1_weight", ("contiguous",)),
    Case("moe_mlp", "mlp1_scales_noncontig", set_mxfp4("mlp1_weight", 1, lambda t, g: noncontig(t)), VE,
         "mlp1_scales", ("contiguous",)),
    Case("moe_mlp", "mlp1_bias_noncontig", set_("mlp1_bias", lambda t, g: noncontig(t)), VE, "mlp1_bias",
         ("contiguous",)),
    Case("moe_mlp", "mlp2_blocks_noncontig", set_mxfp4("mlp2_weight", 0, lambda t, g: noncontig(t)), VE,
         "mlp2_weight", ("contiguous",)),
    Case("moe_mlp", "mlp2_scales_noncontig", set_mxfp4("mlp2_weight", 1, lambda t, g: noncontig(t)), VE,
         "mlp2_scales", ("contiguous",)),
    Case("moe_mlp", "mlp2_bias_noncontig", set_("mlp2_bias", lambda t, g: noncontig(t)), VE, "mlp2_bias",
         ("contiguous",)),
    # ---------------------------------------------------------------- moe_mlp: device (x on the CPU)
    Case("moe_mlp", "gate_weight_meta", set_("gate_weight", lambda t, g: meta(t)), VE, "gate_weight", ("meta",)),
    Case("moe_mlp", "gate_bias_meta", set_("gate_bias", lambda t, g: meta(t)), VE, "gate_bias", ("meta",)),
    Case("moe_mlp", "mlp1_blocks_meta", set_mxfp4("mlp1_weight", 0, lambda t, g: meta(t)), VE, "mlp1_weight",
         ("meta",)),
    Case("moe_mlp", "mlp1_scales_meta", set_mxfp4("mlp1_weight", 1, lambda t, g: meta(t)), VE, "mlp1_scales",
         ("meta",)),
    Case("moe_mlp", "mlp1_bias_meta", set_("mlp1_bias", lambda t, g: meta(t)), VE, "mlp1_bias", ("meta",)),
    Case("moe_mlp", "mlp2_blocks_meta", set_mxfp4("mlp2_weight", 0, lambda t, g: meta(t)), VE, "mlp2_weight",
         ("meta",)),
    Case("moe_mlp", "mlp2_bias_meta", set_("mlp2_bias", lambda t, g: meta(t)), VE, "mlp2_bias", ("meta",)),
    # ---------------------------------------------------------------- moe_mlp: not tensors
    Case("moe_mlp", "x_list", set_("x", lambda t, g: t.tolist()), TE, "x", ("list",)),
    Case("moe_mlp", "gate_weight_list", set_("gate_weight", lambda t, g: t.tolist()), TE, "gate_weight", ("list",)),
    Case("moe_mlp", "gate_weight_none", set_("gate_weight", lambda t, g: None), TE, "gate_weight", ("None",)),
    Case("moe_mlp", "gate_bias_ndarray", set_("gate_bias", lambda t, g: t.float().numpy()), TE, "gate_bias",
         ("ndarray",)),
    Case("moe_mlp", "mlp1_ndarray", set_("mlp1_weight", lambda t, g: dense(g, E, 2 * I, H).float().numpy()), TE,
         "mlp1_weight", ("ndarray",)),
    Case("moe_mlp", "mlp1_scales_ndarray", set_mxfp4("mlp1_weight", 1, lambda t, g: t.numpy()), TE, "mlp1_weight",
         ("ndarray",)),
    Case("moe_mlp", "mlp1_bias_list", set_("mlp1_bias", lambda t, g: t.tolist()), TE, "mlp1_bias", ("list",)),
    Case("moe_mlp", "mlp2_none", set_("mlp2_weight", lambda t, g: None), TE, "mlp2_weight", ("None",)),
    Case("moe_mlp", "mlp2_bias_float", set_("mlp2_bias", lambda t, g: 1.5), TE, "mlp2_bias", ("float",)),
    Case("moe_mlp", "k_str", set_("experts_per_token", lambda t, g: "2"), TE, "experts_per_token", ("str",)),
    Case("moe_mlp", "k_float", set_("experts_per_token", lambda t, g: 2.0), TE, "experts_per_token", ("float",)),
    Case("moe_mlp", "batch_invariant_int", lambda a, g: a.update(batch_invariant=1), TE, "batch_invariant", ("int",)),

    # ---------------------------------------------------------------- matmul_ogs
    Case("matmul_ogs", "x_float16", set_("x", lambda t, g: t.to(F16)), TE, "x", HALF),
    Case("matmul_ogs", "w_dense_float64", set_("w", lambda t, g: dense(g, E, 2 * I, H, dtype=F64)), TE, "w",
         DOUBLE),
    Case("matmul_ogs", "w_blocks_int32", set_mxfp4("w", 0, lambda t, g: t.int()), TE, "w", ("int32", "int")),
    Case("matmul_ogs", "w_scales_float", set_mxfp4("w", 1, lambda t, g: t.float()), TE, "w_scales",
         ("float32", "float")),
    Case("matmul_ogs", "bias_float16", set_("bias", lambda t, g: t.to(F16)), TE, "bias", HALF),
    Case("matmul_ogs", "offsets_int64", set_("expert_offsets", lambda t, g: t.long()), TE, "expert_offsets",
         ("int64", "long")),
    Case("matmul_ogs", "gather_int64", set_("gather_idx", lambda t, g: t.long()), TE, "gather_idx",
         ("int64", "long")),
    Case("matmul_ogs", "scatter_float", set_("scatter_idx", lambda t, g: t.float()), TE, "scatter_idx",
         ("float32", "float")),
    Case("matmul_ogs", "combine_bf16", set_("combine_weight", lambda t, g: t.to(BF16)), TE, "combine_weight",
         ("bfloat16",)),
    Case("matmul_ogs", "x_3d", set_("x", lambda t, g: t[None]), VE, "x", ("[1, 5, 64]",)),
    Case("matmul_ogs", "batch_invariant_str", lambda a, g: a.update(batch_invariant="yes"), TE, "batch_invariant",
         ("str",)),
    Case("matmul_ogs", "x_wrong_K_dense", lambda a, g: a.update(w=dense(g, E, 2 * I, H + 32)), VE, "w",
         ("[4, 128, 96]",)),
    Case("matmul_ogs", "w_dense_2d", lambda a, g: a.update(w=dense(g, 2 * I, H)), VE, "w", ("[128, 64]",)),
    Case("matmul_ogs", "bias_wrong", set_("bias", lambda t, g: randn(g, E, 2 * I + 1)), VE, "bias",
         ("[4, 129]",)),
    Case("matmul_ogs", "offsets_wrong_E", set_("expert_offsets", lambda t, g: t[:E].contiguous()), VE,
         "expert_offsets", ("[4]",)),
    Case("matmul_ogs", "offsets_missing", set_("expert_offsets", lambda t, g: None), VE, "expert_offsets",
         ("None",)),
    Case("matmul_ogs", "gather_2d", set_("gather_idx", lambda t, g: t[None]), VE, "gather_idx", ("[1, 10]",)),
    Case("matmul_ogs", "scatter_wrong_rows", set_("scatter_idx", lambda t, g: t[:T - 1].contiguous()), VE,
         "scatter_idx", ("[4, 2]",)),
    Case("matmul_ogs", "combine_wrong", set_("combine_weight", lambda t, g: torch.rand(T, K + 1, generator=g)), VE,
         "combine_weight", ("[5, 3]",)),
    Case("matmul_ogs", "combine_without_scatter", set_("scatter_idx", lambda t, g: None), VE, "combine_weight",
         ("a tensor",)),
    Case("matmul_ogs", "swiglu_odd_N", lambda a, g: a.update(w=dense(g, E, 2 * I - 1, H), bias=None,
                                                              swiglu=(1.702, 7.0)),
         VE, "w", ("127",)),
    Case("matmul_ogs", "mxfp4_K_48", lambda a, g: a.update(x=randn(g, T, 48, dtype=BF16)), VE, "w", ("48",)),
    Case("matmul_ogs", "offsets_wrong_total", set_("expert_offsets", lambda t, g: t + torch.tensor([0, 0, 0, 0, 1],
                                                                                                  dtype=torch.int32)),
         VE, "expert_offsets", ("11",), data=True),
    Case("matmul_ogs", "offsets_decreasing", set_("expert_offsets", lambda t, g: torch.tensor([0, 6, 3, 8, 10],
                                                                                             dtype=torch.int32)),
         VE, "expert_offsets", ("3",), data=True),
    Case("matmul_ogs", "gather_out_of_range", set_("gather_idx", lambda t, g: torch.where(t == t[3], T, t)), VE,
         "gather_idx", ("5",), data=True),
    Case("matmul_ogs", "gather_negative", set_("gather_idx", lambda t, g: torch.where(t == t[0], -1, t)), VE,
         "gather_idx", ("-1",), data=True),
    Case("matmul_ogs", "scatter_out_of_range", set_("scatter_idx", lambda t, g: torch.where(t == 0, 10, t)), VE,
         "scatter_idx", ("10",), data=True),
    Case("matmul_ogs", "x_noncontig", set_("x", lambda t, g: noncontig(t)), VE, "x", ("contiguous",)),
    Case("matmul_ogs", "w_blocks_noncontig", set_mxfp4("w", 0, lambda t, g: noncontig(t)), VE, "w",
         ("contiguous",)),
    Case("matmul_ogs", "bias_noncontig", set_("bias", lambda t, g: noncontig(t)), VE, "bias", ("contiguous",)),
    Case("matmul_ogs", "gather_noncontig", set_("gather_idx", lambda t, g: noncontig(t)), VE, "gather_idx",
         ("contiguous",)),
    Case("matmul_ogs", "scatter_noncontig", set_("scatter_idx", lambda t, g: noncontig(t)), VE, "scatter_idx",
         ("contiguous",)),
    Case("matmul_ogs", "w_blocks_meta", set_mxfp4("w", 0, lambda t, g: meta(t)), VE, "w", ("meta",)),
    Case("matmul_ogs", "bias_meta", set_("bias", lambda t, g: meta(t)), VE, "bias", ("meta",)),
    Case("matmul_ogs", "offsets_meta", set_("expert_offsets", lambda t, g: meta(t)), VE, "expert_offsets",
         ("meta",)),
    Case("matmul_ogs", "gather_meta", set_("gather_idx", lambda t, g: meta(t)), VE, "gather_idx", ("meta",)),
    Case("matmul_ogs", "combine_meta", set_("combine_weight", lambda t, g: meta(t)), VE, "combine_weight",
         ("meta",)),
    Case("matmul_ogs", "w_codes_int32", set_slab(2, lambda t, g: t.int()), TE, "w_codes", ("int32", "int")),
    Case("matmul_ogs", "w_slab_scales_float", set_slab(3, lambda t, g: t.float()), TE, "w_slab_scales",
         ("float32", "float")),
    Case("matmul_ogs", "w_codes_one_slab_short", set_slab(2, lambda t, g: t[:, :1].contiguous()), VE, "w_codes",
         ("[4, 1, 1, 2048]",)),
    Case("matmul_ogs", "w_slab_scales_k_short", set_slab(3, lambda t, g: t[..., :64].contiguous()), VE,
         "w_slab_scales", ("[4, 2, 1, 64]",)),
    Case("matmul_ogs", "w_codes_noncontig", set_slab(2, lambda t, g: noncontig(t)), VE, "w_codes", ("contiguous",)),
    Case("matmul_ogs", "w_slab_scales_meta", set_slab(3, lambda t, g: meta(t)), VE, "w_slab_scales", ("meta",)),
    Case("matmul_ogs", "w_codes_list", set_slab(2, lambda t, g: t.tolist()), TE, "w[2] (codes)", ("list",)),
    Case("matmul_ogs", "w_three_parts", lambda a, g: a.update(w=tuple(a["w"]) + (a["w"][0],)), VE, "w",
         ("sequence of 3",)),
    Case("moe_mlp", "mlp1_codes_one_slab_short", set_slab(2, lambda t, g: t[:, :1].contiguous(), "mlp1_weight"), VE,
         "mlp1_codes", ("[4, 1, 1, 2048]",)),
    Case("moe_mlp", "mlp2_slab_scales_int32", set_slab(3, lambda t, g: t.int(), "mlp2_weight"), TE,
         "mlp2_slab_scales", ("int32", "int")),
    Case("moe_mlp", "mlp2_codes_meta", set_slab(2, lambda t, g: meta(t), "mlp2_weight"), VE, "mlp2_codes", ("meta",)),
    Case("matmul_ogs", "x_list", set_("x", lambda t, g: t.tolist()), TE, "x", ("list",)),
    Case("matmul_ogs", "w_ndarray", set_mxfp4("w", 0, lambda t, g: t.numpy()), TE, "w", ("ndarray",)),
    Case("matmul_ogs", "bias_list", set_("bias", lambda t, g: t.tolist()), TE, "bias", ("list",)),
    Case("matmul_ogs", "offsets_list", set_("expert_offsets", lambda t, g: t.tolist()), TE, "expert_offsets",
         ("list",)),
    Case("matmul_ogs", "gather_ndarray", set_("gather_idx", lambda t, g: t.numpy()), TE, "gather_idx",
         ("ndarray",)),
    Case("matmul_ogs", "scatter_list", set_("scatter_idx", lambda t, g: t.tolist()), TE, "scatter_idx", ("list",)),
    Case("matmul_ogs", "combine_list", set_("combine_weight", lambda t, g: t.tolist()), TE, "combine_weight",
         ("list",)),

    # ---------------------------------------------------------------- route
    Case("route", "logits_float16", set_("logits", lambda t, g: t.to(F16)), TE, "logits", HALF),
    Case("route", "logits_float64", set_("logits", lambda t, g: t.to(F64)), TE, "logits", DOUBLE),
    Case("route", "logits_int32", set_("logits", lambda t, g: t.int()), TE, "logits", ("int32",)),
    Case("route", "logits_1d", set_("logits", lambda t, g: t.reshape(-1)), VE, "logits", ("[20]",)),
    Case("route", "logits_3d", set_("logits", lambda t, g: t[None]), VE, "logits", ("[1, 5, 4]",)),
    Case("route", "logits_no_experts", set_("logits", lambda t, g: t[:, :0]), VE, "logits", ("[5, 0]",)),
    Case("route", "k_0", set_("k", lambda t, g: 0), VE, "k", ("got 0",)),
    Case("route", "k_gt_E", set_("k", lambda t, g: E + 1), VE, "k", ("got 5",)),
    Case("route", "k_negative", set_("k", lambda t, g: -3), VE, "k", ("got -3",)),
    Case("route", "k_huge", set_("k", lambda t, g: 2 ** 40), VE, "k", ("got 1099511627776",)),
    Case("route", "logits_noncontig", set_("logits", lambda t, g: noncontig(t)), VE, "logits", ("contiguous",)),
    Case("route", "logits_list", set_("logits", lambda t, g: t.tolist()), TE, "logits", ("list",)),
    Case("route", "k_str", set_("k", lambda t, g: "2"), TE, "k", ("str",)),
    Case("route", "k_float", set_("k", lambda t, g: 2.0), TE, "k", ("float",)),
    Case("route", "k_none", set_("k", lambda t, g: None), TE, "k", ("None",)),

    # ---------------------------------------------------------------- quantize_mxfp4
    Case("quantize_mxfp4", "w_float16", set_("w", lambda t, g: t.to(F16)), TE, "w", HALF),
    Case("quantize_mxfp4", "w_float64", set_("w", lambda t, g: t.to(F64)), TE, "w", DOUBLE),
    Case("quantize_mxfp4", "w_int64", set_("w", lambda t, g: t.long()), TE, "w", ("int64", "long")),
    Case("quantize_mxfp4", "w_K_48", set_("w", lambda t, g: t[:, :48].contiguous()), VE, "w", ("48",)),
    Case("quantize_mxfp4", "w_axis0_K_3", lambda a, g: a.update(axis=0), VE, "w", ("got 3",)),
    Case("quantize_mxfp4", "w_0d", set_("w", lambda t, g: t[0, 0]), VE, "w", ("got 0",)),
    Case("quantize_mxfp4", "w_noncontig", set_("w", lambda t, g: noncontig(t)), VE, "w", ("contiguous",)),
    Case("quantize_mxfp4", "axis_out_of_range", lambda a, g: a.update(axis=2), VE, "axis", ("got 2",)),
    Case("quantize_mxfp4", "axis_float", lambda a, g: a.update(axis=1.0), TE, "axis", ("float", "1.0")),
    Case("quantize_mxfp4", "w_list", set_("w", lambda t, g: t.tolist()), TE, "w", ("list",)),

    # ---------------------------------------------------------------- dequantize_mxfp4
    Case("dequantize_mxfp4", "blocks_int32", set_("blocks", lambda t, g: t.int()), TE, "blocks", ("int32",)),
    Case("dequantize_mxfp4", "scales_float", set_("scales", lambda t, g: t.float()), TE, "scales", ("float32",)),
    Case("dequantize_mxfp4", "dtype_float16", lambda a, g: a.update(dtype=F16), TE, "dtype", HALF),
    Case("dequantize_mxfp4", "dtype_int32", lambda a, g: a.update(dtype=torch.int32), TE, "dtype", ("int",)),
    Case("dequantize_mxfp4", "dtype_str", lambda a, g: a.update(dtype="bfloat16"), TE, "dtype", ("str",)),
    Case("dequantize_mxfp4", "blocks_last_dim", set_("blocks", lambda t, g: t[..., :8].contiguous()), VE, "blocks",
         ("[3, 2, 8]",)),
    Case("dequantize_mxfp4", "blocks_1d", set_("blocks", lambda t, g: t.reshape(-1)), VE, "blocks", ("[96]",)),
    Case("dequantize_mxfp4", "scales_wrong", set_("scales", lambda t, g: t[:, :1].contiguous()), VE, "scales",
         ("[3, 1]",)),
    Case("dequantize_mxfp4", "blocks_noncontig", set_("blocks", lambda t, g: noncontig(t)), VE, "blocks",
         ("contiguous",)),
    Case("dequantize_mxfp4", "scales_noncontig", set_("scales", lambda t, g: noncontig(t)), VE, "scales",
         ("contiguous",)),
    Case("dequantize_mxfp4", "scales_meta", set_("scales", lambda t, g: meta(t)), VE, "scales", ("meta",)),
    Case("dequantize_mxfp4", "blocks_meta", set_("blocks", lambda t, g: meta(t)), VE, "blocks", ("meta",)),
    # ---------------------------------------------------------------- repack_mxfp4
    Case("repack_mxfp4", "blocks_int32", set_("blocks", lambda t, g: t.int()), TE, "blocks", ("int32",)),
    Case("repack_mxfp4", "scales_float", set_("scales", lambda t, g: t.float()), TE, "scales", ("float32",)),
    Case("repack_mxfp4", "blocks_3d", set_("blocks", lambda t, g: t[0].contiguous()), VE, "blocks", ("[3, ",)),
    Case("repack_mxfp4", "blocks_last_dim", set_("blocks", lambda t, g: t[..., :8].contiguous()), VE, "blocks",
         ("8]",)),
    Case("repack_mxfp4", "scales_wrong", set_("scales", lambda t, g: t[:, :1].contiguous()), VE, "scales",
         ("[2, 1, ",)),
    Case("repack_mxfp4", "blocks_noncontig", set_("blocks", lambda t, g: noncontig(t)), VE, "blocks",
         ("contiguous",)),
    Case("repack_mxfp4", "scales_meta", set_("scales", lambda t, g: meta(t)), VE, "scales", ("meta",)),
    Case("repack_mxfp4", "blocks_list", set_("blocks", lambda t, g: t.tolist()), TE, "blocks", ("list",)),
    Case("dequantize_mxfp4", "axis_out_of_range", lambda a, g: a.update(axis=-3), VE, "axis", ("got -3",)),
    Case("dequantize_mxfp4", "blocks_list", set_("blocks", lambda t, g: t.tolist()), TE, "blocks", ("list",)),
    Case("dequantize_mxfp4", "scales_ndarray", set_("scales", lambda t, g: t.numpy()), TE, "scales", ("ndarray",)),
]


CASES += [
    # ---------------------------------------------------------------- add_rms_norm
    Case("add_rms_norm", "x_float16", set_("x", lambda t, g: t.to(F16)), TE, "x", HALF),
    Case("add_rms_norm", "residual_float32", set_("residual", lambda t, g: t.float()), TE, "residual",
         ("float32",)),
    Case("add_rms_norm", "scale_bfloat16", set_("scale", lambda t, g: t.to(BF16)), TE, "scale", ("bfloat16",)),
    Case("add_rms_norm", "x_1d", set_("x", lambda t, g: t.reshape(-1)), VE, "x", ("[320]",)),
    Case("add_rms_norm", "residual_wrong_rows", set_("residual", lambda t, g: t[:2].contiguous()), VE, "residual",
         ("[2, 64]",)),
    Case("add_rms_norm", "scale_wrong", set_("scale", lambda t, g: t[:32].contiguous()), VE, "scale", ("[32]",)),
    Case("add_rms_norm", "x_noncontig", set_("x", lambda t, g: noncontig(t)), VE, "x", ("contiguous",)),
    Case("add_rms_norm", "eps_negative", lambda a, g: a.update(eps=-1.0), VE, "eps", ("-1",)),
    Case("add_rms_norm", "eps_nan", lambda a, g: a.update(eps=math.nan), VE, "eps", ("nan",)),
    Case("add_rms_norm", "scale_meta", set_("scale", lambda t, g: meta(t)), VE, "scale", ("meta",)),
    Case("add_rms_norm", "x_list", set_("x", lambda t, g: t.tolist()), TE, "x", ("list",)),
    # ---------------------------------------------------------------- attention_decode
    Case("attention_decode", "qkv_float16", set_("qkv", lambda t, g: t.to(F16)), TE, "qkv", HALF),
    Case("attention_decode", "qkv_float32_cache_bf16", set_("qkv", lambda t, g: t.float()), TE, "qkv", ("float32",)),
    Case("attention_decode", "v_cache_float32", set_("v_cache", lambda t, g: t.float()), TE, "v_cache",
         ("float32",)),
    Case("attention_decode", "sinks_bfloat16", set_("sinks", lambda t, g: t.to(BF16)), TE, "sinks", ("bfloat16",)),
    Case("attention_decode", "position_int64", set_("position", lambda t, g: t.long()), TE, "position",
         ("Long", "int64")),
    Case("attention_decode", "position_2", set_("position", lambda t, g: t.repeat(2)), VE, "position", ("[2]",)),
    Case("attention_decode", "inv_freq_wrong", set_("inv_freq", lambda t, g: t[:4].contiguous()), VE, "inv_freq",
         ("[4]",)),
    Case("attention_decode", "qkv_wrong_columns", set_("qkv", lambda t, g: t[:, :-16].contiguous()), VE, "qkv",
         ("[2, 112]",)),
    Case("attention_decode", "k_cache_2d", set_("k_cache", lambda t, g: t.reshape(AL, -1)), VE, "k_cache",
         ("[12, 32]",)),
    Case("attention_decode", "v_cache_shorter", set_("v_cache", lambda t, g: t[:8].contiguous()), VE, "v_cache",
         ("[8, 2, 16]",)),
    Case("attention_decode", "sinks_not_a_multiple", set_("sinks", lambda t, g: t[:3].contiguous()), VE, "sinks",
         ("[3]",)),
    Case("attention_decode", "odd_head_size", lambda a, g: a.update(
        k_cache=randn(g, AL, AHKV, 15, dtype=BF16), v_cache=randn(g, AL, AHKV, 15, dtype=BF16)), VE, "k_cache",
         ("[12, 2, 15]",)),
    Case("attention_decode", "more_tokens_than_positions", set_("qkv", lambda t, g: t.repeat(7, 1)), VE, "qkv",
         ("14",)),
    Case("attention_decode", "qkv_noncontig", set_("qkv", lambda t, g: noncontig(t)), VE, "qkv", ("contiguous",)),
    Case("attention_decode", "k_cache_meta", set_("k_cache", lambda t, g: meta(t)), VE, "k_cache", ("meta",)),
    Case("attention_decode", "window_negative", lambda a, g: a.update(window=-1), VE, "window", ("-1",)),
    Case("attention_decode", "sm_scale_nan", lambda a, g: a.update(sm_scale=math.nan), VE, "sm_scale", ("nan",)),
    Case("attention_decode", "rope_scale_zero", lambda a, g: a.update(rope_scale=0.0), VE, "rope_scale", ("0",)),
    Case("attention_decode", "window_float", lambda a, g: a.update(window=4.0), TE, "window", ("float",)),
    # the position is data: the CPU raises, CUDA writes NaN (test_decode_ops.py checks that)
    Case("attention_decode", "position_past_the_cache", set_("position", lambda t, g: t + 9), VE, "position",
         ("got 12",), data=True),
    Case("attention_decode", "position_negative", set_("position", lambda t, g: t - 4), VE, "position",
         ("got -1",), data=True),
    # ---------------------------------------------------------------- greedy_token
    Case("greedy_token", "logits_float16", set_("logits", lambda t, g: t.to(F16)), TE, "logits", HALF),
    Case("greedy_token", "logits_2d", set_("logits", lambda t, g: t.reshape(1, GV)), VE, "logits", ("[1, 50]",)),
    Case("greedy_token", "logits_empty", set_("logits", lambda t, g: t[:0]), VE, "logits", ("[0]",)),
    Case("greedy_token", "logits_noncontig", set_("logits", lambda t, g: noncontig(t)), VE, "logits",
         ("contiguous",)),
    Case("greedy_token", "position_int64", set_("position", lambda t, g: t.long()), TE, "position",
         ("Long", "int64")),
    Case("greedy_token", "token_int64", set_("token", lambda t, g: t.long()), TE, "token", ("Long", "int64")),
    Case("greedy_token", "ids_float32", set_("ids", lambda t, g: t.float()), TE, "ids", ("float32",)),
    Case("greedy_token", "token_2", set_("token", lambda t, g: t.repeat(2)), VE, "token", ("[2]",)),
    Case("greedy_token", "ids_2d", set_("ids", lambda t, g: t.reshape(2, GL // 2)), VE, "ids", ("[2, 4]",)),
    Case("greedy_token", "ids_meta", set_("ids", lambda t, g: meta(t)), VE, "ids", ("meta",)),
    Case("greedy_token", "logits_list", set_("logits", lambda t, g: t.tolist()), TE, "logits", ("list",)),
    # the position is data: the CPU raises, CUDA writes the token alone (test_decode_ops.py checks that)
    Case("greedy_token", "position_past_ids", set_("position", lambda t, g: t + 5), VE, "position", ("got 8",),
         data=True),
    Case("greedy_token", "position_negative", set_("position", lambda t, g: t - 4), VE, "position", ("got -1",),
         data=True),
]


def build(case: Case, gen):
    args = OPS[case.op][0](gen)
    case.mutate(args, gen)
    return args




# ------------------------------------------------------- the edges an attack found (issue 12)

OPS_RAW = torch.ops.moekit
BIG = 2 ** 62 - 512
RE = RuntimeError


def raw(op, **fixed):
    """A custom case: a raw torch.ops.moekit call whose tensors `fixed` makes on the device."""
    def make(gen, device):
        return getattr(OPS_RAW, op), {k: (v(gen, device) if callable(v) else v) for k, v in fixed.items()}
    return make


def zeros(*shape, dtype=torch.float32):
    return lambda gen, device: torch.zeros(*shape, dtype=dtype, device=device)


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """t's values in a tensor whose data starts 1 byte past an allocation's (16-byte) start."""
    flat = torch.empty(t.numel() * t.element_size() + 1, dtype=torch.uint8, device=t.device)
    out = flat[1:].view(t.dtype).view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % 16 != 0
    return out


def moe_raw_args(gen, device, E_=E, mlp1_blocks=None):
    w1 = moekit.quantize_mxfp4(randn(gen, E_, 2 * I, H, scale=H ** -0.5).to(device))
    w2 = moekit.quantize_mxfp4(randn(gen, E_, H, I, scale=I ** -0.5).to(device))
    return dict(x=randn(gen, T, H, dtype=BF16).to(device), gate_weight=randn(gen, E_, H, dtype=BF16).to(device),
                gate_bias=None, mlp1_weight=mlp1_blocks(w1[0]) if mlp1_blocks else w1[0], mlp1_scales=w1[1],
                mlp1_bias=None, mlp2_weight=w2[0], mlp2_scales=w2[1], mlp2_bias=None, experts_per_token=K,
                swiglu_alpha=1.702, swiglu_limit=7.0)


def with_mlp1_slabs(codes_fn):
    """moe_raw_args with mlp1's repack_mxfp4 output, its codes passed through codes_fn."""
    def make(gen, device):
        args = moe_raw_args(gen, device)
        codes, slab_scales = moekit.repack_mxfp4(args["mlp1_weight"], args["mlp1_scales"])
        return OPS_RAW.moe_mlp, dict(args, mlp1_codes=codes_fn(codes), mlp1_slab_scales=slab_scales)
    return make


def moe_custom(**changes):
    def make(gen, device):
        args = moe_raw_args(gen, device)
        args.update({k: (v(gen, device) if callable(v) else v) for k, v in changes.items()})
        return OPS_RAW.moe_mlp, args
    return make


def element_free_layer(T: int, I: int):
    """A raw moe_mlp call on tensors without elements (H = 0): T tokens, one expert of width I."""
    return raw("moe_mlp", x=zeros(T, 0), gate_weight=zeros(1, 0), gate_bias=None, mlp1_weight=zeros(1, 2 * I, 0),
               mlp1_scales=None, mlp1_bias=None, mlp2_weight=zeros(1, 0, I), mlp2_scales=None, mlp2_bias=None,
               experts_per_token=1, swiglu_alpha=1.702, swiglu_limit=7.0)


def requires_grad(t, g):
    return t.float().requires_grad_()


def sparse(t, g):
    return t.to_sparse()


CASES += [
    # 2. sizes too large to count, or beyond int32 indices (element-free tensors)
    Case("moe_mlp", "workspace_overflow", None, VE, "mlp1_weight", ("64 bits",), custom=element_free_layer(1, BIG)),
    Case("moe_mlp", "tokens_2_63", None, VE, "x", ("int32 routing indices",),
         custom=element_free_layer(2 ** 63 - 1, 32)),
    Case("moe_mlp", "tokens_2_40_element_free", None, VE, "x", ("int32 routing indices",),
         custom=element_free_layer(2 ** 40, 32)),
    Case("matmul_ogs", "rows_2_31", None, VE, "x", ("int32 row indices",),
         custom=raw("matmul_ogs", x=zeros(2 ** 31, 0), w=zeros(1, 4, 0), w_scales=None, bias=None,
                    expert_offsets=None, gather_idx=None, scatter_idx=None, combine_weight=None, swiglu=False,
                    swiglu_alpha=0.0, swiglu_limit=0.0)),
    Case("matmul_ogs", "slabs_with_float_w", None, VE, "w_codes", ("a tensor",),
         custom=raw("matmul_ogs", x=zeros(T, H, dtype=BF16), w=zeros(1, 2 * I, H, dtype=BF16), w_scales=None,
                    bias=None, expert_offsets=None, gather_idx=None, scatter_idx=None, combine_weight=None,
                    swiglu=False, swiglu_alpha=0.0, swiglu_limit=0.0, w_codes=zeros(1, 2, 1, 2048, dtype=torch.uint8),
                    w_slab_scales=zeros(1, 2, 1, 128, dtype=torch.uint8))),
    # 3. SwiGLU parameters the formula forbids
    Case("moe_mlp", "swiglu_limit_negative", lambda a, g: a.update(swiglu_limit=-1.0), VE, "swiglu_limit", ("-1",)),
    Case("moe_mlp", "swiglu_limit_zero", lambda a, g: a.update(swiglu_limit=0.0), VE, "swiglu_limit", ("got 0",)),
    Case("moe_mlp", "swiglu_limit_nan", lambda a, g: a.update(swiglu_limit=math.nan), VE, "swiglu_limit", ("nan",)),
    Case("moe_mlp", "swiglu_alpha_inf", lambda a, g: a.update(swiglu_alpha=math.inf), VE, "swiglu_alpha", ("inf",)),
    Case("matmul_ogs", "swiglu_limit_negative", lambda a, g: a.update(swiglu=(1.702, -7.0), scatter_idx=None,
                                                                    combine_weight=None),
         VE, "swiglu_limit", ("-7",)),
    Case("matmul_ogs", "swiglu_alpha_nan", lambda a, g: a.update(swiglu=(math.nan, 7.0), scatter_idx=None,
                                                               combine_weight=None),
         VE, "swiglu_alpha", ("nan",)),
    # 5. autograd: refused at the call, not silently gradient-free
    Case("moe_mlp", "mlp2_float_requires_grad", set_("mlp2_weight", lambda t, g: randn(g, E, H, I, dtype=BF16).requires_grad_()),
         VE, "mlp2_weight", ("frozen",)),
    Case("matmul_ogs", "w_float_requires_grad", set_("w", lambda t, g: randn(g, E, 2 * I, H).requires_grad_()), VE, "w",
         ("frozen",)),
    Case("quantize_mxfp4", "w_requires_grad", set_("w", requires_grad), RE, "w", ("inference-only",)),
    # 6. the CUDA backend's limits, refused before the layer's first launch
    Case("moe_mlp", "experts_4096_cuda", None, VE, "gate_weight", ("2048",), devices=("cuda",),
         custom=lambda gen, device: (OPS_RAW.moe_mlp, moe_raw_args(gen, device, E_=4096))),
    Case("moe_mlp", "misaligned_mlp1_codes_cuda", None, VE, "mlp1_weight", ("aligned to 16 bytes",),
         devices=("cuda",), custom=lambda gen, device: (OPS_RAW.moe_mlp, moe_raw_args(gen, device,
                                                                                        mlp1_blocks=misaligned))),
    Case("moe_mlp", "misaligned_mlp1_slab_codes_cuda", None, VE, "mlp1_weight", ("aligned to 16 bytes",),
         devices=("cuda",), custom=with_mlp1_slabs(misaligned)),
    Case("matmul_ogs", "misaligned_slab_codes_cuda", None, VE, "w_codes", ("aligned to 16 bytes",), devices=("cuda",),
         custom=raw("matmul_ogs", x=zeros(T, H, dtype=BF16), w=zeros(1, 2 * I, H // 32, 16, dtype=torch.uint8),
                    w_scales=zeros(1, 2 * I, H // 32, dtype=torch.uint8), bias=None, expert_offsets=None,
                    gather_idx=None, scatter_idx=None, combine_weight=None, swiglu=False, swiglu_alpha=0.0,
                    swiglu_limit=0.0, w_codes=lambda g, d: misaligned(torch.zeros(1, 2, 1, 2048, dtype=torch.uint8,
                                                                                   device=d)),
                    w_slab_scales=zeros(1, 2, 1, 128, dtype=torch.uint8))),
    Case("route", "experts_4096_cuda", None, VE, "logits", ("2048",), devices=("cuda",),
         custom=raw("route", logits=lambda g, d: randn(g, T, 4096).to(d), k=2)),
    Case("dequantize_mxfp4", "misaligned_blocks_cuda", None, VE, "blocks", ("aligned to 16 bytes",),
         devices=("cuda",), custom=raw("dequantize_mxfp4", blocks=lambda g, d: misaligned(
             torch.randint(0, 255, (3, 2, 16), generator=g, dtype=torch.uint8).to(d)),
             scales=lambda g, d: torch.full((3, 2), 127, dtype=torch.uint8, device=d), dtype=torch.float32)),
    # 7. Python values out of range, other layouts, None where a tensor is required
    Case("route", "k_2_63", set_("k", lambda t, g: 2 ** 63), VE, "k", ("int64",)),
    Case("moe_mlp", "k_2_63", set_("experts_per_token", lambda t, g: 2 ** 63), VE, "experts_per_token", ("int64",)),
    Case("moe_mlp", "swiglu_alpha_10_400", lambda a, g: a.update(swiglu_alpha=10 ** 400), VE, "swiglu_alpha",
         ("too large",)),
    Case("moe_mlp", "swiglu_alpha_1e39_raw", None, VE, "swiglu_alpha", ("float32",),
         custom=moe_custom(swiglu_alpha=1e39)),
    Case("route", "logits_sparse", set_("logits", sparse), TE, "logits", ("sparse",)),
    Case("moe_mlp", "x_sparse", set_("x", sparse), TE, "x", ("sparse",)),
    Case("route", "logits_sparse_raw", None, TE, "logits", ("sparse",),
         custom=raw("route", logits=lambda g, d: randn(g, T, E).to(d).to_sparse(), k=2)),
    Case("moe_mlp", "gate_bias_sparse_raw", None, TE, "gate_bias", ("sparse",),
         custom=moe_custom(gate_bias=lambda g, d: randn(g, E, dtype=BF16).to(d).to_sparse())),
    Case("route", "logits_none_raw", None, VE, "logits", ("None",), custom=raw("route", logits=None, k=2)),
    Case("moe_mlp", "x_none_raw", None, VE, "x", ("None",), custom=moe_custom(x=None)),
]


class Edge(NamedTuple):
    """A legal call at an edge (empty dimensions): it must return, and `check` its result."""
    name: str
    call: Callable        # (gen, device) -> result
    check: Callable       # result -> bool


EDGES = [
    # 1. empty tensors decided by shape: these crashed (SIGSEGV), torch giving them null pointers
    Edge("matmul_empty_scatter", lambda g, d: moekit.matmul_ogs(
        randn(g, 0, 32).to(d), randn(g, 1, 8, 32).to(d), scatter_idx=torch.zeros(3, 0, dtype=torch.int32, device=d)),
         lambda y: y.shape == (3, 8) and bool((y == 0).all())),
    Edge("matmul_empty_scatter_combine", lambda g, d: moekit.matmul_ogs(
        randn(g, 0, 32).to(d), randn(g, 1, 8, 32).to(d), scatter_idx=torch.zeros(3, 0, dtype=torch.int32, device=d),
        combine_weight=torch.zeros(3, 0, device=d)),
         lambda y: y.shape == (3, 8) and bool((y == 0).all())),
    Edge("matmul_empty_scatter_bf16_1000", lambda g, d: moekit.matmul_ogs(
        randn(g, 0, 32, dtype=BF16).to(d), randn(g, 1, 8, 32, dtype=BF16).to(d),
        scatter_idx=torch.zeros(1000, 0, dtype=torch.int32, device=d)),
         lambda y: y.shape == (1000, 8) and y.dtype == BF16 and bool((y == 0).all())),
    Edge("matmul_empty_gather_zero_offsets", lambda g, d: moekit.matmul_ogs(
        randn(g, 5, 32).to(d), randn(g, 3, 8, 32).to(d), expert_offsets=torch.zeros(4, dtype=torch.int32, device=d),
        gather_idx=torch.zeros(0, dtype=torch.int32, device=d)),
         lambda y: y.shape == (0, 8)),
    # 7. moe_mlp through Python with H = 0 (torch.ops gave [5, 0]; the wrapper's reshape failed)
    Edge("moe_mlp_H_0", lambda g, d: moekit.moe_mlp(
        torch.zeros(5, 0, device=d), torch.zeros(4, 0, device=d), None, torch.zeros(4, 128, 0, device=d), None,
        torch.zeros(4, 0, 64, device=d), None, experts_per_token=2),
         lambda y: y.shape == (5, 0)),
]


# ------------------------------------------------------------------------------------ runner

def _gen(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def _to_device(device: str):
    def move(t: torch.Tensor) -> torch.Tensor:
        if device == "cpu" or t.device.type == "meta":
            return t
        if t.layout != torch.strided or t.is_contiguous():
            out = t.to(device)
        else:  # keep the strides that make it non-contiguous
            out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device).copy_(t)
        return out.requires_grad_() if t.requires_grad else out
    return move


def _to_meta(t: torch.Tensor) -> torch.Tensor:
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    return out.requires_grad_() if t.requires_grad else out


def _call(case: Case, device: str):
    """The case's call on `device` ("cpu", "cuda" or "meta": every tensor there)."""
    gen = _gen(f"{case.op}-{case.name}")
    if case.custom is not None:
        fn, kwargs = case.custom(gen, device)
        return fn(**kwargs)
    args = build(case, gen)
    args = _map_tensors(args, _to_meta if device == "meta" else _to_device(device))
    return call(case.op, args)


def _outcome(fn) -> dict:
    try:
        result = fn()
    except Exception as e:  # the matrix records every exception, and the test judges it
        return {"raised": type(e).__name__, "message": str(e)}
    return {"raised": None, "result": result}


def meta_applies(case: Case) -> bool:
    """Meta tensors have neither data nor a device of their own nor another layout."""
    return not (case.data or "meta" in case.name or "sparse" in case.name or "none_raw" in case.name
                or "cuda" in case.name)


def run_case(case: Case, device: str) -> dict:
    real = _outcome(lambda: _call(case, device))
    record = {"kind": "case", "id": f"{case.op}-{case.name}", "raised": real["raised"],
              "message": real.get("message")}
    if device == "cpu" and meta_applies(case):
        meta = _outcome(lambda: _call(case, "meta"))
        record.update(meta_raised=meta["raised"], meta_message=meta.get("message"))
    return record


def run_edge(edge: Edge, device: str) -> dict:
    out = _outcome(lambda: edge.call(_gen(edge.name), device))
    ok = out["raised"] is None and bool(edge.check(out["result"]))
    return {"kind": "edge", "id": edge.name, "raised": out["raised"], "message": out.get("message"), "ok": ok}


def _forked(job) -> dict:
    """Runs job() in a child process and returns its JSON record, or how the child died."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            record = job()
        except BaseException as e:  # the child must report, whatever happened
            record = {"runner_error": f"{type(e).__name__}: {e}"}
        with os.fdopen(write_fd, "w") as w:
            w.write(json.dumps(record))
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as r:
        text = r.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) or not text:
        return {"died": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
    return json.loads(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--only", default=None, help="run the case or edge with this id alone")
    p.add_argument("--in-process", action="store_true",
                   help="run every case in this process, one after another (for compute-sanitizer, whose start "
                        "per process is slow; the matrix test forks)")
    args = p.parse_args()
    jobs = [(f"{c.op}-{c.name}", lambda c=c: run_case(c, args.device)) for c in CASES if args.device in c.devices]
    jobs += [(e.name, lambda e=e: run_edge(e, args.device)) for e in EDGES]
    for name, job in jobs:
        if args.only is None or args.only == name:
            print(json.dumps({"id": name, **(job() if args.in_process else _forked(job))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
