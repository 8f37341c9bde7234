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

}  // namespace
