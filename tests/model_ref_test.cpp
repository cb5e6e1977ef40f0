// The whole forward pass against an independent float64 PyTorch reference of Meta's Llama
// (tests/oracle/llama_ref.py), and prefill-then-decode against one full prefill.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/file_util.h"
#include "core/rng.h"
#include "io/hf_dir.h"
#include "kernels/cpu/kernels.h"
#include "ops/ops.h"
#include "model_fill.h"
#include "test_util.h"

namespace llmq {
namespace {

constexpr const char* kPython = "/usr/bin/python3";  // Debian's, which has python3-torch

std::vector<std::vector<int32_t>> test_sequences(const ModelConfig& c, const std::vector<int>& lengths, uint64_t seed) {
  std::vector<std::vector<int32_t>> seqs;
  for (size_t i = 0; i < lengths.size(); i++) {
    std::vector<int32_t> s;
    for (int t = 0; t < lengths[i]; t++) s.push_back((int32_t)(rng_uniform(seed + i, t) * (double)c.vocab_size));
    seqs.push_back(s);
  }
  return seqs;
}

// Runs the oracle; returns float64 logits of every position of every sequence.
std::vector<double> reference_logits(const std::string& dir, const std::vector<std::vector<int32_t>>& seqs,
                                     const test::TempDir& tmp) {
  std::string sp = tmp / "seqs.json", op = tmp / "ref.bin";
  std::ofstream(sp) << nlohmann::json(seqs).dump();
  std::string cmd = std::string(kPython) + " " + LLMQ_SOURCE_DIR + "/tests/oracle/llama_ref.py " + dir + " " + sp + " " + op;
  int rc = std::system(cmd.c_str());
  if (rc != 0) ADD_FAILURE() << "oracle failed: " << cmd;
  std::string bytes = read_text_file(op);
  std::vector<double> r(bytes.size() / 8);
  std::memcpy(r.data(), bytes.data(), r.size() * 8);
  return r;
}

// Max-norm relative error ||a - b||_inf / ||b||_inf: logits near zero make a per-element
// relative error meaningless, so errors are measured against the largest logit.
double rel_err(const float* a, const double* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    num = std::max(num, std::fabs((double)a[i] - b[i]));
    den = std::max(den, std::fabs(b[i]));
  }
  return num / den;
}

struct Case {
  const char* name;
  ModelConfig config;
  DType dtype;
  std::vector<int> lengths;
};

ModelConfig custom_config() {
  // Odd sizes: head_dim 12 != dim/heads, 6 heads over 3 kv heads, ffn 100, vocab 301.
  ModelConfig c = config_preset("tiny");
  c.dim = 48;
  c.n_heads = 6;
  c.n_kv_heads = 3;
  c.head_dim = 12;
  c.ffn_dim = 100;
  c.vocab_size = 301;
  c.n_layers = 3;
  c.rope_theta = 10000;
  c.norm_eps = 1e-6;
  c.tie_embeddings = false;
  c.bos_token_ids = {1};
  c.eos_token_ids = {2};
  return c;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class ModelRef : public ::testing::TestWithParam<Case> {};

TEST_P(ModelRef, LogitsMatchFloat64Reference) {
  const Case& tc = GetParam();
  test::TempDir tmp(tc.name);
  std::string dir = tmp / "model";
  SaveOptions so;
  so.dtype = tc.dtype;
  model_save(dir, tc.config, test::test_fill(tc.config, 42), so);
  Model m = model_load(dir);
  auto seqs = test_sequences(m.config, tc.lengths, 7);
  auto ref = reference_logits(dir, seqs, tmp);
  const int64_t V = m.config.vocab_size;
  size_t total = 0;
  for (auto& s : seqs) total += s.size();
  ASSERT_EQ(ref.size(), total * V);

  // All sequences in one batch (rows of different sequences interleaved), logits of every row.
  KVCache cache = KVCache::create(m.config, (int64_t)seqs.size(), 128);
  Scratch scratch;
  Batch b;
  std::vector<size_t> ref_off;  // where row i's reference logits start
  std::vector<size_t> starts(seqs.size());
  for (size_t s = 1; s < seqs.size(); s++) starts[s] = starts[s - 1] + seqs[s - 1].size();
  size_t longest = 0;
  for (auto& s : seqs) longest = std::max(longest, s.size());
  for (size_t t = 0; t < longest; t++)
    for (size_t s = 0; s < seqs.size(); s++)
      if (t < seqs[s].size()) {
        b.add(seqs[s][t], (int32_t)s, (int32_t)t, true);
        ref_off.push_back((starts[s] + t) * V);
      }
  ops_set_bf16_dot(false);  // f32 activations: the exact products this test bounds
  const Tensor& logits = llama_forward(m, cache, b, scratch);
  double worst = 0;
  for (size_t r = 0; r < b.size(); r++) worst = std::max(worst, rel_err(logits.host<float>() + r * V, ref.data() + ref_off[r], V));
  // f32 arithmetic against float64: accumulated rounding over a few layers of sums of
  // length <= 128 stays near 1e-6 of the logit scale; the bound is 1e-4. bf16/f16
  // weights are exact in float64, so the same bound applies to them.
  EXPECT_LE(worst, 1e-4) << tc.name;
  std::printf("[%s] max relative logit error vs float64: %.2e\n", tc.name, worst);

  // Prefill the first half of sequence 0, then decode the rest one token at a time
  // (the GEMV path), and compare with the full prefill (the sgemm path) above.
  KVCache c2 = KVCache::create(m.config, 1, 128);
  Scratch s2;
  const auto& s0 = seqs[0];
  size_t half = s0.size() / 2;
  Batch pre;
  for (size_t t = 0; t < half; t++) pre.add(s0[t], 0, (int32_t)t, true);
  std::vector<float> inc;
  const Tensor& lp = llama_forward(m, c2, pre, s2);
  inc.assign(lp.host<float>(), lp.host<float>() + half * V);
  for (size_t t = half; t < s0.size(); t++) {
    Batch d;
    d.add(s0[t], 0, (int32_t)t, true);
    const Tensor& ld = llama_forward(m, c2, d, s2);
    inc.insert(inc.end(), ld.host<float>(), ld.host<float>() + V);
  }
  double worst_inc = 0;
  for (size_t t = 0; t < s0.size(); t++) worst_inc = std::max(worst_inc, rel_err(inc.data() + t * V, ref.data() + t * V, V));
  EXPECT_LE(worst_inc, 1e-4) << "prefill-then-decode vs reference";

  // bf16 weights with bf16 dot products (AVX512_BF16 CPUs; the default there): every
  // prefill matmul input is rounded to bf16, a relative error <= 2^-9 per element, so each
  // matmul output moves by <= 2^-9 of its sum of |w x|. To first order these add up over
  // the 7 matmuls of each layer and the output projection: 2^-9 * (7 * layers + 1), with a
  // factor 2 for the attention softmax and norms passing them on.
  ops_set_bf16_dot(true);
  if (tc.dtype == DType::BF16 && cpu_kernels().gemm_bf16) {
    KVCache c3 = KVCache::create(m.config, (int64_t)seqs.size(), 128);
    Scratch s3;
    const Tensor& lf = llama_forward(m, c3, b, s3);
    double worst_fast = 0;
    for (size_t r = 0; r < b.size(); r++)
      worst_fast = std::max(worst_fast, rel_err(lf.host<float>() + r * V, ref.data() + ref_off[r], V));
    const double bound = 2.0 * std::ldexp(1.0, -9) * (7.0 * (double)m.config.n_layers + 1.0);
    EXPECT_LE(worst_fast, bound) << "bf16 dot products";
    EXPECT_GT(worst_fast, 0.0);  // the path was taken
    std::printf("[%s] with bf16 dot products: max relative logit error %.2e (bound %.2e)\n", tc.name, worst_fast, bound);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, ModelRef,
    ::testing::Values(Case{"tiny_gqa_untied_f32", config_preset("tiny"), DType::F32, {37, 20, 64}},
                      Case{"tiny_tied_ropescaling_f32", config_preset("tiny-tied"), DType::F32, {100, 3}},
                      Case{"tiny_gqa_bf16", config_preset("tiny"), DType::BF16, {50, 17}},
                      Case{"tiny_tied_f16", config_preset("tiny-tied"), DType::F16, {70}},
                      Case{"odd_shapes_f32", custom_config(), DType::F32, {33, 1, 19}}),
    [](const auto& info) { return std::string(info.param.name); });

// HF's q/k row order is not Meta's: loading a Meta-order matrix as if it were HF must change
// the logits, so the test above could catch a wrong order.
TEST(ModelRef, RotateHalfOrderMatters) {
  ModelConfig c = config_preset("tiny");
  test::TempDir tmp("order");
  model_save(tmp / "m", c, test::test_fill(c, 3), SaveOptions{DType::F32});
  Model m = model_load(tmp / "m");
  auto seqs = test_sequences(c, {40}, 1);
  auto run = [&](Model& mm) {
    KVCache kv = KVCache::create(c, 1, 64);
    Scratch s;
    Batch b;
    for (size_t t = 0; t < seqs[0].size(); t++) b.add(seqs[0][t], 0, (int32_t)t, t + 1 == seqs[0].size());
    const Tensor& l = llama_forward(mm, kv, b, s);
    return std::vector<float>(l.host<float>(), l.host<float>() + c.vocab_size);
  };
  auto a = run(m);
  // Permute wq's rows within each head from rotate-half to interleaved order.
  Model p = model_load(tmp / "m");
  for (auto& L : p.weights.layers) {
    Tensor q = Tensor::empty(DType::F32, L.wq.shape());
    const int64_t hd = c.head_dim, D = c.dim;
    for (int64_t h = 0; h < c.n_heads; h++)
      for (int64_t j = 0; j < hd; j++) {
        int64_t src = h * hd + (j % 2 ? hd / 2 + j / 2 : j / 2);
        std::memcpy(q.host<float>() + (h * hd + j) * D, L.wq.host<float>() + src * D, D * 4);
      }
    L.wq = q;
  }
  auto b = run(p);
  double diff = 0;
  for (size_t i = 0; i < a.size(); i++) diff = std::max(diff, (double)std::fabs(a[i] - b[i]));
  EXPECT_GT(diff, 1e-2);
}

}  // namespace
}  // namespace llmq
