// HQQ against a PyTorch version of the authors' reference (tests/oracle/hqq_ref.py).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "quant/hqq.h"
#include "ops/ops.h"
#include "quant/quant.h"
#include "test_util.h"

namespace llmq {
namespace {

double mean_abs_err(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += std::fabs((double)a[i] - b[i]);
  return s / (double)a.size();
}

// Same weights through both: the dequantized weights agree element by element except where
// a different f32 summation order of the zero-point mean flips a rounding (allowed for 0.5%
// of elements), and the mean absolute error is the same to 0.1%. The solver must improve on its
// min-max starting point (what RTN with HQQ's grid gives), and on llmq's RTN at the same
// bits and group.
TEST(Hqq, MatchesReferenceAndBeatsMinMax) {
  const int64_t M = 64, K = 256;
  test::TempDir tmp("hqq");
  auto W = test::randn(M * K, 9, 0.05f);
  for (int64_t i = 0; i < M * K; i += 71) W[i] *= 8.f;  // outliers
  const std::string wf = tmp / "W.bin", of = tmp / "Q.bin";
  std::ofstream(wf, std::ios::binary).write((const char*)W.data(), (std::streamsize)(W.size() * 4));
  struct Case {
    int bits;
    int64_t group;
    int axis;
  };
  for (const Case c : {Case{4, 64, 1}, Case{3, 64, 1}, Case{2, 32, 1}, Case{1, 64, 1}, Case{8, 128, 1}, Case{4, 64, 0},
                       Case{2, 32, 0}}) {
    HqqOptions o;
    o.bits = c.bits, o.group = c.group, o.axis = c.axis;
    const auto ours = hqq_dequantize(hqq_quantize(W.data(), M, K, o), M, K, o);
    const std::string cmd = fmt::format("/usr/bin/python3 {}/tests/oracle/hqq_ref.py {} {} {} {} {} {} 1 {}",
                                        LLMQ_SOURCE_DIR, wf, M, K, c.bits, c.group, c.axis, of);
    ASSERT_EQ(0, std::system(cmd.c_str())) << cmd;
    std::vector<float> ref(M * K);
    std::ifstream(of, std::ios::binary).read((char*)ref.data(), (std::streamsize)(ref.size() * 4));
    // A code flip moves a weight by a whole step (>= 0.05/2^bits here, the smallest group
    // ranges being ~0.1); f32 differences in the zero mean move it by ~1e-7 of the range.
    int64_t differ = 0;
    const float flip = 0.01f * 0.05f / (float)(1 << c.bits);
    for (int64_t i = 0; i < M * K; i++) differ += std::fabs(ours[i] - ref[i]) > flip;
    const double e_ours = mean_abs_err(W, ours), e_ref = mean_abs_err(W, ref);
    HqqOptions mm = o;
    mm.optimize = false;
    const double e_minmax = mean_abs_err(W, hqq_dequantize(hqq_quantize(W.data(), M, K, mm), M, K, mm));
    std::printf("[%d-bit g%ld axis %d] mean |W - Q|: llmq %.6g, reference %.6g, min-max %.6g; %ld codes differ\n",
                c.bits, (long)c.group, c.axis, e_ours, e_ref, e_minmax, (long)differ);
    EXPECT_LE(differ, M * K / 200) << c.bits << " bits axis " << c.axis;
    EXPECT_NEAR(e_ours, e_ref, 1e-3 * e_ref) << c.bits << " bits axis " << c.axis;
    EXPECT_LT(e_ours, e_minmax) << "the solver must improve on min-max";
    if (c.axis == 1 && c.bits >= 2) {  // llmq's RTN (GPTQ's asymmetric grid) at the same bits and group
      std::vector<uint8_t> q(M * K);
      std::vector<float> s(M * K / c.group), z(M * K / c.group), d(M * K);
      quantize_rows_rtn(W.data(), M, K, c.bits, c.group, false, q.data(), s.data(), z.data());
      dequantize_rows(q.data(), s.data(), z.data(), M, K, c.group, d.data());
      EXPECT_LT(e_ours, mean_abs_err(W, d)) << c.bits << "-bit HQQ must beat RTN";
    }
  }
}

// HQQ axis 0 at run time (the dequantize-on-the-fly kernels): the product of a random
// activation batch with the axis-0 tensor equals, in double, X times the weights
// hqq_dequantize gives, within the activation rounding the decode path adds. Decode (n <= 16)
// folds each row class's scales into x and rounds s*x to int8 blocks of 32: per element at
// most half a block step (amax_b/127/2), times the code (<= 15) plus the zero term, which is
// exact in f32; bound = sum_b amax_b/254 * sum_{k in b} code[r,k] + f32 accumulation
// (1e-5 relative to sum |w x|). Prefill (n > 16) dequantizes to f32 for sgemm: 1e-5 only.
// Odd shape: 3 row classes (M = 96, group 32), K = 160, bits 4 and 3.
TEST(Hqq, Axis0Kernels) {
  const int64_t M = 96, K = 160, G = 32, P = M / G;
  for (int bits : {4, 3, 8}) {
    auto W = test::randn(M * K, 3 + bits, 0.05f);
    for (int64_t k = 0; k < K; k += 7) W[5 * K + k] *= 8.f;  // an outlier row
    HqqOptions o;
    o.bits = bits, o.group = G, o.axis = 0;
    const HqqResult r = hqq_quantize(W.data(), M, K, o);
    const std::vector<float> deq = hqq_dequantize(r, M, K, o);
    const Tensor t = make_hqq_axis0_tensor(M, K, bits, G, r.codes.data(), r.scale.data(), r.zero.data());
    std::vector<float> back((size_t)(M * K));
    dequantize_tensor_rows(t, 0, M, back.data());
    for (int64_t i = 0; i < M * K; i++)  // s*code - s*z in f32 against HQQ's s*(code - z)
      ASSERT_NEAR(back[i], deq[i], 1e-6 * (std::fabs(deq[i]) + std::fabs(r.scale[(i / K) % P * K + i % K]) * 256)) << i;
    for (int64_t n : {1, 3, 17}) {
      auto xv = test::randn(n * K, 40 + n, 1.f);
      Tensor x = Tensor::empty(DType::F32, {n, K}), y = Tensor::empty(DType::F32, {n, M});
      std::memcpy(x.host<float>(), xv.data(), xv.size() * 4);
      op_matmul(y, x, t);
      double worst = 0;
      for (int64_t i = 0; i < n; i++)
        for (int64_t m = 0; m < M; m++) {
          double ref = 0, mag = 0, bound = 0;
          const int64_t c = m % P;
          for (int64_t b = 0; b < K; b += 32) {
            double amax = 0, codes = 0;
            for (int64_t k = b; k < b + 32; k++) {
              amax = std::max(amax, std::fabs((double)r.scale[c * K + k] * xv[i * K + k]));
              codes += r.codes[m * K + k];
            }
            if (n <= 16) bound += amax / 254 * codes * (1 + 1e-6);
          }
          for (int64_t k = 0; k < K; k++) {
            ref += (double)deq[m * K + k] * xv[i * K + k];
            mag += std::fabs((double)deq[m * K + k] * xv[i * K + k]);
          }
          bound += 1e-5 * mag + 1e-30;
          worst = std::max(worst, std::fabs(y.host<float>()[i * M + m] - ref) / bound);
        }
      EXPECT_LE(worst, 1.0) << bits << " bits, n = " << n;
    }
  }
  EXPECT_THROW(make_hqq_axis0_tensor(M, K, 4, 40, nullptr, nullptr, nullptr), Error);  // 40 does not divide 96
}

TEST(Hqq, BadInput) {
  auto W = test::randn(8 * 64, 1, 0.1f);
  HqqOptions o;
  o.group = 48;
  EXPECT_THROW(hqq_quantize(W.data(), 8, 64, o), Error);  // group does not divide
  o.group = 64;
  o.bits = 9;
  EXPECT_THROW(hqq_quantize(W.data(), 8, 64, o), Error);
  o.bits = 4;
  o.axis = 2;
  EXPECT_THROW(hqq_quantize(W.data(), 8, 64, o), Error);
  o.axis = 1;
  W[7] = NAN;
  EXPECT_THROW(hqq_quantize(W.data(), 8, 64, o), Error);
  // a constant group (max == min): finite codes and scale, as the reference clamps the step
  std::vector<float> c(64, 0.25f);
  const HqqResult r = hqq_quantize(c.data(), 1, 64, o);
  for (float v : hqq_dequantize(r, 1, 64, o)) EXPECT_TRUE(std::isfinite(v));
}

}  // namespace
}  // namespace llmq
