// Per-op validation and shape math, shared by every backend and by the torch binding (which
// sizes outputs from these before allocating them). check_*_inputs validate everything but
// the outputs; check_*_outputs validate the outputs against the problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "host_device.h"
#include "moekit/ops.h"

namespace moekit {

// Row indices, expert offsets and token indices are int32 tensors: the rows of a problem, its
// token-slots and its experts are bounded by this.
constexpr int64_t kMaxIndex = 2147483647;
// No matmul_ogs kernel has row tiles shorter than this (each launcher static_asserts it): the
// tile list in the workspace is sized by it.
constexpr int64_t kMinTileRows = 8;
// The swap-AB kernels' tallest token tile: x's staged rows run this far past P (a tile reads R
// rows from its first).
constexpr int64_t kSwapabMaxTileRows = 128;

// Throws if this build has no backend for `device` (names `op`); meta tensors have none.
void check_backend(const char* op, const Device& device);

struct MxProblem {
  int64_t rows = 0;  // product of the leading dims
  int64_t K = 0;     // quantized axis
  Device device;
  std::vector<int64_t> lead;  // leading dims
};
MxProblem check_quantize_mxfp4_inputs(const TensorView& w);
void check_quantize_mxfp4_outputs(const MxProblem& p, const TensorView& blocks, const TensorView& scales);
MxProblem check_dequantize_mxfp4_inputs(const TensorView& blocks, const TensorView& scales);
void check_dequantize_mxfp4_outputs(const MxProblem& p, const TensorView& out);

// repack_mxfp4: expert weights [E, N, K/32, 16] and scales [E, N, K/32] into the Hopper main
// loop's slabs (mxfp4_slabs.h).
struct MxSlabsProblem {
  int64_t E = 0, N = 0, K = 0, slabs = 0, steps = 0;
  Device device;
};
MxSlabsProblem check_repack_mxfp4_inputs(const TensorView& blocks, const TensorView& scales);
void check_repack_mxfp4_outputs(const MxSlabsProblem& p, const TensorView& codes, const TensorView& slab_scales);

struct RouteProblem {
  int64_t T = 0, E = 0;
  int k = 0;
  Device device;
};
RouteProblem check_route_inputs(const TensorView& logits, int64_t k);
void check_route_outputs(const RouteProblem& p, const RouteOutputs& out);

// matmul_ogs's workspace (CUDA backend; byte offsets, 256-aligned): the list of row tiles
// (int2 per tile of at least kMinTileRows rows, and their count); with scatter, the float32
// rows [P, out_cols] that the combine sums; with repacked weights and a gather, x's gathered rows
// staged for the swap-AB kernels (swapab_staged_rows(P) rows of 128 bytes a 64-k step; without a
// gather they read x in place). A function of shapes alone.
struct MatmulOgsWorkspace {
  size_t tiles = 0, tile_count = 0, combine = 0, staged = 0, total = 0;
};

struct MatmulOgsProblem {
  int64_t M = 0;  // rows of x
  int64_t K = 0, N = 0, E = 0;
  int64_t P = 0;  // rows of the grouped problem
  int64_t T = 0;  // output rows with scatter
  int64_t k = 0;  // slots per output row with scatter
  bool mxfp4 = false, gather = false, scatter = false, swiglu = false;
  bool slabs = false;  // the MXFP4 weights repacked too (ExpertWeights::slab_codes)
  int64_t out_rows = 0, out_cols = 0;
  Device device;
  MatmulOgsWorkspace workspace;  // laid out by check_matmul_ogs_inputs (sizes checked)
};
// `op`: the op named in errors (matmul_ogs_backward checks its forward's arguments here too).
MatmulOgsProblem check_matmul_ogs_inputs(const MatmulOgsArgs& a, const char* op = "matmul_ogs");
// The backward's inputs (its forward's arguments, named as the backward's, and grad_out), then
// its gradients against that problem.
MatmulOgsProblem check_matmul_ogs_backward_inputs(const MatmulOgsBackwardArgs& a);
void check_matmul_ogs_backward_outputs(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& a);
// Rows of x's staging for the swap-AB kernels: the problem's P and the tallest tile's overrun.
MOEKIT_HD constexpr int64_t swapab_staged_rows(int64_t P) { return P + kSwapabMaxTileRows; }
// The workspace of a problem's shapes; throws if its sizes do not fit in int64.
MatmulOgsWorkspace matmul_ogs_workspace_layout(const MatmulOgsProblem& p);
void check_matmul_ogs_outputs(const MatmulOgsProblem& p, const MatmulOgsArgs& a);

// The CUDA backend's decode path of moe_mlp (src/cuda/kernels/moe): at most this many tokens
// and token-slots T * k. Its expert matmuls split into work units (routed expert, slab of 16
// weight rows, or 8 up to kMoeDecodeHalvesMaxTokens tokens, k range); the split is a function
// of shapes alone, so the workspace is too.
constexpr int64_t kMoeDecodeMaxTokens = 8, kMoeDecodeMaxPairs = 32;
constexpr int64_t kMoeDecodeSlabRows = 16;
// Up to this many tokens a unit is 8 rows, and a k step the 128 bytes of each row (two halves
// of the step in the MMA's columns: src/cuda/kernels/moe/decode_experts.cuh).
constexpr int64_t kMoeDecodeHalvesMaxTokens = 4;
// A unit's weight rows and a k step's length in each way (halves 1 or 2), for the plan and the kernel.
MOEKIT_HD constexpr int64_t moe_decode_slab_rows(int halves) { return kMoeDecodeSlabRows / halves; }
MOEKIT_HD constexpr int64_t moe_decode_step_k(int halves) { return 128 * halves; }
constexpr int64_t kMoeDecodeMaxSplits = 4;  // k ranges per (expert, slab)
// The routing mlp1 leaves for mlp2: [1 + 6 * pairs + pairs * tokens] 32-bit words (DecodeRoute).
constexpr int64_t kMoeDecodeRouteBytes = 4 * (1 + 6 * kMoeDecodeMaxPairs + kMoeDecodeMaxPairs * kMoeDecodeMaxTokens);
constexpr int kMoeDecodeWarps = 22;  // per block (one an SM) of its expert kernels: the most at 80 registers
// A row of x in the expert kernels' shared memory, in uint4 words (8 bf16), for a way of filling
// the MMA (halves): K rounded up to whole k steps (zeros past K, so the last step reads no test);
// with halves a word of padding after every 8 (two k blocks), so that the 8 blocks a step's
// lanes read at once start in distinct banks (in order they took 4 times the wavefronts); plus
// one word so that rows start 16 bytes apart in the banks. Word c of the row sits at
// moe_decode_x_word_at(c).
MOEKIT_HD constexpr int64_t moe_decode_x_words(int64_t K, int halves) {
  return (K + moe_decode_step_k(halves) - 1) / moe_decode_step_k(halves) * (moe_decode_step_k(halves) / 8);
}
MOEKIT_HD constexpr int64_t moe_decode_x_word_at(int64_t c, int halves) { return halves == 2 ? c + c / 8 : c; }
constexpr int64_t moe_decode_x_stride(int64_t K, int halves) {
  return moe_decode_x_word_at(moe_decode_x_words(K, halves), halves) + 1;
}
struct MoeDecodePlan {
  bool fits = false;              // a CUDA device, and T and T * k within the decode path's limits
  int64_t experts = 0;            // most experts a call can route to: min(T * k, E)
  int halves = 1;                 // 2 up to kMoeDecodeHalvesMaxTokens tokens: units of 8 rows
  int64_t splits1 = 0, splits2 = 0;  // k ranges per (expert, slab) of mlp1 and mlp2
  int64_t units1 = 0, units2 = 0;    // work units at most
  int64_t partial_floats = 0;        // [unit][16 rows][8 tokens] of the matmuls whose units share sums
  int64_t counters = 0;  // mlp2's epilogue groups, its slabs (mlp1's k ranges meet in shared memory)
};

// Where moe_mlp keeps its intermediates inside the workspace (byte offsets, 256-aligned).
struct MoeMlpWorkspace {
  size_t logits = 0;         // f32 [T, E]
  size_t expert_idx = 0;     // i32 [T, k]
  size_t expert_weight = 0;  // f32 [T, k]
  size_t expert_counts = 0;  // i32 [E]
  size_t expert_offsets = 0; // i32 [E+1]
  size_t gather_idx = 0;     // i32 [T*k]
  size_t scatter_idx = 0;    // i32 [T, k]
  size_t act = 0;            // x dtype [T*k, I]
  size_t matmul = 0;         // the workspace of each matmul_ogs (gate, mlp1, mlp2; one at a time)
  // The decode path's (sizes 0 where the plan does not fit): the tokens in paired order, the
  // partial sums, the epilogue counters and the routing mlp1 leaves for mlp2.
  size_t decode_x = 0, decode_partials = 0, decode_counters = 0, decode_route = 0;
  size_t total = 0;
};

struct MoeMlpProblem {
  int64_t T = 0, H = 0, E = 0, I = 0;
  int k = 0;
  bool mxfp4_1 = false, mxfp4_2 = false;  // mlp1's, mlp2's weights MXFP4
  bool slabs1 = false, slabs2 = false;    // mlp1's, mlp2's MXFP4 weights repacked too (repack_mxfp4)
  Device device;
  MoeDecodePlan decode;       // from moe_decode_plan
  MoeMlpWorkspace workspace;  // laid out by check_moe_mlp_inputs (sizes checked)
};
// The decode path's work split for T, k, E, H, I of p (on a CUDA device).
MoeDecodePlan moe_decode_plan(const MoeMlpProblem& p);
MoeMlpProblem check_moe_mlp_inputs(const MoeMlpArgs& a);
// y and the workspace (at least p.workspace.total bytes).
void check_moe_mlp_outputs(const MoeMlpProblem& p, const MoeMlpArgs& a);
// The layer's four steps as the problems of the ops they are (gate: a one-expert matmul_ogs into
// float32 logits; route; mlp1 with gather and SwiGLU; mlp2 with the weighted scatter-combine),
// made from the layer's checked problem: each is what the op's own checks make of the step's
// arguments (tests/cpp/moe_mlp_steps_test.cpp), so the layer need not check them again.
struct MoeMlpStepProblems {
  MatmulOgsProblem gate, mlp1, mlp2;
  RouteProblem route;
};
MoeMlpStepProblems moe_mlp_step_problems(const MoeMlpProblem& p);

struct AddRmsNormProblem {
  int64_t T = 0, H = 0;
  float eps = 0.0f;
  Device device;
};
AddRmsNormProblem check_add_rms_norm_inputs(const TensorView& x, const TensorView& residual, const TensorView& scale,
                                            float eps);
void check_add_rms_norm_outputs(const AddRmsNormProblem& p, const TensorView& x, const TensorView& sum,
                                const TensorView& out);

// How the CUDA backend splits the keys of attention_decode: chunks of `chunk` keys (a block stages
// one chunk of keys and values in shared memory at a time), dealt round-robin to `splits` blocks
// per kv head, whose partial softmaxes a second kernel merges. A function of shapes alone (the
// cache length, the window, the tokens and the head size), so the workspace is too.
// The CUDA backend's keys per chunk and blocks per kv head (at most kAttentionMaxSplits).
constexpr int64_t kAttentionMaxSplits = 32;
constexpr int64_t kAttentionChunkValues = 32 * 64;  // keys per chunk * head size, at most
struct AttentionDecodeSplit {
  int64_t chunk = 32, splits = 1;
};
AttentionDecodeSplit attention_decode_split(int64_t cache_len, int64_t window, int64_t tokens, int64_t head_dim);

struct AttentionDecodeProblem {
  int64_t T = 0, Hq = 0, Hkv = 0, D = 0, L = 0;
  int64_t window = 0;
  float rope_scale = 1.0f, sm_scale = 1.0f;
  AttentionDecodeSplit split;
  // CUDA backend's bytes: float [T, Hq, splits, D + 2] when splits > 1, else 0 (the CPU needs none)
  size_t workspace = 0;
  Device device;
};
AttentionDecodeProblem check_attention_decode_inputs(const AttentionDecodeArgs& a);
void check_attention_decode_outputs(const AttentionDecodeProblem& p, const AttentionDecodeArgs& a);

struct GreedyTokenProblem {
  int64_t V = 0, L = 0;  // logits, ids
  Device device;
};
// Every argument: logits and position are read, token and ids written.
GreedyTokenProblem check_greedy_token_args(const TensorView& logits, const TensorView& position,
                                           const TensorView& token, const TensorView& ids);

}  // namespace moekit
