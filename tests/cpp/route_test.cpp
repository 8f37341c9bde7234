// route: top-k selection (ties, NaN), softmax weights, and the expert grouping
// (counts, offsets, gather/scatter permutations), against a naive full sort.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

namespace moekit::test {
namespace {

RouteBuffers run_route(HostTensor& logits, int k, const ExecContext& ctx = {}) {
  RouteBuffers b(logits.shape()[0], logits.shape()[1], k);
  route(logits.view(), k, b.outputs(), ctx);
  return b;
}

HostTensor logits_from(const std::vector<std::vector<float>>& rows, DType dtype = DType::kFloat32) {
  HostTensor t(dtype, {static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())});
  for (size_t r = 0; r < rows.size(); ++r)
    for (size_t e = 0; e < rows[r].size(); ++e) t.set(static_cast<int64_t>(r * rows[0].size() + e), rows[r][e]);
  return t;
}

// Every expert of a token, best first: NaN above every number, larger first, equal values
// (and NaN pairs) by lower expert index.
std::vector<int> full_order(const HostTensor& logits, int64_t t) {
  const int64_t E = logits.shape()[1];
  std::vector<int> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    const float va = logits.get(t * E + a), vb = logits.get(t * E + b);
    if (std::isnan(va) || std::isnan(vb)) return std::isnan(va) && !std::isnan(vb);
    return va > vb;
  });
  return order;
}

TEST(Route, AllEqualLogitsPickTheLowestExpertsInOrder) {
  for (int k : {1, 2, 3, 4, 8}) {
    SCOPED_TRACE("k " + std::to_string(k));
    HostTensor logits = logits_from({std::vector<float>(8, 0.5f), std::vector<float>(8, -3.0f)});
    RouteBuffers b = run_route(logits, k);
    for (int t = 0; t < 2; ++t) {
      for (int j = 0; j < k; ++j) {
        EXPECT_EQ(b.idx.i32(t * k + j), j);
        EXPECT_FLOAT_EQ(b.weight.get(t * k + j), 1.0f / static_cast<float>(k));
      }
    }
  }
}

TEST(Route, PartialTiesGoToTheLowerIndex) {
  HostTensor logits = logits_from({{1.0f, 5.0f, 2.0f, 5.0f, 2.0f, 5.0f}});
  RouteBuffers b = run_route(logits, 5);
  const int want[] = {1, 3, 5, 2, 4};
  for (int j = 0; j < 5; ++j) EXPECT_EQ(b.idx.i32(j), want[j]) << "slot " << j;
}

TEST(Route, NanRanksAboveEveryNumber) {
  HostTensor logits = logits_from({{1.0f, NAN, 3.0f, INFINITY, NAN, -1.0f}, {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, NAN}});
  RouteBuffers b = run_route(logits, 3);
  const int want[2][3] = {{1, 4, 3}, {5, 4, 3}};
  for (int t = 0; t < 2; ++t) {
    for (int j = 0; j < 3; ++j) {
      EXPECT_EQ(b.idx.i32(t * 3 + j), want[t][j]) << "token " << t << " slot " << j;
      // A NaN among the chosen logits propagates into the softmax weights.
      EXPECT_TRUE(std::isnan(b.weight.get(t * 3 + j))) << "token " << t << " slot " << j;
    }
  }
}

TEST(Route, SoftmaxMatchesAHandComputation) {
  HostTensor logits = logits_from({{0.5f, -1.0f, 2.0f, 1.0f}, {1.0f, 3.0f, 2.0f, 0.0f}});
  RouteBuffers b = run_route(logits, 3);
  // token 0: experts 2, 3, 0 with logits 2, 1, 0.5
  const double z0 = std::exp(2.0) + std::exp(1.0) + std::exp(0.5);
  const int want_idx[2][3] = {{2, 3, 0}, {1, 2, 0}};
  const double want_w[2][3] = {{std::exp(2.0) / z0, std::exp(1.0) / z0, std::exp(0.5) / z0},
                               // token 1: logits 3, 2, 1: weights 1 / (1 + e^-1 + e^-2), ...
                               {0.66524095589, 0.24472847105, 0.09003057317}};
  for (int t = 0; t < 2; ++t) {
    double sum = 0;
    for (int j = 0; j < 3; ++j) {
      EXPECT_EQ(b.idx.i32(t * 3 + j), want_idx[t][j]);
      // float exp and division: a few ulp of 1.
      EXPECT_NEAR(b.weight.get(t * 3 + j), want_w[t][j], 1e-6);
      sum += b.weight.get(t * 3 + j);
    }
    EXPECT_NEAR(sum, 1.0, 1e-6);
  }
  // k = 2 on token 1 of the hand example: 1 / (1 + e^-1) and e^-1 / (1 + e^-1).
  RouteBuffers b2 = run_route(logits, 2);
  EXPECT_NEAR(b2.weight.get(2), 0.73105857863, 1e-6);
  EXPECT_NEAR(b2.weight.get(3), 0.26894142137, 1e-6);
}

// Checks every output of route against the naive full sort and the grouping invariants.
void check_route(const HostTensor& logits, int k, RouteBuffers& b) {
  const int64_t T = logits.shape()[0], E = logits.shape()[1], P = T * k;
  std::vector<int64_t> count(E, 0);
  for (int64_t t = 0; t < T; ++t) {
    const std::vector<int> order = full_order(logits, t);
    double z = 0;
    const double top = logits.get(t * E + order[0]);
    for (int j = 0; j < k; ++j) z += std::exp(double(logits.get(t * E + order[j])) - top);
    double wsum = 0;
    for (int j = 0; j < k; ++j) {
      ASSERT_EQ(b.idx.i32(t * k + j), order[j]) << "token " << t << " slot " << j;
      ++count[order[j]];
      const double want = std::exp(double(logits.get(t * E + order[j])) - top) / z;
      // float exp of a rounded difference and a float sum of k terms: (k + 16) ulp of 1.
      ASSERT_NEAR(b.weight.get(t * k + j), want, (k + 16) * std::ldexp(1.0, -24)) << "token " << t << " slot " << j;
      wsum += b.weight.get(t * k + j);
    }
    ASSERT_NEAR(wsum, 1.0, (k + 16) * std::ldexp(1.0, -24)) << "token " << t;
  }
  int64_t total = 0;
  ASSERT_EQ(b.offsets.i32(0), 0);
  for (int64_t e = 0; e < E; ++e) {
    ASSERT_EQ(b.counts.i32(e), count[e]) << "expert " << e;
    total += b.counts.i32(e);
    ASSERT_EQ(b.offsets.i32(e + 1), b.offsets.i32(e) + b.counts.i32(e)) << "expert " << e;
  }
  ASSERT_EQ(total, P);
  ASSERT_EQ(b.offsets.i32(E), P);
  std::vector<bool> seen(P, false);
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < k; ++j) {
      const int32_t row = b.scatter.i32(t * k + j);
      ASSERT_TRUE(row >= 0 && row < P) << "scatter " << row;
      ASSERT_FALSE(seen[row]) << "row " << row << " used twice";
      seen[row] = true;
      ASSERT_EQ(b.gather.i32(row), t) << "row " << row;
      const int e = b.idx.i32(t * k + j);
      ASSERT_TRUE(b.offsets.i32(e) <= row && row < b.offsets.i32(e + 1)) << "row " << row << " not in expert " << e;
    }
  }
  for (int64_t e = 0; e < E; ++e) {
    for (int32_t r = b.offsets.i32(e) + 1; r < b.offsets.i32(e + 1); ++r) {
      ASSERT_LT(b.gather.i32(r - 1), b.gather.i32(r)) << "expert " << e << " row " << r;
    }
  }
}

TEST(Route, RandomLogitsMatchAFullSort) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  int configs = 0;
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    for (int64_t T : {0, 1, 5, 33, 150}) {
      for (int64_t E : {1, 2, 7, 32, 128, 256}) {
        std::vector<int64_t> ks;
        for (int64_t k = 1; k <= std::min<int64_t>(4, E); ++k) ks.push_back(k);
        if (E > 4) ks.push_back(E);  // k = E
        for (int64_t k : ks) {
          SCOPED_TRACE(std::string(dtype_name(dtype)) + " T " + std::to_string(T) + " E " + std::to_string(E) +
                       " k " + std::to_string(k));
          HostTensor logits(dtype, {T, E});
          for (int64_t i = 0; i < logits.numel(); ++i) {
            float v = normal(rng);
            if (v == 0.0f) v = 1.0f;
            // Deliberate ties (bf16 rounding adds many more).
            if (i % E != 0 && rng() % 5 == 0) v = logits.get(i - 1 - static_cast<int64_t>(rng() % (i % E)));
            logits.set(i, v);
          }
          ExecContext ctx;
          ctx.cpu_threads = static_cast<int>(configs % 4);  // 0 (all), 1, 2, 3 threads
          RouteBuffers b = run_route(logits, static_cast<int>(k), ctx);
          check_route(logits, static_cast<int>(k), b);
          if (HasFatalFailure()) return;
          ++configs;
        }
      }
    }
  }
  EXPECT_GT(configs, 200);
}

TEST(Route, ZeroTokensStillWriteCountsAndOffsets) {
  HostTensor logits(DType::kFloat32, {0, 6});
  RouteBuffers b = run_route(logits, 2);
  for (int e = 0; e < 6; ++e) EXPECT_EQ(b.counts.i32(e), 0) << e;
  for (int e = 0; e <= 6; ++e) EXPECT_EQ(b.offsets.i32(e), 0) << e;
}

TEST(Route, ResultsDoNotDependOnTheThreadCount) {
  std::mt19937 rng(12);
  HostTensor logits(DType::kBFloat16, {500, 64});
  for (int64_t i = 0; i < logits.numel(); ++i) logits.set(i, nonzero_float(rng, 0.01f, 4.0f));
  RouteBuffers ref = run_route(logits, 4, with_threads(1));
  check_route(logits, 4, ref);
  for (int threads : {2, 5, 0}) {
    RouteBuffers b = run_route(logits, 4, with_threads(threads));
    EXPECT_EQ(b.idx.bytes(), ref.idx.bytes()) << threads;
    EXPECT_EQ(b.weight.bytes(), ref.weight.bytes()) << threads;
    EXPECT_EQ(b.gather.bytes(), ref.gather.bytes()) << threads;
    EXPECT_EQ(b.scatter.bytes(), ref.scatter.bytes()) << threads;
  }
}

}  // namespace
}  // namespace moekit::test
