// Quantization-aware training against a PyTorch transcription of LLM-QAT (tests/oracle/qat_ref.py,
// float64 autograd): the loss, its KL and cross-entropy terms and every gradient of a student
// with fake-quantized weights, activations and K/V distilled from a teacher; the quantizers
// off give the teacher bit for bit; scheme names.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/file_util.h"
#include "core/rng.h"
#include "model/llama.h"
#include "ops/ops.h"
#include "model_fill.h"
#include "quant/quantize_model.h"
#include "test_util.h"
#include "train/llama_train.h"
#include "train/qat.h"

namespace llmq {
namespace {

constexpr const char* kPython = "/usr/bin/python3";

double rel_err(const double* a, const double* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) num = std::max(num, std::fabs(a[i] - b[i])), den = std::max(den, std::fabs(b[i]));
  return den > 0 ? num / den : num;
}

// test_fill with one weight in 37 of every linear set to +-2.5 and one in 41 to +-1.9: LLM-QAT's
// weight quantizer zeroes the gradient beyond +-2, and those weights set the row maxima.
TensorFill big_weight_fill(const ModelConfig& cfg, uint64_t seed) {
  TensorFill base = test::test_fill(cfg, seed);
  return [base](const HfTensorSpec& sp, DType dt, uint8_t* dst, uint64_t off, uint64_t n) {
    base(sp, dt, dst, off, n);
    if (dt != DType::F32 || sp.name.find("_proj.weight") == std::string::npos) return;
    float* v = reinterpret_cast<float*>(dst);
    const uint64_t first = off / 4;
    for (uint64_t i = 0; i < n / 4; i++) {
      const uint64_t e = first + i;
      if (e % 37 == 5) v[i] = std::copysign(2.5f, v[i]);
      else if (e % 41 == 7) v[i] = std::copysign(1.9f, v[i]);
    }
  };
}

struct QCase {
  std::string name, preset, scheme;
  double kd_weight;
  int64_t B, T;
};
void PrintTo(const QCase& c, std::ostream* os) { *os << c.name; }

class QatRef : public ::testing::TestWithParam<QCase> {};

TEST_P(QatRef, LossAndGradientsMatchLlmQat) {
  const QCase& tc = GetParam();
  test::TempDir tmp("qat_" + tc.name);
  const ModelConfig cfg = config_preset(tc.preset);
  model_save(tmp / "student", cfg, big_weight_fill(cfg, 11), SaveOptions{DType::F32});
  model_save(tmp / "teacher", cfg, test::test_fill(cfg, 12), SaveOptions{DType::F32});
  const train::FakeQuant fq = train::qat_scheme_parse(tc.scheme);
  const int64_t N = tc.B * tc.T;
  std::vector<int32_t> tokens(N), targets(N);
  for (int64_t i = 0; i < N; i++) {
    tokens[i] = (int32_t)(rng_uniform(31, i) * (double)cfg.vocab_size);
    targets[i] = i % 4 == 2 ? -1 : (int32_t)(rng_uniform(32, i) * (double)cfg.vocab_size);
  }
  train::LlamaTrain<double> s(cfg), t(cfg);
  s.fill(big_weight_fill(cfg, 11));
  t.fill(test::test_fill(cfg, 12));
  nlohmann::json batch = {{"tokens", nlohmann::json::array()}, {"targets", nlohmann::json::array()},
                          {"w_bits", fq.w_bits}, {"a_bits", fq.a_bits}, {"kv_bits", fq.kv_bits},
                          {"kd_weight", tc.kd_weight}, {"names", nlohmann::json::array()}};
  for (int64_t b = 0; b < tc.B; b++) {
    batch["tokens"].push_back(std::vector<int32_t>(tokens.begin() + b * tc.T, tokens.begin() + (b + 1) * tc.T));
    batch["targets"].push_back(std::vector<int32_t>(targets.begin() + b * tc.T, targets.begin() + (b + 1) * tc.T));
  }
  for (const auto& sp : s.specs) batch["names"].push_back(sp.name);
  std::ofstream(tmp / "batch.json") << batch.dump();
  const std::string cmd = fmt::format("{} {}/tests/oracle/qat_ref.py {} {} {} {}", kPython, LLMQ_SOURCE_DIR,
                                      tmp / "student", tmp / "teacher", tmp / "batch.json", tmp / "ref.bin");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const std::string bytes = read_text_file(tmp / "ref.bin");
  const int64_t P = s.n_params();
  ASSERT_EQ(bytes.size(), (size_t)(3 + P) * 8);
  std::vector<double> ref(3 + P);
  std::memcpy(ref.data(), bytes.data(), bytes.size());

  t.forward_hidden(tokens.data(), tc.B, tc.T);
  s.set_fake_quant(fq);
  s.set_distill(t.final_hidden().data(), t.p.lm_head, tc.kd_weight);
  // float64 on both sides with the same inputs: the quantizers' rounding decisions agree unless
  // an input lands within ~1e-14 of a rounding boundary (never, for these inputs), so what
  // differs is the order of sums (~1e-16 each, a few thousand terms deep); 1e-9 is far above
  // that and far below a formula error (the bound is 1e-6).
  const double loss = s.forward(tokens.data(), targets.data(), tc.B, tc.T);
  EXPECT_NEAR(loss, ref[0], 1e-9 * std::fabs(ref[0]));
  EXPECT_NEAR(s.last_kl(), ref[1], 1e-9 * std::fabs(ref[1]));
  EXPECT_NEAR(s.last_ce(), ref[2], 1e-9 * std::fabs(ref[2]));
  s.backward();
  for (size_t i = 0; i < s.specs.size(); i++)
    EXPECT_LE(rel_err(s.grads.data() + s.offsets[i], ref.data() + 3 + s.offsets[i], shape_numel(s.specs[i].shape)), 1e-9)
        << "grad " << s.specs[i].name;
}

INSTANTIATE_TEST_SUITE_P(Schemes, QatRef,
                         ::testing::Values(QCase{"w4a8kv4_kd", "tiny", "w4a8kv4", 1.0, 2, 7},
                                           QCase{"w8a8kv8_mixed_tied", "tiny-tied", "w8a8kv8", 0.7, 2, 5},
                                           QCase{"w2a16kv16_ce", "tiny", "w2a16kv16", 0.0, 1, 9},
                                           QCase{"w3a16kv16_kd", "tiny", "w3a16kv16", 1.0, 1, 6}),
                         [](const auto& info) { return info.param.name; });

// The quantizers off: the student is the teacher, bit for bit (the same code path); distilled
// to itself the KL is exactly 0 and so is every gradient.
TEST(Qat, QuantizersOffIsTheTeacherBitwise) {
  const ModelConfig cfg = config_preset("tiny");
  train::LlamaTrain<float> s(cfg), t(cfg);
  s.fill(test::test_fill(cfg, 3));
  t.fill(test::test_fill(cfg, 3));
  const int64_t B = 2, T = 8, N = B * T;
  std::vector<int32_t> tok(N), tg(N);
  for (int64_t i = 0; i < N; i++) tok[i] = (int32_t)((i * 37) % cfg.vocab_size), tg[i] = (int32_t)((i * 91 + 5) % cfg.vocab_size);
  t.forward_hidden(tok.data(), B, T);
  s.set_fake_quant(train::FakeQuant{});
  s.set_distill(t.final_hidden().data(), t.p.lm_head, 1.0);
  EXPECT_EQ(s.forward(tok.data(), tg.data(), B, T), 0.0);
  EXPECT_EQ(s.final_hidden(), t.final_hidden());
  s.backward();
  for (float g : s.grads) ASSERT_EQ(g, 0.f);
  // And with the quantizers on, the same student moves away from the teacher.
  s.set_fake_quant(train::qat_scheme_parse("w4a8kv4"));
  EXPECT_GT(s.forward(tok.data(), tg.data(), B, T), 0.0);
  EXPECT_NE(s.final_hidden(), t.final_hidden());
}

// Per-block recomputation under QAT: the recomputed block runs the same quantizers (K/V saved
// before quantization again), so the gradients are bitwise those of the stored activations.
TEST(Qat, RecomputeIsBitwise) {
  const ModelConfig cfg = config_preset("tiny");
  train::LlamaTrain<float> a(cfg), b(cfg), t(cfg);
  for (auto* m : {&a, &b}) m->fill(test::test_fill(cfg, 3)), m->set_fake_quant(train::qat_scheme_parse("w4a8kv4"));
  t.fill(test::test_fill(cfg, 4));
  b.set_recompute(true);
  const int64_t B = 2, T = 11, N = B * T;
  std::vector<int32_t> tok(N), tg(N);
  for (int64_t i = 0; i < N; i++) tok[i] = (int32_t)((i * 37) % cfg.vocab_size), tg[i] = (int32_t)((i * 91 + 5) % cfg.vocab_size);
  t.forward_hidden(tok.data(), B, T);
  for (auto* m : {&a, &b}) m->set_distill(t.final_hidden().data(), t.p.lm_head, 0.6);
  EXPECT_EQ(a.forward(tok.data(), tg.data(), B, T), b.forward(tok.data(), tg.data(), B, T));
  a.backward(), b.backward();
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); i++) ASSERT_EQ(a.grads[i], b.grads[i]) << i;
}

// PTQ of the same scheme: `llmq quantize --scheme w4a8 --kv-cache int4` writes a dynamic int4
// cache without LLM-QAT's guard (amax / 7), which the model then runs by default.
TEST(Qat, PtqW4a8Int4Config) {
  test::TempDir tmp("ptq_w4a8");
  const ModelConfig cfg = config_preset("tiny");
  model_save(tmp / "m", cfg, test::test_fill(cfg, 5), SaveOptions{DType::F32});
  QuantizeOptions q;
  q.model = tmp / "m", q.out = tmp / "q", q.scheme = "w4a8", q.group = 0, q.sym = true, q.kv_cache = "int4", q.progress = false;
  quantize_model(q);
  Model mm = model_load(tmp / "q");
  EXPECT_EQ(mm.config.quant.scheme, "w4a8");
  EXPECT_TRUE(mm.config.quant.act_per_token);
  EXPECT_EQ(mm.config.quant.act_eps, 0.f);
  EXPECT_EQ(kv_type_for(mm.config, "auto"), KvType::I4);
  EXPECT_EQ(KVCache::create(mm.config, 1, 8, KvType::I4).eps, 0.f);
}

TEST(Qat, SchemeNames) {
  const train::FakeQuant f = train::qat_scheme_parse("w4a8kv4");
  EXPECT_EQ(f.w_bits, 4);
  EXPECT_EQ(f.a_bits, 8);
  EXPECT_EQ(f.kv_bits, 4);
  const train::FakeQuant w = train::qat_scheme_parse("w4a16kv16");
  EXPECT_TRUE(w.weights());
  EXPECT_FALSE(w.acts() || w.kv());
  EXPECT_EQ(train::qat_scheme_name(w), "w4a16kv16");
  for (const char* bad : {"w4a4kv4", "w4a8", "W4A8KV4", "w5a16kv16", ""})
    test::expect_error_containing([&] { train::qat_scheme_parse(bad); }, bad, {"w4a8kv4|", "integer kernels"});
}

// The fake quantizer's values, against the formula written out for one row.
TEST(Qat, SymQuantizerValues) {
  const std::vector<double> x = {0.3, -1.2, 0.05, 2.4, -2.4, 0.0, 1.0 / 3};
  std::vector<double> y(x.size());
  train::fq_sym_rows(x.data(), 1, (int64_t)x.size(), 4, y.data());
  const double s = 7 / (2.4 + 1e-6);
  for (size_t i = 0; i < x.size(); i++) EXPECT_EQ(y[i], std::nearbyint(x[i] * s) / (s + 1e-6)) << i;
  // 7 levels each side at most: the extremes map to +-7 steps.
  EXPECT_EQ(std::nearbyint(y[3] * (s + 1e-6)), 7.0);
}

// What is trained is what runs: `llmq quantize --method qat` of a student, run by the integer
// kernels (int4 codes x int8 per-token activations, the int4/int8 KV cache), against the
// student's fake-quantized training forward in f32.
struct RunCase {
  std::string scheme, qscheme, kv;
};
class QatRuns : public ::testing::TestWithParam<RunCase> {};

TEST_P(QatRuns, IntegerKernelsMatchTheFakeQuantizedForward) {
  const RunCase& rc = GetParam();
  test::TempDir tmp("qat_run");
  const ModelConfig cfg = config_preset("tiny");
  const TensorFill fill = test::test_fill(cfg, 5);
  model_save(tmp / "student", cfg, fill, SaveOptions{DType::F32});
  QuantizeOptions q;
  q.model = tmp / "student", q.out = tmp / "q", q.method = "qat", q.scheme = rc.qscheme, q.kv_cache = rc.kv;
  q.keep = {"embed", "lm_head"}, q.progress = false;
  quantize_model(q);
  Model mm = model_load(tmp / "q");
  ASSERT_EQ(kv_type_for(mm.config, "auto"), rc.kv.empty() ? KvType::F32 : kv_type_parse(rc.kv));

  const int64_t T = 40;
  std::vector<int32_t> tok(T), tg(T, -1);
  for (int64_t t = 0; t < T; t++) tok[t] = (int32_t)(rng_uniform(41, t) * (double)cfg.vocab_size);
  train::LlamaTrain<float> s(cfg);
  s.fill(fill);
  s.set_fake_quant(train::qat_scheme_parse(rc.scheme));
  tg[0] = 1;
  s.forward(tok.data(), tg.data(), 1, T);
  KVCache cache = KVCache::create(mm.config, 1, T, kv_type_for(mm.config, "auto"));
  Batch bt;
  for (int64_t t = 0; t < T; t++) bt.add(tok[t], 0, (int32_t)t, true);
  Scratch sc;
  const Tensor& lg = llama_forward(mm, cache, bt, sc);
  const int64_t C = cfg.dim, V = cfg.vocab_size;
  const auto& h = s.final_hidden();
  double err = 0, big = 0;
  int64_t agree = 0;
  for (int64_t t = 0; t < T; t++) {
    int64_t a1 = 0, a2 = 0;
    std::vector<double> ref(V);
    for (int64_t v = 0; v < V; v++) {
      double z = 0;
      for (int64_t c = 0; c < C; c++) z += (double)h[t * C + c] * (double)s.p.lm_head[v * C + c];
      ref[v] = z;
      const double got = lg.host<float>()[t * V + v];
      err = std::max(err, std::fabs(got - z)), big = std::max(big, std::fabs(z));
      if (z > ref[a1]) a1 = v;
      if (got > lg.host<float>()[t * V + a2]) a2 = v;
    }
    agree += a1 == a2;
  }
  fmt::print("{} {}: max |logit diff| / max |logit| = {:.3g}, top-1 agreement {}/{}\n", rc.scheme, rc.kv, err / big, agree, T);
  // Both sides multiply the same operands (codes times scales, equal to an ulp; weight-only
  // schemes: f32 activations on both sides, the runtime's rows dequantized for sgemm): the
  // kernels sum int products exactly and scale once, or sgemm sums in another order, each within
  // K u sum|terms| (K <= 192: ~1e-5 relative), carried through two blocks. A code that flips in a
  // later quantizer (an input within that error of a rounding boundary) would show as ~1/127 of
  // a row's range, far beyond 1e-5; the seeded inputs have none (measured 3e-7..9e-7).
  EXPECT_LE(err / big, 1e-5);
  EXPECT_EQ(agree, T);
}

INSTANTIATE_TEST_SUITE_P(Schemes, QatRuns,
                         ::testing::Values(RunCase{"w4a8kv4", "w4a8", "int4"}, RunCase{"w4a8kv8", "w4a8", "int8"},
                                           RunCase{"w8a8kv8", "w8a8", "int8"}, RunCase{"w4a16kv16", "w4a16", ""},
                                           RunCase{"w3a16kv16", "w3a16", ""},
                                           RunCase{"w2a16kv16", "w2a16", ""}),
                         [](const auto& info) { return info.param.scheme; });

// The int4 and int8 KV caches (eps 0: amax / qmax; eps 1e-6: LLM-QAT's, as a QAT model runs)
// against the formula written out: attention over one cached position returns that V row
// exactly as the cache holds it (softmax of one score is 1), odd values of head_dim's halves.
TEST(Qat, KvCacheRowsMatchTheFormula) {
  const int64_t hd = 22, H = 2;
  for (DType dt : {DType::Q4, DType::I8})
    for (float eps : {0.f, 1e-6f}) {
      const float qmax = dt == DType::Q4 ? 7.f : 127.f;
      Tensor kc = Tensor::zeros(dt, {1, H, 3, hd}), vc = Tensor::zeros(dt, {1, H, 3, hd});
      Tensor ks = Tensor::zeros(DType::F32, {1, H, 3}), vs = Tensor::zeros(DType::F32, {1, H, 3});
      Tensor k = Tensor::zeros(DType::F32, {1, H * hd}), v = Tensor::zeros(DType::F32, {1, H * hd});
      const auto kr = test::randn(H * hd, 3), vr = test::randn(H * hd, 4, 2.f);
      std::copy(kr.begin(), kr.end(), k.host<float>()), std::copy(vr.begin(), vr.end(), v.host<float>());
      op_kv_store(kc, vc, k, v, {0}, {1}, ks, vs, nullptr, nullptr, eps);
      Tensor q = Tensor::zeros(DType::F32, {1, H * hd}), out = Tensor::zeros(DType::F32, {1, H * hd});
      // Position 0 empty, position 1 stored: query at position 0 sees only the zero row, so
      // store again at 0 and ask there.
      op_kv_store(kc, vc, k, v, {0}, {0}, ks, vs, nullptr, nullptr, eps);
      op_attention(out, q, kc, vc, {0}, {0}, H, ks, vs);
      for (int64_t h = 0; h < H; h++) {
        float amax = 0;
        for (int64_t i = 0; i < hd; i++) amax = std::max(amax, std::fabs(vr[h * hd + i]));
        float inv = amax / qmax > 0 ? 1.f / (amax / qmax) : 0.f, scale = amax / qmax;
        if (eps > 0) inv = qmax / (amax + eps), scale = 1.f / (inv + eps);
        for (int64_t i = 0; i < hd; i++) {
          const float code = std::clamp(std::nearbyint(vr[h * hd + i] * inv), -qmax, qmax);
          ASSERT_EQ(out.host<float>()[h * hd + i], scale * code) << dtype_name(dt) << " eps " << eps << " " << h << "," << i;
        }
      }
    }
}

}  // namespace
}  // namespace llmq
