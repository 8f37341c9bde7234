// gpt-oss decode attention of one token (T = 1) for groups of at most 8 q heads of at most 64
// values: the decode step's case. Grid and splits as attention_decode_kernel's, chunks of 32 keys.
// Warp h owns q head h of the block's kv head group: lane l holds its query's rotary pair
// (l, l + D/2), rotated in registers, scores key k0 + l of a chunk, and weighs the values'
// columns 2l and 2l + 1, so once a chunk is staged (one block barrier) each warp scores,
// soft-maxes and weighs its head's keys by itself, with warp shuffles. The new token's key is
// rotated in warp 0's registers, as its query is. The arithmetic is attention_decode_kernel's,
// operation for operation (the same chains over d and over keys, the same lanes in the
// shuffle trees, the same merge), so a token's result is the same bits from either kernel: the
// op stays batch invariant.
#pragma once

#include "attention_decode.cuh"

namespace moekit::cuda {

// Whether attention_decode_one_kernel serves the call: one token, a warp per q head of a group,
// a lane per rotary pair and per key of a chunk.
inline bool attention_decode_one_fits(int64_t T, int64_t G, int64_t D, int64_t chunk) {
  return T == 1 && G <= kAttnThreads / 32 && D <= 64 && chunk == 32;
}

template <class T, bool kVec>
__global__ void __launch_bounds__(kAttnThreads, 2) attention_decode_one_kernel(const AttentionDecodeParams p) {
  extern __shared__ float smem[];  // attention_decode_kernel's layout; w_s, alpha_s and the rotary's unused
  const int G = p.Hq / p.Hkv, D = p.D, half = D / 2, C = p.chunk;
  const int ks = static_cast<int>(attention_key_stride(D));
  const AttentionSmem sm(smem, G, D, C);
  float *k_s = sm.k_s, *v_s = sm.v_s, *m_s = sm.m_s, *l_s = sm.l_s, *acc_s = sm.acc_s, *sink_s = sm.sink_s;
  const int g = blockIdx.x, split = blockIdx.y, tid = threadIdx.x, lane = tid % 32, h = tid / 32;
  const bool head = h < G, pair = lane < half;
  const T* qkv = static_cast<const T*>(p.qkv);
  T* k_cache = static_cast<T*>(p.k_cache);
  T* v_cache = static_cast<T*>(p.v_cache);
  MOEKIT_ATTENTION_PHASE(0);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (p.cluster) cluster_arrive_relaxed();  // merge_in_cluster waits for it before its first store
#endif
  // What depends on no earlier kernel: the lane's rotary frequency, the sinks and, at the position
  // read before the wait, the block's first chunk of cached keys and values (a decode step
  // advances the position after its layers, so in the runner the guess holds; where the kernel
  // just before wrote it, the position read after the wait decides): one round trip off the chain.
  // The new token's value (row 0 of qkv) is asked for with the position after the wait.
  const float freq = pair ? p.inv_freq[lane] : 0.0f;
  if (tid < G) sink_s[tid] = p.sinks[g * G + tid];
  auto cached = [&](T* cache, int j) { return cache + (static_cast<int64_t>(j) * p.Hkv + g) * D; };
  const T* row = qkv;  // the token's qkv row: q heads, then k, then v
  ChunkPieces<kVec, T> first;
  const int guess = guess_before_wait(p.position);
  const bool early = guess >= 0 && guess < p.L;
  ChunkRows at{};
  if (early) {
    const int2 seen = visible_keys(p, guess, 0);
    at = chunk_rows(seen, seen.x, split, C);
    auto old_row = [&](T* cache) {
      return [&, cache](int k) -> const T* { return at.start + k < guess ? cached(cache, at.start + k) : nullptr; };
    };
    first.load(D, at.k0, at.k1, old_row(k_cache), old_row(v_cache));
  }
  let_next_grid_start();
  wait_for_previous_grid();
  MOEKIT_ATTENTION_PHASE(1);
  const T* new_value = row + (p.Hq + p.Hkv + g) * D;
  if (early) {
    first.load(D, at.k0, at.k1, [](int) -> const T* { return nullptr; },
               [&](int k) -> const T* { return at.start + k < guess ? nullptr : new_value; });
  }
  // The head's query pair and, in warp 0, the new key's, in flight with the position.
  float x1 = 0.0f, x2 = 0.0f, n1 = 0.0f, n2 = 0.0f;
  if (head && pair) {
    const T* q = row + (g * G + h) * D;
    x1 = to_float(q[lane]);
    x2 = to_float(q[half + lane]);
  }
  if (h == 0 && pair) {
    const T* k = row + (p.Hq + g) * D;
    n1 = to_float(k[lane]);
    n2 = to_float(k[half + lane]);
  }
  const int p0 = p.position[0];
  if (!(p0 >= 0 && p0 + 1 <= p.L)) {
    fill_out_with_nan<T>(p);
    return;
  }
  MOEKIT_ATTENTION_PHASE(2);
  float* q = sm.q_s + h * D;
  const float2 cs = rotary_cos_sin(p0, freq, p.rope_scale);
  if (head && pair) {
    const float2 r = rotate<T>(x1, x2, cs);
    q[lane] = r.x;
    q[half + lane] = r.y;
  }
  const float2 new_key = rotate<T>(n1, n2, cs);  // warp 0's pair lanes hold it
  __syncwarp();
  MOEKIT_ATTENTION_PHASE(3);

  const int2 seen = visible_keys(p, p0, 0);
  const int chunks = (p0 + 1 - seen.x + C - 1) / C;
  const int d = min(2 * lane, D - 2);  // the lane's value columns d, d + 1 (lanes past D repeat the last)
  float m = -INFINITY, l = 0.0f, acc0 = 0.0f, acc1 = 0.0f;
  for (int c = split; c < chunks; c += p.splits) {
    const ChunkRows rows = chunk_rows(seen, seen.x, c, C);
    const int start = rows.start, k0 = rows.k0, k1 = rows.k1;
    if (k0 >= k1) continue;  // block-uniform
    __syncthreads();         // the previous chunk's readers are done with the buffers
    auto old_key = [&](int k) -> const T* { return start + k < p0 ? cached(k_cache, start + k) : nullptr; };
    if (c == split && p0 == guess) {
      first.store(k_s, v_s, D, ks, k0, k1, old_key);
    } else {
      ChunkPieces<kVec, T> pieces;
      pieces.load(D, k0, k1, old_key,
                  [&](int k) -> const T* { return start + k < p0 ? cached(v_cache, start + k) : new_value; });
      pieces.store(k_s, v_s, D, ks, k0, k1, old_key);
    }
    const bool own = start + k1 - 1 == p0;  // the chunk ends at the token's own key
    if (own && h == 0 && pair) {            // rotated in registers: into the staged keys and the cache
      k_s[(k1 - 1) * ks + lane] = new_key.x;
      k_s[(k1 - 1) * ks + half + lane] = new_key.y;
      cached(k_cache, p0)[lane] = static_cast<T>(new_key.x);
      cached(k_cache, p0)[half + lane] = static_cast<T>(new_key.y);
    }
    __syncthreads();
    MOEKIT_ATTENTION_PHASE(4);
    if (own && tid >= kAttnThreads - D) {  // the value, unchanged, by the last warps' threads
      const int e = tid - (kAttnThreads - D);
      cached(v_cache, p0)[e] = static_cast<T>(v_s[(k1 - 1) * D + e]);
    }
    if (!head) continue;
    const int k = k0 + lane;  // the lane's key
    const float w = k < k1 ? attention_score(q, k_s + k * ks, D, p.sm_scale) : -INFINITY;
    MOEKIT_ATTENTION_PHASE(5);
    float top = w;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, offset));
    const float m_new = fmaxf(m, top);
    const float e = k < k1 ? __expf(w - m_new) : 0.0f;
    float total = e;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
    const float alpha = __expf(m - m_new);
    l = fmaf(l, alpha, total);
    m = m_new;
    MOEKIT_ATTENTION_PHASE(6);
    // Columns d, d + 1 weighed over the keys, each key's weight from its lane.
    const float2 sum = weigh_values(v_s, D, d, k0, k1, [&](int j) { return __shfl_sync(0xffffffffu, e, j - k0); });
    acc0 = fmaf(acc0, alpha, sum.x);
    acc1 = fmaf(acc1, alpha, sum.y);
  }
  if (head) {
    if (lane == 0) {
      m_s[h] = m;
      l_s[h] = l;
    }
    if (2 * lane < D) {
      acc_s[h * D + d] = acc0;
      acc_s[h * D + d + 1] = acc1;
    }
  }
  __syncthreads();
  MOEKIT_ATTENTION_PHASE(7);
  finish_token<T>(p, 0, m_s, l_s, acc_s, sink_s, sm.received);
  MOEKIT_ATTENTION_PHASE(8);
}

}  // namespace moekit::cuda
