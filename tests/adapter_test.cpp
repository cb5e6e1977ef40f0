// Adapters (LoRA, DoRA, rsLoRA, trained norms; float and quantized base) against PyTorch
// float64 autograd (tests/oracle/adapter_ref.py, PEFT's formulas written out), on adapters
// the script writes in PEFT's layout; a fresh adapter changes nothing, bit for bit; bad
// adapter files fail with one clear message each.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <tuple>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"
#include "core/rng.h"
#include "model_fill.h"
#include "quant/quant.h"
#include "quant/quant_base.h"
#include "test_util.h"
#include "text_shards.h"
#include "train/adapter.h"
#include "train/base_shard.h"
#include "train/checkpoint.h"
#include "train/finetune.h"
#include "train/llama_train.h"
#include "train/trainer.h"
#include "data/prepare.h"
#include "data/shards.h"
#include "tokenizer/tokenizer.h"

namespace llmq {
namespace {

using json = nlohmann::json;
constexpr const char* kPython = "/usr/bin/python3";

double rel_err(const double* a, const double* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) num = std::max(num, std::fabs(a[i] - b[i])), den = std::max(den, std::fabs(b[i]));
  return den > 0 ? num / den : num;
}

struct AdCase {
  std::string name;
  int r;
  double alpha;
  bool dora, rslora;
  std::string targets;
  bool norms;
  std::string quant;  // "": float base
};
void PrintTo(const AdCase& c, std::ostream* os) { *os << c.name; }

// The base's linears quantized in memory (as --quantize-base does), and a float model
// directory holding exactly the dequantized weights the training model runs, for the oracle.
std::vector<std::array<Tensor, train::kBlockLinears>> quantize_base(const ModelConfig& cfg, const std::string& method,
                                                                  const std::string& out_dir) {
  train::LlamaTrain<float> full(cfg);
  full.fill(test::test_fill(cfg, 11));
  const BaseQuant q = base_quant_parse(method);
  std::vector<std::array<Tensor, train::kBlockLinears>> qb(cfg.n_layers);
  std::map<std::string, std::vector<float>> deq;
  for (size_t i = 0; i < full.specs.size(); i++) {
    const auto& s = full.specs[i];
    for (int l = 0; l < cfg.n_layers; l++)
      for (int t = 0; t < train::kBlockLinears; t++)
        if (s.name == fmt::format("model.layers.{}.{}.weight", l, train::kLinearModules[t])) {
          const int64_t M = s.shape[0], K = s.shape[1];
          qb[l][t] = quantize_base_linear(full.params.data() + full.offsets[i], M, K, q);
          std::vector<float> d((size_t)(M * K));
          dequantize_tensor_rows(qb[l][t], 0, M, d.data());
          deq[s.name] = std::move(d);
        }
  }
  const TensorFill base = test::test_fill(cfg, 11);
  model_save(out_dir, cfg, [&](const HfTensorSpec& s, DType dt, uint8_t* dst, uint64_t off, uint64_t n) {
    auto it = deq.find(s.name);
    if (it == deq.end()) return base(s, dt, dst, off, n);
    std::memcpy(dst, reinterpret_cast<const uint8_t*>(it->second.data()) + off, n);
  }, SaveOptions{DType::F32});
  return qb;
}

class AdapterRef : public ::testing::TestWithParam<AdCase> {};

TEST_P(AdapterRef, LossAndGradientsMatchPyTorch) {
  const AdCase& tc = GetParam();
  test::TempDir tmp("adapter_" + tc.name);
  const ModelConfig cfg = config_preset("tiny");
  model_save(tmp / "m", cfg, test::test_fill(cfg, 11), SaveOptions{DType::F32});
  std::vector<std::array<Tensor, train::kBlockLinears>> qb;
  std::string oracle_base = tmp / "m";
  if (!tc.quant.empty()) qb = quantize_base(cfg, tc.quant, oracle_base = tmp / "deq");
  const std::string make = fmt::format("{} {}/tests/oracle/adapter_ref.py make {} {} 7 {} {} {} {} {} {}", kPython,
                                       LLMQ_SOURCE_DIR, oracle_base, tmp / "ad", tc.r, tc.alpha, (int)tc.dora, (int)tc.rslora,
                                       tc.targets, (int)tc.norms);
  ASSERT_EQ(std::system(make.c_str()), 0) << make;
  const train::AdapterConfig ac = train::adapter_config_load(tmp / "ad");
  // A batch of two sequences of odd length, ignored targets.
  const int64_t B = 2, T = 9, N = B * T;
  std::vector<int32_t> tokens(N), targets(N);
  for (int64_t i = 0; i < N; i++) {
    tokens[i] = (int32_t)(rng_uniform(21, i) * (double)cfg.vocab_size);
    targets[i] = i % 4 == 1 ? -1 : (int32_t)(rng_uniform(22, i) * (double)cfg.vocab_size);
  }
  train::LlamaTrain<double> m(cfg, ac);
  m.fill(test::test_fill(cfg, 11));
  m.qbase = qb;
  std::vector<float> a32(m.n_params());
  train::adapter_reader(tmp / "ad", cfg, ac)(0, m.n_params(), a32.data());
  std::copy(a32.begin(), a32.end(), m.params.begin());
  json batch = {{"tokens", json::array()}, {"targets", json::array()}, {"names", json::array()}};
  for (int64_t b = 0; b < B; b++) {
    batch["tokens"].push_back(std::vector<int32_t>(tokens.begin() + b * T, tokens.begin() + (b + 1) * T));
    batch["targets"].push_back(std::vector<int32_t>(targets.begin() + b * T, targets.begin() + (b + 1) * T));
  }
  for (const auto& s : m.specs) batch["names"].push_back(s.name);
  std::ofstream(tmp / "batch.json") << batch.dump();
  const std::string cmd = fmt::format("{} {}/tests/oracle/adapter_ref.py ref {} {} {} {}", kPython, LLMQ_SOURCE_DIR,
                                      oracle_base, tmp / "ad", tmp / "batch.json", tmp / "ref.bin");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const std::string bytes = read_text_file(tmp / "ref.bin");
  const int64_t P = m.n_params();
  ASSERT_EQ(bytes.size(), (size_t)(1 + P + N * cfg.vocab_size) * 8);
  std::vector<double> ref(bytes.size() / 8);
  std::memcpy(ref.data(), bytes.data(), bytes.size());

  // float64 on both sides, the same inputs (f32 values): only the order of sums differs
  // (~1e-16 each, a few thousand terms deep), so 1e-9 is far above what can happen by
  // rounding and far below any formula error (the bound is 1e-6).
  const double loss = m.forward(tokens.data(), targets.data(), B, T);
  EXPECT_NEAR(loss, ref[0], 1e-9 * std::fabs(ref[0]));
  m.backward();
  for (size_t i = 0; i < m.specs.size(); i++)
    EXPECT_LE(rel_err(m.grads.data() + m.offsets[i], ref.data() + 1 + m.offsets[i], shape_numel(m.specs[i].shape)), 1e-9)
        << "grad " << m.specs[i].name;
  // Logits: final hidden states times the (frozen) head, against the script's.
  const auto& h = m.final_hidden();
  const double* head = m.p.lm_head;
  double num = 0, den = 0;
  for (int64_t n = 0; n < N; n++)
    for (int64_t v = 0; v < cfg.vocab_size; v++) {
      double z = 0;
      for (int64_t c = 0; c < cfg.dim; c++) z += h[n * cfg.dim + c] * head[v * cfg.dim + c];
      const double r = ref[1 + P + n * cfg.vocab_size + v];
      num = std::max(num, std::fabs(z - r)), den = std::max(den, std::fabs(r));
    }
  EXPECT_LE(num / den, 1e-9) << "logits";

  // The inference engine with the adapter attached unmerged (what generate/eval/bench run):
  // f32 products over K <= 192 and two blocks, ~1e-6 relative; bounded at 1e-4 of the
  // largest logit, as the engine's own reference test does.
  {
    Model mm = model_load(oracle_base);
    train::attach_adapter(mm, tmp / "ad");
    double err = 0, big = 0;
    for (int64_t b = 0; b < B; b++) {
      KVCache cache = KVCache::create(cfg, 1, T);
      Batch bt;
      for (int64_t t = 0; t < T; t++) bt.add(tokens[b * T + t], 0, (int32_t)t, true);
      Scratch sc;
      const Tensor& lg = llama_forward(mm, cache, bt, sc);
      for (int64_t t = 0; t < T; t++)
        for (int64_t v = 0; v < cfg.vocab_size; v++) {
          const double r = ref[1 + P + (b * T + t) * cfg.vocab_size + v];
          err = std::max(err, std::fabs((double)lg.host<float>()[t * cfg.vocab_size + v] - r));
          big = std::max(big, std::fabs(r));
        }
    }
    EXPECT_LE(err / big, 1e-4) << "inference logits with the adapter attached";
  }

  // float32: each product rounds at ~6e-8 relative, summed over K <= 192 terms and two
  // blocks (sqrt(K) growth): ~1e-6, and gradients pass through the softmax and norms twice;
  // 1e-4 of each tensor's largest gradient, as the full-training check uses.
  train::LlamaTrain<float> m32(cfg, ac);
  m32.fill(test::test_fill(cfg, 11));
  m32.qbase = qb;
  std::copy(a32.begin(), a32.end(), m32.params.begin());
  EXPECT_NEAR(m32.forward(tokens.data(), targets.data(), B, T), ref[0], 1e-5 * std::fabs(ref[0]));
  m32.backward();
  std::vector<double> g32(m32.grads.begin(), m32.grads.end());
  for (size_t i = 0; i < m32.specs.size(); i++)
    EXPECT_LE(rel_err(g32.data() + m32.offsets[i], ref.data() + 1 + m32.offsets[i], shape_numel(m32.specs[i].shape)), 1e-4)
        << "f32 grad " << m32.specs[i].name;
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, AdapterRef,
    ::testing::Values(AdCase{"lora", 4, 8, false, false, "all-linear", false, ""},
                      AdCase{"dora", 4, 16, true, false, "all-linear", false, ""},
                      AdCase{"rslora_subset_norms", 8, 4, false, true, "q_proj,v_proj,down_proj", true, ""},
                      AdCase{"qlora_rtn4", 4, 8, false, false, "all-linear", false, "rtn4"},
                      AdCase{"qdora_hqq2", 4, 8, true, false, "all-linear", false, "hqq2"}),
    [](const auto& info) { return info.param.name; });

// A fresh adapter (B = 0; DoRA's magnitude the base's row norms) leaves the model's output
// bit for bit as the base alone gives it: float and quantized base, LoRA and DoRA.
TEST(Adapter, FreshAdapterChangesNoBit) {
  test::TempDir tmp("adapter_fresh");
  const ModelConfig cfg = config_preset("tiny");
  const int64_t B = 2, T = 11, N = B * T;
  std::vector<int32_t> tokens(N), targets(N);
  for (int64_t i = 0; i < N; i++) tokens[i] = (int32_t)(rng_uniform(31, i) * 512), targets[i] = (int32_t)(rng_uniform(32, i) * 512);
  for (const std::string quant : {"", "hqq4"}) {
    std::vector<std::array<Tensor, train::kBlockLinears>> qb;
    train::LlamaTrain<float> plain(cfg);
    if (quant.empty()) {
      plain.fill(test::test_fill(cfg, 11));
    } else {
      qb = quantize_base(cfg, quant, tmp / ("deq" + quant));
      train::model_dir_reader(tmp / ("deq" + quant), cfg)(0, plain.n_params(), plain.params.data());
    }
    const double l0 = plain.forward(tokens.data(), targets.data(), B, T);
    for (bool dora : {false, true}) {
      train::AdapterConfig ac;
      ac.dora = dora, ac.rank = 8, ac.alpha = 16;
      train::LlamaTrain<float> m(cfg, ac);
      m.fill(test::test_fill(cfg, 11));
      m.qbase = qb;
      m.init_adapters(5);
      EXPECT_EQ(m.forward(tokens.data(), targets.data(), B, T), l0) << quant << " dora " << dora;
      EXPECT_TRUE(m.final_hidden() == plain.final_hidden()) << quant << " dora " << dora;
    }
  }
}

// The other direction of PEFT compatibility: an adapter llmq writes (save_adapter, as its
// fine-tuning checkpoints are) read by the PyTorch script gives the logits llmq's engine
// computes with it attached.
TEST(Adapter, LlmqAdapterReadByTheScript) {
  test::TempDir tmp("adapter_readback");
  const ModelConfig cfg = config_preset("tiny");
  model_save(tmp / "m", cfg, test::test_fill(cfg, 11), SaveOptions{DType::F32});
  train::AdapterConfig ac;
  ac.dora = true, ac.rank = 6, ac.alpha = 3, ac.rslora = true, ac.train_norms = true;
  ac.targets = train::parse_targets("q_proj,o_proj,up_proj,down_proj");
  train::LlamaTrain<float> m(cfg, ac);
  m.fill(test::test_fill(cfg, 11));
  m.init_adapters(3);
  // As if trained: every value moved (B away from zero, magnitudes and norms off their start).
  for (int64_t i = 0; i < m.n_params(); i++) m.params[i] += (float)(0.05 * rng_normal(41, (uint64_t)i));
  train::save_adapter(tmp / "ad", ac, m.specs, m.offsets, m.params.data());
  const int64_t T = 13;
  std::vector<int32_t> tokens(T), targets(T, 1);
  for (int64_t i = 0; i < T; i++) tokens[i] = (int32_t)(rng_uniform(42, i) * 512);
  json batch = {{"tokens", {tokens}}, {"targets", {targets}}, {"names", json::array()}};
  std::ofstream(tmp / "batch.json") << batch.dump();
  const std::string cmd = fmt::format("{} {}/tests/oracle/adapter_ref.py ref {} {} {} {}", kPython, LLMQ_SOURCE_DIR,
                                      tmp / "m", tmp / "ad", tmp / "batch.json", tmp / "ref.bin");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const std::string bytes = read_text_file(tmp / "ref.bin");
  ASSERT_EQ(bytes.size(), (size_t)(1 + T * cfg.vocab_size) * 8);
  std::vector<double> ref(bytes.size() / 8);
  std::memcpy(ref.data(), bytes.data(), bytes.size());
  Model mm = model_load(tmp / "m");
  train::attach_adapter(mm, tmp / "ad");
  KVCache cache = KVCache::create(cfg, 1, T);
  Batch bt;
  for (int64_t t = 0; t < T; t++) bt.add(tokens[t], 0, (int32_t)t, true);
  Scratch sc;
  const Tensor& lg = llama_forward(mm, cache, bt, sc);
  double err = 0, big = 0;
  for (int64_t i = 0; i < T * cfg.vocab_size; i++)
    err = std::max(err, std::fabs((double)lg.host<float>()[i] - ref[1 + i])), big = std::max(big, std::fabs(ref[1 + i]));
  EXPECT_LE(err / big, 1e-4);  // f32 engine against float64, as above
  // Merged into the weights (llmq merge), the model gives the same logits.
  train::merge_adapter(mm);
  model_save(tmp / "merged", mm, SaveOptions{DType::F32});
  Model merged = model_load(tmp / "merged");
  KVCache c3 = KVCache::create(cfg, 1, T);
  Scratch s3;
  const Tensor& lm = llama_forward(merged, c3, bt, s3);
  err = 0;
  for (int64_t i = 0; i < T * cfg.vocab_size; i++) err = std::max(err, std::fabs((double)lm.host<float>()[i] - ref[1 + i]));
  EXPECT_LE(err / big, 1e-4) << "merged";
  // And the training model's loss on the same window agrees with the script's.
  train::LlamaTrain<double> m64(cfg, ac);
  m64.fill(test::test_fill(cfg, 11));
  std::copy(m.params.begin(), m.params.end(), m64.params.begin());
  EXPECT_NEAR(m64.forward(tokens.data(), targets.data(), 1, T), ref[0], 1e-9 * std::fabs(ref[0]));
}

// Dropout (no reference implements our mask, so the gradient is checked against the loss
// itself): with the micro-batch's mask fixed, the loss is a smooth function of the adapter, so
// central differences in float64 must match backward, for LoRA and DoRA (PEFT's dropout
// form, where DoRA's scaled base term takes the dropped-out input). DoRA's gradient treats
// the row norm as a constant, so for its A and B the differences are taken with c = m / norm
// held fixed (m moved with the norm), which is the function that gradient differentiates.
TEST(Adapter, DropoutGradientsMatchFiniteDifferences) {
  const ModelConfig cfg = config_preset("tiny");
  const int64_t B = 1, T = 7;
  std::vector<int32_t> tokens(T), targets(T);
  for (int64_t i = 0; i < T; i++) tokens[i] = (int32_t)(rng_uniform(51, i) * 512), targets[i] = (int32_t)(rng_uniform(52, i) * 512);
  for (bool dora : {false, true}) {
    train::AdapterConfig ac;
    ac.dora = dora, ac.rank = 3, ac.alpha = 6, ac.dropout = 0.3;
    ac.targets = train::parse_targets("q_proj,o_proj,down_proj");
    train::LlamaTrain<double> m(cfg, ac);
    m.fill(test::test_fill(cfg, 11));
    m.init_adapters(9);
    for (int64_t i = 0; i < m.n_params(); i++) m.params[i] += 0.05 * rng_normal(53, (uint64_t)i);  // B away from 0
    m.dropout_key = 77;
    m.forward(tokens.data(), targets.data(), B, T);
    m.backward();
    const std::vector<double> g(m.grads.begin(), m.grads.end());
    // float64 central differences with h 1e-5: truncation ~h^2 * (third derivative) ~ 1e-10,
    // rounding ~1e-16 / h ~ 1e-11; compared at 1e-6 of the largest checked gradient.
    double worst = 0, big = 0;
    // The (A, B, magnitude, W) of the adapted linear a trained value belongs to.
    auto linear_of = [&](int64_t i, double*& A, double*& Bm, double*& mag, const double*& W, int64_t& in, int64_t& out) {
      size_t sp = 0;
      while (sp + 1 < m.specs.size() && m.offsets[sp + 1] <= i) sp++;
      const std::string& name = m.specs[sp].name;
      const std::string mod = name.substr(0, name.find(".lora_"));
      auto at = [&](const std::string& n) -> double* {
        for (size_t j = 0; j < m.specs.size(); j++)
          if (m.specs[j].name == n) return m.params.data() + m.offsets[j];
        return nullptr;
      };
      A = at(mod + ".lora_A.weight"), Bm = at(mod + ".lora_B.weight"), mag = at(mod + ".lora_magnitude_vector");
      int l = std::atoi(mod.c_str() + mod.find("layers.") + 7), t = 0;
      while (mod.find(train::kLinearModules[t]) == std::string::npos) t++;
      const auto& L = m.p.layers[l];
      const double* Ws[7] = {L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down};
      W = Ws[t];
      std::tie(in, out) = train::linear_shape(cfg, t);
      return name.find("magnitude") == std::string::npos;  // an A or B value
    };
    auto norms = [&](const double* A, const double* Bm, const double* W, int64_t in, int64_t out) {
      std::vector<double> n((size_t)out);
      train::dora_weight_norms(W, A, Bm, ac.rank, ac.scale(), in, out, n.data());
      return n;
    };
    for (int k = 0; k < 16; k++) {
      const int64_t i = (int64_t)(rng_uniform(54 + dora, k) * (double)m.n_params());
      const double x0 = m.params[i], h = 1e-5;
      double *A = nullptr, *Bm = nullptr, *mag = nullptr;
      const double* W = nullptr;
      int64_t in = 0, out = 0;
      const bool hold_c = dora && linear_of(i, A, Bm, mag, W, in, out);
      std::vector<double> mag0, n0;
      if (hold_c) mag0.assign(mag, mag + out), n0 = norms(A, Bm, W, in, out);
      auto loss_at = [&](double x) {
        m.params[i] = x;
        if (hold_c) {  // m' = c0 * norm(A', B'): c = m / norm unchanged
          const std::vector<double> n1 = norms(A, Bm, W, in, out);
          for (int64_t j = 0; j < out; j++) mag[j] = mag0[j] / n0[j] * n1[j];
        }
        return m.forward(tokens.data(), targets.data(), B, T);
      };
      const double lp = loss_at(x0 + h), lm = loss_at(x0 - h);
      m.params[i] = x0;
      if (hold_c) std::copy(mag0.begin(), mag0.end(), mag);
      worst = std::max(worst, std::fabs((lp - lm) / (2 * h) - g[i]));
      big = std::max(big, std::fabs(g[i]));
    }
    EXPECT_LE(worst, 1e-6 * std::max(big, 1e-3)) << (dora ? "DoRA" : "LoRA") << " with dropout";
    // The mask is on in training and off in evaluation.
    m.set_training(false);
    const double l_eval = m.forward(tokens.data(), targets.data(), B, T);
    m.set_training(true);
    EXPECT_NE(l_eval, m.forward(tokens.data(), targets.data(), B, T));
  }
}

// Bad adapter files: one clear error each, naming the file and what is wrong.
TEST(Adapter, BadAdaptersFailClearly) {
  test::TempDir tmp("adapter_bad");
  const ModelConfig cfg = config_preset("tiny");
  model_save(tmp / "m", cfg, test::test_fill(cfg, 11), SaveOptions{DType::F32});
  const std::string make = fmt::format("{} {}/tests/oracle/adapter_ref.py make {} {} 7 4 8 0 0 q_proj,v_proj 0", kPython,
                                       LLMQ_SOURCE_DIR, tmp / "m", tmp / "ad");
  ASSERT_EQ(std::system(make.c_str()), 0);
  const std::string cfg_path = tmp / "ad/adapter_config.json";
  const json good = json::parse(read_text_file(cfg_path));
  auto with = [&](const std::string& k, const json& v) {
    json j = good;
    j[k] = v;
    write_file_atomic(cfg_path, j.dump());
  };
  auto load = [&](const ModelConfig& c) {
    const train::AdapterConfig a = train::adapter_config_load(tmp / "ad");
    train::adapter_reader(tmp / "ad", c, a);
  };
  // A rank that does not match its tensors.
  with("r", 8);
  test::expect_error_containing([&] { load(cfg); }, "rank", {"adapter_model.safetensors", "r = 8", "does not match"});
  // Alpha 0, unknown target modules, not LoRA.
  with("lora_alpha", 0);
  test::expect_error_containing([&] { load(cfg); }, "alpha", {"adapter_config.json", "lora_alpha", "no effect"});
  with("target_modules", json::array({"q_proj", "qkv_proj"}));
  test::expect_error_containing([&] { load(cfg); }, "targets", {"adapter_config.json", "unknown target module", "qkv_proj"});
  with("peft_type", "PREFIX_TUNING");
  test::expect_error_containing([&] { load(cfg); }, "peft_type", {"adapter_config.json", "not LORA"});
  // An adapter for another model: other widths, or more blocks than this model has.
  with("r", 4);
  ModelConfig wide = cfg;
  wide.dim = 128;
  test::expect_error_containing([&] { load(wide); }, "shape", {"adapter_model.safetensors", "another model"});
  ModelConfig shallow = cfg;
  shallow.n_layers = 1;
  test::expect_error_containing([&] { load(shallow); }, "blocks", {"adapter_model.safetensors", "block 1", "another model"});
  // The config names a module the weights lack.
  with("target_modules", json::array({"q_proj", "v_proj", "o_proj"}));
  test::expect_error_containing([&] { load(cfg); }, "missing", {"o_proj.lora_A.weight", "missing"});
  // Options llmq does not run.
  write_file_atomic(cfg_path, good.dump());
  with("bias", "all");
  test::expect_error_containing([&] { load(cfg); }, "bias", {"adapter_config.json", "bias"});
  EXPECT_THROW(train::parse_targets("q_proj,attn"), Error);
  train::AdapterConfig a;
  a.alpha = 0;
  test::expect_error_containing([&] { a.check(); }, "alpha 0", {"alpha"});
}

}  // namespace
}  // namespace llmq

namespace llmq {
namespace {

// Chat data's loss mask as training reads it: masked ids are inputs with the bit cleared
// and never targets.
// A sharded base sends a block's quantized linears as one buffer (train/base_shard.h): read
// back, every linear dequantizes to the same bits as the original (RTN, HQQ 2/4/8-bit, odd
// shapes, a float linear left out), with the codes aligned for the kernels.
TEST(Finetune, PackedLinearsRoundTrip) {
  std::array<Tensor, train::kBlockLinears> q;
  const char* methods[train::kBlockLinears] = {"rtn4", "hqq4", "hqq2", "", "rtn8", "hqq8", "hqq3"};
  const int64_t shapes[train::kBlockLinears][2] = {{48, 64}, {16, 96}, {40, 64}, {8, 8}, {24, 160}, {32, 64}, {17, 128}};
  for (int t = 0; t < train::kBlockLinears; t++) {
    if (!*methods[t]) continue;
    const int64_t M = shapes[t][0], K = shapes[t][1];
    std::vector<float> w((size_t)(M * K));
    for (size_t i = 0; i < w.size(); i++) w[i] = (float)(rng_uniform(77 + (uint64_t)t, i) - 0.5);
    q[t] = quantize_base_linear(w.data(), M, K, base_quant_parse(methods[t]));
  }
  auto st = train::pack_linears(q);
  std::array<Tensor, train::kBlockLinears> r;
  train::unpack_linears(st, r);
  for (int t = 0; t < train::kBlockLinears; t++) {
    ASSERT_EQ(r[t].defined(), q[t].defined()) << t;
    if (!q[t].defined()) continue;
    EXPECT_EQ(r[t].shape(), q[t].shape());
    EXPECT_EQ(r[t].dtype(), q[t].dtype());
    EXPECT_EQ((uintptr_t)r[t].host_data() % 64, 0u);
    const int64_t M = q[t].dim(0), K = q[t].dim(1);
    std::vector<float> a((size_t)(M * K)), c((size_t)(M * K));
    dequantize_tensor_rows(q[t], 0, M, a.data());
    dequantize_tensor_rows(r[t], 0, M, c.data());
    EXPECT_EQ(0, std::memcmp(a.data(), c.data(), a.size() * 4)) << methods[t];
  }
}

TEST(Finetune, MaskedTokensAreInputsNotTargets) {
  const uint32_t M = kLossMaskBit;
  const uint32_t w[6] = {M | 128000, M | 5, 17, 18 | 0, M | 128006, 99};
  int32_t tokens[5], targets[5];
  train::split_window(w, 5, tokens, targets);
  const int32_t want_tokens[5] = {128000, 5, 17, 18, 128006}, want_targets[5] = {-1, 17, 18, -1, 99};
  for (int i = 0; i < 5; i++) EXPECT_EQ(tokens[i], want_tokens[i]) << i;
  for (int i = 0; i < 5; i++) EXPECT_EQ(targets[i], want_targets[i]) << i;
}

// Fine-tuning through the training loop: N steps == N/2, a stop and a resume, bit for bit
// (DoRA with dropout on an HQQ-4 base quantized while loading, gradient accumulation); the
// checkpoint is a PEFT adapter the engine attaches; a resume with another rank is refused.
TEST(Finetune, ResumeIsBitwiseIdentical) {
  std::string text;
  for (int i = 0; i < 40; i++) text += "Entry " + std::to_string(i * 7919 % 1000) + " of a corpus to fine-tune on.\n";
  const test::TextShards shards(text);
  const test::TempDir& tmp = shards.tmp;
  ModelConfig cfg = config_preset("tiny");
  cfg.vocab_size = 128256;
  model_save(tmp / "base", cfg, test::test_fill(cfg, 11), SaveOptions{DType::F32});
  train::TrainOptions a;
  a.finetune = true;
  a.model = tmp / "base";
  a.data = shards.data;
  a.out = tmp / "a";
  a.batch = 2, a.seq_len = 16, a.warmup = 2, a.eval_every = 0, a.save_every = 0, a.progress = false;
  a.steps = 6, a.grad_accum = 2, a.lr = 1e-2, a.sample_tokens = 0;
  a.adapter.dora = true, a.adapter.rank = 4, a.adapter.alpha = 8, a.adapter.dropout = 0.1;
  a.quantize_base = "hqq4";
  const auto ra = train::train_run(a);
  EXPECT_EQ(ra.steps, 6);
  EXPECT_GT(ra.trained_params, 0);
  auto b = a;
  b.out = tmp / "b";
  b.stop_after = 3;
  EXPECT_EQ(train::train_run(b).steps, 3);
  b.stop_after = 0;
  b.resume = true;
  EXPECT_EQ(train::train_run(b).steps, 6);
  for (const char* file : {"adapter_model.safetensors", "train_state.bin", "adapter_config.json"})
    EXPECT_EQ(read_text_file(tmp / ("a/checkpoint-000006/" + std::string(file))),
              read_text_file(tmp / ("b/checkpoint-000006/" + std::string(file))))
        << file;
  // The checkpoint is an adapter the engine attaches, and it moved the model.
  Model plain = model_load(tmp / "base"), tuned = model_load(tmp / "base");
  train::attach_adapter(tuned, tmp / "a/checkpoint-000006");
  ASSERT_TRUE(tuned.weights.layers[0].lora[0] != nullptr);
  // Resuming with another adapter shape is refused, naming the option.
  b.steps = 8;
  b.adapter.rank = 8;
  test::expect_error_containing([&] { train::train_run(b); }, "rank changed", {"other options", "adapter"});
}

}  // namespace
}  // namespace llmq
