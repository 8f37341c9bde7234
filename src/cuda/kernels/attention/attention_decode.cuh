// gpt-oss decode attention (see attention_decode in include/moekit/ops.h). Grid: (kv head,
// split of the cache's keys); a block serves the kv head's group of q heads for every token.
// Per token it walks its share of the visible keys in tiles of kAttnTile: one thread per key
// scores it against the group's rotated q (held in shared memory), a warp per head turns the
// tile's scores into online-softmax weights, and each thread accumulates its (head, column pair)
// outputs. Keys of the new tokens are rotated from qkv by every block that reads them, so no
// block waits for another's cache write; the first split's block writes them into the cache.
// With one split the block writes out; with several, each writes its partial (max, sum,
// weighted values) and attention_decode_merge_kernel combines them in split order. Nothing is
// atomic: the result does not depend on the number of tokens in the call or on scheduling.
#pragma once

#include <cstdint>

#include "../element.cuh"

namespace moekit::cuda {

constexpr int kAttnThreads = 256;
constexpr int kAttnTile = kAttnThreads;  // keys per tile: one per thread
constexpr int kAttnMaxGroup = 16;        // q heads per kv head
constexpr int kAttnMaxPairs = 4;         // (head, column pair) outputs per thread: group * D <= 2048

struct AttentionDecodeParams {
  const void* qkv;
  void* k_cache;
  void* v_cache;
  const float* sinks;
  const int32_t* position;
  const float* inv_freq;
  void* out;
  float* partial;  // [T, Hq, splits, D + 2] (max, sum, weighted values) when splits > 1
  int T, Hq, Hkv, D, L, window, keys_per_split, splits;
  float rope_scale, sm_scale;
};

template <class T>
struct Pair;
template <>
struct Pair<bf16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ float2 load(const bf16* p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
  }
  static __device__ __forceinline__ void store(bf16* p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
  }
};
template <>
struct Pair<float> {
  static __device__ __forceinline__ float2 load(const float* p) { return *reinterpret_cast<const float2*>(p); }
  static __device__ __forceinline__ void store(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = {a, b}; }
};

template <class T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(static_cast<T>(v));
}

// Element i and i + D/2 of a head's row rotated for position `pos`, each rounded to T: exactly
// what the CPU backend and the cache hold.
template <class T>
__device__ __forceinline__ float2 rotate_pair(const T* head_row, int i, int half, int pos, const float* inv_freq,
                                              float rope_scale) {
  float s, c;
  sincosf(static_cast<float>(pos) * inv_freq[i], &s, &c);
  c *= rope_scale;
  s *= rope_scale;
  const float x1 = to_float(head_row[i]), x2 = to_float(head_row[half + i]);
  return {round_to<T>(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s))),
          round_to<T>(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)))};
}

template <class T>
__global__ void __launch_bounds__(kAttnThreads) attention_decode_kernel(const AttentionDecodeParams p) {
  extern __shared__ float smem[];
  const int G = p.Hq / p.Hkv, D = p.D, half = D / 2;
  float* q_s = smem;                    // [G][D] the group's rotated queries
  float* w_s = q_s + G * D;             // [G][kAttnTile] scores, then softmax weights
  float* m_s = w_s + G * kAttnTile;     // [G] running max
  float* l_s = m_s + G;                 // [G] running sum
  float* alpha_s = l_s + G;             // [G] rescale of the previous tiles
  const int g = blockIdx.x, split = blockIdx.y, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const T* qkv = static_cast<const T*>(p.qkv);
  T* k_cache = static_cast<T*>(p.k_cache);
  T* v_cache = static_cast<T*>(p.v_cache);
  const int row_len = (p.Hq + 2 * p.Hkv) * D;
  const int64_t p0 = p.position[0];
  const bool in_range = p0 >= 0 && p0 + p.T <= p.L;

  if (!in_range) {  // nothing is written to the cache; out says so (the merge does with splits)
    if (split == 0 && p.splits == 1) {
      for (int e = tid; e < p.T * G * D; e += kAttnThreads) {
        const int t = e / (G * D), r = e % (G * D);
        static_cast<T*>(p.out)[static_cast<int64_t>(t) * p.Hq * D + g * G * D + r] = static_cast<T>(__int_as_float(0x7fc00000));
      }
    }
    return;
  }
  if (split == 0) {  // the new tokens' keys (rotated) and values into the cache
    for (int e = tid; e < p.T * half; e += kAttnThreads) {
      const int t = e / half, i = e % half;
      const T* k_row = qkv + static_cast<int64_t>(t) * row_len + (p.Hq + g) * D;
      const float2 r = rotate_pair(k_row, i, half, static_cast<int>(p0) + t, p.inv_freq, p.rope_scale);
      T* dst = k_cache + ((p0 + t) * p.Hkv + g) * D;
      dst[i] = static_cast<T>(r.x);
      dst[half + i] = static_cast<T>(r.y);
    }
    for (int e = tid; e < p.T * D; e += kAttnThreads) {
      const int t = e / D, d = e % D;
      v_cache[((p0 + t) * p.Hkv + g) * D + d] = qkv[static_cast<int64_t>(t) * row_len + (p.Hq + p.Hkv + g) * D + d];
    }
  }

  const int pairs = G * half;  // this thread's outputs: pair indices tid, tid + kAttnThreads, ...
  for (int t = 0; t < p.T; ++t) {
    const int pos = static_cast<int>(p0) + t;
    const int lo = p.window > 0 ? max(0, pos - p.window + 1) : 0;
    const int begin = max(lo, split * p.keys_per_split);
    const int end = min(pos + 1, (split + 1) * p.keys_per_split);  // exclusive
    if (begin >= end) continue;  // the merge skips this split for t as well
    const T* q_row = qkv + static_cast<int64_t>(t) * row_len;
    for (int e = tid; e < pairs; e += kAttnThreads) {
      const int h = e / half, i = e % half;
      const float2 r = rotate_pair(q_row + (g * G + h) * D, i, half, pos, p.inv_freq, p.rope_scale);
      q_s[h * D + i] = r.x;
      q_s[h * D + half + i] = r.y;
    }
    if (tid < G) {
      m_s[tid] = -INFINITY;
      l_s[tid] = 0.0f;
    }
    float acc[kAttnMaxPairs][2] = {};
    __syncthreads();
    for (int j0 = begin; j0 < end; j0 += kAttnTile) {
      const int count = min(kAttnTile, end - j0);
      // Scores: thread tid takes key j0 + tid.
      if (tid < count) {
        const int j = j0 + tid;
        float dot[kAttnMaxGroup];
#pragma unroll
        for (int h = 0; h < kAttnMaxGroup; ++h) dot[h] = 0.0f;
        const bool cached = j < p0;
        const T* k_row = cached ? k_cache + (static_cast<int64_t>(j) * p.Hkv + g) * D
                                : qkv + (j - p0) * row_len + (p.Hq + g) * D;
        for (int i = 0; i < half; ++i) {
          float k1, k2;
          if (cached) {
            k1 = to_float(k_row[i]);
            k2 = to_float(k_row[half + i]);
          } else {
            const float2 r = rotate_pair(k_row, i, half, j, p.inv_freq, p.rope_scale);
            k1 = r.x;
            k2 = r.y;
          }
#pragma unroll
          for (int h = 0; h < kAttnMaxGroup; ++h) {
            if (h < G) dot[h] = fmaf(q_s[h * D + half + i], k2, fmaf(q_s[h * D + i], k1, dot[h]));
          }
        }
#pragma unroll
        for (int h = 0; h < kAttnMaxGroup; ++h) {
          if (h < G) w_s[h * kAttnTile + tid] = dot[h] * p.sm_scale;
        }
      }
      __syncthreads();
      // Online softmax: warp w updates heads w, w + 8, ...
      for (int h = warp; h < G; h += kAttnThreads / 32) {
        float* w = w_s + h * kAttnTile;
        float top = -INFINITY;
        for (int k = lane; k < count; k += 32) top = fmaxf(top, w[k]);
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, offset));
        const float m_new = fmaxf(m_s[h], top);
        float total = 0.0f;
        for (int k = lane; k < count; k += 32) {
          const float e = __expf(w[k] - m_new);
          w[k] = e;
          total += e;
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
        if (lane == 0) {
          const float alpha = __expf(m_s[h] - m_new);
          alpha_s[h] = alpha;
          l_s[h] = l_s[h] * alpha + total;
          m_s[h] = m_new;
        }
      }
      __syncthreads();
      // Weighted values: thread tid owns (head, column pair) e = tid + n * kAttnThreads.
#pragma unroll
      for (int n = 0; n < kAttnMaxPairs; ++n) {
        const int e = tid + n * kAttnThreads;
        if (e >= pairs) break;
        const int h = e / half, d = 2 * (e % half);
        const float* w = w_s + h * kAttnTile;
        float a0 = acc[n][0] * alpha_s[h], a1 = acc[n][1] * alpha_s[h];
#pragma unroll 4
        for (int k = 0; k < count; ++k) {
          const int j = j0 + k;
          const T* v_row = j < p0 ? v_cache + (static_cast<int64_t>(j) * p.Hkv + g) * D
                                  : qkv + (j - p0) * row_len + (p.Hq + p.Hkv + g) * D;
          const float2 v = Pair<T>::load(v_row + d);
          a0 = fmaf(w[k], v.x, a0);
          a1 = fmaf(w[k], v.y, a1);
        }
        acc[n][0] = a0;
        acc[n][1] = a1;
      }
      __syncthreads();
    }
    // This token's result, or this split's partial.
#pragma unroll
    for (int n = 0; n < kAttnMaxPairs; ++n) {
      const int e = tid + n * kAttnThreads;
      if (e >= pairs) break;
      const int h = e / half, d = 2 * (e % half), hq = g * G + h;
      if (p.splits == 1) {
        const float sink = p.sinks[hq];
        const float top = fmaxf(m_s[h], sink);
        const float scale = __expf(m_s[h] - top);
        const float inv = 1.0f / (l_s[h] * scale + __expf(sink - top));
        Pair<T>::store(static_cast<T*>(p.out) + static_cast<int64_t>(t) * p.Hq * D + hq * D + d,
                       acc[n][0] * scale * inv, acc[n][1] * scale * inv);
      } else {
        float* part = p.partial + ((static_cast<int64_t>(t) * p.Hq + hq) * p.splits + split) * (D + 2);
        if (d == 0) {
          part[0] = m_s[h];
          part[1] = l_s[h];
        }
        part[2 + d] = acc[n][0];
        part[3 + d] = acc[n][1];
      }
    }
    __syncthreads();  // q_s, m_s and l_s are the next token's
  }
}

// Combines the splits' partials of token blockIdx.x, q head blockIdx.y, in split order.
template <class T>
__global__ void attention_decode_merge_kernel(const AttentionDecodeParams p) {
  const int t = blockIdx.x, hq = blockIdx.y, D = p.D;
  const int64_t p0 = p.position[0];
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(t) * p.Hq * D + hq * D;
  if (!(p0 >= 0 && p0 + p.T <= p.L)) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) out[d] = static_cast<T>(__int_as_float(0x7fc00000));
    return;
  }
  const int pos = static_cast<int>(p0) + t;
  const int lo = p.window > 0 ? max(0, pos - p.window + 1) : 0;
  const int first = lo / p.keys_per_split, last = pos / p.keys_per_split;
  const float* part = p.partial + (static_cast<int64_t>(t) * p.Hq + hq) * p.splits * (D + 2);
  const float sink = p.sinks[hq];
  float top = sink;
  for (int s = first; s <= last; ++s) top = fmaxf(top, part[s * (D + 2)]);
  float denominator = __expf(sink - top);
  for (int s = first; s <= last; ++s) denominator += part[s * (D + 2) + 1] * __expf(part[s * (D + 2)] - top);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = first; s <= last; ++s) acc += part[s * (D + 2) + 2 + d] * __expf(part[s * (D + 2)] - top);
    out[d] = static_cast<T>(acc / denominator);
  }
}

}  // namespace moekit::cuda
