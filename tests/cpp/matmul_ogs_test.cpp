// matmul_ogs against a naive triple loop in double, and moe_mlp against a naive composition
// (gate, route by full sort, mlp1, SwiGLU, mlp2, combine).
//
// Exactness: unless SwiGLU is on, every input is a small dyadic number (x in +-{1,2,3},
// float weights in +-{1..8}/16, MXFP4 codes times 2^-5..2^-2, biases in +-{1..8}/4, combine
// weights in +-{1..8}/8). Every product, partial sum and result is then a multiple of 2^-9
// below 2^13: exact in fp32 in any summation order, so those results must match bit for bit
// (a bf16 output is the single rounding of that exact value).
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

enum class WKind { kF32, kBF16, kMxfp4 };
enum class Mode { kPlain, kGather, kScatter, kScatterCombine, kGatherScatterCombine };

const char* wkind_name(WKind k) { return k == WKind::kF32 ? "f32" : k == WKind::kBF16 ? "bf16" : "mxfp4"; }
const char* mode_name(Mode m) {
  switch (m) {
    case Mode::kPlain: return "plain";
    case Mode::kGather: return "gather";
    case Mode::kScatter: return "scatter";
    case Mode::kScatterCombine: return "scatter+combine";
    case Mode::kGatherScatterCombine: return "gather+scatter+combine";
  }
  return "?";
}

// Expert weights [E, N, K] as library tensors and as the doubles they stand for.
struct Weights {
  HostTensor values, scales;
  bool mxfp4 = false;
  std::vector<double> w;  // [E, N, K]
  ExpertWeights view() {
    ExpertWeights ew;
    ew.values = values.view();
    if (mxfp4) ew.scales = scales.view();
    return ew;
  }
};

Weights make_weights(WKind kind, int64_t E, int64_t N, int64_t K, std::mt19937& rng) {
  Weights W;
  W.w.resize(static_cast<size_t>(E * N * K));
  if (kind == WKind::kMxfp4) {
    W.mxfp4 = true;
    const int64_t kb = K / 32;
    W.values = HostTensor(DType::kUInt8, {E, N, kb, 16});
    W.scales = HostTensor(DType::kUInt8, {E, N, kb});
    for (int64_t row = 0; row < E * N; ++row) {
      for (int64_t b = 0; b < kb; ++b) {
        const uint8_t s = static_cast<uint8_t>(122 + rng() % 4);
        W.scales.u8(row * kb + b) = s;
        for (int i = 0; i < 32; ++i) {
          const uint8_t code = static_cast<uint8_t>((1 + rng() % 7) | (rng() % 2 ? 8 : 0));  // never +-0
          W.values.u8((row * kb + b) * 16 + i / 2) |= static_cast<uint8_t>(code << (4 * (i % 2)));
          W.w[row * K + b * 32 + i] = e2m1_value(code) * e8m0_value(s);
        }
      }
    }
  } else {
    W.values = HostTensor(kind == WKind::kBF16 ? DType::kBFloat16 : DType::kFloat32, {E, N, K});
    for (int64_t i = 0; i < E * N * K; ++i) {
      W.values.set(i, static_cast<float>(nonzero_int(rng, 8)) / 16.0f);
      W.w[i] = W.values.get(i);
    }
  }
  return W;
}

// A float tensor of random nonzero values num / den, num in +-[1, max]; returns the doubles too.
HostTensor random_dyadic(DType dtype, std::vector<int64_t> shape, int max, float den, std::mt19937& rng,
                         std::vector<double>& as_double) {
  HostTensor t(dtype, std::move(shape));
  as_double.resize(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) {
    t.set(i, static_cast<float>(nonzero_int(rng, max)) / den);
    as_double[i] = t.get(i);
  }
  return t;
}

double swiglu_ref(double glu, double lin, double alpha, double limit) {
  // docs/semantics.md: g = min(h_glu, limit), l = clamp(h_lin, -limit, limit), g * sigmoid(alpha g) * (l + 1)
  const double g = std::min(glu, limit);
  const double l = std::max(-limit, std::min(lin, limit));
  return g * (1.0 / (1.0 + std::exp(-alpha * g))) * (l + 1.0);
}

struct Case {
  DType x_dtype = DType::kFloat32, out_dtype = DType::kFloat32;
  WKind wkind = WKind::kF32;
  bool bias = false;
  Mode mode = Mode::kPlain;
  bool swiglu = false;
  int64_t E = 1, K = 96, N = 160;
  bool offsets_with_one_expert = false;
  int cpu_threads = 0;
  std::string str() const {
    return std::string("x ") + dtype_name(x_dtype) + " out " + dtype_name(out_dtype) + " w " + wkind_name(wkind) +
           (bias ? " bias" : "") + " " + mode_name(mode) + (swiglu ? " swiglu" : "") + " E " + std::to_string(E) +
           " K " + std::to_string(K) + " N " + std::to_string(N);
  }
};

struct Problem {
  Case c;
  int64_t M = 0, P = 0, T = 0, k = 0;
  HostTensor x, bias, offsets, gather, scatter, cw, out, workspace;
  Weights w;
  std::vector<double> xd, biasd, cwd;
  std::vector<int32_t> off, gat, sca;
  Swiglu sw;

  MatmulOgsArgs args() {
    MatmulOgsArgs a;
    a.x = x.view();
    a.w = w.view();
    if (c.bias) a.bias = bias.view();
    if (!off.empty()) a.expert_offsets = offsets.view();
    if (!gat.empty()) a.gather_idx = gather.view();
    if (!sca.empty()) a.scatter_idx = scatter.view();
    if (!cwd.empty()) a.combine_weight = cw.view();
    a.swiglu = sw;
    a.out = out.view();
    if (workspace.numel() > 0) a.workspace = workspace.view();
    return a;
  }
};

HostTensor int_tensor(const std::vector<int32_t>& v, std::vector<int64_t> shape) {
  HostTensor t(DType::kInt32, std::move(shape));
  for (size_t i = 0; i < v.size(); ++i) t.i32(static_cast<int64_t>(i)) = v[i];
  return t;
}

// An expert for each of n items, never expert 1 when E >= 3 (an expert with no rows).
std::vector<int> random_experts(int64_t n, int64_t E, std::mt19937& rng) {
  std::vector<int> e(static_cast<size_t>(n));
  for (int& v : e) {
    do v = static_cast<int>(rng() % E); while (E >= 3 && v == 1);
  }
  return e;
}

std::vector<int32_t> offsets_of(const std::vector<int>& expert_of_row, int64_t E) {
  std::vector<int32_t> off(static_cast<size_t>(E + 1), 0);
  for (int e : expert_of_row) ++off[e + 1];
  for (int64_t e = 0; e < E; ++e) off[e + 1] += off[e];
  return off;
}

Problem make_problem(const Case& c, std::mt19937& rng) {
  Problem pb;
  pb.c = c;
  switch (c.mode) {
    case Mode::kPlain: pb.M = pb.P = 37; break;
    case Mode::kGather: pb.M = 11; pb.P = 29; break;
    case Mode::kScatter:
    case Mode::kScatterCombine: pb.T = 9; pb.k = 3; pb.M = pb.P = 27; break;
    case Mode::kGatherScatterCombine: pb.T = pb.M = 10; pb.k = 3; pb.P = 30; break;
  }
  pb.x = random_dyadic(c.x_dtype, {pb.M, c.K}, 3, 1.0f, rng, pb.xd);
  pb.w = make_weights(c.wkind, c.E, c.N, c.K, rng);
  if (c.bias) {
    pb.bias = random_dyadic(c.wkind == WKind::kBF16 ? DType::kBFloat16 : DType::kFloat32, {c.E, c.N}, 8, 4.0f, rng,
                            pb.biasd);
  }
  const bool use_offsets = c.E > 1 || c.offsets_with_one_expert;

  if (c.mode == Mode::kGatherScatterCombine) {
    // Route-like: slots (t, j) get experts, rows grouped by expert in token order.
    const std::vector<int> slot_expert = random_experts(pb.P, c.E, rng);
    pb.off = offsets_of(slot_expert, c.E);
    std::vector<int32_t> next(pb.off.begin(), pb.off.end() - 1);
    pb.gat.assign(pb.P, 0);
    pb.sca.assign(pb.P, 0);
    for (int64_t s = 0; s < pb.P; ++s) {
      const int32_t row = next[slot_expert[s]]++;
      pb.gat[row] = static_cast<int32_t>(s / pb.k);
      pb.sca[s] = row;
    }
  } else {
    std::vector<int> row_expert = random_experts(pb.P, c.E, rng);
    std::sort(row_expert.begin(), row_expert.end());
    pb.off = offsets_of(row_expert, c.E);
    if (c.mode == Mode::kGather) {
      for (int64_t p = 0; p < pb.P; ++p) pb.gat.push_back(static_cast<int32_t>(rng() % pb.M));
    }
    if (c.mode == Mode::kScatter) {  // any rows, repeats allowed
      for (int64_t p = 0; p < pb.P; ++p) pb.sca.push_back(static_cast<int32_t>(rng() % pb.P));
    }
    if (c.mode == Mode::kScatterCombine) {  // a permutation
      pb.sca.resize(pb.P);
      std::iota(pb.sca.begin(), pb.sca.end(), 0);
      std::shuffle(pb.sca.begin(), pb.sca.end(), rng);
    }
  }
  if (!use_offsets) pb.off.clear();
  if (!pb.off.empty()) pb.offsets = int_tensor(pb.off, {c.E + 1});
  if (!pb.gat.empty()) pb.gather = int_tensor(pb.gat, {pb.P});
  if (!pb.sca.empty()) pb.scatter = int_tensor(pb.sca, {pb.T, pb.k});
  if (c.mode == Mode::kScatterCombine || c.mode == Mode::kGatherScatterCombine) {
    pb.cw = random_dyadic(DType::kFloat32, {pb.T, pb.k}, 8, 8.0f, rng, pb.cwd);
  }
  pb.sw.enabled = c.swiglu;  // alpha 1.702, limit 7 (the defaults)
  const int64_t out_rows = pb.sca.empty() ? pb.P : pb.T;
  pb.out = HostTensor(c.out_dtype, {out_rows, c.swiglu ? c.N / 2 : c.N});
  const size_t ws_bytes = matmul_ogs_workspace_size(pb.args());  // the CPU backend may need none
  if (ws_bytes > 0) pb.workspace = HostTensor(DType::kUInt8, {static_cast<int64_t>(ws_bytes)});
  return pb;
}

struct Ref {
  std::vector<double> val, mag;  // mag: the sum of the magnitudes of what was added up
};

Ref reference(const Problem& pb) {
  const Case& c = pb.c;
  const int64_t K = c.K, N = c.N, cols = c.swiglu ? N / 2 : N;
  std::vector<int> row_expert(static_cast<size_t>(pb.P), 0);
  if (!pb.off.empty()) {
    for (int64_t e = 0; e < c.E; ++e)
      for (int32_t p = pb.off[e]; p < pb.off[e + 1]; ++p) row_expert[p] = static_cast<int>(e);
  }
  std::vector<double> act(static_cast<size_t>(pb.P * cols)), act_mag(act.size()), h(N), hm(N);
  for (int64_t p = 0; p < pb.P; ++p) {
    const int64_t src = pb.gat.empty() ? p : pb.gat[p];
    const int64_t e = row_expert[p];
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, m = 0;
      for (int64_t i = 0; i < K; ++i) {
        const double t = pb.xd[src * K + i] * pb.w.w[(e * N + n) * K + i];
        s += t;
        m += std::fabs(t);
      }
      if (c.bias) {
        s += pb.biasd[e * N + n];
        m += std::fabs(pb.biasd[e * N + n]);
      }
      h[n] = s;
      hm[n] = m;
    }
    for (int64_t col = 0; col < cols; ++col) {
      if (c.swiglu) {
        act[p * cols + col] = swiglu_ref(h[2 * col], h[2 * col + 1], double(pb.sw.alpha), double(pb.sw.limit));
        act_mag[p * cols + col] = std::fabs(act[p * cols + col]);  // h is exact: the error is relative to a
      } else {
        act[p * cols + col] = h[col];
        act_mag[p * cols + col] = hm[col];
      }
    }
  }
  if (pb.sca.empty()) return {act, act_mag};
  Ref r{std::vector<double>(static_cast<size_t>(pb.T * cols), 0.0), std::vector<double>(static_cast<size_t>(pb.T * cols), 0.0)};
  for (int64_t t = 0; t < pb.T; ++t) {
    for (int64_t j = 0; j < pb.k; ++j) {
      const double wgt = pb.cwd.empty() ? 1.0 : pb.cwd[t * pb.k + j];
      const int64_t row = pb.sca[t * pb.k + j];
      for (int64_t col = 0; col < cols; ++col) {
        r.val[t * cols + col] += wgt * act[row * cols + col];
        r.mag[t * cols + col] += std::fabs(wgt) * act_mag[row * cols + col];
      }
    }
  }
  return r;
}

// Runs matmul_ogs on a poisoned output and checks every element against the reference.
void run_and_check(Problem& pb) {
  pb.out.poison();
  ExecContext ctx;
  ctx.cpu_threads = pb.c.cpu_threads;
  matmul_ogs(pb.args(), ctx);
  const Ref ref = reference(pb);
  ASSERT_EQ(static_cast<size_t>(pb.out.numel()), ref.val.size());
  const bool bf16_out = pb.c.out_dtype == DType::kBFloat16;
  for (int64_t i = 0; i < pb.out.numel(); ++i) {
    const float got = pb.out.get(i);
    ASSERT_FALSE(std::isnan(got)) << "element " << i << " not written";
    if (!pb.c.swiglu) {
      // Exact (see the top of the file), then one rounding to the output dtype.
      ASSERT_EQ(got, round_to(pb.c.out_dtype, static_cast<float>(ref.val[i]))) << "element " << i;
    } else {
      // SwiGLU in float: exp of a rounded argument (|alpha g| * 2^-24 <= 6e-6 relative for
      // |alpha g| <= 100; beyond that |a| < 1e-40) plus a few ulp for exp/div/mul, and a k-term
      // fp32 combine: 2e-5 of the magnitude sum. A bf16 output adds half an ulp: 2^-8 relative.
      const double tol = (bf16_out ? std::ldexp(std::fabs(ref.val[i]), -8) : 0.0) + 2e-5 * ref.mag[i] + 1e-30;
      ASSERT_NEAR(got, ref.val[i], tol) << "element " << i;
    }
  }
}

struct DTypes {
  DType x, out;
  WKind w;
};

void PrintTo(const DTypes& d, std::ostream* os) {
  *os << "x " << dtype_name(d.x) << " out " << dtype_name(d.out) << " w " << wkind_name(d.w);
}

class MatmulOgs : public ::testing::TestWithParam<DTypes> {};

TEST_P(MatmulOgs, MatchesANaiveLoop) {
  const DTypes d = GetParam();
  std::mt19937 rng(100 + static_cast<int>(d.x) * 10 + static_cast<int>(d.out) * 3 + static_cast<int>(d.w));
  for (int64_t E : {1, 3, 8}) {
    for (Mode mode : {Mode::kPlain, Mode::kGather, Mode::kScatter, Mode::kScatterCombine, Mode::kGatherScatterCombine}) {
      for (bool bias : {false, true}) {
        for (bool swiglu : {false, true}) {
          Case c;
          c.x_dtype = d.x;
          c.out_dtype = d.out;
          c.wkind = d.w;
          c.bias = bias;
          c.mode = mode;
          c.swiglu = swiglu;
          c.E = E;
          c.K = E == 3 ? 160 : 96;  // multiples of 32, not of 64
          c.N = E == 3 ? 96 : 160;
          SCOPED_TRACE(c.str());
          Problem pb = make_problem(c, rng);
          run_and_check(pb);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, MatmulOgs,
                         ::testing::Values(DTypes{DType::kFloat32, DType::kFloat32, WKind::kF32},
                                           DTypes{DType::kFloat32, DType::kFloat32, WKind::kBF16},
                                           DTypes{DType::kFloat32, DType::kFloat32, WKind::kMxfp4},
                                           DTypes{DType::kBFloat16, DType::kBFloat16, WKind::kF32},
                                           DTypes{DType::kBFloat16, DType::kBFloat16, WKind::kBF16},
                                           DTypes{DType::kBFloat16, DType::kBFloat16, WKind::kMxfp4},
                                           DTypes{DType::kBFloat16, DType::kFloat32, WKind::kF32},
                                           DTypes{DType::kBFloat16, DType::kFloat32, WKind::kBF16},
                                           DTypes{DType::kBFloat16, DType::kFloat32, WKind::kMxfp4}),
                         [](const ::testing::TestParamInfo<DTypes>& info) {
                           return std::string(info.param.x == DType::kFloat32 ? "x_f32" : "x_bf16") +
                                  (info.param.out == DType::kFloat32 ? "_out_f32_w_" : "_out_bf16_w_") +
                                  wkind_name(info.param.w);
                         });

TEST(MatmulOgsCases, KNotAMultipleOf32WithFloatWeights) {
  std::mt19937 rng(5);
  for (DType xdt : {DType::kFloat32, DType::kBFloat16}) {
    for (WKind wk : {WKind::kF32, WKind::kBF16}) {
      for (Mode mode : {Mode::kPlain, Mode::kGather, Mode::kGatherScatterCombine}) {
        for (bool swiglu : {false, true}) {
          Case c;
          c.x_dtype = c.out_dtype = xdt;
          c.wkind = wk;
          c.bias = true;
          c.mode = mode;
          c.swiglu = swiglu;
          c.E = 3;
          c.K = 33;
          c.N = 40;
          SCOPED_TRACE(c.str());
          Problem pb = make_problem(c, rng);
          run_and_check(pb);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST(MatmulOgsCases, ExpertOffsetsWithOneExpert) {
  std::mt19937 rng(6);
  for (Mode mode : {Mode::kPlain, Mode::kGather, Mode::kGatherScatterCombine}) {
    Case c;
    c.wkind = WKind::kMxfp4;
    c.mode = mode;
    c.offsets_with_one_expert = true;
    SCOPED_TRACE(c.str());
    Problem pb = make_problem(c, rng);
    ASSERT_EQ(pb.off.size(), 2u);
    run_and_check(pb);
  }
}

TEST(MatmulOgsCases, ResultsDoNotDependOnTheThreadCount) {
  std::mt19937 rng(7);
  Case c;
  c.x_dtype = c.out_dtype = DType::kBFloat16;
  c.wkind = WKind::kMxfp4;
  c.bias = true;
  c.mode = Mode::kGatherScatterCombine;
  c.swiglu = true;
  c.E = 8;
  Problem pb = make_problem(c, rng);
  // Inexact inputs this time, so that a thread-dependent summation order would show.
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < pb.x.numel(); ++i) pb.x.set(i, normal(rng) + 0.01f);
  std::vector<uint8_t> first;
  for (int threads : {1, 2, 5, 0}) {
    pb.out.poison();
    matmul_ogs(pb.args(), with_threads(threads));
    if (first.empty()) first = pb.out.bytes();
    else EXPECT_EQ(pb.out.bytes(), first) << "cpu_threads " << threads;
  }
  // A caller's pool (ExecContext::cpu_parallel, as the torch binding passes torch's): every chunk
  // of `grain` items run, last chunk first, on the calling thread.
  int calls = 0;
  ExecContext pool;
  pool.cpu_parallel = [&calls](int64_t n, int64_t grain, const ExecContext::ParallelBody& body) {
    ++calls;
    for (int64_t begin = (n - 1) / grain * grain; begin >= 0; begin -= grain) body(begin, std::min(n, begin + grain));
  };
  pb.out.poison();
  matmul_ogs(pb.args(), pool);
  EXPECT_GT(calls, 0);
  EXPECT_EQ(pb.out.bytes(), first) << "with the caller's pool";
}

TEST(MatmulOgsCases, NanInARowPropagatesThroughSwiglu) {
  std::mt19937 rng(8);
  Case c;
  c.mode = Mode::kGather;
  c.swiglu = true;
  c.E = 3;
  Problem pb = make_problem(c, rng);
  pb.x.set(5 * c.K + 17, NAN);  // token 5
  pb.gat[3] = 5;                 // at least one row reads token 5
  pb.gather.i32(3) = 5;
  pb.out.poison();
  matmul_ogs(pb.args());
  const Ref ref = reference(pb);
  const int64_t cols = c.N / 2;
  int nan_rows = 0;
  for (int64_t p = 0; p < pb.P; ++p) {
    for (int64_t col = 0; col < cols; ++col) {
      const float got = pb.out.get(p * cols + col);
      if (pb.gat[p] == 5) {
        EXPECT_TRUE(std::isnan(got)) << "row " << p << " col " << col;
      } else {
        EXPECT_NEAR(got, ref.val[p * cols + col], 2e-5 * ref.mag[p * cols + col] + 1e-30) << "row " << p;
      }
    }
    nan_rows += pb.gat[p] == 5;
  }
  EXPECT_GE(nan_rows, 1);
}

TEST(MatmulOgsCases, NanInOneSwigluInputColumnPropagates) {
  // NaN in the weight row of one glu column and of one linear column of expert 0: only those
  // outputs of expert 0's rows become NaN (the clamps must not swallow it).
  std::mt19937 rng(10);
  Case c;
  c.mode = Mode::kPlain;
  c.swiglu = true;
  c.E = 3;
  Problem pb = make_problem(c, rng);
  const int64_t K = c.K, cols = c.N / 2, glu_col = 3, lin_col = 5;
  pb.w.values.set((2 * glu_col) * K + 7, NAN);
  pb.w.values.set((2 * lin_col + 1) * K + 9, NAN);
  pb.out.poison();
  matmul_ogs(pb.args());
  const Ref ref = reference(pb);  // NaN exactly where expected, finite elsewhere
  ASSERT_GT(pb.off[1], 0);
  for (int64_t p = 0; p < pb.P; ++p) {
    for (int64_t col = 0; col < cols; ++col) {
      const float got = pb.out.get(p * cols + col);
      if (p < pb.off[1] && (col == glu_col || col == lin_col)) {
        EXPECT_TRUE(std::isnan(got)) << "row " << p << " col " << col;
      } else {
        EXPECT_NEAR(got, ref.val[p * cols + col], 2e-5 * ref.mag[p * cols + col] + 1e-30) << "row " << p << " col " << col;
      }
    }
  }
}

TEST(MatmulOgsCases, EmptyProblemWritesNothing) {
  std::mt19937 rng(9);
  HostTensor x(DType::kFloat32, {0, 64});
  Weights w = make_weights(WKind::kMxfp4, 1, 16, 64, rng);
  HostTensor out(DType::kFloat32, {0, 16});
  MatmulOgsArgs a;
  a.x = x.view();
  a.w = w.view();
  a.out = out.view();
  ASSERT_EQ(a.out.data, nullptr);  // as torch gives an empty tensor: any write would fault
  EXPECT_NO_THROW(matmul_ogs(a));
}

// ------------------------------------------------------------------------------------ moe_mlp

struct MoeCase {
  DType x_dtype;
  WKind wkind;
  bool biases;
  int64_t T, E, k, H, I;
  std::string str() const {
    return std::string("x ") + dtype_name(x_dtype) + " w " + wkind_name(wkind) + (biases ? " biases" : "") + " T " +
           std::to_string(T) + " E " + std::to_string(E) + " k " + std::to_string(k) + " H " + std::to_string(H) +
           " I " + std::to_string(I);
  }
};

struct Moe {
  MoeCase c;
  HostTensor x, gate, gate_bias, b1, b2, y, workspace;
  Weights w1, w2;
  std::vector<double> xd, gd, gbd, b1d, b2d;
  MoeMlpArgs args() {
    MoeMlpArgs a;
    a.x = x.view();
    a.gate_weight = gate.view();
    a.mlp1 = w1.view();
    a.mlp2 = w2.view();
    if (c.biases) {
      a.gate_bias = gate_bias.view();
      a.mlp1_bias = b1.view();
      a.mlp2_bias = b2.view();
    }
    a.experts_per_token = static_cast<int>(c.k);
    a.y = y.view();
    a.workspace = workspace.view();
    return a;
  }
};

Moe make_moe(const MoeCase& c, std::mt19937& rng) {
  Moe m;
  m.c = c;
  const DType bias_dtype = c.wkind == WKind::kBF16 ? DType::kBFloat16 : DType::kFloat32;
  // x and the gate are small dyadic numbers, so the logits are exact in fp32 and the library
  // routes exactly as the reference does (ties included); the gate weights are small so that
  // the softmax weights of all k slots matter.
  m.x = random_dyadic(c.x_dtype, {c.T, c.H}, 3, 1.0f, rng, m.xd);
  m.gate = random_dyadic(c.x_dtype, {c.E, c.H}, 4, 64.0f, rng, m.gd);
  m.w1 = make_weights(c.wkind, c.E, 2 * c.I, c.H, rng);
  m.w2 = make_weights(c.wkind, c.E, c.H, c.I, rng);
  if (c.biases) {
    m.gate_bias = random_dyadic(c.x_dtype, {c.E}, 4, 8.0f, rng, m.gbd);
    m.b1 = random_dyadic(bias_dtype, {c.E, 2 * c.I}, 8, 4.0f, rng, m.b1d);
    m.b2 = random_dyadic(bias_dtype, {c.E, c.H}, 8, 4.0f, rng, m.b2d);
  }
  m.y = HostTensor(c.x_dtype, {c.T, c.H});
  m.workspace = HostTensor(DType::kUInt8, {0});
  const size_t bytes = moe_mlp_workspace_size(m.args());
  m.workspace = HostTensor(DType::kUInt8, {static_cast<int64_t>(bytes)});
  return m;
}

// The gpt-oss layer written out naively in double; mag: sum of magnitudes per output.
Ref moe_reference(const Moe& m) {
  const MoeCase& c = m.c;
  const int64_t H = c.H, I = c.I, E = c.E;
  const double alpha = double(1.702f), limit = double(7.0f);
  Ref r{std::vector<double>(static_cast<size_t>(c.T * H), 0.0), std::vector<double>(static_cast<size_t>(c.T * H), 0.0)};
  std::vector<double> logits(E), h(2 * I), a(I);
  for (int64_t t = 0; t < c.T; ++t) {
    for (int64_t e = 0; e < E; ++e) {
      double s = c.biases ? m.gbd[e] : 0.0;
      for (int64_t i = 0; i < H; ++i) s += m.xd[t * H + i] * m.gd[e * H + i];
      logits[e] = s;
    }
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int p, int q) { return logits[p] > logits[q]; });
    double z = 0;
    for (int64_t j = 0; j < c.k; ++j) z += std::exp(logits[order[j]] - logits[order[0]]);
    for (int64_t j = 0; j < c.k; ++j) {
      const int64_t e = order[j];
      const double wgt = std::exp(logits[e] - logits[order[0]]) / z;
      for (int64_t n = 0; n < 2 * I; ++n) {
        double s = c.biases ? m.b1d[e * 2 * I + n] : 0.0;
        for (int64_t i = 0; i < H; ++i) s += m.xd[t * H + i] * m.w1.w[(e * 2 * I + n) * H + i];
        h[n] = s;
      }
      for (int64_t i = 0; i < I; ++i) a[i] = swiglu_ref(h[2 * i], h[2 * i + 1], alpha, limit);
      for (int64_t o = 0; o < H; ++o) {
        double s = c.biases ? m.b2d[e * H + o] : 0.0, mag = std::fabs(s);
        for (int64_t i = 0; i < I; ++i) {
          const double term = a[i] * m.w2.w[(e * H + o) * I + i];
          s += term;
          mag += std::fabs(term);
        }
        r.val[t * H + o] += wgt * s;
        r.mag[t * H + o] += wgt * mag;
      }
    }
  }
  return r;
}

TEST(MoeMlp, MatchesANaiveComposition) {
  const MoeCase cases[] = {
      {DType::kFloat32, WKind::kMxfp4, true, 13, 8, 4, 96, 160},
      {DType::kBFloat16, WKind::kBF16, true, 9, 8, 2, 96, 160},
      {DType::kFloat32, WKind::kF32, false, 6, 3, 3, 160, 96},  // k = E
      {DType::kBFloat16, WKind::kMxfp4, true, 5, 1, 1, 96, 96},  // one expert
  };
  std::mt19937 rng(21);
  for (const MoeCase& c : cases) {
    SCOPED_TRACE(c.str());
    Moe m = make_moe(c, rng);
    m.y.poison();
    m.workspace.poison();
    moe_mlp(m.args());
    const Ref ref = moe_reference(m);
    const bool bf16 = c.x_dtype == DType::kBFloat16;
    for (int64_t i = 0; i < m.y.numel(); ++i) {
      const float got = m.y.get(i);
      ASSERT_FALSE(std::isnan(got)) << "element " << i << " not written";
      // f32: SwiGLU in float (1e-5 relative, see run_and_check), the I-term fp32 dot of mlp2
      // ((I/8 + 3) * 2^-24 < 2e-6), softmax weights and the k-term combine (a few ulp): 3e-5 of
      // the magnitude sum. bf16: the SwiGLU output is stored as bf16 (2^-8 relative per term,
      // so 2^-8 of the magnitude sum) and y is rounded to bf16 (2^-8 of |y|).
      const double tol = bf16 ? std::ldexp(std::fabs(ref.val[i]), -8) + (std::ldexp(1.0, -8) + 3e-5) * ref.mag[i]
                              : 3e-5 * ref.mag[i] + 1e-30;
      ASSERT_NEAR(got, ref.val[i], tol) << "element " << i;
    }
  }
}

TEST(MoeMlp, ZeroTokensReturnWithoutTouchingY) {
  std::mt19937 rng(22);
  Moe m = make_moe({DType::kBFloat16, WKind::kMxfp4, true, 0, 8, 4, 96, 64}, rng);
  EXPECT_GT(m.workspace.numel(), 0);
  m.y.poison();
  const std::vector<uint8_t> before = m.y.bytes();
  moe_mlp(m.args());
  EXPECT_EQ(m.y.bytes(), before);
}

}  // namespace
}  // namespace moekit::test
