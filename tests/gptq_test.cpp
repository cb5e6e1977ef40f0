// GPTQ on one layer with fixed inputs against a PyTorch version of the authors' reference
// algorithm (tests/oracle/gptq_alg_ref.py), and against round-to-nearest.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "quant/gptq.h"
#include "quant/quant.h"
#include "test_util.h"

namespace llmq {
namespace {

constexpr const char* kPython = "/usr/bin/python3";

// Inputs with the structure GPTQ exploits: correlated channels (a rank-32 mix plus noise),
// a few loud channels and one dead channel (always 0).
std::vector<float> make_inputs(int64_t N, int64_t K, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  const int64_t R = 32;
  std::vector<float> Z(N * R), A(R * K), X(N * K);
  for (auto& v : Z) v = nd(rng);
  for (auto& v : A) v = nd(rng) / std::sqrt((float)R);
  for (int64_t n = 0; n < N; n++)
    for (int64_t k = 0; k < K; k++) {
      float s = 0.1f * nd(rng);
      for (int64_t r = 0; r < R; r++) s += Z[n * R + r] * A[r * K + k];
      X[n * K + k] = s * (k % 37 == 5 ? 8.f : 1.f) * (k == 17 ? 0.f : 1.f);
    }
  return X;
}

// ||(W - Q) X^T||_F in double.
double output_error(const std::vector<float>& W, const std::vector<float>& Q, const std::vector<float>& X, int64_t M,
                    int64_t K, int64_t N) {
  double s = 0;
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      double d = 0;
      for (int64_t k = 0; k < K; k++) d += ((double)W[m * K + k] - Q[m * K + k]) * X[n * K + k];
      s += d * d;
    }
  return std::sqrt(s);
}

std::vector<float> dequantize(const GptqResult& r, int64_t M, int64_t K) {
  const int64_t ng = (int64_t)r.scale.size() / M;
  std::vector<float> Q(M * K);
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) {
      const int64_t g = r.g_idx[k];
      Q[m * K + k] = r.scale[m * ng + g] * ((float)r.codes[m * K + k] - r.zero[m * ng + g]);
    }
  return Q;
}

std::vector<float> rtn(const std::vector<float>& W, int64_t M, int64_t K, int bits, int64_t G, bool sym) {
  const int64_t ng = K / G;
  std::vector<uint8_t> q(M * K);
  std::vector<float> s(M * ng), z(M * ng), d(M * K);
  quantize_rows_rtn(W.data(), M, K, bits, G, sym, q.data(), s.data(), z.data());
  dequantize_rows(q.data(), s.data(), z.data(), M, K, G, d.data());
  return d;
}

struct Case {
  int bits;
  int64_t group;
  bool sym, act_order, static_groups;
};

// On the same layer and inputs, llmq's GPTQ (reference grid) leaves an output error
// ||WX - QX|| no worse than the PyTorch reference's: the two differ only in f32 summation
// order (Cholesky, updates), which can flip a rounding here and there, each moving one
// weight by one step in either direction; 1% covers that and is far below the gap to RTN.
// Both beat round-to-nearest, and so does GPTQ on llmq's checkpoint grid.
TEST(Gptq, MatchesReferenceAndBeatsRtn) {
  const int64_t M = 96, K = 256, N = 1024;
  test::TempDir tmp("gptq");
  auto X = make_inputs(N, K, 3);
  auto W = test::randn(M * K, 4, 0.05f);
  for (int64_t i = 0; i < M * K; i += 97) W[i] *= 6.f;  // weight outliers
  const std::string wf = tmp / "W.bin", xf = tmp / "X.bin", qf = tmp / "Q.bin";
  std::ofstream(wf, std::ios::binary).write((const char*)W.data(), (std::streamsize)(W.size() * 4));
  std::ofstream(xf, std::ios::binary).write((const char*)X.data(), (std::streamsize)(X.size() * 4));
  GptqHessian H(K);
  H.add(X.data(), N / 2);  // in two batches
  H.add(X.data() + (N / 2) * K, N - N / 2);
  for (const Case c : {Case{4, 32, false, false, false}, Case{4, 64, true, true, false}, Case{3, 0, false, false, false},
                       Case{4, 64, false, true, true}, Case{8, 128, true, false, false}, Case{2, 32, false, false, false}}) {
    const std::string name = fmt::format("{}-bit g{} sym {} act {} static {}", c.bits, c.group, c.sym, c.act_order,
                                         c.static_groups);
    GptqOptions o;
    o.bits = c.bits, o.group = c.group, o.sym = c.sym, o.act_order = c.act_order, o.static_groups = c.static_groups;
    o.reference_grid = true;
    const GptqResult r = gptq_quantize(W.data(), M, K, H, o);
    EXPECT_TRUE(r.message.empty()) << r.message;
    const std::string cmd = fmt::format("{} {}/tests/oracle/gptq_alg_ref.py {} {} {} {} {} {} {} {} {} {} {}", kPython,
                                        LLMQ_SOURCE_DIR, wf, xf, M, K, N, c.bits, c.group, c.sym ? 1 : 0,
                                        c.act_order ? 1 : 0, c.static_groups ? 1 : 0, qf);
    ASSERT_EQ(0, std::system(cmd.c_str())) << cmd;
    std::vector<float> Qref(M * K);
    std::ifstream(qf, std::ios::binary).read((char*)Qref.data(), (std::streamsize)(Qref.size() * 4));
    const double e_ours = output_error(W, dequantize(r, M, K), X, M, K, N);
    const double e_ref = output_error(W, Qref, X, M, K, N);
    const int64_t G = c.group > 0 ? c.group : K;
    // RTN with the reference grid: GPTQ's own quantizer with no error feedback (an identity H)
    GptqHessian I(K);
    std::vector<float> eye(K * K, 0.f);
    for (int64_t k = 0; k < K; k++) eye[k * K + k] = 1.f;
    I.add(eye.data(), K);
    const double e_rtn_ref = output_error(W, dequantize(gptq_quantize(W.data(), M, K, I, o), M, K), X, M, K, N);
    std::printf("[%s] ||WX-QX||: llmq %.5g, reference %.5g, RTN %.5g\n", name.c_str(), e_ours, e_ref, e_rtn_ref);
    EXPECT_LE(e_ours, e_ref * 1.01) << name;
    EXPECT_LT(e_ours, e_rtn_ref * 0.9) << name << ": GPTQ must beat round-to-nearest";
    // group structure: each group holds exactly G columns
    std::vector<int> count(K / G, 0);
    for (int32_t g : r.g_idx) count.at(g)++;
    for (int v : count) EXPECT_EQ(v, G) << name;
    // llmq's checkpoint grid beats RTN on the same grid
    o.reference_grid = false;
    if (c.bits == 4 || c.bits == 8) {
      const double e_ck = output_error(W, dequantize(gptq_quantize(W.data(), M, K, H, o), M, K), X, M, K, N);
      const double e_rtn = output_error(W, rtn(W, M, K, c.bits, G, c.sym), X, M, K, N);
      EXPECT_LT(e_ck, e_rtn * 0.9) << name << " (checkpoint grid)";
    }
  }
}

TEST(Gptq, BadInput) {
  const int64_t M = 8, K = 64;
  auto W = test::randn(M * K, 1, 0.1f);
  GptqHessian empty(K);
  GptqOptions o;
  o.group = 32;
  EXPECT_THROW(gptq_quantize(W.data(), M, K, empty, o), Error);  // no calibration inputs
  auto X = test::randn(16 * K, 2, 1.f);
  GptqHessian H(K);
  H.add(X.data(), 16);  // 16 tokens for 64 channels: H is singular
  o.group = 48;
  EXPECT_THROW(gptq_quantize(W.data(), M, K, H, o), Error);  // group does not divide
  o.group = 32;
  o.damp = 0;  // singular H without damping: raised automatically, with a message
  const GptqResult r = gptq_quantize(W.data(), M, K, H, o);
  EXPECT_GT(r.damp_used, 0.0);
  EXPECT_FALSE(r.message.empty());
  X[5] = NAN;
  GptqHessian Hn(K);
  Hn.add(X.data(), 16);
  EXPECT_THROW(gptq_quantize(W.data(), M, K, Hn, o), Error);  // NaN activations
  W[3] = INFINITY;
  EXPECT_THROW(gptq_quantize(W.data(), M, K, H, o), Error);
}

}  // namespace
}  // namespace llmq
