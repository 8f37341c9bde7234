// add_rms_norm, attention_decode and greedy_token through the C++ API on the CPU: hand-computed
// vectors, the cache and id writes, error paths; and the CUDA backend's splits (pure functions of shapes): the keys
// of attention_decode, the work units of moe_mlp's decode path and its x rows' layout in shared
// memory.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/problem.h"
#include "test_util.h"

namespace moekit::test {
namespace {

TEST(AddRmsNorm, SumThenNormOfTheRoundedSum) {
  // Row 0: sum (1, 3) -> mean square 5; row 1: sum (-2, 0) -> mean square 2.
  HostTensor x(DType::kFloat32, {2, 2}), residual(DType::kFloat32, {2, 2}), scale(DType::kFloat32, {2});
  const float xs[] = {0.5f, 1.0f, -3.0f, 0.25f}, rs[] = {0.5f, 2.0f, 1.0f, -0.25f};
  for (int i = 0; i < 4; ++i) {
    x.set(i, xs[i]);
    residual.set(i, rs[i]);
  }
  scale.set(0, 2.0f);
  scale.set(1, 0.5f);
  HostTensor sum(DType::kFloat32, {2, 2}), out(DType::kFloat32, {2, 2});
  add_rms_norm(x.view(), residual.view(), scale.view(), 0.0f, sum.view(), out.view());
  const float want_sum[] = {1.0f, 3.0f, -2.0f, 0.0f};
  const float want_out[] = {2.0f / std::sqrt(5.0f), 1.5f / std::sqrt(5.0f), -4.0f / std::sqrt(2.0f), 0.0f};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(sum.get(i), want_sum[i]) << i;
    EXPECT_NEAR(out.get(i), want_out[i], 1e-6f) << i;
  }
}

TEST(AddRmsNorm, RefusesMixedDtypesAndNegativeEps) {
  HostTensor x(DType::kBFloat16, {2, 4}), residual(DType::kFloat32, {2, 4}), scale(DType::kFloat32, {4});
  HostTensor sum(DType::kBFloat16, {2, 4}), out(DType::kBFloat16, {2, 4});
  expect_error([&] { add_rms_norm(x.view(), residual.view(), scale.view(), 1e-5f, sum.view(), out.view()); },
               Error::Kind::kType, {"moekit.add_rms_norm", "'residual'", "bfloat16", "float32"});
  HostTensor residual16(DType::kBFloat16, {2, 4});
  expect_error([&] { add_rms_norm(x.view(), residual16.view(), scale.view(), -1.0f, sum.view(), out.view()); },
               Error::Kind::kValue, {"moekit.add_rms_norm", "'eps'", "-1"});
}

struct Attention {
  // One q head over one kv head of D = 2, no rotation (inv_freq 0: angle 0, cos 1, sin 0).
  HostTensor qkv{DType::kFloat32, {1, 6}}, k_cache{DType::kFloat32, {4, 1, 2}}, v_cache{DType::kFloat32, {4, 1, 2}};
  HostTensor sinks{DType::kFloat32, {1}}, position{DType::kInt32, {1}}, inv_freq{DType::kFloat32, {1}};
  HostTensor out{DType::kFloat32, {1, 2}};
  AttentionDecodeArgs args(int64_t window) {
    AttentionDecodeArgs a;
    a.qkv = qkv.view();
    a.k_cache = k_cache.view();
    a.v_cache = v_cache.view();
    a.sinks = sinks.view();
    a.position = position.view();
    a.inv_freq = inv_freq.view();
    a.rope_scale = 1.0f;
    a.sm_scale = 1.0f;
    a.window = window;
    a.out = out.view();
    return a;
  }
};

TEST(AttentionDecode, SoftmaxWithTheSinkOverTheWindow) {
  Attention t;
  // cached key 0: (1, 0) value (10, 0); key 1: (0, 1) value (0, 10); the new token at position 2:
  // q (1, 0), k (0, 0), v (4, 4); sink log(2).
  const float cache_k[] = {1, 0, 0, 1}, cache_v[] = {10, 0, 0, 10};
  for (int i = 0; i < 4; ++i) {
    t.k_cache.set(i, cache_k[i]);
    t.v_cache.set(i, cache_v[i]);
  }
  const float row[] = {1, 0, 0, 0, 4, 4};
  for (int i = 0; i < 6; ++i) t.qkv.set(i, row[i]);
  t.sinks.set(0, std::log(2.0f));
  t.position.i32(0) = 2;
  attention_decode(t.args(0));
  // scores 1, 0, 0 and the sink: weights e, 1, 1 over e + 1 + 1 + 2.
  const float d = std::exp(1.0f) + 4.0f;
  EXPECT_NEAR(t.out.get(0), (10 * std::exp(1.0f) + 4) / d, 1e-5f);
  EXPECT_NEAR(t.out.get(1), (10 + 4) / d, 1e-5f);
  EXPECT_EQ(t.k_cache.get(4), 0.0f);  // the new key and value at row 2
  EXPECT_EQ(t.v_cache.get(4), 4.0f);
  EXPECT_EQ(t.v_cache.get(5), 4.0f);
  // A window of 2 keeps keys 1 and 2: weights 1, 1 and the sink 2.
  attention_decode(t.args(2));
  EXPECT_NEAR(t.out.get(0), 4.0f / 4.0f, 1e-5f);
  EXPECT_NEAR(t.out.get(1), 14.0f / 4.0f, 1e-5f);
}

TEST(AttentionDecode, PositionOutsideTheCacheWritesNothing) {
  Attention t;
  for (int i = 0; i < 6; ++i) t.qkv.set(i, 1.0f);
  t.position.i32(0) = 4;  // one token at position 4 of a 4-position cache
  expect_error([&] { attention_decode(t.args(0)); }, Error::Kind::kValue,
               {"moekit.attention_decode", "'position'", "got 4"});
  for (int i = 0; i < 8; ++i) EXPECT_EQ(t.k_cache.get(i), 0.0f);
}

TEST(AttentionDecode, RefusesHeadsThatDoNotGroup) {
  Attention t;
  HostTensor sinks(DType::kFloat32, {3});
  AttentionDecodeArgs a = t.args(0);
  HostTensor k_cache(DType::kFloat32, {4, 2, 2}), v_cache(DType::kFloat32, {4, 2, 2});
  a.k_cache = k_cache.view();
  a.v_cache = v_cache.view();
  a.sinks = sinks.view();
  expect_error([&] { attention_decode(a); }, Error::Kind::kValue, {"moekit.attention_decode", "'sinks'", "[3]"});
}

TEST(GreedyToken, FirstOfTheLargestIntoTokenAndIdsAtThePosition) {
  HostTensor logits(DType::kFloat32, {5}), position(DType::kInt32, {1}), token(DType::kInt32, {1}),
      ids(DType::kInt32, {3});
  const float values[] = {1.0f, 3.0f, -INFINITY, 3.0f, 2.0f};
  for (int i = 0; i < 5; ++i) logits.set(i, values[i]);
  position.i32(0) = 2;
  for (int i = 0; i < 3; ++i) ids.i32(i) = -1;
  greedy_token(logits.view(), position.view(), token.view(), ids.view());
  EXPECT_EQ(token.i32(0), 1);
  EXPECT_EQ(ids.i32(0), -1);
  EXPECT_EQ(ids.i32(1), -1);
  EXPECT_EQ(ids.i32(2), 1);
  logits.set(4, NAN);  // a NaN counts as the largest
  greedy_token(logits.view(), position.view(), token.view(), ids.view());
  EXPECT_EQ(token.i32(0), 4);
}

TEST(GreedyToken, PositionOutsideTheIdsWritesNothing) {
  HostTensor logits(DType::kBFloat16, {4}), position(DType::kInt32, {1}), token(DType::kInt32, {1}),
      ids(DType::kInt32, {3});
  for (int i = 0; i < 4; ++i) logits.set(i, static_cast<float>(i));
  position.i32(0) = 3;
  token.i32(0) = -1;
  expect_error([&] { greedy_token(logits.view(), position.view(), token.view(), ids.view()); }, Error::Kind::kValue,
               {"moekit.greedy_token", "'position'", "[0, 3)", "got 3"});
  EXPECT_EQ(token.i32(0), -1);
}

TEST(AttentionDecodeSplit, ChunksOfWholeKeysAtMost32Splits) {
  // gpt-oss heads of 64: 32-key chunks; the window bounds the keys a decode step sees.
  EXPECT_EQ(attention_decode_split(260, 0, 1, 64).chunk, 32);
  EXPECT_EQ(attention_decode_split(260, 0, 1, 64).splits, 9);
  EXPECT_EQ(attention_decode_split(260, 128, 1, 64).splits, 4);
  EXPECT_EQ(attention_decode_split(260, 128, 3, 64).splits, 5);  // 130 keys for three tokens
  EXPECT_EQ(attention_decode_split(131072, 0, 1, 64).splits, 32);
  EXPECT_EQ(attention_decode_split(40, 0, 1, 128).chunk, 16);   // larger heads, fewer keys a chunk
  EXPECT_EQ(attention_decode_split(40, 0, 1, 96).chunk, 16);    // a power of two: it divides the block
  EXPECT_EQ(attention_decode_split(1, 0, 1, 16).splits, 1);
  // a window longer than the cache is no window; a huge one must not overflow the comparison
  EXPECT_EQ(attention_decode_split(260, 300, 1, 64).splits, 9);
  EXPECT_EQ(attention_decode_split(260, INT64_MAX, 3, 64).splits, 9);
}

MoeMlpProblem moe_problem(int64_t T, int64_t E, int k, int64_t H, int64_t I,
                          DeviceType device = DeviceType::kCUDA) {
  MoeMlpProblem p;
  p.device.type = device;
  p.T = T;
  p.E = E;
  p.k = k;
  p.H = H;
  p.I = I;
  return p;
}

TEST(MoeDecodePlan, GptOssAtOneTokenMakesAbout22UnitsAnSm) {
  // 4 experts in slabs of 8 rows (one token: halves); mlp1 has 2I / 8 = 720 slabs, mlp2 H / 8
  // = 360: k ranges bring both to 2880 units (22 warps on each of 132 SMs at most), mlp1 in 1
  // range, mlp2 in 2.
  const MoeDecodePlan d = moe_decode_plan(moe_problem(1, 32, 4, 2880, 2880));
  EXPECT_TRUE(d.fits);
  EXPECT_EQ(d.experts, 4);
  EXPECT_EQ(d.halves, 2);
  EXPECT_EQ(d.splits1, 1);
  EXPECT_EQ(d.splits2, 2);
  EXPECT_EQ(d.units1, 2880);
  EXPECT_EQ(d.units2, 2880);
  EXPECT_EQ(d.counters, 360);  // mlp2's slabs (mlp1's k ranges meet in shared memory)
  EXPECT_EQ(d.partial_floats, 2880 * 16 * 8);
}

TEST(MoeDecodePlan, HalvesUpTo4Tokens) {
  EXPECT_EQ(moe_decode_plan(moe_problem(4, 32, 4, 2880, 2880)).halves, 2);
  const MoeDecodePlan d = moe_decode_plan(moe_problem(5, 32, 4, 2880, 2880));
  EXPECT_EQ(d.halves, 1);  // 16-row slabs: 20 experts x 180 of mlp2's
  EXPECT_EQ(d.counters, 180);
}

TEST(MoeDecodePlan, EightTokensNeedNoSplitAndAtMost32Experts) {
  const MoeDecodePlan d = moe_decode_plan(moe_problem(8, 128, 4, 2880, 2880));
  EXPECT_TRUE(d.fits);
  EXPECT_EQ(d.experts, 32);
  EXPECT_EQ(d.halves, 1);
  EXPECT_EQ(d.splits1, 1);
  EXPECT_EQ(d.splits2, 1);
  EXPECT_EQ(d.partial_floats, 32 * 180 * 16 * 8);
  EXPECT_EQ(moe_decode_plan(moe_problem(8, 2, 2, 64, 64)).experts, 2);  // fewer experts than slots
}

TEST(MoeDecodePlan, ShortKKeepsTwoStepsARange) {
  // mlp2 reduces over I in k steps of 256 at one token (halves), of 128 at more than 4: 128 is
  // one step, so one range however few the units; 1024 is 4 steps (2 ranges) or 8 (4 ranges).
  EXPECT_EQ(moe_decode_plan(moe_problem(1, 4, 1, 256, 128)).splits2, 1);
  EXPECT_EQ(moe_decode_plan(moe_problem(5, 4, 1, 256, 128)).splits2, 1);
  EXPECT_EQ(moe_decode_plan(moe_problem(1, 4, 1, 256, 1024)).splits2, 2);
  EXPECT_EQ(moe_decode_plan(moe_problem(5, 4, 1, 256, 1024)).splits2, 4);
}

TEST(MoeDecodePlan, MoreThan8TokensOr32SlotsTakeTheGeneralPath) {
  EXPECT_FALSE(moe_decode_plan(moe_problem(9, 32, 1, 64, 64)).fits);
  EXPECT_FALSE(moe_decode_plan(moe_problem(4, 32, 9, 64, 64)).fits);
  EXPECT_FALSE(moe_decode_plan(moe_problem(0, 32, 4, 64, 64)).fits);
  EXPECT_EQ(moe_decode_plan(moe_problem(9, 32, 1, 64, 64)).partial_floats, 0);
}

TEST(MoeDecodeXLayout, StepsReadMappedWordsAndTheHalvesWayItsBlocksInDistinctBanks) {
  // gpt-oss's K: 2880 rounds up to 12 steps of 256 (384 words, 432 with a word after every 8,
  // one more between rows), or 23 steps of 128 unpadded.
  EXPECT_EQ(moe_decode_x_stride(2880, 2), 433);
  EXPECT_EQ(moe_decode_x_stride(2880, 1), 369);
  for (int halves : {1, 2}) {
    for (int64_t K = 8; K <= 3072; K += 8) {
      const int64_t words = moe_decode_x_words(K, halves), stride = moe_decode_x_stride(K, halves);
      ASSERT_GE(words * 8, K);  // whole steps cover K
      ASSERT_EQ(words % (moe_decode_step_k(halves) / 8), 0);
      // Word c of a row lands once, before the row's last word (the one between rows), so rows
      // never overlap.
      std::vector<int> hits(static_cast<size_t>(stride), 0);
      for (int64_t c = 0; c < words; ++c) {
        const int64_t at = moe_decode_x_word_at(c, halves);
        ASSERT_LT(at, stride - 1) << "K " << K << " halves " << halves << " word " << c;
        ASSERT_EQ(++hits[static_cast<size_t>(at)], 1);
      }
      // A lane's k block kb starts at word_at(4 kb) and its 4 words follow it unpadded.
      for (int64_t kb = 0; kb < words / 4; ++kb) {
        for (int w = 0; w < 4; ++w) {
          ASSERT_EQ(moe_decode_x_word_at(4 * kb, halves) + w, moe_decode_x_word_at(4 * kb + w, halves));
        }
      }
      if (halves != 2) continue;
      // The 8 blocks of a step start in 8 different 16-byte bank groups (word mod 8).
      for (int64_t step = 0; step < words / 32; ++step) {
        std::vector<int> groups(8, 0);
        for (int j = 0; j < 8; ++j) ++groups[static_cast<size_t>(moe_decode_x_word_at(4 * (8 * step + j), 2) % 8)];
        for (int g : groups) ASSERT_EQ(g, 1) << "K " << K << " step " << step;
      }
    }
  }
}

TEST(MoeDecodePlan, OnlyTheCudaBackendPlansIt) {
  // The workspace reserves the path's regions from these sizes: none on the CPU.
  const MoeDecodePlan cpu = moe_decode_plan(moe_problem(1, 32, 4, 2880, 2880, DeviceType::kCPU));
  EXPECT_FALSE(cpu.fits);
  EXPECT_EQ(cpu.partial_floats, 0);
  EXPECT_EQ(cpu.counters, 0);
  EXPECT_TRUE(moe_decode_plan(moe_problem(1, 32, 4, 2880, 2880)).fits);
}

}  // namespace
}  // namespace moekit::test
