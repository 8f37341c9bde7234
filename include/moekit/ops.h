// moekit's op entry points. Every op takes its outputs as views the caller allocated
// (shapes: see each comment; src/core/problem.h computes them), validates every argument
// before touching memory, and runs on the device its tensors live on.
#pragma once

#include <cstddef>

#include "moekit/tensor.h"

namespace moekit {

// Expert weights [E, N, K]: either float (values f32/bf16 [E, N, K], scales absent) or
// MXFP4 in the gpt-oss checkpoint layout (values uint8 [E, N, K/32, 16], two e2m1 codes per
// byte, low nibble = even element; scales uint8 e8m0 [E, N, K/32]). MXFP4 weights may also
// carry their repack_mxfp4 (below) output, slab_codes and slab_scales, which matmul_ogs's
// swap-AB kernels read (the caller's promise: the same weights).
struct ExpertWeights {
  TensorView values;
  TensorView scales;
  TensorView slab_codes;   // optional u8 [E, ceil(N/64), ceil(K/64), 2048]
  TensorView slab_scales;  // u8 [E, ceil(N/64), ceil(K/64), 128], with slab_codes
  bool is_mxfp4() const { return scales.present(); }
  bool has_slabs() const { return slab_codes.present() || slab_scales.present(); }
};

struct Swiglu {
  bool enabled = false;
  float alpha = 1.702f;
  float limit = 7.0f;
};

// w [..., K] f32/bf16 -> blocks u8 [..., K/32, 16], scales u8 [..., K/32]; K % 32 == 0.
void quantize_mxfp4(const TensorView& w, const TensorView& blocks, const TensorView& scales,
                    const ExecContext& ctx = {});
// blocks [..., K/32, 16], scales [..., K/32] -> out f32/bf16 [..., K].
void dequantize_mxfp4(const TensorView& blocks, const TensorView& scales, const TensorView& out,
                      const ExecContext& ctx = {});
// Expert weights blocks [E, N, K/32, 16], scales [E, N, K/32] -> the Hopper main loop's layout
// (docs/semantics.md, "repack_mxfp4"): codes u8 [E, ceil(N/64), ceil(K/64), 2048] and
// slab_scales u8 [E, ceil(N/64), ceil(K/64), 128], each 64-row slab's 64-k step contiguous.
void repack_mxfp4(const TensorView& blocks, const TensorView& scales, const TensorView& codes,
                  const TensorView& slab_scales, const ExecContext& ctx = {});

// Top-k routing of logits [T, E] (f32/bf16). Outputs (P = T*k):
//   expert_idx     i32 [T, k]  chosen experts, best first (ties: lower index first)
//   expert_weight  f32 [T, k]  softmax over the k chosen logits
//   expert_counts  i32 [E]     token-slots per expert
//   expert_offsets i32 [E+1]   exclusive prefix sum of counts; offsets[E] == P
//   gather_idx     i32 [P]     token of each expert-grouped row (token order within an expert)
//   scatter_idx    i32 [T, k]  expert-grouped row of each (token, slot)
struct RouteOutputs {
  TensorView expert_idx, expert_weight, expert_counts, expert_offsets, gather_idx, scatter_idx;
};
void route(const TensorView& logits, int k, const RouteOutputs& out, const ExecContext& ctx = {});

// Grouped matmul over experts ("o"utput "g"ather "s"catter):
//   row p of the problem reads x[gather_idx[p]] (or x[p] without gather) and belongs to the
//   expert e with expert_offsets[e] <= p < expert_offsets[e+1] (without offsets: E == 1);
//   h[p] = x_row @ W[e]^T + bias[e]                     (fp32 accumulation)
//   with swiglu, h[p] becomes SwiGLU over its interleaved (glu, linear) column pairs (N/2 wide);
//   without scatter: out[p] = h[p]                                   out [P, N']
//   with scatter:    out[t] = sum_j combine_weight[t, j] * h[scatter_idx[t, j]]   out [T, N']
// out has x's dtype or float32; combine_weight defaults to 1.
struct MatmulOgsArgs {
  TensorView x;  // [M, K] f32/bf16
  ExpertWeights w;
  TensorView bias;            // optional [E, N] f32/bf16
  TensorView expert_offsets;  // optional i32 [E+1]
  TensorView gather_idx;      // optional i32 [P]
  TensorView scatter_idx;     // optional i32 [T, k]
  TensorView combine_weight;  // optional f32 [T, k], only with scatter_idx
  Swiglu swiglu;
  TensorView out;
  // 1-D uint8 buffer of at least matmul_ogs_workspace_size() bytes on the tensors' device, which
  // the CUDA backend needs (its list of row tiles; float32 rows before a scatter's combine).
  TensorView workspace;
};
// Validates everything but out and workspace, and returns the workspace bytes needed.
size_t matmul_ogs_workspace_size(const MatmulOgsArgs& args);
void matmul_ogs(const MatmulOgsArgs& args, const ExecContext& ctx = {});

// The gradients of matmul_ogs for its output's gradient grad_out, its weights frozen (MXFP4 or
// float, they take none). With a_p the row the forward combines or writes (row p's h, through
// SwiGLU when enabled, float32) and g_a[p] = combine_weight[t, j] * grad_out[t] summed over the
// slots (t, j) that read row p (grad_out[p] without scatter):
//   g_h[p] = g_a[p] through SwiGLU's derivative at h[p] (recomputed as the forward computes it;
//            zero through an active clamp: glu > limit, |linear| > limit), else g_a[p]
//   grad_x[r]               = sum over the rows p reading x[r], in row order, of g_h[p] @ W[e(p)]
//   grad_bias[e]            = sum over expert e's rows p, in row order, of g_h[p]   (with bias)
//   grad_combine_weight[t,j]= grad_out[t] . a_{scatter_idx[t, j]}          (with combine_weight)
// Sums in float32, each rounded once: grad_x to x's dtype, grad_bias to bias's, grad_combine_weight
// float32. The same bits on every run. A gradient left absent is not computed.
struct MatmulOgsBackwardArgs {
  MatmulOgsArgs forward;  // the forward call's arguments (its out and workspace unused)
  TensorView grad_out;    // [out rows, out cols] x's dtype or float32
  TensorView grad_x;      // optional [M, K] x's dtype
  TensorView grad_bias;   // optional [E, N] bias's dtype, only with bias
  TensorView grad_combine_weight;  // optional f32 [T, k], only with combine_weight
  // 1-D uint8 buffer of at least matmul_ogs_backward_workspace_size() bytes on the tensors' device,
  // which the CUDA backend needs (its row maps, sort buffers and intermediates).
  TensorView workspace;
};
// Validates the inputs, and returns the workspace bytes the backward needs on their device (0 on the CPU).
size_t matmul_ogs_backward_workspace_size(const MatmulOgsBackwardArgs& args);
void matmul_ogs_backward(const MatmulOgsBackwardArgs& args, const ExecContext& ctx = {});

// The gpt-oss MoE layer: gate, route, mlp1 + SwiGLU, mlp2, combine (see docs/semantics.md).
//   x [T, H] f32/bf16, gate_weight [E, H], gate_bias [E], mlp1 [E, 2I, H], mlp1_bias [E, 2I],
//   mlp2 [E, H, I], mlp2_bias [E, H]; y [T, H] with x's dtype.
// `workspace` is a 1-D uint8 buffer on the same device of at least moe_mlp_workspace_size() bytes.
struct MoeMlpArgs {
  TensorView x;
  TensorView gate_weight;
  TensorView gate_bias;  // optional
  ExpertWeights mlp1;
  TensorView mlp1_bias;  // optional
  ExpertWeights mlp2;
  TensorView mlp2_bias;  // optional
  int64_t experts_per_token = 4;
  float swiglu_alpha = 1.702f;
  float swiglu_limit = 7.0f;
  TensorView y;
  TensorView workspace;
};
// Validates the inputs (and the devices of y and workspace where given), and returns the
// workspace bytes moe_mlp needs.
size_t moe_mlp_workspace_size(const MoeMlpArgs& args);
void moe_mlp(const MoeMlpArgs& args, const ExecContext& ctx = {});

// The residual add and RMSNorm between gpt-oss's blocks, in one pass:
//   sum[t] = residual[t] + x[t]                                   (rounded to x's dtype)
//   out[t] = sum[t] / sqrt(mean_i(sum[t, i]^2) + eps) * scale     (float32, rounded to x's dtype)
// x, residual [T, H] f32/bf16 (one dtype); scale f32 [H]; sum, out [T, H] x's dtype.
void add_rms_norm(const TensorView& x, const TensorView& residual, const TensorView& scale, float eps,
                  const TensorView& sum, const TensorView& out, const ExecContext& ctx = {});

// gpt-oss attention of T new tokens against a KV cache: the decode step, whose position lives on
// the device (a captured graph replays it). The tokens sit at positions p0 .. p0+T-1, p0 = position[0].
// For token t at p = p0 + t, its row of qkv is [q heads Hq | k heads Hkv | v heads Hkv] x D:
//   q and k rotate by YaRN's rotary over halves: a_i = float(p) * inv_freq[i],
//     c = cos(a_i) * rope_scale, s = sin(a_i) * rope_scale, (x1, x2) -> (x1 c - x2 s, x2 c + x1 s),
//     each rounded to qkv's dtype;
//   k and v go into k_cache[p] and v_cache[p];
//   q head h reads kv head h / (Hq / Hkv) at the keys j <= p (and j > p - window when window > 0):
//     w = softmax({q . k_j * sm_scale}_j  together with  sinks[h]), the sink taking its share of
//     the probability and adding no value; out[t, h] = sum_j w_j v_j (float32, rounded).
// qkv [T, (Hq + 2 Hkv) D] f32/bf16; k_cache, v_cache [L, Hkv, D] qkv's dtype (written); sinks f32
// [Hq]; position i32 [1]; inv_freq f32 [D/2]; out [T, Hq D] qkv's dtype. A position with p0 < 0
// or p0 + T > L writes nothing: the CPU backend raises, the CUDA one (which cannot read the device
// value before launching) fills out with NaN.
struct AttentionDecodeArgs {
  TensorView qkv, k_cache, v_cache, sinks, position, inv_freq;
  float rope_scale = 1.0f;
  float sm_scale = 1.0f;
  int64_t window = 0;  // 0: no sliding window
  TensorView out;
  // 1-D uint8 buffer of at least attention_decode_workspace_size() bytes on the tensors' device:
  // the CUDA backend's partial results when it splits the keys (absent when that size is 0, and
  // on the CPU; unused on sm_90 where a kv head's splits fit a thread block cluster).
  TensorView workspace;
};
// Validates everything but out and workspace, and returns the workspace bytes CUDA needs.
size_t attention_decode_workspace_size(const AttentionDecodeArgs& args);
void attention_decode(const AttentionDecodeArgs& args, const ExecContext& ctx = {});

// The greedy token of a decode step whose position lives on the device (a captured graph replays it):
//   i = the index of the largest of logits, the first of equal ones (NaN counts as the largest)
//   token[0] = i;  ids[position[0]] = i
// logits [V] f32/bf16, 1 <= V < 2^31; position, token i32 [1]; ids i32 [L]. A position outside
// [0, L) writes no id: the CPU backend raises before writing anything, the CUDA one (which cannot
// read the device value before launching) writes token alone.
void greedy_token(const TensorView& logits, const TensorView& position, const TensorView& token,
                  const TensorView& ids, const ExecContext& ctx = {});

}  // namespace moekit
