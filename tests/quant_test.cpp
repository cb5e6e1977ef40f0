// Quantization: round-to-nearest error bounds, the packed layout, every quantized GEMV
// against the scalar reference, and the quantized matmul against the f32 matmul of the
// dequantized weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cpu/kernels.h"
#include "ops/ops.h"
#include "quant/quant.h"
#include "test_util.h"

namespace llmq {
namespace {

using test::kU;
using test::randn;

// Weights with the features that break quantizers: an outlier per row, an all-zero group,
// one-signed groups (asymmetric ranges), tiny magnitudes.
std::vector<float> nasty_weights(int64_t M, int64_t K, uint64_t seed) {
  auto w = randn(M * K, seed, 0.02f);
  std::mt19937_64 g(seed + 1);
  for (int64_t m = 0; m < M; m++) {
    w[m * K + g() % K] *= 40.f;
    if (m % 5 == 1)
      for (int64_t k = 0; k < std::min<int64_t>(K, 32); k++) w[m * K + k] = 0.f;
    if (m % 7 == 2)
      for (int64_t k = 0; k < K; k++) w[m * K + k] = std::fabs(w[m * K + k]);
    if (m % 11 == 3)
      for (int64_t k = 0; k < K; k++) w[m * K + k] *= 1e-4f;
  }
  return w;
}

struct RtnCase {
  int bits;
  int64_t group;
  bool sym;
};

// Round-to-nearest puts every weight within half a step of its value: |w - s(q - z)| <= s/2,
// up to the rounding of w/s in f32 (relative 2^-24 of |w|, i.e. far below s/2 unless the
// weight is clipped, which the range rule excludes). Bound checked: s/2 * (1 + 1e-6).
TEST(Quant, RoundToNearestErrorWithinHalfAStep) {
  const int64_t M = 23, K = 256;
  for (RtnCase c : {RtnCase{8, 256, true}, RtnCase{8, 128, false}, RtnCase{4, 32, true}, RtnCase{4, 64, false},
                    RtnCase{4, 128, true}, RtnCase{3, 128, false}, RtnCase{2, 64, true}}) {
    auto w = nasty_weights(M, K, 7 + c.bits);
    const int64_t ng = K / c.group;
    std::vector<uint8_t> q(M * K);
    std::vector<float> s(M * ng), z(M * ng), d(M * K);
    quantize_rows_rtn(w.data(), M, K, c.bits, c.group, c.sym, q.data(), s.data(), z.data());
    dequantize_rows(q.data(), s.data(), z.data(), M, K, c.group, d.data());
    for (int64_t i = 0; i < M * K; i++) {
      const int64_t g = (i / K) * ng + (i % K) / c.group;
      ASSERT_LT(q[i], 1 << c.bits);
      ASSERT_EQ(s[g], f16_to_f32(f32_to_f16(s[g]))) << "scales must be f16 values";
      ASSERT_LE(std::fabs(w[i] - d[i]), s[g] * 0.5f * (1 + 1e-6f) + 1e-12f)
          << "bits " << c.bits << " group " << c.group << " sym " << c.sym << " at " << i;
    }
  }
}

// Known values: symmetric 4-bit of [-7, ..., 7]*0.5 is exact with scale 0.5, zero 8.
TEST(Quant, SymmetricInt4KnownValues) {
  std::vector<float> w(32);
  for (int i = 0; i < 32; i++) w[i] = 0.5f * (float)((i % 15) - 7);
  std::vector<uint8_t> q(32);
  float s, z;
  quantize_rows_rtn(w.data(), 1, 32, 4, 32, true, q.data(), &s, &z);
  EXPECT_EQ(s, 0.5f);
  EXPECT_EQ(z, 8.f);
  for (int i = 0; i < 32; i++) EXPECT_EQ(q[i], (i % 15) + 1);
}

TEST(Quant, SchemesAndBadInput) {
  EXPECT_EQ(quant_scheme_parse("w4a16", -1, true).group, 128);
  EXPECT_EQ(quant_scheme_parse("w8a16", -1, false).group, 0);
  EXPECT_TRUE(quant_scheme_parse("w8a8", -1, false).act_per_token);
  EXPECT_THROW(quant_scheme_parse("w5a16", -1, true), Error);
  EXPECT_THROW(quant_scheme_parse("w4a16", 48, true), Error);
  std::vector<uint8_t> c(96 * 2, 1);
  std::vector<float> s(6, 1.f), z(6, 0.f);
  EXPECT_NO_THROW(make_quant_tensor(2, 96, 4, 32, true, false, c.data(), s.data(), z.data()));
  EXPECT_THROW(make_quant_tensor(2, 96, 8, 64, true, false, c.data(), s.data(), z.data()), Error);  // 96 % 64
  EXPECT_THROW(make_quant_tensor(2, 96, 4, 48, true, false, c.data(), s.data(), z.data()), Error);  // 48 % 32
  EXPECT_THROW(make_quant_tensor(2, 96, 3, 32, true, false, c.data(), s.data(), z.data()), Error);  // bits
}

// The packed tensor gives back its codes and the same dequantized values.
TEST(Quant, PackedLayoutRoundTrips) {
  for (bool sym : {false, true})  // sym: one zero point, the scales-only layout
  for (int bits : {4, 8}) {
    const int64_t M = 9, K = 192, G = 64, ng = K / G;
    auto w = nasty_weights(M, K, 3);
    std::vector<uint8_t> q(M * K), back(K);
    std::vector<float> s(M * ng), z(M * ng), d(M * K), d2(M * K);
    quantize_rows_rtn(w.data(), M, K, bits, G, sym, q.data(), s.data(), z.data());
    Tensor t = make_quant_tensor(M, K, bits, G, sym, false, q.data(), s.data(), z.data());
    ASSERT_EQ(quant_view(t).szs, sym ? 16 : 32);
    EXPECT_EQ(t.nbytes(), (size_t)(M * K * bits / 8));
    for (int64_t m = 0; m < M; m++) {
      tensor_row_codes(t, m, back.data());
      ASSERT_EQ(0, std::memcmp(back.data(), q.data() + m * K, K)) << "bits " << bits << " row " << m;
    }
    dequantize_rows(q.data(), s.data(), z.data(), M, K, G, d.data());
    dequantize_tensor_rows(t, 0, M, d2.data());
    for (int64_t i = 0; i < M * K; i++) ASSERT_NEAR(d[i], d2[i], 2 * kU * std::fabs(d[i]) + 1e-30) << i;
  }
}

// The panel layout byte by byte (kernels.h), from codes that name their position: 18 rows
// (two panels, the second padded), 64 columns.
TEST(Quant, PanelLayoutKnownBytes) {
  const int64_t M = 18, K = 64;
  std::vector<uint8_t> c8(M * K), c4(M * K);
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) c8[m * K + k] = (uint8_t)(m * 7 + k), c4[m * K + k] = (uint8_t)((m + k) % 16);
  std::vector<float> s(M, 1.f), z(M, 0.f);
  Tensor t8 = make_quant_tensor(M, K, 8, K, true, false, c8.data(), s.data(), z.data());
  Tensor t4 = make_quant_tensor(M, K, 4, K, true, false, c4.data(), s.data(), z.data());
  const uint8_t* b8 = t8.host<uint8_t>();
  const uint8_t* b4 = t4.host<uint8_t>();
  EXPECT_EQ(b8[0], c8[0]);                       // row 0, col 0
  EXPECT_EQ(b8[1 * 64 + 3 * 4 + 2], c8[3 * K + 6]);   // row 3, col 6: group of columns 4..7
  EXPECT_EQ(b8[16 * K + 1 * 4 + 0], c8[17 * K + 0]);  // row 17 is row 1 of panel 1
  EXPECT_EQ(b8[16 * K + 2 * 4 + 0], 0);               // padding row 18 of panel 1
  EXPECT_EQ(b4[1 * 64 + 2 * 4 + 1], (uint8_t)(c4[2 * K + 9] | (c4[2 * K + 13] << 4)));  // row 2, cols 9 and 13
  EXPECT_EQ(b4[8 * K + 1 * 4 + 3], (uint8_t)(c4[17 * K + 3] | (c4[17 * K + 7] << 4)));  // row 17, cols 3 and 7
  // One zero point (0) for every row: f16 scales only (1 is an f16 value), 16 per (panel,
  // group), the zero point held once; the padding rows' scales are 0.
  ASSERT_EQ(t8.quant()->sz16.size(), (size_t)32);
  EXPECT_EQ(t8.quant()->zero_all, 0.f);
  EXPECT_TRUE(t8.quant()->scale.empty());
  EXPECT_EQ(t8.quant()->sz16[16 + 1], 0x3c00);  // row 17's scale, 1.0
  EXPECT_EQ(t8.quant()->sz16[16 + 2], 0);       // padding row 18
  EXPECT_EQ(quant_view(t8).szs, 16);
  // Zero points that differ (row m: m % 3, f16 values): 16 scales, then 16 zero points.
  std::vector<float> zv(M);
  for (int64_t m = 0; m < M; m++) zv[m] = (float)(m % 3);
  Tensor t8z = make_quant_tensor(M, K, 8, K, false, false, c8.data(), s.data(), zv.data());
  ASSERT_EQ(t8z.quant()->sz16.size(), (size_t)64);
  EXPECT_LT(t8z.quant()->zero_all, 0.f);
  EXPECT_EQ(t8z.quant()->sz16[32 + 1], 0x3c00);  // row 17's scale, 1.0
  EXPECT_EQ(t8z.quant()->sz16[32 + 2], 0);       // padding row 18
  EXPECT_EQ(t8z.quant()->sz16[48 + 1], 0x4000);  // row 17's zero point, 17 % 3 = 2.0
  EXPECT_EQ(quant_view(t8z).szs, 32);
  // A scale that is not an f16 value keeps the f32 layout: (panel, group, 16) scales and
  // zs = scale * zero.
  std::vector<float> s2(M, 1.1f), z2(M, 3.f);
  Tensor t8b = make_quant_tensor(M, K, 8, K, true, false, c8.data(), s2.data(), z2.data());
  EXPECT_TRUE(t8b.quant()->sz16.empty());
  ASSERT_EQ(t8b.quant()->scale.size(), (size_t)32);
  EXPECT_EQ(t8b.quant()->scale[17], 1.1f);
  EXPECT_EQ(t8b.quant()->zs[17], 1.1f * 3.f);
  EXPECT_EQ(t8b.quant()->scale[18], 0.f);
}

// Every table's quantized matrix product against the scalar reference. Both compute the same integer
// block dot products exactly (|d| < 2^24); they differ only in the order of the f32 sums of
// the block terms s*bs*d and the zero terms zs*gsum. Each order is within (terms)*u of the
// exact sum times the sum of absolute terms, so the two differ by at most
// 2*(K/32 + K/group + 2)*u*sum|terms|.
// M = 37 leaves a partial last panel (rows 32..36); the rows are also computed as two calls,
// [0, 16) and [16, 37), as the threads split them; n covers the 4-token tiles and their
// remainders.
class QMatmulTest : public ::testing::TestWithParam<const CpuKernels*> {};

TEST_P(QMatmulTest, MatchesReference) {
  const CpuKernels& k = *GetParam();
  ASSERT_NE(k.matmul_q, nullptr);
  std::mt19937_64 rng(11);
  // Every scale layout: f32 (random scales and zero points), f16 (the same rounded to f16
  // values, integer zero points as checkpoints have) and f16 scales with one zero point for
  // all rows (symmetric schemes).
  for (int layout : {0, 1, 2})
  for (int bits : {4, 8})
    for (int64_t K : {64, 128, 320, 1024})
      for (int64_t G : {int64_t(32), int64_t(64), int64_t(128), K}) {
        if (K % G) continue;
        const int64_t M = 37, ng = K / G;
        std::vector<uint8_t> codes(M * K);
        for (auto& c : codes) c = (uint8_t)(rng() % (1u << bits));
        auto s = randn(M * ng, rng(), 0.01f);
        auto z = randn(M * ng, rng(), 3.f);
        for (auto& v : s) v = std::fabs(v) + 1e-4f;
        const bool f16 = layout > 0;
        if (f16)
          for (int64_t i = 0; i < M * ng; i++)
            s[i] = f16_to_f32(f32_to_f16(s[i])), z[i] = layout == 2 ? (float)(1 << (bits - 1)) : std::nearbyint(z[i]);
        Tensor W = make_quant_tensor(M, K, bits, G, layout == 2, false, codes.data(), s.data(), z.data());
        ASSERT_EQ(W.quant()->sz16.empty(), !f16);
        ASSERT_EQ(quant_view(W).szs, layout == 2 ? 16 : 32);
        const QMatView wv = quant_view(W);
        for (int n : {1, 2, 3, 4, 5, 7, 9}) {
          auto x = randn(n * K, rng(), 1.f);
          QActs a;
          // n 3: per-token scales; n 5: per token with LLM-QAT's quantizer (QAT's w4a8/w8a8).
          quantize_acts(x.data(), n, K, G, n == 3 || n == 5, a, false, n == 5 ? 1e-6f : 0.f);
          std::vector<float> y(n * M, -1.f), yr(n * M, -2.f);
          if (n % 2) {
            k.matmul_q(wv, a.view(0, K, G), y.data(), n, M, 0, M);
          } else {
            k.matmul_q(wv, a.view(0, K, G), y.data(), n, M, 0, 16);
            k.matmul_q(wv, a.view(0, K, G), y.data(), n, M, 16, M);
          }
          matmul_q_ref(wv, a.view(0, K, G), yr.data(), n, M, 0, M);
          for (int i = 0; i < n; i++)
            for (int64_t m = 0; m < M; m++) {
              // sum of absolute terms, in double
              double abs_sum = 0;
              for (int64_t g = 0; g < ng; g++) {
                for (int64_t b = g * G / 32; b < (g + 1) * G / 32; b++) {
                  double d = 0;
                  for (int64_t kk = b * 32; kk < b * 32 + 32; kk++) d += std::fabs((double)codes[m * K + kk] * a.q[i * K + kk]);
                  abs_sum += s[m * ng + g] * a.bscale[i * (K / 32) + b] * d;
                }
                abs_sum += std::fabs((double)s[m * ng + g] * z[m * ng + g] * a.gsum[i * ng + g]);
              }
              const double tol = 2.0 * (double)(K / 32 + ng + 2) * kU * abs_sum + 1e-30;
              ASSERT_NEAR(y[i * M + m], yr[i * M + m], tol)
                  << k.isa << " bits " << bits << " K " << K << " group " << G << " n " << n << " row " << m;
            }
        }
      }
}

INSTANTIATE_TEST_SUITE_P(Isa, QMatmulTest, ::testing::ValuesIn(cpu_kernels_supported()),
                         [](const auto& info) {
                           std::string n = info.param->isa;
                           for (auto& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

// op_matmul with quantized weights against the f32 matmul of the dequantized weights.
// Decode and prefill (n up to 40) take the same integer path: the only difference is the int8
// rounding of the activations, at most bs/2 per element, so |y - y_f32| <= sum_k |w_k| bs_k / 2
// plus f32 accumulation (K*u*sum|w x| each side).
TEST(Quant, MatmulMatchesDequantizedF32) {
  const int64_t M = 70, K = 256;
  for (auto scheme : {"w8a16", "w4a16", "w8a8"}) {
    QuantScheme sc = quant_scheme_parse(scheme, -1, false);
    const int64_t G = sc.group ? sc.group : K, ng = K / G;
    auto w = nasty_weights(M, K, 5);
    std::vector<uint8_t> q(M * K);
    std::vector<float> s(M * ng), z(M * ng), wd(M * K);
    quantize_rows_rtn(w.data(), M, K, sc.bits, G, sc.sym, q.data(), s.data(), z.data());
    dequantize_rows(q.data(), s.data(), z.data(), M, K, G, wd.data());
    Tensor Wq = make_quant_tensor(M, K, sc.bits, G, sc.sym, sc.act_per_token, q.data(), s.data(), z.data());
    Tensor Wf = Tensor::empty(DType::F32, {M, K});
    std::memcpy(Wf.host<float>(), wd.data(), wd.size() * 4);
    for (int64_t n : {1, 3, 5, 40}) {
      auto xv = randn(n * K, 17 + n, 1.f);
      for (int64_t i = 0; i < n; i++) xv[i * K + 5] = 30.f;  // an activation outlier channel
      Tensor x = Tensor::empty(DType::F32, {n, K}), y = Tensor::empty(DType::F32, {n, M}),
             yf = Tensor::empty(DType::F32, {n, M});
      std::memcpy(x.host<float>(), xv.data(), xv.size() * 4);
      op_matmul(y, x, Wq);
      op_matmul(yf, x, Wf);
      QActs a;
      quantize_acts(xv.data(), n, K, G, sc.act_per_token, a);
      for (int64_t i = 0; i < n; i++)
        for (int64_t m = 0; m < M; m++) {
          double wx = 0, act = 0;
          for (int64_t c = 0; c < K; c++) {
            wx += std::fabs((double)wd[m * K + c] * xv[i * K + c]);
            act += std::fabs((double)wd[m * K + c]) * a.bscale[i * (K / 32) + c / 32] * 0.5;
          }
          const double tol = act * (1 + 1e-5) + 4.0 * K * kU * (wx + act) + 1e-6;
          ASSERT_NEAR(y.host<float>()[i * M + m], yf.host<float>()[i * M + m], tol)
              << scheme << " n " << n << " row " << m;
        }
    }
  }
}

// The bitwise E4M3 rounding (and f32_to_e4m3, built on it) against a brute-force nearest
// value: the 127 non-negative codes scanned in double, saturating at 448, ties to the even
// code. Random magnitudes over the whole range, every code, every midpoint between
// neighbouring codes (the ties) and the floats next to it, and beyond 448.
float nearest_e4m3(float x) {
  const double a = std::min(std::fabs((double)x), 448.0);
  int best = 0;
  for (int c = 1; c < 0x7f; c++) {
    const double d = std::fabs(a - e4m3_to_f32((uint8_t)c)), db = std::fabs(a - e4m3_to_f32((uint8_t)best));
    if (d < db || (d == db && c % 2 == 0)) best = c;
  }
  return std::copysign(e4m3_to_f32((uint8_t)best), x);
}

TEST(Fp8, RoundMatchesBruteForce) {
  auto same = [](float x) {
    const float a = e4m3_round(x), b = nearest_e4m3(x), c = e4m3_to_f32(f32_to_e4m3(x));
    ASSERT_TRUE(a == b && std::signbit(a) == std::signbit(b)) << x << ": " << a << " vs " << b;
    ASSERT_TRUE(c == b && std::signbit(c) == std::signbit(b)) << x << ": byte gives " << c << " vs " << b;
  };
  for (int c = 0; c < 0x7e; c++) {
    const float v = e4m3_to_f32((uint8_t)c), w = e4m3_to_f32((uint8_t)(c + 1));
    for (float x : {v, (v + w) / 2, std::nextafter((v + w) / 2, 0.f), std::nextafter((v + w) / 2, 1e9f)}) {
      same(x);
      same(-x);
    }
  }
  for (float x : {448.f, 460.f, 464.f, 500.f, 1e30f, 0.f, -0.f, 1e-30f}) same(x), same(-x);
  std::mt19937_64 rng(21);
  for (int i = 0; i < 20000; i++) {
    const float x = std::ldexp((float)(rng() % 1000000) / 1e6f, (int)(rng() % 30) - 16) * ((rng() & 1) ? -1.f : 1.f);
    same(x);
  }
  EXPECT_TRUE(std::isnan(e4m3_round(NAN)));
  EXPECT_EQ(f32_to_e4m3(NAN), 0x7f);
}

// FP8 weights: every weight within half a grid step of its value after scaling (2^-4 |w|
// for |w/s| >= 2^-6, 2^-10 s below), per channel and per tensor.
TEST(Fp8, QuantizeWithinHalfAStep) {
  const int64_t M = 9, K = 200;
  auto w = nasty_weights(M, K, 13);
  for (bool per_tensor : {false, true}) {
    std::vector<float> scale(M);
    float all = 0.f;
    for (float v : w) all = std::max(all, std::fabs(v));
    for (int64_t m = 0; m < M; m++) {
      float a = 0.f;
      for (int64_t k = 0; k < K; k++) a = std::max(a, std::fabs(w[m * K + k]));
      scale[m] = fp8_scale(per_tensor ? all : a);
    }
    std::vector<uint8_t> q(M * K);
    quantize_rows_fp8(w.data(), M, K, scale.data(), q.data());
    Tensor t = make_fp8_tensor(M, K, q.data(), scale.data(), per_tensor, true);
    std::vector<float> d(M * K);
    dequantize_tensor_rows(t, 0, M, d.data());
    for (int64_t m = 0; m < M; m++)
      for (int64_t k = 0; k < K; k++) {
        const double x = w[m * K + k], s = scale[m];
        // f32 division w/s adds at most one more rounding (u relative) before the E4M3 one
        const double bound = std::max(std::ldexp(std::fabs(x), -4), std::ldexp(s, -10)) * (1 + 1e-6);
        ASSERT_LE(std::fabs(x - d[m * K + k]), bound) << m << "," << k << " per_tensor " << per_tensor;
      }
  }
}

// op_matmul on FP8 weights against the f32 matmul of the dequantized weights: the difference
// is the E4M3 rounding of the activations (per token or per tensor), |dx| <= max(2^-4 |x|,
// 2^-10 sx) per element, times |w|, plus f32 accumulation on each side; decode (GEMV) and
// prefill (sgemm) paths.
TEST(Fp8, MatmulMatchesDequantizedF32) {
  const int64_t M = 37, K = 160;
  auto w = nasty_weights(M, K, 5);
  std::vector<float> scale(M);
  for (int64_t m = 0; m < M; m++) {
    float a = 0.f;
    for (int64_t k = 0; k < K; k++) a = std::max(a, std::fabs(w[m * K + k]));
    scale[m] = fp8_scale(a);
  }
  std::vector<uint8_t> q(M * K);
  quantize_rows_fp8(w.data(), M, K, scale.data(), q.data());
  for (bool per_token : {true, false}) {
    Tensor Wq = make_fp8_tensor(M, K, q.data(), scale.data(), false, per_token);
    Tensor Wf = Tensor::empty(DType::F32, {M, K});
    dequantize_tensor_rows(Wq, 0, M, Wf.host<float>());
    for (int64_t n : {1, 5, 40}) {
      auto xv = randn(n * K, 3 + n, 1.f);
      for (int64_t i = 0; i < n; i++) xv[i * K + 7] = -20.f * (float)(i + 1);  // outliers, different per token
      Tensor x = Tensor::empty(DType::F32, {n, K}), y = Tensor::empty(DType::F32, {n, M}),
             yf = Tensor::empty(DType::F32, {n, M});
      std::memcpy(x.host<float>(), xv.data(), xv.size() * 4);
      op_matmul(y, x, Wq);
      op_matmul(yf, x, Wf);
      std::vector<float> xe, sx;
      quantize_acts_fp8(xv.data(), n, K, per_token, xe, sx);
      for (int64_t i = 0; i < n; i++)
        for (int64_t m = 0; m < M; m++) {
          double wx = 0, act = 0;
          for (int64_t c = 0; c < K; c++) {
            const double wd = Wf.host<float>()[m * K + c], xc = xv[i * K + c];
            wx += std::fabs(wd * xc);
            act += std::fabs(wd) * std::max(std::ldexp(std::fabs(xc), -4), std::ldexp((double)sx[i], -10));
          }
          const double tol = act * (1 + 1e-5) + 4.0 * K * kU * (wx + act) + 1e-6;
          ASSERT_NEAR(y.host<float>()[i * M + m], yf.host<float>()[i * M + m], tol)
              << "per_token " << per_token << " n " << n << " row " << m;
        }
    }
  }
}

// op_matmuls (one parallel region for several weights) gives exactly what op_matmul gives
// per weight: the same kernels on the same rows, only scheduled together. Quantized alike
// (one activation quantization), quantized differently (per-weight fallback), float, and
// prefill (n > 16, per-weight).
TEST(Quant, MatmulsEqualsMatmulPerWeight) {
  const int64_t K = 128;
  auto quantized = [&](int64_t M, int bits, int64_t G, uint64_t seed) {
    auto w = nasty_weights(M, K, seed);
    const int64_t ng = K / G;
    std::vector<uint8_t> q(M * K);
    std::vector<float> s(M * ng), z(M * ng);
    quantize_rows_rtn(w.data(), M, K, bits, G, false, q.data(), s.data(), z.data());
    return make_quant_tensor(M, K, bits, G, false, false, q.data(), s.data(), z.data());
  };
  auto floating = [&](int64_t M, uint64_t seed) {
    auto w = randn(M * K, seed, 0.1f);
    Tensor t = Tensor::empty(DType::BF16, {M, K});
    for (int64_t i = 0; i < M * K; i++) t.host<uint16_t>()[i] = f32_to_bf16(w[i]);
    return t;
  };
  const std::vector<std::vector<Tensor>> sets = {
      {quantized(96, 4, 64, 1), quantized(37, 4, 64, 2), quantized(200, 4, 64, 3)},
      {quantized(64, 8, 128, 4), quantized(48, 4, 32, 5)},
      {floating(70, 6), floating(33, 7), floating(16, 8)}};
  for (const auto& Ws : sets)
    for (int64_t n : {1, 3, 20}) {
      auto xv = randn(n * K, 40 + n, 1.f);
      Tensor x = Tensor::empty(DType::F32, {n, K});
      std::memcpy(x.host<float>(), xv.data(), xv.size() * 4);
      std::vector<Tensor> ys, yr;
      for (const auto& W : Ws) {
        ys.push_back(Tensor::zeros(DType::F32, {n, W.dim(0)}));
        yr.push_back(Tensor::zeros(DType::F32, {n, W.dim(0)}));
        op_matmul(yr.back(), x, W);
      }
      if (Ws.size() == 3) op_matmuls(x, {{&ys[0], &Ws[0]}, {&ys[1], &Ws[1]}, {&ys[2], &Ws[2]}});
      else op_matmuls(x, {{&ys[0], &Ws[0]}, {&ys[1], &Ws[1]}});
      for (size_t i = 0; i < Ws.size(); i++)
        ASSERT_EQ(0, std::memcmp(ys[i].host_data(), yr[i].host_data(), ys[i].nbytes())) << "weight " << i << " n " << n;
    }
}

}  // namespace
}  // namespace llmq
