// HQQ against a PyTorch version of the authors' reference (tests/oracle/hqq_ref.py).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include "core/error.h"
#include "quant/hqq.h"
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
