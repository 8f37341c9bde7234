"""Bad input (DESIGN.md, "Bad input"): every case raises a Python exception, never a crash.

Errors are TypeError for a wrong dtype or a wrong Python type, ValueError for a wrong shape,
device or value, and their message names the op, the argument and what came
(docs/design.md: "moekit.<op>: '<argument>' expected <what>, got <what came>").
NaN/Inf propagate to the affected tokens only; empty batches return empty outputs; inputs are
never modified and the process survives all of it.
"""

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import pytest
import torch

import moekit
import reference as ref
from conftest import TOLERANCE, MoeLayer, make_bias, make_weights, randn

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


OPS = {
    "moe_mlp": (moe_base, moekit.moe_mlp),
    "matmul_ogs": (matmul_base, moekit.matmul_ogs),
    "route": (route_base, moekit.route),
    "quantize_mxfp4": (quantize_base, moekit.quantize_mxfp4),
    "dequantize_mxfp4": (dequantize_base, moekit.dequantize_mxfp4),
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
    mutate: Callable       # (args dict, gen) -> None, edits args in place
    exc: type
    arg: str               # the argument the message must name
    came: Sequence[str]    # the message must contain one of these (what came), case-insensitive


def set_(key, fn):
    def mutate(a, g):
        a[key] = fn(a[key], g)
    return mutate


def set_mxfp4(key, i, fn):
    def mutate(a, g):
        a[key] = replace_pair(a[key], i, fn(a[key][i], g))
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
         VE, "expert_offsets", ("11",)),
    Case("matmul_ogs", "offsets_decreasing", set_("expert_offsets", lambda t, g: torch.tensor([0, 6, 3, 8, 10],
                                                                                             dtype=torch.int32)),
         VE, "expert_offsets", ("3",)),
    Case("matmul_ogs", "gather_out_of_range", set_("gather_idx", lambda t, g: torch.where(t == t[3], T, t)), VE,
         "gather_idx", ("5",)),
    Case("matmul_ogs", "gather_negative", set_("gather_idx", lambda t, g: torch.where(t == t[0], -1, t)), VE,
         "gather_idx", ("-1",)),
    Case("matmul_ogs", "scatter_out_of_range", set_("scatter_idx", lambda t, g: torch.where(t == 0, 10, t)), VE,
         "scatter_idx", ("10",)),
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
    Case("dequantize_mxfp4", "axis_out_of_range", lambda a, g: a.update(axis=-3), VE, "axis", ("got -3",)),
    Case("dequantize_mxfp4", "blocks_list", set_("blocks", lambda t, g: t.tolist()), TE, "blocks", ("list",)),
    Case("dequantize_mxfp4", "scales_ndarray", set_("scales", lambda t, g: t.numpy()), TE, "scales", ("ndarray",)),
]


def build(case: Case, gen):
    args = OPS[case.op][0](gen)
    case.mutate(args, gen)
    return args


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}-{c.name}" for c in CASES])
def test_bad_input_raises_a_clear_error(gen, case):
    args = build(case, gen)
    with pytest.raises(Exception) as info:
        call(case.op, args)
    msg = str(info.value)
    assert isinstance(info.value, case.exc), f"{type(info.value).__name__} instead of {case.exc.__name__}: {msg}"
    assert case.op in msg, f"message does not name the op: {msg}"
    assert f"'{case.arg}" in msg, f"message does not name '{case.arg}': {msg}"
    assert any(c.lower() in msg.lower() for c in case.came), f"message does not say what came {case.came}: {msg}"


def test_mixed_device_message_names_both_devices(gen):
    # DESIGN.md rule 1: the error names the op, the argument and both devices
    args = moe_base(gen)
    args["mlp1_bias"] = meta(args["mlp1_bias"])
    with pytest.raises(ValueError) as info:
        moekit.moe_mlp(**args)
    msg = str(info.value)
    assert "moe_mlp" in msg and "'mlp1_bias'" in msg and "meta" in msg and "cpu" in msg, msg


def test_cases_cover_every_op():
    assert {c.op for c in CASES} == set(OPS)


# ------------------------------------------------------------------- all on the meta device

@pytest.mark.parametrize("op", sorted(OPS))
def test_all_meta_inputs_give_meta_outputs(gen, op):
    # Every tensor on 'meta' is shape propagation (the fake kernels): outputs are meta tensors
    # of the shapes and dtypes the CPU run gives.
    args = OPS[op][0](gen)
    want = call(op, dict(args))
    meta_args = {k: (meta(v) if isinstance(v, torch.Tensor) else
                     tuple(meta(t) for t in v) if isinstance(v, tuple) else v) for k, v in args.items()}
    got = call(op, meta_args)
    got = list(got) if isinstance(got, tuple) else [got]
    want = list(want) if isinstance(want, tuple) else [want]
    assert len(got) == len(want)
    for g_, w_ in zip(got, want):
        assert g_.device.type == "meta"
        assert g_.shape == w_.shape and g_.dtype == w_.dtype


# --------------------------------------------------------------------- empty inputs (T = 0)

@pytest.mark.parametrize("x_dtype", [BF16, torch.float32])
def test_empty_batches(gen, x_dtype):
    layer = MoeLayer(gen, 4, "mxfp4", x_dtype)
    for shape in [(0, 96), (2, 0, 96), (0, 3, 96)]:
        x = randn(gen, *shape, dtype=x_dtype)
        y = layer.run(x, experts_per_token=2)
        assert y.shape == shape and y.dtype == x_dtype

    r = moekit.route(randn(gen, 0, 4), 2)
    assert r.expert_idx.shape == (0, 2) and r.expert_weight.shape == (0, 2) and r.gather_idx.shape == (0,)
    assert torch.equal(r.expert_offsets, torch.zeros(5, dtype=torch.int32))

    w = make_weights(gen, "mxfp4", 4, 64, 96)
    x = randn(gen, 0, 96, dtype=x_dtype)
    offsets = r.expert_offsets
    out = moekit.matmul_ogs(x, w.arg, make_bias(gen, 4, 64), expert_offsets=offsets, gather_idx=r.gather_idx,
                            swiglu=(1.702, 7.0))
    assert out.shape == (0, 32) and out.dtype == x_dtype
    out = moekit.matmul_ogs(x, w.arg, None, expert_offsets=offsets, gather_idx=r.gather_idx,
                            scatter_idx=r.scatter_idx, combine_weight=r.expert_weight)
    assert out.shape == (0, 64) and out.dtype == x_dtype


def test_empty_quantize_and_dequantize(gen):
    for shape in [(0, 64), (2, 0, 32)]:
        blocks, scales = moekit.quantize_mxfp4(randn(gen, *shape))
        assert blocks.shape == (*shape[:-1], shape[-1] // 32, 16) and scales.shape == (*shape[:-1], shape[-1] // 32)
        assert moekit.dequantize_mxfp4(blocks, scales).shape == shape


def test_empty_quantized_axis(gen):
    # K = 0 is a multiple of 32; torch calls every empty tensor contiguous
    w = randn(gen, 3, 0)
    assert w.is_contiguous()
    blocks, scales = moekit.quantize_mxfp4(w)
    assert blocks.shape == (3, 0, 16) and scales.shape == (3, 0)
    assert moekit.dequantize_mxfp4(blocks, scales, dtype=torch.float32).shape == (3, 0)


# ------------------------------------------------------------------------ NaN / Inf propagate

def assert_same_nonfinite_pattern(got, want64, dtype):
    """NaN exactly where the float64 reference has NaN, the same infinities, and the finite part
    within the usual tolerance."""
    assert torch.equal(torch.isnan(got), torch.isnan(want64))
    assert torch.equal(torch.isposinf(got), torch.isposinf(want64))
    assert torch.equal(torch.isneginf(got), torch.isneginf(want64))
    finite = torch.isfinite(want64)
    assert ref.rel_err(got[finite], want64[finite]) < TOLERANCE[dtype]


@pytest.mark.parametrize("x_dtype", [BF16, torch.float32])
@pytest.mark.parametrize("w_kind", ["bfloat16", "mxfp4"])
def test_nonfinite_x_poisons_its_token_only(gen, x_dtype, w_kind):
    layer = MoeLayer(gen, 32, w_kind, x_dtype)
    x = layer.draw_x(gen, 16, 96, dtype=x_dtype, k=4)
    bad = {2: float("nan"), 5: float("inf"), 11: float("-inf")}
    for t, v in bad.items():
        x[t, int(torch.randint(0, 96, (1,), generator=gen))] = v
    y = layer.run(x, experts_per_token=4)
    bad_rows = torch.zeros(16, dtype=torch.bool)
    bad_rows[list(bad)] = True
    assert torch.isnan(y[bad_rows]).all()
    assert torch.isfinite(y[~bad_rows]).all()
    assert_same_nonfinite_pattern(y, layer.reference(x, 4), x_dtype)


@pytest.mark.parametrize("x_dtype", [BF16, torch.float32])
@pytest.mark.parametrize("where", ["mlp1_dense", "mlp1_mxfp4_scale", "mlp2_dense", "mlp2_mxfp4_scale",
                                   "mlp1_bias", "mlp2_bias"])
def test_nan_weights_poison_the_tokens_of_that_expert_only(gen, x_dtype, where):
    E, k, T = 8, 2, 32
    layer = MoeLayer(gen, E, "mxfp4" if "mxfp4" in where else "bfloat16", x_dtype)
    x = layer.draw_x(gen, T, 96, dtype=x_dtype, k=k)
    e = 3
    nan = float("nan")
    if where == "mlp1_dense":
        layer.w1.arg[e, 5, 17] = nan
        layer.w1.dense[e, 5, 17] = nan
    elif where == "mlp2_dense":
        layer.w2.arg[e, 7, 100] = nan
        layer.w2.dense[e, 7, 100] = nan
    elif where == "mlp1_mxfp4_scale":
        layer.w1.arg[1][e, 9, 2] = 255
        layer.w1.dense[e, 9, 64:96] = nan
    elif where == "mlp2_mxfp4_scale":
        layer.w2.arg[1][e, 7, 4] = 255
        layer.w2.dense[e, 7, 128:160] = nan
    elif where == "mlp1_bias":
        layer.b1[e, 11] = nan
    else:
        layer.b2[e, 7] = nan
    y = layer.run(x, experts_per_token=k)
    routed = (ref.route(layer.logits64(x), k).expert_idx == e).any(dim=1)
    assert 0 < int(routed.sum()) < T, "the test needs tokens on both sides"
    assert torch.isnan(y[routed]).any(dim=1).all()
    assert torch.isfinite(y[~routed]).all()
    assert_same_nonfinite_pattern(y, layer.reference(x, k), x_dtype)


@pytest.mark.parametrize("x_dtype", [BF16, torch.float32])
def test_inf_weights_follow_swiglu_clamps(gen, x_dtype):
    # +-Inf in mlp1 is clamped by SwiGLU (min(g, limit), clamp(l)) or turns into NaN (-Inf * 0):
    # exactly as in the float64 reference
    layer = MoeLayer(gen, 4, "bfloat16", x_dtype)
    x = layer.draw_x(gen, 16, 96, dtype=x_dtype, k=2)
    for row, v in [(4, float("inf")), (5, float("-inf")), (10, float("inf"))]:
        layer.w1.arg[1, row, 3] = v
        layer.w1.dense[1, row, 3] = v
    y = layer.run(x, experts_per_token=2)
    assert_same_nonfinite_pattern(y, layer.reference(x, 2), x_dtype)


@pytest.mark.parametrize("where", ["gate_weight", "gate_bias"])
def test_nan_gate_poisons_every_token(gen, where):
    # a NaN logit ranks first (docs/design.md), so every token takes that expert with NaN weights
    layer = MoeLayer(gen, 4, "mxfp4", BF16)
    x = layer.draw_x(gen, 7, 96, dtype=BF16, k=2)
    if where == "gate_weight":
        layer.gate_weight[2, 0] = float("nan")
    else:
        layer.gate_bias[2] = float("nan")
    y = layer.run(x, experts_per_token=2)
    assert torch.isnan(y).all()


def test_matmul_ogs_nan_row_stays_in_its_rows(gen):
    r = ref.route(randn(gen, 9, 4), 2)
    x = randn(gen, 9, 64, dtype=BF16)
    x[4, 10] = float("nan")
    w = make_weights(gen, "mxfp4", 4, 32, 64)
    out = moekit.matmul_ogs(x, w.arg, None, expert_offsets=r.expert_offsets.int(), gather_idx=r.gather_idx.int())
    rows = r.gather_idx == 4
    assert torch.isnan(out[rows]).all() and torch.isfinite(out[~rows]).all()
    out = moekit.matmul_ogs(x, w.arg, None, expert_offsets=r.expert_offsets.int(), gather_idx=r.gather_idx.int(),
                            scatter_idx=r.scatter_idx.int(), combine_weight=r.expert_weight.float())
    assert torch.isnan(out[4]).all() and torch.isfinite(out[torch.arange(9) != 4]).all()


# ----------------------------------------------------------------- the caller's state is kept

def snapshot(args):
    out = {}
    for k, v in args.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.clone()
        elif isinstance(v, tuple) and all(isinstance(t, torch.Tensor) for t in v):
            out[k] = tuple(t.clone() for t in v)
    return out


def assert_unchanged(args, before):
    for k, v in before.items():
        now = args[k]
        pairs = zip(v, now) if isinstance(v, tuple) else [(v, now)]
        for a, b in pairs:
            assert torch.equal(a, b), f"'{k}' was modified"


@pytest.mark.parametrize("op", sorted(OPS))
def test_inputs_are_not_modified(gen, op):
    args = OPS[op][0](gen)
    before = snapshot(args)
    threads = torch.get_num_threads()
    call(op, dict(args))
    assert_unchanged(args, before)
    # and not on error either: the first case of this op that keeps the tensors on the CPU
    for case in CASES:
        if case.op == op and case.exc is ValueError and "meta" not in case.name:
            bad = build(case, gen)
            before = snapshot(bad)
            with pytest.raises(ValueError):
                call(op, dict(bad))
            assert_unchanged(bad, before)
    assert torch.get_num_threads() == threads


# ------------------------------------------------------------------------ the process survives

def test_process_survives_every_bad_input():
    # all the cases above in a fresh interpreter, then a good call: a crash or a hang would show
    # here as a signal, an exit code or the timeout instead of taking pytest down
    script = textwrap.dedent("""
        import sys, torch
        sys.path.insert(0, sys.argv[1])
        import test_errors as te
        from conftest import MoeLayer
        g = torch.Generator().manual_seed(0)
        raised = 0
        for case in te.CASES:
            try:
                te.call(case.op, te.build(case, g))
            except Exception:
                raised += 1
        layer = MoeLayer(g, 4, "mxfp4", torch.bfloat16)
        x = layer.draw_x(g, 7, 96, dtype=torch.bfloat16, k=2)
        y = layer.run(x, experts_per_token=2)
        assert torch.isfinite(y).all() and torch.equal(y, layer.run(x, experts_per_token=2))
        print("survived", len(te.CASES), raised)
    """)
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-c", script, here], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[:2] == ["survived", str(len(CASES))]
