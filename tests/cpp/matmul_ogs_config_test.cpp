// The matmul_ogs kernel choice: a pure function of problem and device facts.
#include <gtest/gtest.h>

#include <tuple>

#include "core/matmul_ogs_config.h"
#include "core/problem.h"
#include "moekit/error.h"

namespace {

using moekit::MatmulOgsKernel;

moekit::MatmulOgsProblem problem(int64_t P, int64_t E, int64_t K, bool mxfp4) {
  moekit::MatmulOgsProblem p;
  p.P = P;
  p.E = E;
  p.K = K;
  p.N = 64;
  p.mxfp4 = mxfp4;
  return p;
}

moekit::DeviceInfo device(int major) {
  moekit::DeviceInfo d;
  d.major = major;
  d.sm_count = 132;
  d.max_smem_per_block_optin = 227 * 1024;
  return d;
}

const moekit::MatmulOgsOperands kBf16{true, true, true};

TEST(MatmulOgsConfig, TensorCoresOnlyForExactBf16OperandsOnSm80Plus) {
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(4, 32, 2880, true), kBf16, device(9)), MatmulOgsKernel::kStream8);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(4, 32, 2880, true), kBf16, device(7)), MatmulOgsKernel::kSimt);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(4, 32, 2880, true), {false, false, true}, device(9)), MatmulOgsKernel::kSimt);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(4, 32, 2880, false), {true, false, true}, device(9)), MatmulOgsKernel::kSimt)
      << "float32 weights would be rounded on tensor cores";
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(4, 1, 33, false), kBf16, device(9)), MatmulOgsKernel::kSimt) << "K % 8";
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(4, 1, 64, false), {true, true, false}, device(9)), MatmulOgsKernel::kSimt)
      << "unaligned data";
}

TEST(MatmulOgsConfig, TileHeightFollowsRowsPerExpert) {
  // Average rows per expert: P / min(E, P).
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(256, 32, 2880, true), kBf16, device(9)), MatmulOgsKernel::kStream8);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(257, 32, 2880, true), kBf16, device(9)), MatmulOgsKernel::kStream16);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(512, 32, 2880, true), kBf16, device(9)), MatmulOgsKernel::kStream16);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(1024, 32, 2880, true), kBf16, device(9)), MatmulOgsKernel::kStream32);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(1025, 32, 2880, true), kBf16, device(9)), MatmulOgsKernel::kWgmma128);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(1025, 32, 2880, true), kBf16, device(8)), MatmulOgsKernel::kTiled64);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(2049, 32, 2880, true), kBf16, device(9)), MatmulOgsKernel::kWgmma128);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(1000, 1, 96, true), kBf16, device(9)), MatmulOgsKernel::kWgmma128);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(2049, 32, 2880, true), kBf16, device(8)), MatmulOgsKernel::kTiled64)
      << "wgmma is sm_90 only";
  moekit::MatmulOgsProblem wide = problem(1025, 32, 2880, false);
  wide.N = 5760;
  EXPECT_EQ(choose_matmul_ogs_kernel(wide, kBf16, device(9)), MatmulOgsKernel::kWmma64) << "bf16 weights";
  moekit::MatmulOgsProblem gate = problem(4095, 1, 2880, false);
  gate.N = 32;
  EXPECT_EQ(choose_matmul_ogs_kernel(gate, kBf16, device(9)), MatmulOgsKernel::kStream8Wide) << "few bf16 columns";
  gate.N = 256;
  EXPECT_EQ(choose_matmul_ogs_kernel(gate, kBf16, device(9)), MatmulOgsKernel::kStream8Wide);
  gate.P = 4096;
  EXPECT_EQ(choose_matmul_ogs_kernel(gate, kBf16, device(9)), MatmulOgsKernel::kStream32) << "many rows";
  gate.N = 32;
  EXPECT_EQ(choose_matmul_ogs_kernel(gate, kBf16, device(9)), MatmulOgsKernel::kStream32);
  gate.N = 257;
  EXPECT_EQ(choose_matmul_ogs_kernel(gate, kBf16, device(9)), MatmulOgsKernel::kWmma64) << "more columns";
  moekit::DeviceInfo small_smem = device(9);
  small_smem.max_smem_per_block_optin = 48 * 1024;  // no sm_80+ GPU has so little; the SIMT kernel needs no opt-in
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(2049, 32, 2880, true), kBf16, small_smem), MatmulOgsKernel::kSimt);
  small_smem.max_smem_per_block_optin = 80 * 1024;
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(2049, 32, 2880, true), kBf16, small_smem), MatmulOgsKernel::kTiled64);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(3, 128, 96, true), kBf16, device(9)), MatmulOgsKernel::kStream8);
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(0, 128, 96, true), kBf16, device(9)), MatmulOgsKernel::kStream8);
}

TEST(MatmulOgsConfig, OneDenseBf16WeightAndFewRowsTakeTheGemv) {
  moekit::MatmulOgsProblem out = problem(1, 1, 4096, false);  // a decode step's output projection
  out.N = 2880;
  for (int64_t rows : {1, 5, 8}) {
    out.P = rows;
    EXPECT_EQ(choose_matmul_ogs_kernel(out, kBf16, device(9)), MatmulOgsKernel::kGemv) << rows;
    EXPECT_EQ(choose_matmul_ogs_kernel(out, kBf16, device(8)), MatmulOgsKernel::kStream8) << "bulk copies: sm_90";
  }
  out.P = 9;
  EXPECT_EQ(choose_matmul_ogs_kernel(out, kBf16, device(9)), MatmulOgsKernel::kStream16) << "more rows";
  out.P = 1;
  EXPECT_EQ(choose_matmul_ogs_kernel(out, {true, true, true, true}, device(9)), MatmulOgsKernel::kStream8)
      << "expert offsets";
  EXPECT_EQ(choose_matmul_ogs_kernel(out, {true, false, true}, device(9)), MatmulOgsKernel::kSimt) << "float32 weights";
  moekit::MatmulOgsProblem other = out;
  other.gather = true;
  EXPECT_EQ(choose_matmul_ogs_kernel(other, kBf16, device(9)), MatmulOgsKernel::kStream8) << "gather";
  other = out;
  other.swiglu = true;
  EXPECT_EQ(choose_matmul_ogs_kernel(other, kBf16, device(9)), MatmulOgsKernel::kStream8) << "swiglu";
  other = out;
  other.mxfp4 = true;
  EXPECT_EQ(choose_matmul_ogs_kernel(other, kBf16, device(9)), MatmulOgsKernel::kStream8) << "MXFP4";
  other = out;
  other.N = 256;
  EXPECT_EQ(choose_matmul_ogs_kernel(other, kBf16, device(9)), MatmulOgsKernel::kStream8Wide) << "the gate's rule first";

  // A block of 22 rows holds them all (22 x 8208 bytes beside x); past the shared memory, rows
  // are read from global memory, and with no room for one row beside x the GEMV is not chosen.
  EXPECT_EQ(moekit::gemv_shared_rows(out, device(9), 22), 22);
  other = out;
  other.K = 16384;  // 32 KB rows: 6 fit beside one row of x
  EXPECT_EQ(moekit::gemv_shared_rows(other, device(9), 8), 6);
  EXPECT_EQ(moekit::gemv_shared_rows(other, device(9), 4), 4);
  EXPECT_EQ(choose_matmul_ogs_kernel(other, kBf16, device(9)), MatmulOgsKernel::kGemv);
  other.P = 8;  // x alone fills 256 KB
  EXPECT_EQ(moekit::gemv_shared_rows(other, device(9), 8), 0);
  EXPECT_EQ(choose_matmul_ogs_kernel(other, kBf16, device(9)), MatmulOgsKernel::kStream8) << "x past shared memory";
  other.K = 64;  // short rows: at most kGemvMaxSharedRows, one barrier each
  EXPECT_EQ(moekit::gemv_shared_rows(other, device(9), 1000), moekit::kGemvMaxSharedRows);
}

TEST(MatmulOgsConfig, TransposedProductTakesWgmmaForMxfp4AndBf16OnSm90) {
  using moekit::MatmulOgsTransposedKernel;
  const moekit::MatmulOgsProblem mx = problem(4096, 32, 2880, true);
  EXPECT_EQ(choose_matmul_ogs_transposed_kernel(mx, true, true, device(9)), MatmulOgsTransposedKernel::kWgmma128);
  EXPECT_EQ(choose_matmul_ogs_transposed_kernel(mx, false, true, device(9)), MatmulOgsTransposedKernel::kSimt) << "f32 g";
  EXPECT_EQ(choose_matmul_ogs_transposed_kernel(mx, true, false, device(9)), MatmulOgsTransposedKernel::kSimt)
      << "unaligned data";
  EXPECT_EQ(choose_matmul_ogs_transposed_kernel(mx, true, true, device(8)), MatmulOgsTransposedKernel::kSimt);
  EXPECT_EQ(choose_matmul_ogs_transposed_kernel(problem(4096, 32, 2880, false), true, true, device(9)),
            MatmulOgsTransposedKernel::kSimt)
      << "float weights";
  moekit::MatmulOgsProblem odd = mx;
  odd.N = 60;  // g's rows are copied 8 elements at a time
  EXPECT_EQ(choose_matmul_ogs_transposed_kernel(odd, true, true, device(9)), MatmulOgsTransposedKernel::kSimt);
}

TEST(MatmulOgsConfig, EveryChoiceIsAConfigThatCanRunTheProblem) {
  for (int major : {7, 8, 9}) {
    moekit::DeviceInfo d = device(major);
    for (int smem : {48, 80, 227}) {
      d.max_smem_per_block_optin = smem * 1024;
      for (int64_t P : {0, 1, 8, 9, 100, 1025, 5000}) {
        for (int64_t E : {1, 32}) {
          for (int64_t N : {32, 257, 2880}) {
            for (bool mxfp4 : {false, true}) {
              for (const moekit::MatmulOgsOperands& o :
                   {kBf16, moekit::MatmulOgsOperands{true, false, true}, moekit::MatmulOgsOperands{false, true, true},
                    moekit::MatmulOgsOperands{true, true, false, true},
                    moekit::MatmulOgsOperands{true, false, true, true, true, true},  // batch-invariant
                    moekit::MatmulOgsOperands{true, true, true, false, false, true},
                    moekit::MatmulOgsOperands{true, false, true, true, false, true}}) {
                moekit::MatmulOgsProblem p = problem(P, E, 2880, mxfp4);
                p.N = N;
                const MatmulOgsKernel k = choose_matmul_ogs_kernel(p, o, d);
                EXPECT_EQ(matmul_ogs_config_refusal(k, p, o, d), nullptr)
                    << moekit::matmul_ogs_kernel_name(k) << " sm_" << major << " smem " << smem << " P " << P << " E " << E
                    << " N " << N << " mxfp4 " << mxfp4;
                EXPECT_EQ(moekit::matmul_ogs_launch_config(p, o, d, "").kernel, k);
              }
            }
          }
        }
      }
    }
  }
}

TEST(MatmulOgsConfig, AForcedConfigRunsWhereItCanAndIsRefusedWhereItCannot) {
  const moekit::MatmulOgsProblem p = problem(4, 32, 2880, true);  // chosen: the 8-token streaming kernel
  const moekit::MatmulOgsConfig forced = moekit::matmul_ogs_launch_config(p, kBf16, device(9), "wgmma128");
  EXPECT_EQ(forced.kernel, MatmulOgsKernel::kWgmma128);
  EXPECT_EQ(forced.tile_rows, 128);
  EXPECT_EQ(moekit::matmul_ogs_launch_config(p, kBf16, device(9), "simt").kernel, MatmulOgsKernel::kSimt);
  const auto refusal = [&](const moekit::MatmulOgsProblem& q, const moekit::DeviceInfo& d, const char* name) {
    try {
      moekit::matmul_ogs_launch_config(q, kBf16, d, name);
    } catch (const moekit::Error& e) {
      EXPECT_EQ(e.kind(), moekit::Error::Kind::kValue);
      return std::string(e.what());
    }
    return std::string("not refused");
  };
  EXPECT_EQ(refusal(p, device(8), "wgmma128"), "moekit.matmul_ogs: 'config' wgmma128 cannot run this call: it needs sm_90 (wgmma)");
  EXPECT_EQ(refusal(p, device(9), "wmma64"), "moekit.matmul_ogs: 'config' wmma64 cannot run this call: it needs bf16 weights");
  EXPECT_EQ(refusal(p, device(9), "gemv"), "moekit.matmul_ogs: 'config' gemv cannot run this call: it needs one dense bf16 "
                                           "weight without expert offsets, gather, scatter or SwiGLU");
  EXPECT_EQ(refusal(p, device(9), "fast"), "moekit.matmul_ogs: 'config' expected one of simt, stream8, stream8_wide, "
                                           "stream16, stream32, tiled64, wgmma128, wmma64, gemv, swapab16, "
                                           "swapab32, swapab80, got 'fast'");
}

TEST(MatmulOgsConfig, TheSwapAbKernelsRunRepackedMxfp4OnSm90) {
  const moekit::MatmulOgsOperands slabs{true, false, true, true, true};
  const moekit::MatmulOgsOperands no_slabs{true, false, true, true, false};
  for (MatmulOgsKernel k : {MatmulOgsKernel::kSwapab16, MatmulOgsKernel::kSwapab32, MatmulOgsKernel::kSwapab80}) {
    const std::string name = moekit::matmul_ogs_kernel_name(k);
    for (int64_t P : {16, 512, 2048, 32768}) {
      const moekit::MatmulOgsProblem p = problem(P, 32, 2880, true);
      EXPECT_EQ(matmul_ogs_config_refusal(k, p, slabs, device(9)), nullptr) << name;
      EXPECT_STREQ(matmul_ogs_config_refusal(k, p, no_slabs, device(9)),
                   "the weights repacked by repack_mxfp4 (slab codes and scales) and matmul_ogs's workspace");
      EXPECT_STREQ(matmul_ogs_config_refusal(k, p, slabs, device(8)), "sm_90 (wgmma)");
      EXPECT_STREQ(matmul_ogs_config_refusal(k, p, {true, false, true, true, true, false, true}, device(9)),
                   "a forward call (its epilogue has no backward recompute)");
      moekit::DeviceInfo small = device(9);
      small.max_smem_per_block_optin = moekit::kSwapabSharedMemoryBytes - 1;
      EXPECT_STREQ(matmul_ogs_config_refusal(k, p, slabs, small), "211 KB of shared memory a block");
      EXPECT_STREQ(matmul_ogs_config_refusal(k, problem(P, 32, 2880, false), {true, true, true, true, true}, device(9)),
                   "MXFP4 weights");
      const moekit::MatmulOgsConfig c = moekit::matmul_ogs_launch_config(p, slabs, device(9), name);
      EXPECT_EQ(c.kernel, k);
      EXPECT_EQ(c.tile_cols, 192) << "64-row slabs, three a work item";
      EXPECT_EQ(c.schedule, moekit::MatmulOgsSchedule::kPersistent);
    }
  }
}

TEST(MatmulOgsConfig, RepackedMxfp4TakesTheSwapAbLoopWhereTheSweepsFoundItFaster) {
  // E = 32: the rows per expert are P / 32. The batch-invariant tile heights up to 64 (16 rows
  // to 8, 32 to 32, 80 past 32); past 64 swapab80 with x read in place, wgmma128 with a gather
  // (the loop would stage it).
  const moekit::MatmulOgsOperands slabs{true, false, true, true, true};
  const moekit::MatmulOgsOperands no_slabs{true, false, true, true, false};
  const std::tuple<int64_t, MatmulOgsKernel, MatmulOgsKernel> rows[] = {
      {1, MatmulOgsKernel::kSwapab16, MatmulOgsKernel::kSwapab16},
      {256, MatmulOgsKernel::kSwapab16, MatmulOgsKernel::kSwapab16},
      {257, MatmulOgsKernel::kSwapab32, MatmulOgsKernel::kSwapab32},
      {1024, MatmulOgsKernel::kSwapab32, MatmulOgsKernel::kSwapab32},
      {1025, MatmulOgsKernel::kSwapab80, MatmulOgsKernel::kSwapab80},
      {2048, MatmulOgsKernel::kSwapab80, MatmulOgsKernel::kSwapab80},
      {2049, MatmulOgsKernel::kSwapab80, MatmulOgsKernel::kWgmma128},
      {32768, MatmulOgsKernel::kSwapab80, MatmulOgsKernel::kWgmma128}};
  for (const auto& [P, in_place, gathered] : rows) {
    moekit::MatmulOgsProblem p = problem(P, 32, 2880, true);
    p.slabs = true;
    EXPECT_EQ(choose_matmul_ogs_kernel(p, slabs, device(9)), in_place) << P;
    p.gather = true;
    EXPECT_EQ(choose_matmul_ogs_kernel(p, slabs, device(9)), gathered) << P << " with a gather";
    // Without the repacked weights, or off sm_90, or for the backward's recompute: as before.
    EXPECT_EQ(choose_matmul_ogs_kernel(p, no_slabs, device(9)),
              P <= 256 ? MatmulOgsKernel::kStream8 : P <= 512 ? MatmulOgsKernel::kStream16
                                                    : P <= 1024 ? MatmulOgsKernel::kStream32
                                                                : MatmulOgsKernel::kWgmma128)
        << P;
    EXPECT_EQ(choose_matmul_ogs_kernel(p, slabs, device(8)), choose_matmul_ogs_kernel(p, no_slabs, device(8))) << P;
    EXPECT_EQ(choose_matmul_ogs_kernel(p, {true, false, true, true, true, false, true}, device(9)),
              choose_matmul_ogs_kernel(p, no_slabs, device(9)))
        << P;
  }
}

TEST(MatmulOgsConfig, BatchInvariantCallsTakeOneKernelFamilyAtEveryRowCount) {
  // Repacked MXFP4 on sm_90: the swap-AB loop at every row count, its tile following the rows per
  // expert; never the streaming, wgmma or GEMV kernels the same problems take otherwise.
  const moekit::MatmulOgsOperands slabs{true, false, true, true, true, true};
  const moekit::MatmulOgsOperands no_slabs{true, false, true, true, false, true};
  const std::pair<int64_t, MatmulOgsKernel> rows[] = {
      {1, MatmulOgsKernel::kSwapab16},     {8, MatmulOgsKernel::kSwapab16},      {256, MatmulOgsKernel::kSwapab16},
      {257, MatmulOgsKernel::kSwapab32},   {1024, MatmulOgsKernel::kSwapab32},   {1025, MatmulOgsKernel::kSwapab80},
      {2048, MatmulOgsKernel::kSwapab80},  {32768, MatmulOgsKernel::kSwapab80}};
  for (const auto& [P, want] : rows) {
    const moekit::MatmulOgsProblem p = problem(P, 32, 2880, true);
    EXPECT_EQ(choose_matmul_ogs_kernel(p, slabs, device(9)), want) << P;
    // The backward's recompute asks for no invariance (nor could the loop recompute): the
    // flag changes nothing there.
    EXPECT_EQ(choose_matmul_ogs_kernel(p, {true, false, true, true, true, true, true}, device(9)),
              choose_matmul_ogs_kernel(p, {true, false, true, true, true, false, true}, device(9)))
        << P;
    // Where the loop cannot run (no repacked weights, not sm_90): the SIMT kernel.
    EXPECT_EQ(choose_matmul_ogs_kernel(p, no_slabs, device(9)), MatmulOgsKernel::kSimt) << P;
    EXPECT_EQ(choose_matmul_ogs_kernel(p, slabs, device(8)), MatmulOgsKernel::kSimt) << P;
  }
  // bf16 weights (the gate, and one dense weight the GEMV would take): the 8-token streaming
  // items at every row count, past kGateTallRows too; float32 weights: SIMT.
  const moekit::MatmulOgsOperands bf16{true, true, true, false, false, true};
  for (int64_t P : {int64_t{1}, int64_t{8}, moekit::kGateTallRows, int64_t{32768}}) {
    for (int64_t N : {32, 256, 2880}) {
      moekit::MatmulOgsProblem p = problem(P, 1, 2880, false);
      p.N = N;
      EXPECT_EQ(choose_matmul_ogs_kernel(p, bf16, device(9)), MatmulOgsKernel::kStream8Wide) << P << " " << N;
      EXPECT_EQ(choose_matmul_ogs_kernel(p, {true, false, true, false, false, true}, device(9)), MatmulOgsKernel::kSimt);
    }
  }
}

TEST(MatmulOgsConfig, RepackedWeightsAddXsStagedRowsToTheWorkspaceWithAGather) {
  // (P + the tallest tile) rows of 128 bytes a 64-k step, 16-byte aligned for the bulk copies,
  // and nothing without the repacked weights, or without a gather (x is read in place).
  for (int64_t P : {0, 1, 100, 32768}) {
    for (int64_t K : {32, 2880, 2912}) {
      moekit::MatmulOgsProblem p = problem(P, 32, K, true);
      p.gather = true;
      const moekit::MatmulOgsWorkspace without = moekit::matmul_ogs_workspace_layout(p);
      p.slabs = true;
      p.gather = false;
      const moekit::MatmulOgsWorkspace in_place = moekit::matmul_ogs_workspace_layout(p);
      EXPECT_EQ(in_place.total, without.total);
      EXPECT_EQ(in_place.staged, in_place.total) << "an empty region";
      p.gather = true;
      const moekit::MatmulOgsWorkspace with = moekit::matmul_ogs_workspace_layout(p);
      const size_t staged = static_cast<size_t>((P + moekit::kSwapabMaxTileRows) * ((K + 63) / 64) * 128);
      EXPECT_EQ(with.staged % 16, 0u);
      EXPECT_GE(with.total, with.staged + staged) << P << " " << K;
      EXPECT_LT(with.total, without.total + staged + 512) << "the staged rows and alignment only";
      EXPECT_EQ(with.tiles, without.tiles);
      EXPECT_EQ(with.combine, without.combine);
    }
  }
}

TEST(MatmulOgsConfig, TheTableDescribesEachKernel) {
  for (MatmulOgsKernel k : moekit::kMatmulOgsKernels) {
    for (bool mxfp4 : {false, true}) {
      const moekit::MatmulOgsConfig c = moekit::matmul_ogs_config(k, mxfp4);
      EXPECT_EQ(c.kernel, k);
      EXPECT_GT(c.tile_rows, 0) << moekit::matmul_ogs_kernel_name(k);
      EXPECT_GT(c.warps, 0) << moekit::matmul_ogs_kernel_name(k);
      EXPECT_GE(c.stages, 1);
      EXPECT_EQ(c.warps % c.k_split, 0) << "the k split is over the block's warps";
    }
  }
  EXPECT_EQ(moekit::matmul_ogs_config(MatmulOgsKernel::kStream8, true).tile_cols, 32) << "two slabs for MXFP4";
  EXPECT_EQ(moekit::matmul_ogs_config(MatmulOgsKernel::kStream8, false).tile_cols, 16);
}

TEST(MoeDecodeMaxTokens, FourTokensBesideRepackedWeightsWhereTheSwapAbLoopRuns) {
  moekit::MoeMlpProblem p;
  EXPECT_EQ(moekit::moe_decode_max_tokens(p, device(9)), 8) << "checkpoint layout: the decode kernels to 8";
  p.slabs1 = true;
  EXPECT_EQ(moekit::moe_decode_max_tokens(p, device(9)), 8) << "mlp2 not repacked";
  p.slabs2 = true;
  EXPECT_EQ(moekit::moe_decode_max_tokens(p, device(9)), 4) << "the loop faster from 5 tokens";
  EXPECT_EQ(moekit::moe_decode_max_tokens(p, device(8)), 8) << "no swap-AB loop on sm_80";
  moekit::DeviceInfo small = device(9);
  small.max_smem_per_block_optin = moekit::kSwapabSharedMemoryBytes - 1;
  EXPECT_EQ(moekit::moe_decode_max_tokens(p, small), 8) << "no room for the loop's ring";
}

}  // namespace
