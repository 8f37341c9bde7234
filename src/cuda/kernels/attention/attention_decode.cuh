// gpt-oss decode attention (see attention_decode in include/moekit/ops.h). Grid: (kv head, split).
// The keys the tokens can see are cut into chunks (AttentionDecodeSplit) that the splits take
// round-robin. For each token a block stages a chunk's keys and values in shared memory (float32,
// keys rotated; the new tokens' keys are rotated from qkv by every block that reads them, so no
// block waits for another's cache write), scores the chunk against the group's rotated queries,
// folds it into an online softmax per head, and accumulates the weighted values. With one split
// the block writes out; with several, each holds its partial (max, sum, weighted values) and they
// are combined in split order: on sm_90, where a kv head's splits fit one thread block cluster
// (kAttnMaxClusterSplits), each block stores its partial into the shared memory of the blocks
// that merge it and, after one cluster barrier, merges its share of the columns from its own
// shared memory; elsewhere each writes its partial to the workspace and
// attention_decode_merge_kernel combines them. The two give the same bits. The block that stages
// token t's own key (position p0 + t) writes that key and value into the cache from its staging
// buffers, so no block spends a round trip on the cache write.
// Nothing is atomic and nothing depends on how many tokens the call holds: the result is the
// same bits for a token decoded alone or with others (one token alone takes
// attention_decode_one_kernel where its shapes fit: attention_decode_one.cuh, the same
// arithmetic). The kernels are chained (grid_dependency.cuh): the merge's blocks start at once
// and wait.
#pragma once

#include <cstdint>

#include "../../../core/problem.h"
#include "../cluster.cuh"
#include "../element.cuh"
#include "../grid_dependency.cuh"

// A probe's stamp at phase n of attention_decode_kernel (bench/attention_phases.cu defines it to
// record when each block reaches it); nothing otherwise.
#ifndef MOEKIT_ATTENTION_PHASE
#define MOEKIT_ATTENTION_PHASE(n)
#endif

namespace moekit::cuda {

constexpr int kAttnThreads = 256;
constexpr int kAttnMaxGroup = 16;          // q heads per kv head
constexpr int kAttnMaxGroupValues = 2048;  // q heads per kv head * D
constexpr int kAttnMaxClusterSplits = 16;  // a cluster's blocks (non-portable above 8)
constexpr int kAttnMaxPairs = kAttnMaxGroupValues / 2 / kAttnThreads;  // rotary pairs of a group's queries a thread
// The kernel's shared memory at most: ~45 KB without the cluster merge's buffers (chunk * D and
// G * D are at most 2048, chunk 32), so no opt-in is needed; the merge is taken where its buffers
// fit too.
constexpr int64_t kAttnMaxSmemBytes = 48 * 1024;

// One token's partials as the cluster merge receives them in a block, in floats: [splits][columns
// per block] weighted values (column e goes to block e % splits), then [splits][2 G] maxima and sums.
inline __host__ __device__ int64_t attention_decode_received_floats(int64_t G, int64_t D, int64_t splits) {
  return (G * D + splits - 1) / splits * splits + 2 * G * splits;
}

// Whether the scores read a staged key and the query 16 bytes at a time (D a whole number of
// 4 floats), rather than one float at a time.
inline __host__ __device__ bool attention_key_vectors(int64_t D) { return D % 4 == 0; }

// A staged key row's stride in floats: 16-byte rows for vector reads (lanes down a column of
// keys: conflict-free with 4 floats of padding), else padded by one float (lanes reading one
// float down a column, conflict-free).
inline __host__ __device__ int64_t attention_key_stride(int64_t D) { return attention_key_vectors(D) ? D + 4 : D + 1; }

// The staged keys of a chunk of C keys, in floats, rounded up so that the values after them
// start on 16 bytes.
inline __host__ __device__ int64_t attention_keys_floats(int64_t C, int64_t D) {
  return (C * attention_key_stride(D) + 3) / 4 * 4;
}

// The kernel's shared memory, in floats (the layout at the top of attention_decode_kernel) for
// G q heads per kv head, head size D, chunks of C keys and, merging in a cluster, its splits
// (0 otherwise): two tokens' received partials, so that one cluster barrier a token suffices.
inline __host__ __device__ int64_t attention_decode_smem_floats(int64_t G, int64_t D, int64_t C,
                                                                int64_t cluster_splits) {
  return attention_keys_floats(C, D) + C * D + G * (2 * D + C + 4) + D + D / 2 +
         (cluster_splits > 0 ? 2 * attention_decode_received_floats(G, D, cluster_splits) : 0);
}

// The kernels' shared memory (attention_decode_smem_floats counts it), in floats.
struct AttentionSmem {
  float* k_s;       // [C][attention_key_stride] staged keys, rotated
  float* v_s;       // [C][D] staged values
  float* q_s;       // [G][D] the group's queries, rotated
  float* w_s;       // [G][C] scores, then softmax weights
  float* m_s;       // [G] running max
  float* l_s;       // [G] running sum
  float* alpha_s;   // [G] rescale of what came before
  float* acc_s;     // [G][D] weighted values
  float* cos_s;     // [D/2] the token's rotary cos and sin (times rope_scale)
  float* sin_s;     // [D/2]
  float* freq_s;    // [D/2] inv_freq
  float* sink_s;    // [G] the group's sinks
  float* received;  // [2 tokens][attention_decode_received_floats]: the cluster merge
  __device__ AttentionSmem(float* smem, int G, int D, int C)
      : k_s(smem),
        v_s(k_s + attention_keys_floats(C, D)),
        q_s(v_s + C * D),
        w_s(q_s + G * D),
        m_s(w_s + G * C),
        l_s(m_s + G),
        alpha_s(l_s + G),
        acc_s(alpha_s + G),
        cos_s(acc_s + G * D),
        sin_s(cos_s + D / 2),
        freq_s(sin_s + D / 2),
        sink_s(freq_s + D / 2),
        received(sink_s + G) {}
};

// Whether a kv head's `splits` merge inside their thread block cluster (sm_90, where the device
// also holds a cluster of that many blocks: max_cluster_blocks) rather than through the workspace
// and attention_decode_merge_kernel.
inline bool attention_decode_merges_in_cluster(int64_t G, int64_t D, int64_t C, int64_t splits) {
  return splits > 1 && splits <= kAttnMaxClusterSplits &&
         attention_decode_smem_floats(G, D, C, splits) * static_cast<int64_t>(sizeof(float)) <= kAttnMaxSmemBytes;
}

struct AttentionDecodeParams {
  const void* qkv;
  void* k_cache;
  void* v_cache;
  const float* sinks;
  const int32_t* position;
  const float* inv_freq;
  void* out;
  float* partial;  // [T, Hq, splits, D + 2] (max, sum, weighted values): splits > 1, no cluster
  bool cluster;    // splits > 1, merged within the kv head's cluster (sm_90)
  int T, Hq, Hkv, D, L, window, chunk, splits;
  float rope_scale, sm_scale;
};

template <class T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(static_cast<T>(v));
}

// The rotary cos and sin (times rope_scale) of position `pos` at frequency `freq` (inv_freq[i]).
__device__ __forceinline__ float2 rotary_cos_sin(int pos, float freq, float rope_scale) {
  float s, c;
  sincosf(static_cast<float>(pos) * freq, &s, &c);
  return {c * rope_scale, s * rope_scale};
}

// Elements i and i + D/2 (x1, x2) of a head's row rotated by rotary_cos_sin's `cs` of their i, each
// rounded to T: exactly what the CPU backend computes and the cache holds.
template <class T>
__device__ __forceinline__ float2 rotate(float x1, float x2, float2 cs) {
  return {round_to<T>(__fsub_rn(__fmul_rn(x1, cs.x), __fmul_rn(x2, cs.y))),
          round_to<T>(__fadd_rn(__fmul_rn(x2, cs.x), __fmul_rn(x1, cs.y)))};
}

// N consecutive elements of a row as one load (N * sizeof(T) == 16, or N == 1), kept as loaded
// (bf16 pairs take half the registers of floats) until they are stored.
template <int N, class T>
struct alignas(N * sizeof(T)) RowPiece {
  T e[N];
};

// A chunk's keys and values in flight to k_s ([C][stride]) and v_s ([C][D]), as floats: row k of
// the keys from k_row(k) (nullptr: a new token's key, rotated elsewhere), of the values from
// v_row(k). load() asks for the pieces of rows [k0, k1) whose row it is given (nullptr: not this
// time), every load issued before the first is used, so that a chunk (at most
// kAttentionChunkValues values, which a thread's kBatch pieces cover) costs one round trip to
// memory rather than one per element; store() writes them all. Two loads with complementary rows
// fill a chunk in two parts (the decode's cached rows before its wait, the new token's after).
// kVec: 16-byte loads (rows 16-byte aligned).
template <bool kVec, class T>
struct ChunkPieces {
  static constexpr int N = kVec ? 16 / sizeof(T) : 1;
  static constexpr int kBatch = (kAttentionChunkValues / N + kAttnThreads - 1) / kAttnThreads;
  using Piece = RowPiece<N, T>;
  Piece keys[kBatch], values[kBatch];

  template <class KRow, class VRow>
  __device__ __forceinline__ void load(int D, int k0, int k1, KRow k_row, VRow v_row) {
    const int per_row = D / N, n = (k1 - k0) * per_row;
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int e = b * kAttnThreads + threadIdx.x;
      if (e < n) {
        const int k = k0 + e / per_row, c = (e % per_row) * N;
        if (const T* row = k_row(k)) keys[b] = *reinterpret_cast<const Piece*>(row + c);
        if (const T* row = v_row(k)) values[b] = *reinterpret_cast<const Piece*>(row + c);
      }
    }
  }
  template <class KRow>
  __device__ __forceinline__ void store(float* k_s, float* v_s, int D, int stride, int k0, int k1, KRow k_row) const {
    const int per_row = D / N, n = (k1 - k0) * per_row;
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int e = b * kAttnThreads + threadIdx.x;
      if (e < n) {
        const int k = k0 + e / per_row, c = (e % per_row) * N;
        if (k_row(k)) {
#pragma unroll
          for (int i = 0; i < N; ++i) k_s[k * stride + c + i] = to_float(keys[b].e[i]);
        }
#pragma unroll
        for (int i = 0; i < N; ++i) v_s[k * D + c + i] = to_float(values[b].e[i]);
      }
    }
  }
};

// The score of a query and a key (staged, rotated): two chains over d (even and odd elements) in
// the same order whether a row is read 16 bytes or 4 at a time. The loops stay rolled: short code
// runs faster here than unrolled code, which each SM fetches once per launch.
__device__ __forceinline__ float attention_score(const float* query, const float* key, int D, float sm_scale) {
  float even = 0.0f, odd = 0.0f;  // D is even
  if (attention_key_vectors(D)) {
    for (int d = 0; d < D; d += 4) {
      const float4 q4 = *reinterpret_cast<const float4*>(query + d);
      const float4 k4 = *reinterpret_cast<const float4*>(key + d);
      even = fmaf(q4.x, k4.x, even);
      odd = fmaf(q4.y, k4.y, odd);
      even = fmaf(q4.z, k4.z, even);
      odd = fmaf(q4.w, k4.w, odd);
    }
  } else {
    for (int d = 0; d < D; d += 2) {
      even = fmaf(query[d], key[d], even);
      odd = fmaf(query[d + 1], key[d + 1], odd);
    }
  }
  return (even + odd) * sm_scale;
}

// Columns d and d + 1 of a chunk's staged values v_s ([C][D]) summed over its keys [k0, k1),
// each weighed by weight(k): two chains (even and odd keys) in a fixed order (8-byte reads).
template <class Weight>
__device__ __forceinline__ float2 weigh_values(const float* v_s, int D, int d, int k0, int k1, Weight weight) {
  float2 a0 = {0.0f, 0.0f}, a1 = {0.0f, 0.0f};
  int k = k0;
  for (; k + 1 < k1; k += 2) {
    const float w0 = weight(k), w1 = weight(k + 1);
    const float2 v0 = *reinterpret_cast<const float2*>(v_s + k * D + d);
    const float2 v1 = *reinterpret_cast<const float2*>(v_s + (k + 1) * D + d);
    a0 = {fmaf(w0, v0.x, a0.x), fmaf(w0, v0.y, a0.y)};
    a1 = {fmaf(w1, v1.x, a1.x), fmaf(w1, v1.y, a1.y)};
  }
  if (k < k1) {
    const float w0 = weight(k);
    const float2 v0 = *reinterpret_cast<const float2*>(v_s + k * D + d);
    a0 = {fmaf(w0, v0.x, a0.x), fmaf(w0, v0.y, a0.y)};
  }
  return {a0.x + a1.x, a0.y + a1.y};
}

// A token's queries of kv head g's group (row: the token's qkv row) into q_s ([G][D]) as they are,
// to be rotated once the position is known: pair e of the thread's pairs e = tid, tid + 256, ...
// is elements i and i + D/2 of head h. Not inlined: inlined twice, its addresses held across
// the token loop made the kernel spill.
template <class T>
__device__ __noinline__ void stage_queries(float* q_s, const T* row, int g, int G, int D) {
  const int half = D / 2;
  float x1[kAttnMaxPairs], x2[kAttnMaxPairs];
#pragma unroll
  for (int n = 0; n < kAttnMaxPairs; ++n) {
    const int e = threadIdx.x + n * kAttnThreads, h = e / half, i = e % half;
    const T* head = row + (g * G + h) * D;
    x1[n] = e < G * half ? to_float(head[i]) : 0.0f;
    x2[n] = e < G * half ? to_float(head[half + i]) : 0.0f;
  }
#pragma unroll
  for (int n = 0; n < kAttnMaxPairs; ++n) {
    const int e = threadIdx.x + n * kAttnThreads, h = e / half, i = e % half;
    if (e < G * half) {
      q_s[h * D + i] = x1[n];
      q_s[h * D + half + i] = x2[n];
    }
  }
}

// The keys token t sees: [lo, hi] (inclusive).
__device__ __forceinline__ int2 visible_keys(const AttentionDecodeParams& p, int64_t p0, int t) {
  const int pos = static_cast<int>(p0) + t;
  return {p.window > 0 ? max(0, pos - p.window + 1) : 0, pos};
}

// Chunk c's keys that a token seeing keys `seen` reads, chunks starting at key `base`: rows
// [k0, k1) of the chunk, whose row 0 is key `start` (k0 >= k1: none).
struct ChunkRows {
  int start, k0, k1;
};
__device__ __forceinline__ ChunkRows chunk_rows(int2 seen, int base, int c, int C) {
  const int start = base + c * C;
  return {start, max(seen.x, start) - start, min(seen.y + 1, start + C) - start};
}

// Output column d of one q head from the splits' partials, in split order: max(s), sum(s) and
// value(s) read split s's running max, running sum and weighted value at d (both merges read them
// from shared memory). A split that saw no key holds max -inf, sum 0 and values 0, so its scale
// exp(-inf - top) is 0 and it adds nothing. Both merges call it, so they give the same bits.
template <class Max, class Sum, class Value>
__device__ __forceinline__ float merge_splits(int splits, float sink, Max max, Sum sum, Value value) {
  float top = sink;
  for (int s = 0; s < splits; ++s) top = fmaxf(top, max(s));
  float denominator = __expf(sink - top), acc = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float scale = __expf(max(s) - top);
    denominator = fmaf(sum(s), scale, denominator);
    acc = fmaf(value(s), scale, acc);
  }
  return acc / denominator;
}


// The kv head's output for token t from the splits' partials (m_s, l_s, acc_s in each block):
// every block stores its partial where the blocks merging it read it (`received`, laid out as
// attention_decode_received_floats says), then after one cluster barrier block `split` merges
// columns split, split + splits, ... from its own shared memory. Nothing is read from another
// block, so a block may leave as soon as it has merged; `received` alternates between two
// buffers by token, so the next token's stores land in the buffer no block still reads. The
// first token's call waits for the cluster_arrive_relaxed of every block's start.
template <class T>
__device__ __forceinline__ void merge_in_cluster(const AttentionDecodeParams& p, int t, const float* m_s,
                                                 const float* l_s, const float* acc_s, const float* sink_s,
                                                 float* received) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (t == 0) cluster_wait();  // every block of the cluster has started
  const int G = p.Hq / p.Hkv, D = p.D, S = p.splits, split = blockIdx.y;
  const int per_block = (G * D + S - 1) / S;
  float* values = received;                // [S][per_block]
  float* stats = received + S * per_block;  // [S][2 G]: maxima, then sums
  for (int e = threadIdx.x; e < G * D; e += kAttnThreads) {
    store_to_cluster_block(values + split * per_block + e / S, e % S, acc_s[e]);
  }
  for (int i = threadIdx.x; i < 2 * G * S; i += kAttnThreads) {
    const int h = i % (2 * G);
    store_to_cluster_block(stats + split * 2 * G + h, i / (2 * G), h < G ? m_s[h] : l_s[h - G]);
  }
  cluster_sync();  // every split's partial has landed
  for (int j = threadIdx.x; split + j * S < G * D; j += kAttnThreads) {
    const int e = split + j * S, h = e / D;
    const float out = merge_splits(
        S, sink_s[h], [&](int s) { return stats[s * 2 * G + h]; }, [&](int s) { return stats[s * 2 * G + G + h]; },
        [&](int s) { return values[s * per_block + j]; });
    static_cast<T*>(p.out)[static_cast<int64_t>(t) * p.Hq * D + (blockIdx.x * G + h) * D + e % D] =
        static_cast<T>(out);
  }
#else
  __trap();  // launched in clusters on sm_90 only
#endif
}

// A position outside the cache: nothing is written but out, NaN, by the blocks of split 0 where
// no merge kernel follows (the merge kernel fills it otherwise).
template <class T>
__device__ __forceinline__ void fill_out_with_nan(const AttentionDecodeParams& p) {
  const int G = p.Hq / p.Hkv, D = p.D;
  if (blockIdx.y != 0 || !(p.splits == 1 || p.cluster)) return;
  for (int e = threadIdx.x; e < p.T * G * D; e += kAttnThreads) {
    const int t = e / (G * D), r = e % (G * D);
    static_cast<T*>(p.out)[static_cast<int64_t>(t) * p.Hq * D + blockIdx.x * G * D + r] =
        static_cast<T>(__int_as_float(0x7fc00000));
  }
}

// Token t's result from the block's running maxima, sums and weighted values of its group
// (m_s, l_s, acc_s, complete in shared memory; max -inf and zeros where the split saw no key):
// written to out with one split, else this split's partial, merged within the cluster or left in
// the workspace for attention_decode_merge_kernel.
template <class T>
__device__ __forceinline__ void finish_token(const AttentionDecodeParams& p, int t, const float* m_s,
                                             const float* l_s, const float* acc_s, const float* sink_s,
                                             float* received) {
  const int G = p.Hq / p.Hkv, D = p.D, g = blockIdx.x, split = blockIdx.y;
  if (p.cluster) {
    merge_in_cluster<T>(p, t, m_s, l_s, acc_s, sink_s,
                        received + t % 2 * attention_decode_received_floats(G, D, p.splits));
    return;
  }
  for (int e = threadIdx.x; e < G * D; e += kAttnThreads) {
    const int h = e / D, d = e % D, hq = g * G + h;
    if (p.splits == 1) {
      const float sink = sink_s[h];
      const float top = fmaxf(m_s[h], sink);
      const float scale = __expf(m_s[h] - top);
      static_cast<T*>(p.out)[static_cast<int64_t>(t) * p.Hq * D + hq * D + d] =
          static_cast<T>(acc_s[e] * scale / (l_s[h] * scale + __expf(sink - top)));
    } else {
      float* part = p.partial + ((static_cast<int64_t>(t) * p.Hq + hq) * p.splits + split) * (D + 2);
      if (d == 0) {
        part[0] = m_s[h];
        part[1] = l_s[h];
      }
      part[2 + d] = acc_s[e];
    }
  }
}

// At most 128 registers, two blocks an SM (without the bound the cluster merge makes it 160).
template <class T, bool kVec>
__global__ void __launch_bounds__(kAttnThreads, 2) attention_decode_kernel(const AttentionDecodeParams p) {
  extern __shared__ float smem[];
  const int G = p.Hq / p.Hkv, D = p.D, half = D / 2, C = p.chunk;
  const int ks = static_cast<int>(attention_key_stride(D));
  const AttentionSmem sm(smem, G, D, C);
  float *k_s = sm.k_s, *v_s = sm.v_s, *q_s = sm.q_s, *w_s = sm.w_s, *m_s = sm.m_s, *l_s = sm.l_s;
  float *alpha_s = sm.alpha_s, *acc_s = sm.acc_s, *cos_s = sm.cos_s, *sin_s = sm.sin_s, *freq_s = sm.freq_s;
  float *sink_s = sm.sink_s, *received = sm.received;
  const int g = blockIdx.x, split = blockIdx.y, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const T* qkv = static_cast<const T*>(p.qkv);
  T* k_cache = static_cast<T*>(p.k_cache);
  T* v_cache = static_cast<T*>(p.v_cache);
  const int row_len = (p.Hq + 2 * p.Hkv) * D;
  MOEKIT_ATTENTION_PHASE(0);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (p.cluster) cluster_arrive_relaxed();  // merge_in_cluster waits for it before its first store
#endif
  // The rotary frequencies and the sinks depend on no earlier kernel: asked for before the wait.
  for (int i = tid; i < half; i += kAttnThreads) freq_s[i] = p.inv_freq[i];
  if (tid < G) sink_s[tid] = p.sinks[g * G + tid];
  auto cached = [&](T* cache, int j) { return cache + (static_cast<int64_t>(j) * p.Hkv + g) * D; };
  // Head `column` of the qkv row of the call's token t (columns: q heads, then k, then v).
  auto qkv_head = [&](int64_t t, int column) { return qkv + t * row_len + column * D; };
  let_next_grid_start();  // the merge waits for this grid; what follows it may start its prologue
  wait_for_previous_grid();
  MOEKIT_ATTENTION_PHASE(1);
  const int64_t p0 = p.position[0];
  stage_queries<T>(q_s, qkv_head(0, 0), g, G, D);  // the first token's, in flight with the position

  if (!(p0 >= 0 && p0 + p.T <= p.L)) {
    fill_out_with_nan<T>(p);
    return;
  }
  MOEKIT_ATTENTION_PHASE(2);  // the position has arrived
  // A key row: the cache below p0, the new tokens' qkv rows from p0 on.
  auto new_key = [&](int j) { return qkv_head(j - p0, p.Hq + g); };
  auto new_value = [&](int j) { return qkv_head(j - p0, p.Hq + p.Hkv + g); };

  // Chunks start at the first key token 0 sees; the last token's position ends them.
  const int base = visible_keys(p, p0, 0).x, end = static_cast<int>(p0) + p.T;
  const int chunks = (end - base + C - 1) / C;
  for (int t = 0; t < p.T; ++t) {
    __syncthreads();  // the previous token's readers are done with q_s, m_s, l_s, cos_s and sin_s
    const int2 seen = visible_keys(p, p0, t);
    if (t > 0) stage_queries<T>(q_s, qkv_head(t, 0), g, G, D);
    for (int i = tid; i < half; i += kAttnThreads) {
      const float2 cs = rotary_cos_sin(seen.y, freq_s[i], p.rope_scale);
      cos_s[i] = cs.x;
      sin_s[i] = cs.y;
    }
    __syncthreads();  // cos_s, sin_s
#pragma unroll
    for (int n = 0; n < kAttnMaxPairs; ++n) {  // the group's queries rotated in place (this thread staged them)
      const int e = tid + n * kAttnThreads, h = e / half, i = e % half;
      if (e < G * half) {
        const float2 r = rotate<T>(q_s[h * D + i], q_s[h * D + half + i], {cos_s[i], sin_s[i]});
        q_s[h * D + i] = r.x;
        q_s[h * D + half + i] = r.y;
      }
    }
    if (tid < G) {
      m_s[tid] = -INFINITY;
      l_s[tid] = 0.0f;
    }
    for (int e = tid; e < G * D; e += kAttnThreads) acc_s[e] = 0.0f;
    MOEKIT_ATTENTION_PHASE(3);
    for (int c = split; c < chunks; c += p.splits) {
      // This token's keys in the chunk: [k0, k1) of it.
      const ChunkRows rows = chunk_rows(seen, base, c, C);
      const int start = rows.start, k0 = rows.k0, k1 = rows.k1;
      if (k0 >= k1) continue;  // block-uniform
      __syncthreads();  // the previous chunk's (or token's) readers are done with the buffers
      auto key_row = [&](int k) { return start + k < p0 ? cached(k_cache, start + k) : nullptr; };
      ChunkPieces<kVec, T> pieces;
      pieces.load(D, k0, k1, key_row,
                  [&](int k) -> const T* { return start + k < p0 ? cached(v_cache, start + k) : new_value(start + k); });
      pieces.store(k_s, v_s, D, ks, k0, k1, key_row);
      const int new0 = max(k0, static_cast<int>(p0) - start);  // the new tokens' keys, rotated from qkv
      for (int e = tid; e < max(0, k1 - new0) * half; e += kAttnThreads) {
        const int k = new0 + e / half, i = e % half;
        const float2 r = rotate<T>(to_float(new_key(start + k)[i]), to_float(new_key(start + k)[half + i]),
                                   rotary_cos_sin(start + k, freq_s[i], p.rope_scale));
        k_s[k * ks + i] = r.x;
        k_s[k * ks + half + i] = r.y;
      }
      __syncthreads();
      if (start + k1 - 1 == seen.y) {  // the chunk ends at this token's own key: into the cache
        // (both rows hold values of T, so they go back unchanged)
        const int k = k1 - 1;
        for (int d = tid; d < 2 * D; d += kAttnThreads) {
          if (d < D) cached(k_cache, seen.y)[d] = static_cast<T>(k_s[k * ks + d]);
          else cached(v_cache, seen.y)[d - D] = static_cast<T>(v_s[k * D + d - D]);
        }
      }
      MOEKIT_ATTENTION_PHASE(4);
      for (int item = tid; item < G * C; item += kAttnThreads) {  // the scores of the (head, key) pairs
        const int h = item / C, k = item % C;
        if (k >= k0 && k < k1) w_s[h * C + k] = attention_score(q_s + h * D, k_s + k * ks, D, p.sm_scale);
      }
      __syncthreads();
      MOEKIT_ATTENTION_PHASE(5);
      // Online softmax: warp w updates heads w, w + 8, ...
      for (int h = warp; h < G; h += kAttnThreads / 32) {
        float* w = w_s + h * C;
        float top = -INFINITY;
        for (int k = k0 + lane; k < k1; k += 32) top = fmaxf(top, w[k]);
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, offset));
        const float m_new = fmaxf(m_s[h], top);
        float total = 0.0f;
        for (int k = k0 + lane; k < k1; k += 32) {
          const float e = __expf(w[k] - m_new);
          w[k] = e;
          total += e;
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
        if (lane == 0) {
          const float alpha = __expf(m_s[h] - m_new);
          alpha_s[h] = alpha;
          l_s[h] = fmaf(l_s[h], alpha, total);
          m_s[h] = m_new;
        }
      }
      __syncthreads();
      MOEKIT_ATTENTION_PHASE(6);
      // Weighted values of the (head, column) outputs, two adjacent columns a thread (D is even).
      for (int e = 2 * tid; e < G * D; e += 2 * kAttnThreads) {
        const int h = e / D;
        const float* w = w_s + h * C;
        const float2 sum = weigh_values(v_s, D, e % D, k0, k1, [&](int k) { return w[k]; });
        acc_s[e] = fmaf(acc_s[e], alpha_s[h], sum.x);
        acc_s[e + 1] = fmaf(acc_s[e + 1], alpha_s[h], sum.y);
      }
    }
    __syncthreads();  // m_s and l_s complete
    MOEKIT_ATTENTION_PHASE(7);
    finish_token<T>(p, t, m_s, l_s, acc_s, sink_s, received);
    MOEKIT_ATTENTION_PHASE(8);
  }
}

// Combines the splits' partials of token blockIdx.x, q head blockIdx.y, in split order. The
// partials are first copied to shared memory (loads in flight together), then summed there.
template <class T>
__global__ void attention_decode_merge_kernel(const AttentionDecodeParams p) {
  extern __shared__ float part_s[];  // [splits][D + 2]
  const int t = blockIdx.x, hq = blockIdx.y, D = p.D, n = p.splits * (D + 2);
  let_next_grid_start();  // the output projection's weights depend on nothing here
  wait_for_previous_grid();
  const int64_t p0 = p.position[0];
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(t) * p.Hq * D + hq * D;
  if (!(p0 >= 0 && p0 + p.T <= p.L)) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) out[d] = static_cast<T>(__int_as_float(0x7fc00000));
    return;
  }
  const float* part = p.partial + (static_cast<int64_t>(t) * p.Hq + hq) * n;
#pragma unroll 8
  for (int i = threadIdx.x; i < n; i += blockDim.x) part_s[i] = part[i];
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    out[d] = static_cast<T>(merge_splits(
        p.splits, p.sinks[hq], [&](int s) { return part_s[s * (D + 2)]; },
        [&](int s) { return part_s[s * (D + 2) + 1]; }, [&](int s) { return part_s[s * (D + 2) + 2 + d]; }));
  }
}

}  // namespace moekit::cuda
