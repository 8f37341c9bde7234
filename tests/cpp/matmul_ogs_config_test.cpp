// The matmul_ogs kernel choice: a pure function of problem and device facts.
#include <gtest/gtest.h>

#include "core/matmul_ogs_config.h"

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
  EXPECT_EQ(choose_matmul_ogs_kernel(wide, kBf16, device(9)), MatmulOgsKernel::kTensorCore64) << "bf16 weights";
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
  EXPECT_EQ(choose_matmul_ogs_kernel(gate, kBf16, device(9)), MatmulOgsKernel::kTensorCore64) << "more columns";
  moekit::DeviceInfo small_smem = device(9);
  small_smem.max_smem_per_block_optin = 48 * 1024;
  EXPECT_EQ(choose_matmul_ogs_kernel(problem(2049, 32, 2880, true), kBf16, small_smem), MatmulOgsKernel::kTensorCore64);
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

}  // namespace
