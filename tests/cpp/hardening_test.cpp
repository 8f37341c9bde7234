// The edges a bad-input attack found (issue "Hardening"): empty tensors decided by shape, sizes
// too large to count refused, SwiGLU parameters the formula forbids refused, and the CPU
// backend in memory bounded by its output.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "core/problem.h"
#include "test_util.h"

namespace moekit::test {
namespace {

constexpr auto kValue = Error::Kind::kValue;
constexpr int64_t kBig = int64_t{1} << 62;

void fill_nonzero(HostTensor& t, std::mt19937& rng) {
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, nonzero_float(rng, 0.25f, 2.0f));
}

// ------------------------------------------------------------------------------ empty tensors

// A scatter with no slots (k = 0) and no rows (P = 0): every output row is the empty sum, 0. The
// empty scatter_idx has a null data pointer, as torch gives it; it used to be read as "no
// scatter", and the T output rows read as rows of h (a crash).
TEST(EmptyTensors, ScatterWithoutSlotsGivesZeroRows) {
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    for (int64_t T : {3, 1000}) {
      std::mt19937 rng(static_cast<unsigned>(T));
      HostTensor x(dtype, {0, 32}), w(dtype, {1, 8, 32}), scatter(DType::kInt32, {T, 0}),
          combine(DType::kFloat32, {T, 0}), out(dtype, {T, 8});
      fill_nonzero(w, rng);
      ASSERT_EQ(scatter.view().data, nullptr);
      for (bool weighted : {false, true}) {
        out.poison();
        MatmulOgsArgs a;
        a.x = x.view();
        a.w.values = w.view();
        a.scatter_idx = scatter.view();
        if (weighted) a.combine_weight = combine.view();
        a.out = out.view();
        matmul_ogs(a);
        for (int64_t i = 0; i < out.numel(); ++i) ASSERT_EQ(out.get(i), 0.0f) << "T " << T << " element " << i;
      }
    }
  }
}

// No grouped rows, experts present (all-zero offsets): nothing to compute, nothing read.
TEST(EmptyTensors, EmptyGatherWithAllZeroOffsets) {
  std::mt19937 rng(2);
  HostTensor x(DType::kFloat32, {5, 32}), w(DType::kFloat32, {3, 8, 32}), offsets(DType::kInt32, {4}),
      gather(DType::kInt32, {0}), out(DType::kFloat32, {0, 8});
  fill_nonzero(x, rng);
  fill_nonzero(w, rng);
  for (int e = 0; e < 4; ++e) offsets.i32(e) = 0;
  MatmulOgsArgs a;
  a.x = x.view();
  a.w.values = w.view();
  a.expert_offsets = offsets.view();
  a.gather_idx = gather.view();
  a.out = out.view();
  EXPECT_NO_THROW(matmul_ogs(a));
}

// ---------------------------------------------------------------------------- size overflow

// Views of element-free tensors with huge sizes: nothing to allocate, everything to count.
TensorView shape_only(DType dtype, const std::vector<int64_t>& shape) { return make_view(nullptr, dtype, shape); }

MoeMlpArgs huge_layer(int64_t T, int64_t H, int64_t I) {
  MoeMlpArgs a;
  a.x = shape_only(DType::kFloat32, {T, H});
  a.gate_weight = shape_only(DType::kFloat32, {1, H});
  a.mlp1.values = shape_only(DType::kFloat32, {1, 2 * I, H});
  a.mlp2.values = shape_only(DType::kFloat32, {1, H, I});
  a.experts_per_token = 1;
  return a;
}

// The attack's call: I = 2^62 - 512 sized a 256-byte workspace, and routing wrote past it.
TEST(SizeOverflow, TheLayerWorkspaceIsCountedOrRefused) {
  expect_error([] { moe_mlp_workspace_size(huge_layer(1, 0, kBig - 512)); }, kValue,
               {"moekit.moe_mlp", "'mlp1_weight'", "fits in 64 bits"});
  // T = 2^63 - 1 tokens without elements: T * k does not fit, nor do int32 routing indices.
  MoeMlpArgs a = huge_layer(std::numeric_limits<int64_t>::max(), 0, 32);
  a.experts_per_token = 1;
  expect_error([&] { moe_mlp_workspace_size(a); }, kValue, {"moekit.moe_mlp", "'x'", "int32 routing indices"});
  a = huge_layer(kBig, 0, 32);
  a.gate_weight = shape_only(DType::kFloat32, {2, 0});
  a.mlp1.values = shape_only(DType::kFloat32, {2, 64, 0});
  a.mlp2.values = shape_only(DType::kFloat32, {2, 0, 32});
  a.experts_per_token = 2;
  expect_error([&] { moe_mlp_workspace_size(a); }, kValue, {"moekit.moe_mlp", "'x'", "fits in 64 bits"});
}

TEST(SizeOverflow, TensorsTooLargeToCountAreRefused) {
  const TensorView v = shape_only(DType::kFloat32, {kBig, 4, 0});
  EXPECT_EQ(v.numel(), 0);
  const TensorView w = shape_only(DType::kFloat32, {kBig, 4});
  expect_error([&] { (void)w.numel(); }, kValue, {"more elements than int64"});
  HostTensor blocks(DType::kUInt8, {1}), scales(DType::kUInt8, {1});
  // Bytes overflow before elements do: 2^61 float32 elements.
  const TensorView w8 = shape_only(DType::kFloat32, {int64_t{1} << 56, 32});
  expect_error([&] { quantize_mxfp4(w8, blocks.view(), scales.view()); }, kValue,
               {"moekit.quantize_mxfp4", "'w'", "bytes that fits in 64 bits"});
}

TEST(SizeOverflow, MatmulRowsBeyondInt32IndicesAreRefused) {
  MatmulOgsArgs a;
  a.x = shape_only(DType::kFloat32, {int64_t{1} << 31, 0});
  a.w.values = shape_only(DType::kFloat32, {1, 4, 0});
  expect_error([&] { matmul_ogs_workspace_size(a); }, kValue, {"moekit.matmul_ogs", "'x'", "int32 row indices"});
  a.x = shape_only(DType::kFloat32, {4, 0});
  a.w.values = shape_only(DType::kFloat32, {1, kBig, 0});
  a.scatter_idx = shape_only(DType::kInt32, {2, 2});
  expect_error([&] { matmul_ogs_workspace_size(a); }, kValue, {"moekit.matmul_ogs", "'w'", "fits in 64 bits"});
}

TEST(SizeOverflow, RouteSlotsBeyondInt32IndicesAreRefused) {
  RouteBuffers out(0, 4, 2);
  expect_error([&] { route(shape_only(DType::kFloat32, {int64_t{1} << 31, 4}), 2, out.outputs()); }, kValue,
               {"moekit.route", "'logits'", "T * k", "int32 routing indices"});
}

// The tile list of the workspace: one int2 per tile of kMinTileRows rows, plus a partial tile per
// expert (the launchers static_assert that no kernel's tiles are shorter).
TEST(Workspace, TheTileListAllowsForTheShortestTiles) {
  MatmulOgsProblem p;
  p.P = 1001;
  p.E = 7;
  const MatmulOgsWorkspace w = matmul_ogs_workspace_layout(p);
  EXPECT_EQ(w.tiles, 0u);
  EXPECT_GE(w.tile_count - w.tiles, static_cast<size_t>(((1001 + kMinTileRows - 1) / kMinTileRows + 7) * 8));
}

// ---------------------------------------------------------------------------------- SwiGLU

TEST(Swiglu, ParametersTheFormulaForbidsAreRefused) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  HostTensor x(DType::kFloat32, {2, 32}), w(DType::kFloat32, {1, 8, 32}), out(DType::kFloat32, {2, 4});
  auto call = [&](float alpha, float limit) {
    return [&, alpha, limit] {
      MatmulOgsArgs a;
      a.x = x.view();
      a.w.values = w.view();
      a.swiglu = {true, alpha, limit};
      a.out = out.view();
      matmul_ogs(a);
    };
  };
  for (float limit : {-1.0f, 0.0f, nan, inf}) {
    expect_error(call(1.702f, limit), kValue, {"moekit.matmul_ogs", "'swiglu_limit'", "finite number > 0"});
  }
  for (float alpha : {nan, inf, -inf}) {
    expect_error(call(alpha, 7.0f), kValue, {"moekit.matmul_ogs", "'swiglu_alpha'", "finite number"});
  }
  MoeMlpArgs m = huge_layer(2, 32, 32);
  m.swiglu_limit = -7.0f;
  expect_error([&] { moe_mlp_workspace_size(m); }, kValue, {"moekit.moe_mlp", "'swiglu_limit'", "got -7"});
  m.swiglu_limit = 7.0f;
  m.swiglu_alpha = nan;
  expect_error([&] { moe_mlp_workspace_size(m); }, kValue, {"moekit.moe_mlp", "'swiglu_alpha'", "got nan"});
}

// ------------------------------------------------------------------------------------ memory

#if !defined(__SANITIZE_ADDRESS__)
// A legal call whose gathered rows are much larger than its output: x [1, K], w [1, 1, K] and P
// gather indices make P x K floats (4 GiB here) where the output is P floats. In a child process
// with 1 GiB of address space beyond what it holds, the CPU backend still computes it. (Not under
// ASan, whose shadow memory counts against the limit.)
TEST(CpuMemory, GatheredRowsAreNeverCopiedWhole) {
  constexpr int64_t K = 8192, P = 131072;
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    HostTensor x(DType::kFloat32, {1, K}), w(DType::kFloat32, {1, 1, K}), gather(DType::kInt32, {P}),
        out(DType::kFloat32, {P, 1});
    for (int64_t i = 0; i < K; ++i) {
      x.set(i, i % 3 == 0 ? 1.0f : -0.5f);
      w.set(i, 1.0f / 1024);
    }
    rlimit limit;
    getrlimit(RLIMIT_AS, &limit);
    FILE* statm = std::fopen("/proc/self/statm", "r");
    long pages = 0;
    if (!statm || std::fscanf(statm, "%ld", &pages) != 1) _exit(3);
    std::fclose(statm);
    limit.rlim_cur = static_cast<rlim_t>(pages) * sysconf(_SC_PAGESIZE) + (rlim_t{1} << 30);
    if (setrlimit(RLIMIT_AS, &limit) != 0) _exit(4);
    MatmulOgsArgs a;
    a.x = x.view();
    a.w.values = w.view();
    a.gather_idx = gather.view();
    a.out = out.view();
    try {
      matmul_ogs(a, with_threads(2));
    } catch (...) {
      _exit(5);
    }
    float want = 0.0f;  // every partial sum is a multiple of 2^-11 below 2^4: exact in any order
    for (int64_t i = 0; i < K; ++i) want += x.get(i) * w.get(i);
    for (int64_t r = 0; r < P; ++r) {
      if (out.get(r) != want) _exit(6);
    }
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child was killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "3/4: rlimit setup, 5: the op threw (out of memory), 6: wrong values";
}
#endif

}  // namespace
}  // namespace moekit::test
