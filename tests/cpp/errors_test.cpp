// Every validation error of src/core/problem.cpp, moe_mlp's own checks, and the index checks
// of the CPU matmul_ogs: the error kind, a message naming the op, the argument (quoted) and
// what came, and outputs left untouched (poisoned before, compared byte by byte after).
#include <gtest/gtest.h>

#include <functional>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

namespace moekit::test {
namespace {

constexpr auto kValue = Error::Kind::kValue;
constexpr auto kType = Error::Kind::kType;
constexpr auto kDevice = Error::Kind::kDevice;

// Poisons `outputs`, expects fn to throw (see expect_error), then checks that no output byte changed.
void expect_rejected(const std::vector<HostTensor*>& outputs, const std::function<void()>& fn, Error::Kind kind,
                     std::initializer_list<std::string> needles) {
  std::vector<std::vector<uint8_t>> before;
  for (HostTensor* t : outputs) {
    t->poison();
    before.push_back(t->bytes());
  }
  expect_error(fn, kind, needles);
  for (size_t i = 0; i < outputs.size(); ++i) {
    EXPECT_EQ(outputs[i]->bytes(), before[i]) << "output " << i << " was written by a call that failed";
  }
}

void fill_random(HostTensor& t, std::mt19937& rng) {
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (t.dtype() == DType::kUInt8) t.u8(i) = static_cast<uint8_t>(rng() % 255);  // never the NaN scale
    else if (t.dtype() == DType::kInt32) t.i32(i) = static_cast<int32_t>(rng() % 7);
    else t.set(i, static_cast<float>(nonzero_int(rng, 4)));
  }
}

// A view with a gap between rows: [rows, cols] with row stride 2 * cols (t must hold 2x).
TensorView strided(HostTensor& t, int64_t rows, int64_t cols) {
  TensorView v = make_view(t.data(), t.dtype(), {rows, cols});
  v.stride[0] = 2 * cols;
  return v;
}

// ------------------------------------------------------------------------------ quantize_mxfp4

const char* kQuant = "moekit.quantize_mxfp4";

struct Quant {
  HostTensor w{DType::kFloat32, {4, 64}}, blocks{DType::kUInt8, {4, 2, 16}}, scales{DType::kUInt8, {4, 2}};
  Quant() {
    std::mt19937 rng(1);
    fill_random(w, rng);
  }
  std::vector<HostTensor*> outs() { return {&blocks, &scales}; }
};

TEST(QuantizeErrors, BadW) {
  Quant q;
  auto call = [&q](TensorView w) { return [&q, w] { quantize_mxfp4(w, q.blocks.view(), q.scales.view()); }; };
  expect_rejected(q.outs(), call(TensorView()), kValue, {kQuant, "'w'", "got None"});
  HostTensor wi(DType::kInt32, {4, 64}), wu(DType::kUInt8, {4, 64});
  expect_rejected(q.outs(), call(wi.view()), kType, {kQuant, "'w'", "float32 or bfloat16", "got int32"});
  expect_rejected(q.outs(), call(wu.view()), kType, {kQuant, "'w'", "got uint8"});
  expect_rejected(q.outs(), call(make_view(q.w.data(), DType::kFloat32, {})), kValue,
                  {kQuant, "'w'", "1 to 5 dimensions", "got 0"});
  expect_rejected(q.outs(), call(make_view(q.w.data(), DType::kFloat32, {1, 1, 1, 2, 2, 32})), kValue,
                  {kQuant, "'w'", "1 to 5 dimensions", "got 6"});
  HostTensor big(DType::kFloat32, {4, 128});
  expect_rejected(q.outs(), call(strided(big, 4, 64)), kValue, {kQuant, "'w'", "contiguous", "got strides"});
  for (int64_t K : {33, 48, 16}) {
    HostTensor wk(DType::kFloat32, {4, K});
    expect_rejected(q.outs(), call(wk.view()), kValue, {kQuant, "'w'", "multiple of 32", "got " + std::to_string(K)});
  }
}

TEST(QuantizeErrors, BadOutputs) {
  Quant q;
  HostTensor bf(DType::kFloat32, {4, 2, 16}), b3(DType::kUInt8, {4, 3, 16}), s1(DType::kUInt8, {4}),
      si(DType::kInt32, {4, 2}), bbig(DType::kUInt8, {4, 4, 16});
  auto call = [&q](TensorView b, TensorView s) { return [&q, b, s] { quantize_mxfp4(q.w.view(), b, s); }; };
  expect_rejected({&bf, &q.scales}, call(bf.view(), q.scales.view()), kType, {kQuant, "'blocks'", "uint8", "got float32"});
  expect_rejected(q.outs(), call(b3.view(), q.scales.view()), kValue,
                  {kQuant, "'blocks'", "shape [4, 2, 16]", "got [4, 3, 16]"});
  expect_rejected(q.outs(), call(q.blocks.view(), s1.view()), kValue, {kQuant, "'scales'", "shape [4, 2]", "got [4]"});
  expect_rejected(q.outs(), call(q.blocks.view(), si.view()), kType, {kQuant, "'scales'", "got int32"});
  expect_rejected(q.outs(), call(q.blocks.view(), TensorView()), kValue, {kQuant, "'scales'", "got None"});
  expect_rejected({&q.scales}, call(TensorView(), q.scales.view()), kValue, {kQuant, "'blocks'", "got None"});
  TensorView nc = make_view(bbig.data(), DType::kUInt8, {4, 2, 16});
  nc.stride[0] = 64;
  expect_rejected(q.outs(), call(nc, q.scales.view()), kValue, {kQuant, "'blocks'", "contiguous"});
}

TEST(QuantizeErrors, Devices) {
  Quant q;
  const Device c1 = cuda(1);
  expect_rejected(q.outs(), [&] { quantize_mxfp4(q.w.view(), q.blocks.view(c1), q.scales.view()); }, kDevice,
                  {kQuant, "'blocks'", "device cpu", "'w'", "got cuda:1"});
  expect_rejected(q.outs(), [&] { quantize_mxfp4(q.w.view(), q.blocks.view(), q.scales.view(c1)); }, kDevice,
                  {kQuant, "'scales'", "device cpu", "got cuda:1"});
  expect_rejected(q.outs(), [&] { quantize_mxfp4(q.w.view(c1), q.blocks.view(), q.scales.view()); }, kDevice,
                  {kQuant, "'blocks'", "device cuda:1", "got cpu"});
}

// ---------------------------------------------------------------------------- dequantize_mxfp4

const char* kDequant = "moekit.dequantize_mxfp4";

struct Dequant {
  HostTensor blocks{DType::kUInt8, {4, 2, 16}}, scales{DType::kUInt8, {4, 2}}, out{DType::kFloat32, {4, 64}};
  Dequant() {
    std::mt19937 rng(2);
    fill_random(blocks, rng);
    fill_random(scales, rng);
  }
  std::vector<HostTensor*> outs() { return {&out}; }
};

TEST(DequantizeErrors, BadInputs) {
  Dequant d;
  auto call = [&d](TensorView b, TensorView s) { return [&d, b, s] { dequantize_mxfp4(b, s, d.out.view()); }; };
  HostTensor bf(DType::kFloat32, {4, 2, 16}), si(DType::kInt32, {4, 2}), b8(DType::kUInt8, {4, 2, 8}),
      s3(DType::kUInt8, {4, 3}), bbig(DType::kUInt8, {4, 4, 16}), sbig(DType::kUInt8, {8, 2});
  expect_rejected(d.outs(), call(TensorView(), d.scales.view()), kValue, {kDequant, "'blocks'", "got None"});
  expect_rejected(d.outs(), call(d.blocks.view(), TensorView()), kValue, {kDequant, "'scales'", "got None"});
  expect_rejected(d.outs(), call(bf.view(), d.scales.view()), kType, {kDequant, "'blocks'", "uint8", "got float32"});
  expect_rejected(d.outs(), call(d.blocks.view(), si.view()), kType, {kDequant, "'scales'", "got int32"});
  expect_rejected(d.outs(), call(b8.view(), d.scales.view()), kValue, {kDequant, "'blocks'", "got [4, 2, 8]"});
  expect_rejected(d.outs(), call(make_view(d.blocks.data(), DType::kUInt8, {16}), d.scales.view()), kValue,
                  {kDequant, "'blocks'", "got [16]"});
  expect_rejected(d.outs(), call(d.blocks.view(), s3.view()), kValue, {kDequant, "'scales'", "shape [4, 2]", "got [4, 3]"});
  TensorView nb = make_view(bbig.data(), DType::kUInt8, {4, 2, 16});
  nb.stride[0] = 64;
  expect_rejected(d.outs(), call(nb, d.scales.view()), kValue, {kDequant, "'blocks'", "contiguous"});
  expect_rejected(d.outs(), call(d.blocks.view(), strided(sbig, 4, 2)), kValue, {kDequant, "'scales'", "contiguous"});
}

TEST(DequantizeErrors, BadOutput) {
  Dequant d;
  auto call = [&d](TensorView out) { return [&d, out] { dequantize_mxfp4(d.blocks.view(), d.scales.view(), out); }; };
  HostTensor oi(DType::kUInt8, {4, 64}), o32(DType::kFloat32, {4, 32}), obig(DType::kFloat32, {4, 128});
  expect_error(call(TensorView()), kValue, {kDequant, "'out'", "got None"});
  expect_rejected({&oi}, call(oi.view()), kType, {kDequant, "'out'", "float32 or bfloat16", "got uint8"});
  expect_rejected({&o32}, call(o32.view()), kValue, {kDequant, "'out'", "shape [4, 64]", "got [4, 32]"});
  expect_rejected({&obig}, call(strided(obig, 4, 64)), kValue, {kDequant, "'out'", "contiguous"});
}

TEST(DequantizeErrors, Devices) {
  Dequant d;
  const Device c1 = cuda(1);
  expect_rejected(d.outs(), [&] { dequantize_mxfp4(d.blocks.view(), d.scales.view(c1), d.out.view()); }, kDevice,
                  {kDequant, "'scales'", "device cpu", "'blocks'", "got cuda:1"});
  expect_rejected(d.outs(), [&] { dequantize_mxfp4(d.blocks.view(), d.scales.view(), d.out.view(c1)); }, kDevice,
                  {kDequant, "'out'", "device cpu", "got cuda:1"});
  expect_rejected(d.outs(), [&] { dequantize_mxfp4(d.blocks.view(c1), d.scales.view(c1), d.out.view()); }, kDevice,
                  {kDequant, "'out'", "device cuda:1", "got cpu"});
}

// ------------------------------------------------------------------------------------- route

const char* kRoute = "moekit.route";

struct Route {
  HostTensor logits{DType::kFloat32, {5, 8}};
  RouteBuffers out{5, 8, 2};
  Route() {
    std::mt19937 rng(3);
    fill_random(logits, rng);
  }
};

TEST(RouteErrors, BadLogits) {
  Route r;
  auto call = [&r](TensorView logits, int k) { return [&r, logits, k] { route(logits, k, r.out.outputs()); }; };
  HostTensor li(DType::kInt32, {5, 8}), l3(DType::kFloat32, {5, 2, 4}), l0(DType::kFloat32, {5, 0}),
      lbig(DType::kFloat32, {5, 16});
  expect_rejected(r.out.all(), call(TensorView(), 2), kValue, {kRoute, "'logits'", "got None"});
  expect_rejected(r.out.all(), call(li.view(), 2), kType, {kRoute, "'logits'", "float32 or bfloat16", "got int32"});
  expect_rejected(r.out.all(), call(l3.view(), 2), kValue, {kRoute, "'logits'", "shape [*, *]", "got [5, 2, 4]"});
  expect_rejected(r.out.all(), call(strided(lbig, 5, 8), 2), kValue, {kRoute, "'logits'", "contiguous"});
  expect_rejected(r.out.all(), call(l0.view(), 1), kValue, {kRoute, "'logits'", "at least one expert", "got [5, 0]"});
}

TEST(RouteErrors, KOutOfRange) {
  Route r;
  for (int k : {0, -1, 9, 100}) {
    expect_rejected(r.out.all(), [&] { route(r.logits.view(), k, r.out.outputs()); }, kValue,
                    {kRoute, "'k'", "1 <= k <= 8", "got " + std::to_string(k)});
  }
}

TEST(RouteErrors, BadOutputs) {
  Route r;
  HostTensor f52(DType::kFloat32, {5, 2}), i52(DType::kInt32, {5, 2}), i8(DType::kInt32, {8}), f8(DType::kFloat32, {8}),
      i11(DType::kInt32, {11}), i10(DType::kInt32, {10}), i102(DType::kInt32, {10, 2});
  struct Bad {
    const char* arg;
    std::function<void(RouteOutputs&)> edit;
    Error::Kind kind;
    std::string got;
  };
  const Bad bad[] = {
      {"'expert_idx'", [&](RouteOutputs& o) { o.expert_idx = f52.view(); }, kType, "got float32"},
      {"'expert_idx'", [&](RouteOutputs& o) { o.expert_idx = TensorView(); }, kValue, "got None"},
      {"'expert_weight'", [&](RouteOutputs& o) { o.expert_weight = i52.view(); }, kType, "got int32"},
      {"'expert_weight'", [&](RouteOutputs& o) { o.expert_weight = f8.view(); }, kValue, "got [8]"},
      {"'expert_counts'", [&](RouteOutputs& o) { o.expert_counts = f8.view(); }, kType, "got float32"},
      {"'expert_counts'", [&](RouteOutputs& o) { o.expert_counts = i10.view(); }, kValue, "got [10]"},
      {"'expert_offsets'", [&](RouteOutputs& o) { o.expert_offsets = i8.view(); }, kValue, "got [8]"},
      {"'expert_offsets'", [&](RouteOutputs& o) { o.expert_offsets = TensorView(); }, kValue, "got None"},
      {"'gather_idx'", [&](RouteOutputs& o) { o.gather_idx = i11.view(); }, kValue, "got [11]"},
      {"'gather_idx'", [&](RouteOutputs& o) { o.gather_idx = i52.view(); }, kValue, "got [5, 2]"},
      {"'scatter_idx'", [&](RouteOutputs& o) { o.scatter_idx = i10.view(); }, kValue, "got [10]"},
      {"'scatter_idx'", [&](RouteOutputs& o) { o.scatter_idx = strided(i102, 5, 2); }, kValue, "strides"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(std::string(b.arg) + " " + b.got);
    RouteOutputs o = r.out.outputs();
    b.edit(o);
    expect_rejected(r.out.all(), [&] { route(r.logits.view(), 2, o); }, b.kind, {kRoute, b.arg, b.got});
  }
}

TEST(RouteErrors, Devices) {
  Route r;
  const Device c1 = cuda(1);
  RouteOutputs o = r.out.outputs();
  o.expert_weight.device = c1;
  expect_rejected(r.out.all(), [&] { route(r.logits.view(), 2, o); }, kDevice,
                  {kRoute, "'expert_weight'", "device cpu", "'logits'", "got cuda:1"});
  o = r.out.outputs();
  o.scatter_idx.device = c1;
  expect_rejected(r.out.all(), [&] { route(r.logits.view(), 2, o); }, kDevice, {kRoute, "'scatter_idx'", "got cuda:1"});
  expect_rejected(r.out.all(), [&] { route(r.logits.view(c1), 2, r.out.outputs()); }, kDevice,
                  {kRoute, "'expert_idx'", "device cuda:1", "got cpu"});
}

// -------------------------------------------------------------------------------- matmul_ogs

const char* kMatmul = "moekit.matmul_ogs";

// x [6, 96], E = 3, N = 8, P = 12 rows gathered from x, scattered to T = 4 tokens x k = 3.
struct Matmul {
  HostTensor x{DType::kFloat32, {6, 96}}, w{DType::kFloat32, {3, 8, 96}}, bias{DType::kFloat32, {3, 8}},
      qv{DType::kUInt8, {3, 8, 3, 16}}, qs{DType::kUInt8, {3, 8, 3}}, offsets{DType::kInt32, {4}},
      gather{DType::kInt32, {12}}, scatter{DType::kInt32, {4, 3}}, cw{DType::kFloat32, {4, 3}},
      out{DType::kFloat32, {4, 8}};
  Matmul() {
    std::mt19937 rng(4);
    for (HostTensor* t : {&x, &w, &bias, &qv, &qs, &cw}) fill_random(*t, rng);
    const int32_t off[] = {0, 5, 5, 12};
    for (int e = 0; e < 4; ++e) offsets.i32(e) = off[e];
    for (int p = 0; p < 12; ++p) {
      gather.i32(p) = p % 6;
      scatter.i32(p) = (p * 5) % 12;  // a permutation of [0, 12)
    }
  }
  MatmulOgsArgs args(bool mxfp4 = false) {
    MatmulOgsArgs a;
    a.x = x.view();
    a.w.values = mxfp4 ? qv.view() : w.view();
    if (mxfp4) a.w.scales = qs.view();
    a.bias = bias.view();
    a.expert_offsets = offsets.view();
    a.gather_idx = gather.view();
    a.scatter_idx = scatter.view();
    a.combine_weight = cw.view();
    a.out = out.view();
    return a;
  }
};

// Runs matmul_ogs(a) expecting the error, with `m.out` (and `extra`) untouched.
void expect_matmul_error(Matmul& m, const MatmulOgsArgs& a, Error::Kind kind, std::initializer_list<std::string> needles,
                         std::vector<HostTensor*> extra = {}) {
  extra.push_back(&m.out);
  expect_rejected(extra, [a] { matmul_ogs(a); }, kind, needles);
}

TEST(MatmulOgsErrors, TheFixtureIsValid) {
  for (bool mxfp4 : {false, true}) {
    Matmul m;
    m.out.poison();
    matmul_ogs(m.args(mxfp4));
    for (int i = 0; i < 32; ++i) EXPECT_FALSE(std::isnan(m.out.get(i))) << i;
  }
}

TEST(MatmulOgsErrors, BadX) {
  Matmul m;
  HostTensor xi(DType::kInt32, {6, 96}), x3(DType::kFloat32, {2, 3, 96}), xbig(DType::kFloat32, {6, 192});
  MatmulOgsArgs a = m.args();
  a.x = TensorView();
  expect_matmul_error(m, a, kValue, {kMatmul, "'x'", "got None"});
  a.x = xi.view();
  expect_matmul_error(m, a, kType, {kMatmul, "'x'", "float32 or bfloat16", "got int32"});
  a.x = x3.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'x'", "shape [*, *]", "got [2, 3, 96]"});
  a.x = strided(xbig, 6, 96);
  expect_matmul_error(m, a, kValue, {kMatmul, "'x'", "contiguous"});
}

TEST(MatmulOgsErrors, BadFloatWeights) {
  Matmul m;
  HostTensor wi(DType::kInt32, {3, 8, 96}), w64(DType::kFloat32, {3, 8, 64}), w0(DType::kFloat32, {0, 8, 96}),
      w2d(DType::kFloat32, {24, 96}), wbig(DType::kFloat32, {3, 16, 96});
  MatmulOgsArgs a = m.args();
  a.w.values = TensorView();
  expect_matmul_error(m, a, kValue, {kMatmul, "'w'", "got None"});
  a.w.values = wi.view();
  expect_matmul_error(m, a, kType, {kMatmul, "'w'", "float32 or bfloat16", "got int32"});
  a.w.values = w64.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'w'", "shape [*, *, 96]", "got [3, 8, 64]"});
  a.w.values = w2d.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'w'", "got [24, 96]"});
  a.w.values = w0.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'w'", "at least one expert", "got E = 0"});
  TensorView nc = make_view(wbig.data(), DType::kFloat32, {3, 8, 96});
  nc.stride[0] = 16 * 96;
  a.w.values = nc;
  expect_matmul_error(m, a, kValue, {kMatmul, "'w'", "contiguous"});
}

TEST(MatmulOgsErrors, BadMxfp4Weights) {
  Matmul m;
  HostTensor vf(DType::kFloat32, {3, 8, 3, 16}), sf(DType::kFloat32, {3, 8, 3}), v2(DType::kUInt8, {3, 8, 2, 16}),
      v8(DType::kUInt8, {3, 8, 3, 8}), s2(DType::kUInt8, {3, 8, 2}), s7(DType::kUInt8, {3, 7, 3}),
      x33(DType::kFloat32, {6, 33}), x48(DType::kFloat32, {6, 48});
  MatmulOgsArgs a = m.args(true);
  a.w.values = vf.view();
  expect_matmul_error(m, a, kType, {kMatmul, "'w'", "dtype uint8", "got float32"});
  // MXFP4 blocks without their scales read as float weights of the wrong dtype.
  a = m.args(true);
  a.w.scales = TensorView();
  expect_matmul_error(m, a, kType, {kMatmul, "'w'", "float32 or bfloat16", "got uint8"});
  a = m.args(true);
  a.w.scales = sf.view();
  expect_matmul_error(m, a, kType, {kMatmul, "'w_scales'", "dtype uint8", "got float32"});
  a = m.args(true);
  a.w.values = v2.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'w'", "shape [*, *, 3, 16]", "got [3, 8, 2, 16]"});
  a.w.values = v8.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'w'", "shape [*, *, 3, 16]", "got [3, 8, 3, 8]"});
  a = m.args(true);
  a.w.scales = s2.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'w_scales'", "shape [3, 8, 3]", "got [3, 8, 2]"});
  a.w.scales = s7.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'w_scales'", "shape [3, 8, 3]", "got [3, 7, 3]"});
  // K (x's columns) not a multiple of 32 with MXFP4 weights.
  a = m.args(true);
  a.x = x33.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'w'", "multiple of 32", "got 33"});
  a.x = x48.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'w'", "multiple of 32", "got 48"});
}

TEST(MatmulOgsErrors, BadBiasOffsetsGatherScatterCombine) {
  Matmul m;
  HostTensor b9(DType::kFloat32, {3, 9}), bi(DType::kInt32, {3, 8}), o3(DType::kInt32, {3}),
      of(DType::kFloat32, {4}), g2(DType::kInt32, {12, 1}), gf(DType::kFloat32, {12}), s53(DType::kInt32, {5, 3}),
      s43f(DType::kFloat32, {4, 3}), c42(DType::kFloat32, {4, 2}), cb(DType::kBFloat16, {4, 3}),
      out12(DType::kFloat32, {12, 8});
  MatmulOgsArgs a = m.args();
  a.bias = b9.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'bias'", "shape [3, 8]", "got [3, 9]"});
  a.bias = bi.view();
  expect_matmul_error(m, a, kType, {kMatmul, "'bias'", "got int32"});

  a = m.args();
  a.expert_offsets = TensorView();
  expect_matmul_error(m, a, kValue, {kMatmul, "'expert_offsets'", "3 experts", "got None"});
  a.expert_offsets = o3.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'expert_offsets'", "shape [4]", "got [3]"});
  a.expert_offsets = of.view();
  expect_matmul_error(m, a, kType, {kMatmul, "'expert_offsets'", "int32", "got float32"});

  a = m.args();
  a.gather_idx = g2.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'gather_idx'", "shape [*]", "got [12, 1]"});
  a.gather_idx = gf.view();
  expect_matmul_error(m, a, kType, {kMatmul, "'gather_idx'", "got float32"});

  a = m.args();
  a.scatter_idx = s53.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'scatter_idx'", "T * k == 12", "got [5, 3]"});
  a.scatter_idx = s43f.view();
  expect_matmul_error(m, a, kType, {kMatmul, "'scatter_idx'", "got float32"});

  a = m.args();
  a.combine_weight = c42.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'combine_weight'", "shape [4, 3]", "got [4, 2]"});
  a.combine_weight = cb.view();
  expect_matmul_error(m, a, kType, {kMatmul, "'combine_weight'", "float32", "got bfloat16"});

  // combine_weight without scatter_idx (the output then has P = 12 rows).
  a = m.args();
  a.scatter_idx = TensorView();
  a.out = out12.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'combine_weight'", "without scatter_idx", "got a tensor"}, {&out12});
}

TEST(MatmulOgsErrors, OddNWithSwiglu) {
  Matmul m;
  HostTensor w7(DType::kFloat32, {3, 7, 96}), out(DType::kFloat32, {4, 3});
  MatmulOgsArgs a = m.args();
  a.w.values = w7.view();
  a.bias = TensorView();
  a.swiglu.enabled = true;
  a.out = out.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'w'", "even number", "got 7"}, {&out});
}

TEST(MatmulOgsErrors, BadOut) {
  Matmul m;
  HostTensor ob(DType::kBFloat16, {4, 8}), oi(DType::kInt32, {4, 8}), o44(DType::kFloat32, {4, 4}),
      o128(DType::kFloat32, {12, 8}), obig(DType::kFloat32, {4, 16});
  MatmulOgsArgs a = m.args();
  a.out = TensorView();
  expect_matmul_error(m, a, kValue, {kMatmul, "'out'", "got None"});
  a.out = ob.view();  // x is float32: out must be float32
  expect_matmul_error(m, a, kType, {kMatmul, "'out'", "got bfloat16"}, {&ob});
  a.out = oi.view();
  expect_matmul_error(m, a, kType, {kMatmul, "'out'", "got int32"}, {&oi});
  a.out = o44.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'out'", "shape [4, 8]", "got [4, 4]"}, {&o44});
  a.out = o128.view();  // the [P, N] of an unscattered problem
  expect_matmul_error(m, a, kValue, {kMatmul, "'out'", "shape [4, 8]", "got [12, 8]"}, {&o128});
  a.out = strided(obig, 4, 8);
  expect_matmul_error(m, a, kValue, {kMatmul, "'out'", "contiguous"}, {&obig});
  // With SwiGLU the output has N / 2 columns.
  a = m.args();
  a.swiglu.enabled = true;
  expect_matmul_error(m, a, kValue, {kMatmul, "'out'", "shape [4, 4]", "got [4, 8]"});
}

TEST(MatmulOgsErrors, Devices) {
  Matmul m;
  const Device c1 = cuda(1);
  struct Case {
    const char* arg;
    std::function<void(MatmulOgsArgs&)> edit;
  };
  const Case cases[] = {
      {"'w'", [&](MatmulOgsArgs& a) { a.w.values.device = c1; }},
      {"'w_scales'", [&](MatmulOgsArgs& a) { a.w.scales.device = c1; }},
      {"'bias'", [&](MatmulOgsArgs& a) { a.bias.device = c1; }},
      {"'expert_offsets'", [&](MatmulOgsArgs& a) { a.expert_offsets.device = c1; }},
      {"'gather_idx'", [&](MatmulOgsArgs& a) { a.gather_idx.device = c1; }},
      {"'scatter_idx'", [&](MatmulOgsArgs& a) { a.scatter_idx.device = c1; }},
      {"'combine_weight'", [&](MatmulOgsArgs& a) { a.combine_weight.device = c1; }},
      {"'out'", [&](MatmulOgsArgs& a) { a.out.device = c1; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.arg);
    MatmulOgsArgs a = m.args(true);
    c.edit(a);
    expect_matmul_error(m, a, kDevice, {kMatmul, c.arg, "device cpu", "'x'", "got cuda:1"});
  }
  MatmulOgsArgs a = m.args();
  a.x.device = c1;
  expect_matmul_error(m, a, kDevice, {kMatmul, "'w'", "device cuda:1", "got cpu"});
}

TEST(MatmulOgsErrors, BadIndexValues) {
  Matmul m;
  struct Case {
    std::function<void(Matmul&)> edit;
    std::vector<std::string> needles;
  };
  const Case cases[] = {
      {[](Matmul& t) { t.offsets.i32(0) = 1; }, {"'expert_offsets'", "offsets[0] == 0", "got 1 at index 0"}},
      {[](Matmul& t) { t.offsets.i32(0) = -1; }, {"'expert_offsets'", "offsets[0] == 0", "got -1 at index 0"}},
      {[](Matmul& t) { t.offsets.i32(1) = 6; t.offsets.i32(2) = 5; },
       {"'expert_offsets'", "non-decreasing", "got 5 at index 2"}},
      {[](Matmul& t) { t.offsets.i32(3) = 11; }, {"'expert_offsets'", "offsets[E] == 12", "got 11 at index 3"}},
      {[](Matmul& t) { t.offsets.i32(3) = 13; }, {"'expert_offsets'", "offsets[E] == 12", "got 13 at index 3"}},
      {[](Matmul& t) { t.gather.i32(4) = -1; }, {"'gather_idx'", "values in [0, 6)", "got -1 at index 4"}},
      {[](Matmul& t) { t.gather.i32(11) = 6; }, {"'gather_idx'", "values in [0, 6)", "got 6 at index 11"}},
      {[](Matmul& t) { t.scatter.i32(7) = 12; }, {"'scatter_idx'", "values in [0, 12)", "got 12 at index 7"}},
      {[](Matmul& t) { t.scatter.i32(0) = -3; }, {"'scatter_idx'", "values in [0, 12)", "got -3 at index 0"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.needles[0] + " " + c.needles.back());
    Matmul t;
    c.edit(t);
    MatmulOgsArgs a = t.args();
    t.out.poison();
    const std::vector<uint8_t> before = t.out.bytes();
    try {
      matmul_ogs(a);
      ADD_FAILURE() << "did not throw";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.kind(), kValue) << msg;
      EXPECT_TRUE(msg.find(kMatmul) != std::string::npos) << msg;
      for (const std::string& n : c.needles) EXPECT_TRUE(msg.find(n) != std::string::npos) << "'" << n << "' not in " << msg;
    }
    EXPECT_EQ(t.out.bytes(), before) << "out written by a call that failed";
  }
}

// ----------------------------------------------------------------------------------- moe_mlp

const char* kMoe = "moekit.moe_mlp";

// T = 3, H = 64, E = 4, I = 32, k = 2, MXFP4 mlp1 and mlp2.
struct Moe {
  HostTensor x{DType::kFloat32, {3, 64}}, gate{DType::kFloat32, {4, 64}}, gate_bias{DType::kFloat32, {4}},
      w1{DType::kUInt8, {4, 64, 2, 16}}, s1{DType::kUInt8, {4, 64, 2}}, b1{DType::kFloat32, {4, 64}},
      w2{DType::kUInt8, {4, 64, 1, 16}}, s2{DType::kUInt8, {4, 64, 1}}, b2{DType::kFloat32, {4, 64}},
      y{DType::kFloat32, {3, 64}}, workspace;
  size_t ws_bytes = 0;
  Moe() {
    std::mt19937 rng(5);
    for (HostTensor* t : {&x, &gate, &gate_bias, &b1, &b2}) fill_random(*t, rng);
    for (HostTensor* t : {&w1, &w2}) fill_random(*t, rng);
    for (HostTensor* t : {&s1, &s2}) {
      for (int64_t i = 0; i < t->numel(); ++i) t->u8(i) = static_cast<uint8_t>(120 + rng() % 4);
    }
    MoeMlpArgs a = args();
    a.workspace = TensorView();
    ws_bytes = moe_mlp_workspace_size(a);
    workspace = HostTensor(DType::kUInt8, {static_cast<int64_t>(ws_bytes)});
  }
  MoeMlpArgs args() {
    MoeMlpArgs a;
    a.x = x.view();
    a.gate_weight = gate.view();
    a.gate_bias = gate_bias.view();
    a.mlp1.values = w1.view();
    a.mlp1.scales = s1.view();
    a.mlp1_bias = b1.view();
    a.mlp2.values = w2.view();
    a.mlp2.scales = s2.view();
    a.mlp2_bias = b2.view();
    a.experts_per_token = 2;
    a.y = y.view();
    a.workspace = workspace.view();
    return a;
  }
};

// moe_mlp(a) must fail with y untouched; moe_mlp_workspace_size(a) must fail the same way
// when the error is in what it validates (everything but y and workspace).
void expect_moe_error(Moe& m, const MoeMlpArgs& a, Error::Kind kind, std::initializer_list<std::string> needles,
                      bool also_workspace_size = true) {
  expect_rejected({&m.y}, [a] { moe_mlp(a); }, kind, needles);
  if (also_workspace_size) expect_error([a] { moe_mlp_workspace_size(a); }, kind, needles);
}

TEST(MoeMlpErrors, TheFixtureIsValid) {
  Moe m;
  m.y.poison();
  moe_mlp(m.args());
  for (int i = 0; i < m.y.numel(); ++i) EXPECT_FALSE(std::isnan(m.y.get(i))) << i;
}

TEST(MoeMlpErrors, BadInputs) {
  Moe m;
  HostTensor xi(DType::kInt32, {3, 64}), g32(DType::kFloat32, {4, 32}), g0(DType::kFloat32, {0, 64}),
      gb5(DType::kFloat32, {5}), w1e2(DType::kUInt8, {2, 64, 2, 16}), s1e2(DType::kUInt8, {2, 64, 2}),
      w1odd(DType::kFloat32, {4, 63, 64}), b1s(DType::kFloat32, {4, 32}), w2bad(DType::kFloat32, {4, 32, 32}),
      b2s(DType::kFloat32, {4, 32}), s2f(DType::kFloat32, {4, 64, 1}), s1s(DType::kUInt8, {4, 64, 1});
  MoeMlpArgs a = m.args();
  a.x = xi.view();
  expect_moe_error(m, a, kType, {kMoe, "'x'", "got int32"});
  a = m.args();
  a.gate_weight = g32.view();
  expect_moe_error(m, a, kValue, {kMoe, "'gate_weight'", "shape [*, 64]", "got [4, 32]"});
  a.gate_weight = g0.view();
  expect_moe_error(m, a, kValue, {kMoe, "'gate_weight'", "at least one expert", "got [0, 64]"});
  a = m.args();
  a.gate_bias = gb5.view();
  expect_moe_error(m, a, kValue, {kMoe, "'gate_bias'", "shape [4]", "got [5]"});
  a = m.args();
  a.mlp1.values = w1e2.view();
  a.mlp1.scales = s1e2.view();
  expect_moe_error(m, a, kValue, {kMoe, "'mlp1_weight'", "4 experts", "got 2"});
  a = m.args();
  a.mlp1.scales = s1s.view();
  expect_moe_error(m, a, kValue, {kMoe, "'mlp1_scales'", "shape [4, 64, 2]", "got [4, 64, 1]"});
  a = m.args();
  a.mlp1.values = w1odd.view();
  a.mlp1.scales = TensorView();
  a.mlp1_bias = TensorView();
  expect_moe_error(m, a, kValue, {kMoe, "'mlp1_weight'", "even number", "got 63"});
  a = m.args();
  a.mlp1_bias = b1s.view();
  expect_moe_error(m, a, kValue, {kMoe, "'mlp1_bias'", "shape [4, 64]", "got [4, 32]"});
  a = m.args();
  a.mlp2.values = w2bad.view();
  a.mlp2.scales = TensorView();
  expect_moe_error(m, a, kValue, {kMoe, "'mlp2_weight'", "shape [4, 64, 32]", "got [4, 32, 32]"});
  a = m.args();
  a.mlp2.scales = s2f.view();
  expect_moe_error(m, a, kType, {kMoe, "'mlp2_scales'", "uint8", "got float32"});
  a = m.args();
  a.mlp2_bias = b2s.view();
  expect_moe_error(m, a, kValue, {kMoe, "'mlp2_bias'", "shape [4, 64]", "got [4, 32]"});
  for (int k : {0, -2, 5}) {
    a = m.args();
    a.experts_per_token = k;
    expect_moe_error(m, a, kValue, {kMoe, "'experts_per_token'", "1 <= k <= 4", "got " + std::to_string(k)});
  }
}

TEST(MoeMlpErrors, KNotAMultipleOf32ForMxfp4) {
  Moe m;
  // H = 33: mlp1's reduction axis.
  HostTensor x33(DType::kFloat32, {3, 33}), g33(DType::kFloat32, {4, 33}), w2h(DType::kUInt8, {4, 33, 1, 16}),
      s2h(DType::kUInt8, {4, 33, 1});
  MoeMlpArgs a = m.args();
  a.x = x33.view();
  a.gate_weight = g33.view();
  a.mlp2.values = w2h.view();
  a.mlp2.scales = s2h.view();
  a.mlp2_bias = TensorView();
  expect_moe_error(m, a, kValue, {kMoe, "'mlp1_weight'", "multiple of 32", "got 33"});
  // I = 16: mlp2's reduction axis (float mlp1 with 2I = 32 rows).
  HostTensor w1f(DType::kFloat32, {4, 32, 64});
  a = m.args();
  a.mlp1.values = w1f.view();
  a.mlp1.scales = TensorView();
  a.mlp1_bias = TensorView();
  expect_moe_error(m, a, kValue, {kMoe, "'mlp2_weight'", "multiple of 32", "got 16"});
}

TEST(MoeMlpErrors, BadYAndWorkspace) {
  Moe m;
  HostTensor yb(DType::kBFloat16, {3, 64}), y32(DType::kFloat32, {3, 32}), ybig(DType::kFloat32, {3, 128}),
      wsi(DType::kInt32, {static_cast<int64_t>(m.ws_bytes)}),
      ws2(DType::kUInt8, {1, static_cast<int64_t>(m.ws_bytes)});
  const std::string n = std::to_string(m.ws_bytes), n1 = std::to_string(m.ws_bytes - 1);
  MoeMlpArgs a = m.args();
  a.y = TensorView();
  expect_moe_error(m, a, kValue, {kMoe, "'y'", "got None"}, false);
  a.y = yb.view();
  expect_rejected({&yb}, [a] { moe_mlp(a); }, kType, {kMoe, "'y'", "float32", "got bfloat16"});
  a.y = y32.view();
  expect_rejected({&y32}, [a] { moe_mlp(a); }, kValue, {kMoe, "'y'", "shape [3, 64]", "got [3, 32]"});
  a.y = strided(ybig, 3, 64);
  expect_rejected({&ybig}, [a] { moe_mlp(a); }, kValue, {kMoe, "'y'", "contiguous"});

  a = m.args();
  a.workspace = TensorView();
  expect_moe_error(m, a, kValue, {kMoe, "'workspace'", "got None"}, false);
  a.workspace = wsi.view();
  expect_moe_error(m, a, kType, {kMoe, "'workspace'", "uint8", "got int32"}, false);
  a.workspace = make_view(m.workspace.data(), DType::kUInt8, {static_cast<int64_t>(m.ws_bytes) - 1});
  expect_moe_error(m, a, kValue, {kMoe, "'workspace'", "at least " + n + " bytes", "got [" + n1 + "]"}, false);
  a.workspace = ws2.view();
  expect_moe_error(m, a, kValue, {kMoe, "'workspace'", "1-D", "got [1, " + n + "]"}, false);
  // Exactly moe_mlp_workspace_size() bytes is enough.
  a = m.args();
  m.y.poison();
  EXPECT_NO_THROW(moe_mlp(a));
  EXPECT_FALSE(std::isnan(m.y.get(0)));
}

TEST(MoeMlpErrors, Devices) {
  Moe m;
  const Device c1 = cuda(1);
  struct Case {
    const char* arg;
    std::function<void(MoeMlpArgs&)> edit;
    bool in_workspace_size;
  };
  const Case cases[] = {
      {"'gate_weight'", [&](MoeMlpArgs& a) { a.gate_weight.device = c1; }, true},
      {"'gate_bias'", [&](MoeMlpArgs& a) { a.gate_bias.device = c1; }, true},
      {"'mlp1_weight'", [&](MoeMlpArgs& a) { a.mlp1.values.device = c1; }, true},
      {"'mlp1_scales'", [&](MoeMlpArgs& a) { a.mlp1.scales.device = c1; }, true},
      {"'mlp1_bias'", [&](MoeMlpArgs& a) { a.mlp1_bias.device = c1; }, true},
      {"'mlp2_weight'", [&](MoeMlpArgs& a) { a.mlp2.values.device = c1; }, true},
      {"'mlp2_scales'", [&](MoeMlpArgs& a) { a.mlp2.scales.device = c1; }, true},
      {"'mlp2_bias'", [&](MoeMlpArgs& a) { a.mlp2_bias.device = c1; }, true},
      {"'y'", [&](MoeMlpArgs& a) { a.y.device = c1; }, false},
      {"'workspace'", [&](MoeMlpArgs& a) { a.workspace.device = c1; }, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.arg);
    MoeMlpArgs a = m.args();
    c.edit(a);
    expect_moe_error(m, a, kDevice, {kMoe, c.arg, "device cpu", "'x'", "got cuda:1"}, c.in_workspace_size);
  }
}

// ------------------------------------------------------------------------------ negative sizes

// A view with a negative size is a bad shape like any other: each op must reject it with a
// moekit::Error naming the argument, before touching memory.
TEST(NegativeSizes, AreRejectedByEveryOp) {
  Quant q;
  expect_rejected(q.outs(), [&] { quantize_mxfp4(make_view(q.w.data(), DType::kFloat32, {-2, 64}), q.blocks.view(), q.scales.view()); },
                  kValue, {kQuant, "'w'", "-2"});
  Dequant d;
  expect_rejected(d.outs(), [&] { dequantize_mxfp4(make_view(d.blocks.data(), DType::kUInt8, {-1, 2, 16}), d.scales.view(), d.out.view()); },
                  kValue, {kDequant, "'blocks'", "-1"});
  Route r;
  expect_rejected(r.out.all(), [&] { route(make_view(r.logits.data(), DType::kFloat32, {-1, 8}), 2, r.out.outputs()); },
                  kValue, {kRoute, "'logits'", "-1"});
  Matmul m;
  MatmulOgsArgs a;
  a.x = make_view(m.x.data(), DType::kFloat32, {-1, 96});
  a.w.values = make_view(m.w.data(), DType::kFloat32, {1, 8, 96});
  a.out = m.out.view();
  expect_matmul_error(m, a, kValue, {kMatmul, "'x'", "-1"});
  Moe moe;
  MoeMlpArgs ma = moe.args();
  ma.x = make_view(moe.x.data(), DType::kFloat32, {-1, 64});
  expect_rejected({&moe.y}, [ma] { moe_mlp(ma); }, kValue, {kMoe, "'x'", "-1"});
}

// ------------------------------------------------------------- CUDA tensors in a CPU-only build

#if !defined(MOEKIT_WITH_CUDA)
TEST(NoCudaBackend, QuantizeAndDequantize) {
  Quant q;
  const Device c0 = cuda(0);
  expect_rejected(q.outs(), [&] { quantize_mxfp4(q.w.view(c0), q.blocks.view(c0), q.scales.view(c0)); }, kDevice,
                  {kQuant, "cuda:0", "no CUDA backend"});
  Dequant d;
  expect_rejected(d.outs(), [&] { dequantize_mxfp4(d.blocks.view(c0), d.scales.view(c0), d.out.view(c0)); }, kDevice,
                  {kDequant, "cuda:0", "no CUDA backend"});
}

TEST(NoCudaBackend, Route) {
  Route r;
  expect_rejected(r.out.all(), [&] { route(r.logits.view(cuda(0)), 2, r.out.outputs(cuda(0))); }, kDevice,
                  {kRoute, "cuda:0", "no CUDA backend"});
}

TEST(NoCudaBackend, MatmulOgs) {
  Matmul m;
  MatmulOgsArgs a = m.args(true);
  for (TensorView* t : {&a.x, &a.w.values, &a.w.scales, &a.bias, &a.expert_offsets, &a.gather_idx, &a.scatter_idx,
                        &a.combine_weight, &a.out}) {
    t->device = cuda(0);
  }
  expect_matmul_error(m, a, kDevice, {kMatmul, "cuda:0", "no CUDA backend"});
}

TEST(NoCudaBackend, MoeMlp) {
  Moe m;
  MoeMlpArgs a = m.args();
  for (TensorView* t : {&a.x, &a.gate_weight, &a.gate_bias, &a.mlp1.values, &a.mlp1.scales, &a.mlp1_bias,
                        &a.mlp2.values, &a.mlp2.scales, &a.mlp2_bias, &a.y}) {
    t->device = cuda(0);
  }
  // The workspace a CUDA call needs (the CUDA backend's decode path has regions of its own).
  a.workspace = TensorView();
  HostTensor workspace(DType::kUInt8, {static_cast<int64_t>(moe_mlp_workspace_size(a))});
  a.workspace = workspace.view(cuda(0));
  // The error must name the op the caller called (moe_mlp), not one moe_mlp calls internally.
  expect_rejected({&m.y, &workspace}, [a] { moe_mlp(a); }, kDevice, {kMoe, "cuda:0", "no CUDA backend"});
}
#endif

}  // namespace
}  // namespace moekit::test
