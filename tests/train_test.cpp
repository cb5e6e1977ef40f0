// Training math against PyTorch (tests/oracle/train_ref.py, float64 autograd on Meta's
// architecture): the loss, every parameter's gradient in float64 and float32, and the
// parameters after one AdamW step; plus finite differences of single ops.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <tuple>
#include <nlohmann/json.hpp>

#include "core/file_util.h"
#include "core/rng.h"
#include "model_fill.h"
#include "test_util.h"
#include "text_shards.h"
#include "train/adamw.h"
#include "train/llama_train.h"
#include "train/train_ops.h"
#include "ops/ops.h"
#include "train/trainer.h"
#include "data/prepare.h"
#include "tokenizer/tokenizer.h"
#include "core/error.h"

namespace llmq {
namespace {

constexpr const char* kPython = "/usr/bin/python3";  // Debian's, which has python3-torch

struct Case {
  std::string name, preset;
  int64_t B, T;
};

// Max |a - b| over max |b| of one tensor: the scale-aware relative error (elementwise
// relative error is meaningless for gradients that are 0 or nearly so).
double rel_err(const double* a, const double* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) num = std::max(num, std::fabs(a[i] - b[i])), den = std::max(den, std::fabs(b[i]));
  return den > 0 ? num / den : num;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class TrainRef : public ::testing::TestWithParam<Case> {};

TEST_P(TrainRef, LossGradientsAndAdamWMatchPyTorch) {
  const Case& tc = GetParam();
  test::TempDir tmp("train_" + tc.name);
  ModelConfig cfg = config_preset(tc.preset);
  model_save(tmp / "m", cfg, test::test_fill(cfg, 11), SaveOptions{DType::F32});
  // A batch with odd length, repeated tokens and ignored targets.
  const int64_t N = tc.B * tc.T;
  std::vector<int32_t> tokens(N), targets(N);
  for (int64_t i = 0; i < N; i++) {
    tokens[i] = (int32_t)(rng_uniform(5, i) * (double)cfg.vocab_size);
    targets[i] = i % 5 == 3 ? -1 : (int32_t)(rng_uniform(6, i) * (double)cfg.vocab_size);
  }
  tokens[1] = tokens[2] = tokens[0];  // an embedding row hit several times
  train::AdamWConfig ac{0.9, 0.95, 1e-8, 0.1};
  const double lr = 1e-3;
  nlohmann::json batch = {{"tokens", nlohmann::json::array()}, {"targets", nlohmann::json::array()}};
  for (int64_t b = 0; b < tc.B; b++) {
    batch["tokens"].push_back(std::vector<int32_t>(tokens.begin() + b * tc.T, tokens.begin() + (b + 1) * tc.T));
    batch["targets"].push_back(std::vector<int32_t>(targets.begin() + b * tc.T, targets.begin() + (b + 1) * tc.T));
  }
  train::LlamaTrain<double> m64(cfg);
  std::vector<std::string> names, no_decay;
  std::vector<train::AdamW<double>::Range> ranges;
  for (size_t i = 0; i < m64.specs.size(); i++) {
    names.push_back(m64.specs[i].name);
    if (m64.specs[i].is_norm) no_decay.push_back(m64.specs[i].name);
    ranges.push_back({m64.offsets[i], shape_numel(m64.specs[i].shape), !m64.specs[i].is_norm});
  }
  batch["names"] = names;
  batch["adamw"] = {{"lr", lr}, {"beta1", ac.beta1}, {"beta2", ac.beta2}, {"eps", ac.eps},
                    {"weight_decay", ac.weight_decay}, {"no_decay", no_decay}};
  std::ofstream(tmp / "batch.json") << batch.dump();
  const std::string cmd = std::string(kPython) + " " + LLMQ_SOURCE_DIR + "/tests/oracle/train_ref.py " + tmp / "m" + " " +
                          tmp / "batch.json" + " " + tmp / "ref.bin";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const std::string bytes = read_text_file(tmp / "ref.bin");
  const int64_t P = m64.n_params();
  ASSERT_EQ(bytes.size(), (size_t)(1 + 2 * P) * 8);
  std::vector<double> ref(1 + 2 * P);
  std::memcpy(ref.data(), bytes.data(), bytes.size());
  const double* ref_grad = ref.data() + 1;
  const double* ref_after = ref.data() + 1 + P;

  // float64: the same arithmetic up to summation order, so ~1e-12 would be typical; the
  // issue's bound 1e-6 leaves room for the deeper configurations.
  m64.fill(test::test_fill(cfg, 11));
  const double loss64 = m64.forward(tokens.data(), targets.data(), tc.B, tc.T);
  EXPECT_NEAR(loss64, ref[0], 1e-10 * std::fabs(ref[0]));
  m64.backward();
  for (size_t i = 0; i < names.size(); i++) {
    const int64_t n = shape_numel(m64.specs[i].shape);
    EXPECT_LE(rel_err(m64.grads.data() + m64.offsets[i], ref_grad + m64.offsets[i], n), 1e-6) << "grad " << names[i];
  }
  // One AdamW step in float64 against torch.optim.AdamW: the step is ~lr * sign(g) for
  // every element, so it only matches if every gradient sign and the decay grouping agree.
  train::AdamW<double> opt(ac, ranges, P);
  opt.update(m64.params.data(), m64.grads.data(), lr);
  for (size_t i = 0; i < names.size(); i++) {
    const int64_t n = shape_numel(m64.specs[i].shape);
    EXPECT_LE(rel_err(m64.params.data() + m64.offsets[i], ref_after + m64.offsets[i], n), 1e-5) << "after " << names[i];
  }

  // float32: inputs are exactly the f32 weights; rounding of ~1e-7 per operation grows with
  // depth and with the sums over dim/ffn/vocab (a few hundred terms: ~sqrt(K)*6e-8 each),
  // comfortably inside the 1e-4 of each tensor's largest gradient.
  train::LlamaTrain<float> m32(cfg);
  m32.fill(test::test_fill(cfg, 11));
  const double loss32 = m32.forward(tokens.data(), targets.data(), tc.B, tc.T);
  EXPECT_NEAR(loss32, ref[0], 1e-5 * std::fabs(ref[0]));
  m32.backward();
  std::vector<double> g32(m32.grads.begin(), m32.grads.end());
  for (size_t i = 0; i < names.size(); i++) {
    const int64_t n = shape_numel(m32.specs[i].shape);
    EXPECT_LE(rel_err(g32.data() + m32.offsets[i], ref_grad + m32.offsets[i], n), 1e-4) << "f32 grad " << names[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, TrainRef,
                         ::testing::Values(Case{"gqa_untied", "tiny", 2, 7}, Case{"tied_ropescaling", "tiny-tied", 3, 5},
                                           // T 150: three causal attention tiles of 64, the last partial
                                           Case{"causal_tiles", "tiny", 1, 150}),
                         [](const auto& info) { return info.param.name; });

// Gradient accumulation: two backward passes add up (parameter grads +=), and loss_scale
// scales them; zero_grad clears.
TEST(Train, GradientsAccumulate) {
  ModelConfig cfg = config_preset("tiny");
  train::LlamaTrain<double> m(cfg);
  m.fill(test::test_fill(cfg, 2));
  std::vector<int32_t> tok(12), tg(12);
  for (int i = 0; i < 12; i++) tok[i] = (i * 37) % cfg.vocab_size, tg[i] = (i * 91 + 5) % cfg.vocab_size;
  m.forward(tok.data(), tg.data(), 2, 6);
  m.backward();
  std::vector<double> once(m.grads.begin(), m.grads.end());
  m.forward(tok.data(), tg.data(), 2, 6);
  m.backward(0.5);
  for (size_t i = 0; i < once.size(); i += 97) EXPECT_NEAR(m.grads[i], 1.5 * once[i], 1e-12 + 1e-9 * std::fabs(once[i]));
  m.zero_grad();
  for (double x : m.grads) ASSERT_EQ(x, 0.0);
  std::vector<int32_t> bad = tok;
  bad[3] = cfg.vocab_size;
  EXPECT_THROW(m.forward(bad.data(), tg.data(), 2, 6), Error);
}

// Per-block recomputation re-runs exactly the same arithmetic: the loss and every gradient
// are bitwise those of the stored-activation path, with much less activation memory.
TEST(Train, RecomputeGivesIdenticalGradients) {
  ModelConfig cfg = config_preset("tiny");
  std::vector<int32_t> tok(3 * 9), tg(3 * 9);
  for (size_t i = 0; i < tok.size(); i++) tok[i] = (i * 53 + 1) % cfg.vocab_size, tg[i] = (i * 29 + 7) % cfg.vocab_size;
  train::LlamaTrain<float> a(cfg), b(cfg);
  a.fill(test::test_fill(cfg, 4));
  b.fill(test::test_fill(cfg, 4));
  b.set_recompute(true);
  const double la = a.forward(tok.data(), tg.data(), 3, 9), lb = b.forward(tok.data(), tg.data(), 3, 9);
  EXPECT_EQ(la, lb);
  a.backward();
  b.backward();
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); i++) ASSERT_EQ(a.grads[i], b.grads[i]) << i;
  EXPECT_LT(b.activation_bytes(), a.activation_bytes());
  // A second step after an optimizer-like change of the weights still agrees.
  for (size_t i = 0; i < a.params.size(); i++) a.params[i] -= 0.01f * a.grads[i], b.params[i] -= 0.01f * b.grads[i];
  a.zero_grad(), b.zero_grad();
  EXPECT_EQ(a.forward(tok.data(), tg.data(), 3, 9), b.forward(tok.data(), tg.data(), 3, 9));
  a.backward(), b.backward();
  for (size_t i = 0; i < a.grads.size(); i++) ASSERT_EQ(a.grads[i], b.grads[i]) << i;
}

// The output projection and cross-entropy fused over chunks of rows: chunks of 5 rows (not
// dividing N = 27, so a short last chunk) against one chunk of all rows, which is the
// unfused computation (full (N, V) logits). In double: the loss and every gradient agree to
// rounding (dW sums its rows in chunk order, ~1e-16 relative per add over 27 rows; 1e-12 is
// loose for that and tight against any wrong row, target or scale). In float the fused path
// must stay within f32 rounding of the double reference's gradients like the unfused one.
TEST(Train, FusedHeadMatchesFullLogits) {
  ModelConfig cfg = config_preset("tiny-tied");
  std::vector<int32_t> tok(3 * 9), tg(3 * 9);
  for (size_t i = 0; i < tok.size(); i++) tok[i] = (i * 53 + 1) % cfg.vocab_size, tg[i] = i % 7 == 3 ? -1 : (i * 29 + 7) % cfg.vocab_size;
  train::LlamaTrain<double> a(cfg), b(cfg);
  a.fill(test::test_fill(cfg, 5));
  b.fill(test::test_fill(cfg, 5));
  a.set_head_chunk_rows(27);
  b.set_head_chunk_rows(5);
  const double la = a.forward(tok.data(), tg.data(), 3, 9), lb = b.forward(tok.data(), tg.data(), 3, 9);
  EXPECT_NEAR(la, lb, 1e-12 * std::fabs(la));
  a.backward(0.7);
  b.backward(0.7);
  double gmax = 0;
  for (double x : a.grads) gmax = std::max(gmax, std::fabs(x));
  for (size_t i = 0; i < a.grads.size(); i++) ASSERT_NEAR(a.grads[i], b.grads[i], 1e-12 * gmax) << i;
  EXPECT_LT(b.activation_bytes(), a.activation_bytes());  // (5, V) logits instead of (27, V)
  // float, default chunking (one chunk here) and 4-row chunks, against the double gradients:
  // both within 1e-4 of the largest gradient (f32 sums over C = 64 and N = 27 terms).
  for (int64_t rows : {0, 4}) {
    train::LlamaTrain<float> f(cfg);
    f.fill(test::test_fill(cfg, 5));
    f.set_head_chunk_rows(rows);
    EXPECT_NEAR(f.forward(tok.data(), tg.data(), 3, 9), la, 1e-5 * std::fabs(la));
    f.backward(0.7);
    for (size_t i = 0; i < a.grads.size(); i++) ASSERT_NEAR(f.grads[i], a.grads[i], 1e-4 * gmax) << i;
  }
}

// bf16 products (forward, dx, dW) against float64. Two references:
//  (1) the same operands rounded to bf16 and multiplied in double (the double instantiation's
//      bf16 path): the products of two bf16 values are exact in f32, so the only difference
//      is f32 summation, within K*u*sum|a b| for recursive or blocked sums of K terms (u =
//      2^-24; dW adds one rounding of the accumulated C: u*|C|);
//  (2) the unrounded operands in double: rounding each operand to nearest bf16 moves it by at
//      most 2^-9 of itself, so each product by (2^-8 + 2^-18)|a b|; plus (1)'s bound.
// The bf16 result must also be measurably off the exact product somewhere (the operands
// really were rounded): more than f32 products could be (K*u*sum|a b|).
// Odd K and N (an odd pair column, partial panels) and a K past the kernel's 512-column block.
// bf16 attention over several row tiles (T 150: tiles of 64, 64 and 22 rows; each head's K
// and V packed once, every tile multiplying by its prefix of keys) against the f32 path. Each
// bf16 operand carries a relative rounding of at most 2^-9 (random signs), so products and
// sums of random data land about 2^-9 * a few from f32 in relative (Frobenius) terms, and
// the softmax passes the scores' error on at the same relative size: 0.03 leaves ~5x margin,
// while a tile reading the wrong keys (a wrong prefix or panel stride) is off by O(1).
TEST(Train, Bf16AttentionAcrossTilesNearF32) {
  const int64_t B = 2, Tn = 150, H = 4, KV = 2, hd = 32, nq = B * Tn * H * hd, nk = B * Tn * KV * hd;
  const auto q = test::randn((size_t)nq, 71), k = test::randn((size_t)nk, 72), v = test::randn((size_t)nk, 73),
             dout = test::randn((size_t)nq, 74);
  struct R { std::vector<float> out, lse, dq, dk, dv; };
  auto run = [&](train::Precision prec) {
    R r{std::vector<float>(nq), std::vector<float>(B * H * Tn), std::vector<float>(nq), std::vector<float>(nk),
        std::vector<float>(nk)};
    train::attention_forward(r.out.data(), r.lse.data(), q.data(), k.data(), v.data(), B, Tn, H, KV, hd, prec);
    train::attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), r.out.data(), r.lse.data(), q.data(),
                              k.data(), v.data(), B, Tn, H, KV, hd, prec);
    return r;
  };
  const R a = run(train::Precision::F32), b = run(train::Precision::BF16);
  auto rel = [](const std::vector<float>& x, const std::vector<float>& y) {
    double d = 0, n = 0;
    for (size_t i = 0; i < x.size(); i++) d += (x[i] - y[i]) * (double)(x[i] - y[i]), n += (double)x[i] * x[i];
    return std::sqrt(d / n);
  };
  EXPECT_LT(rel(a.out, b.out), 0.03);
  EXPECT_LT(rel(a.dq, b.dq), 0.03);
  EXPECT_LT(rel(a.dk, b.dk), 0.03);
  EXPECT_LT(rel(a.dv, b.dv), 0.03);
  EXPECT_GT(rel(a.out, b.out), 0.0) << "bf16 ran as f32";
}

TEST(Train, Bf16MatmulsAgainstFloat64) {
  for (auto [N, K, M] : {std::tuple<int64_t, int64_t, int64_t>{37, 45, 29}, {16, 70, 33}, {50, 600, 17}}) {
    const auto xf = test::randn((size_t)(N * K), 1 + N), wf = test::randn((size_t)(M * K), 2 + K),
               df = test::randn((size_t)(N * M), 3 + M), dw0 = test::randn((size_t)(M * K), 4);
    auto dbl = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
    const auto xd = dbl(xf), wd = dbl(wf), dd = dbl(df);
    // float bf16, double bf16 (rounded operands), double exact.
    std::vector<float> out(N * M), dx(N * K), dW = dw0;
    train::matmul_forward(out.data(), xf.data(), wf.data(), N, K, M, train::Precision::BF16);
    train::matmul_backward(dx.data(), dW.data(), df.data(), xf.data(), wf.data(), N, K, M, train::Precision::BF16);
    std::vector<double> out_r(N * M), dx_r(N * K), dW_r = dbl(dw0), out_e(N * M), dx_e(N * K), dW_e = dbl(dw0);
    train::matmul_forward(out_r.data(), xd.data(), wd.data(), N, K, M, train::Precision::BF16);
    train::matmul_backward(dx_r.data(), dW_r.data(), dd.data(), xd.data(), wd.data(), N, K, M, train::Precision::BF16);
    train::matmul_forward(out_e.data(), xd.data(), wd.data(), N, K, M);
    train::matmul_backward(dx_e.data(), dW_e.data(), dd.data(), xd.data(), wd.data(), N, K, M);
    // Each element: its value, the two references, sum|a b| over its terms and the term count.
    bool rounded = false;
    auto check = [&](const char* what, float got, double ref_r, double ref_e, double mag, int64_t terms, double c) {
      const double sum_tol = terms * test::kU * mag + test::kU * std::fabs(c);
      ASSERT_LE(std::fabs(got - ref_r), sum_tol + 1e-30) << what << " vs bf16-rounded float64";
      ASSERT_LE(std::fabs(got - ref_e), (1.0 / 256 + 1.0 / 262144) * mag + sum_tol + 1e-30) << what << " vs float64";
      rounded |= std::fabs(got - ref_e) > terms * test::kU * mag;
    };
    for (int64_t n = 0; n < N; n++)
      for (int64_t m = 0; m < M; m++) {
        double mag = 0;
        for (int64_t k = 0; k < K; k++) mag += std::fabs(xd[n * K + k] * wd[m * K + k]);
        check("forward", out[n * M + m], out_r[n * M + m], out_e[n * M + m], mag, K, 0);
      }
    for (int64_t n = 0; n < N; n++)
      for (int64_t k = 0; k < K; k++) {
        double mag = 0;
        for (int64_t m = 0; m < M; m++) mag += std::fabs(dd[n * M + m] * wd[m * K + k]);
        check("dx", dx[n * K + k], dx_r[n * K + k], dx_e[n * K + k], mag, M, 0);
      }
    for (int64_t m = 0; m < M; m++)
      for (int64_t k = 0; k < K; k++) {
        double mag = 0;
        for (int64_t n = 0; n < N; n++) mag += std::fabs(dd[n * M + m] * xd[n * K + k]);
        check("dW", dW[m * K + k], dW_r[m * K + k], dW_e[m * K + k], mag, N, dw0[m * K + k] + dW_e[m * K + k]);
      }
    EXPECT_TRUE(rounded) << "the bf16 path gave f32-exact products: its operands were not rounded";
  }
}

// The whole model in bf16 against float64 (exact products), at the training initialisation:
// the loss and every gradient. Each product's operands carry bf16's relative rounding
// (<= 2^-9 each, so <= 2^-8 = 0.0039 per product), and the errors of the products on a
// gradient's path (forward, then backward through the tiny model's 2 blocks) add: measured
// 0.1-0.9% of each tensor's largest gradient, the loss 1e-4 relative (its error averages over
// many products). Bands: each tensor within 3% (~8 bf16 roundings) of its largest element,
// the loss within 1e-3; f32 gives ~1e-6, and a wrong operand, transpose or missing term is off
// by O(1).
TEST(Train, Bf16ModelGradientsNearFloat64) {
  for (const char* preset : {"tiny", "tiny-tied"}) {
    ModelConfig cfg = config_preset(preset);
    std::vector<int32_t> tok(2 * 21), tg(2 * 21);
    for (size_t i = 0; i < tok.size(); i++) tok[i] = (i * 53 + 1) % cfg.vocab_size, tg[i] = (i * 29 + 7) % cfg.vocab_size;
    train::LlamaTrain<double> e(cfg);
    train::LlamaTrain<float> b(cfg);
    e.fill(init_fill(cfg, 6));  // the training initialisation (a trained model's scales)
    b.fill(init_fill(cfg, 6));
    b.set_precision(train::Precision::BF16);
    const double le = e.forward(tok.data(), tg.data(), 2, 21), lb = b.forward(tok.data(), tg.data(), 2, 21);
    EXPECT_NEAR(lb, le, 1e-3 * le) << preset;
    EXPECT_NE(lb, (double)(float)le) << "bf16 gave the f32 loss";
    e.backward();
    b.backward();
    double worst = 0;
    for (size_t t = 0; t < e.specs.size(); t++) {
      const int64_t o = e.offsets[t], n = shape_numel(e.specs[t].shape);
      std::vector<double> bg(b.grads.begin() + o, b.grads.begin() + o + n);
      const double r = rel_err(bg.data(), e.grads.data() + o, n);
      worst = std::max(worst, r);
      EXPECT_LT(r, 0.03) << preset << " " << e.specs[t].name;
    }
    // The fused head in chunks of 5 rows (lm_head then packed once per pass for all chunks,
    // llama_train.cpp pack_head) against the one-chunk path above: the same products, only
    // dW's rows summed in chunk order, so within f32 rounding of each other, far inside the
    // bf16 band (a wrong packed layout would be off by O(1)).
    train::LlamaTrain<float> c(cfg);
    c.fill(init_fill(cfg, 6));
    c.set_precision(train::Precision::BF16);
    c.set_head_chunk_rows(5);
    EXPECT_NEAR(c.forward(tok.data(), tg.data(), 2, 21), lb, 1e-5 * lb) << preset;
    c.backward();
    double gmax = 0;
    for (float x : b.grads) gmax = std::max(gmax, (double)std::fabs(x));
    for (size_t i = 0; i < b.grads.size(); i++) ASSERT_NEAR(c.grads[i], b.grads[i], 1e-4 * gmax) << preset << " " << i;
    RecordProperty(std::string("worst_rel_err_") + preset, std::to_string(worst));
    std::printf("%s: bf16 loss %.6f vs float64 %.6f, worst gradient error %.4f of its tensor's max\n", preset, lb, le, worst);
  }
}

}  // namespace
}  // namespace llmq

namespace llmq {
namespace {

using RunFixture = test::TextShards;

train::TrainOptions small_run(const std::string& data, const std::string& out) {
  train::TrainOptions o;
  o.config = "";
  o.preset = "tiny";
  o.data = data;
  o.out = out;
  o.batch = 2;
  o.seq_len = 16;
  o.warmup = 2;
  o.eval_every = 0;
  o.save_every = 0;
  o.progress = false;
  return o;
}

// N steps in one run == N/2 steps, a stop, and N/2 resumed steps: the checkpoint's
// weights and optimizer state are the same bytes.
TEST(Train, ResumeIsBitwiseIdentical) {
  std::string text;
  for (int i = 0; i < 40; i++) text += "Line " + std::to_string(i * 7919 % 1000) + " of a small corpus for resuming.\n";
  RunFixture f(text);
  // The tiny preset's vocabulary (512) is smaller than Llama 3's: use a config with room.
  ModelConfig cfg = config_preset("tiny");
  cfg.vocab_size = 128256;
  write_file_atomic(f.tmp / "config.json", config_to_hf_json(cfg).dump());
  auto a = small_run(f.data, f.tmp / "a");
  a.preset = "";
  a.config = f.tmp / "config.json";
  a.steps = 10;
  a.grad_accum = 2;
  a.precision = "bf16";  // f32 resumes are bitwise too (DeterministicResumeKeepsTheThreadCount)
  EXPECT_EQ(train::train_run(a).precision, "bf16");
  auto b = a;
  b.out = f.tmp / "b";
  b.stop_after = 5;
  EXPECT_EQ(train::train_run(b).steps, 5);
  b.stop_after = 0;
  b.resume = true;
  b.precision = "";  // the resume keeps the run's precision
  const auto rb = train::train_run(b);
  EXPECT_EQ(rb.steps, 10);
  EXPECT_EQ(rb.precision, "bf16");
  for (const char* file : {"model.safetensors", "train_state.bin"})
    EXPECT_EQ(read_text_file(f.tmp / ("a/checkpoint-000010/" + std::string(file))),
              read_text_file(f.tmp / ("b/checkpoint-000010/" + std::string(file))))
        << file;
  // Resuming with other options is refused, a precision among them.
  b.steps = 12;
  b.precision = "f32";
  EXPECT_THROW(train::train_run(b), Error);
  b.precision = "";
  b.lr = 2e-3;
  EXPECT_THROW(train::train_run(b), Error);
}

// --deterministic: the first half runs on 1 thread, the resume is asked for 2 and is put
// back on the 1 the run started with, so the result equals an uninterrupted 1-thread run.
TEST(Train, DeterministicResumeKeepsTheThreadCount) {
  std::string text;
  for (int i = 0; i < 40; i++) text += "Row " + std::to_string(i * 7907 % 1000) + " of a corpus for thread counts.\n";
  RunFixture f(text);
  ModelConfig cfg = config_preset("tiny");
  cfg.vocab_size = 128256;
  write_file_atomic(f.tmp / "config.json", config_to_hf_json(cfg).dump());
  const int threads = ops_threads();
  auto a = small_run(f.data, f.tmp / "a");
  a.preset = "";
  a.config = f.tmp / "config.json";
  a.steps = 6;
  a.deterministic = true;
  a.recompute = true;
  ops_set_threads(1);
  train::train_run(a);
  auto b = a;
  b.out = f.tmp / "b";
  b.stop_after = 3;
  train::train_run(b);
  ops_set_threads(2);
  b.stop_after = 0;
  b.resume = true;
  train::train_run(b);
  EXPECT_EQ(ops_threads(), 1) << "the resume should run on the recorded thread count";
  ops_set_threads(threads);
  EXPECT_EQ(read_text_file(f.tmp / "a/checkpoint-000006/model.safetensors"),
            read_text_file(f.tmp / "b/checkpoint-000006/model.safetensors"));
}

// A tiny model learns a tiny corpus by heart.
TEST(Train, MemorisesATinyCorpus) {
  RunFixture f("the quick brown fox jumps over the lazy dog and the cat sat on the mat while the bird sang.\n");
  ModelConfig cfg = config_preset("tiny");
  cfg.vocab_size = 128256;
  write_file_atomic(f.tmp / "config.json", config_to_hf_json(cfg).dump());
  auto o = small_run(f.data, f.tmp / "run");
  o.preset = "";
  o.config = f.tmp / "config.json";
  o.seq_len = 8;
  o.batch = 2;
  o.steps = 150;
  o.lr = 1e-2;
  o.warmup = 10;
  o.adamw.weight_decay = 0;
  auto r = train::train_run(o);
  EXPECT_LT(r.last_loss, 0.05) << "a 2-layer model should memorise 24 tokens";
}

}  // namespace
}  // namespace llmq

#include "train/report.h"

namespace llmq {
namespace {

TEST(Train, ReportDrawsEveryMetric) {
  test::TempDir t("report");
  std::string m;
  for (int s = 1; s <= 30; s++) {
    nlohmann::json j = {{"step", s}, {"loss", 5.0 / s}, {"lr", 1e-3}, {"grad_norm", 1.0 + s}};
    if (s % 10 == 0) j["val_loss"] = 6.0 / s, j["tokens_per_s"] = 1000 + s;
    m += j.dump() + "\n";
  }
  m += "not json\n";
  write_file_atomic(t / "metrics.jsonl", m);
  const std::string html = train::report_html({t.path.string()});
  auto count = [&](const std::string& needle) {
    size_t n = 0;
    for (size_t i = 0; (i = html.find(needle, i)) != std::string::npos; i++) n++;
    return n;
  };
  EXPECT_EQ(count("<svg"), 4u);
  EXPECT_EQ(count("<polyline"), 5u);  // train + validation loss, lr, grad norm, tokens/s
  EXPECT_NE(html.find("30 steps logged"), std::string::npos);
  EXPECT_NE(html.find("1 unreadable lines skipped"), std::string::npos);
  EXPECT_NE(html.find("validation loss 0.2000"), std::string::npos);
  EXPECT_THROW(train::report_html({t / "missing"}), Error);
  // Throughput starts at 0 (1010..1030 tok/s would otherwise fill the chart) and ticks are
  // round values: 0, 500, 1000, 1500 on y; steps 0, 5, ..., 30 on x.
  const std::string tps = html.substr(html.rfind("<svg"));
  EXPECT_NE(tps.find(">0</text>"), std::string::npos);
  EXPECT_NE(tps.find(">500</text>"), std::string::npos);
  EXPECT_NE(tps.find(">1500</text>"), std::string::npos);
  EXPECT_NE(html.find(">25</text>"), std::string::npos);
  EXPECT_EQ(html.find("1030.0"), std::string::npos);

  // Two runs overlaid: one page, each chart holds both runs' series, named by directory.
  test::TempDir u("report_b");
  write_file_atomic(u / "metrics.jsonl", m);
  const std::string two = train::report_html({t.path.string(), u.path.string()});
  size_t lines = 0;
  for (size_t i = 0; (i = two.find("<polyline", i)) != std::string::npos; i++) lines++;
  EXPECT_EQ(lines, 10u);
  EXPECT_NE(two.find(t.path.filename().string() + ": train loss"), std::string::npos);
  EXPECT_NE(two.find(u.path.filename().string() + ": tokens/s"), std::string::npos);
}

}  // namespace
}  // namespace llmq

namespace llmq {
namespace {

// A NaN in the weights makes the loss NaN at the first step: one clear error, and the run
// directory's last good checkpoint (from an earlier run) is untouched.
TEST(Train, NonFiniteLossStopsClearly) {
  RunFixture f("some words to train on, repeated. some words to train on, repeated. more words.\n");
  ModelConfig cfg = config_preset("tiny");
  cfg.vocab_size = 128256;
  auto good = test::test_fill(cfg, 4);
  model_save(f.tmp / "m", cfg, good, SaveOptions{DType::F32});
  auto o = small_run(f.data, f.tmp / "run");
  o.preset = "";
  o.model = f.tmp / "m";
  o.steps = 2;
  o.seq_len = 8;
  train::train_run(o);
  const std::string before = read_text_file(f.tmp / "run/checkpoint-000002/model.safetensors");
  model_save(f.tmp / "bad", cfg,
             [&](const HfTensorSpec& s, DType dt, uint8_t* dst, uint64_t off, uint64_t n) {
               good(s, dt, dst, off, n);
               if (s.name == "model.norm.weight" && off == 0) {
                 float nan = NAN;
                 std::memcpy(dst, &nan, 4);
               }
             },
             SaveOptions{DType::F32});
  // Finite but huge: f32 overflows in the forward pass, so the loss is not finite.
  model_save(f.tmp / "huge", cfg,
             [&](const HfTensorSpec& s, DType dt, uint8_t* dst, uint64_t off, uint64_t n) {
               good(s, dt, dst, off, n);
               if (s.name == "model.norm.weight")
                 for (uint64_t k = 0; k < n; k += 4) {
                   const float big = 3e38f;
                   std::memcpy(dst + k, &big, 4);
                 }
             },
             SaveOptions{DType::F32});
  o.model = f.tmp / "bad";
  o.steps = 4;
  o.save_every = 0;
  // A new run over the finished one is refused before it starts (no --resume/--overwrite).
  auto run = [&] { train::train_run(o); };
  test::expect_error_containing(run, "a new run over an earlier one", {"holds an earlier run"});
  // In its own directory NaN weights are refused at load, naming the tensor...
  o.out = f.tmp / "run2";
  test::expect_error_containing(run, "a NaN weight", {"the weights of 'model.norm.weight' hold nan at element 0"});
  // ... and a loss that overflows stops the run at once, writing no checkpoint.
  o.model = f.tmp / "huge";
  test::expect_error_containing(run, "a non-finite loss", {"the loss became", "at step 1"});
  EXPECT_FALSE(std::filesystem::exists(f.tmp / "run2/latest"));
  EXPECT_EQ(read_text_file(f.tmp / "run/checkpoint-000002/model.safetensors"), before);
  EXPECT_EQ(read_text_file(f.tmp / "run/latest"), "checkpoint-000002\n");
}

}  // namespace
}  // namespace llmq
