// Sampling and generation: determinism, batching, stop conditions, sampler statistics.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "infer/generator.h"
#include "io/hf_dir.h"
#include "test_util.h"

namespace llmq {
namespace {

// Samples from a copy (the sampler edits logits in place).
int32_t draw(Sampler& s, std::vector<float> l, const std::vector<int32_t>& hist) { return s.sample(l, hist); }

TEST(Sampler, GreedyAndDegenerateFilters) {
  std::vector<float> l = {0.1f, 2.0f, -1.0f, 1.9f};
  std::vector<int32_t> none;
  SamplingParams p;
  p.temperature = 0;
  { Sampler s0(p); EXPECT_EQ(draw(s0, l, none), 1); }
  // top_k = 1, min_p = 1 and a tiny top_p each leave only the argmax.
  for (int which = 0; which < 3; which++) {
    SamplingParams q;
    q.temperature = 5.f;
    q.top_k = which == 0 ? 1 : 0;
    q.min_p = which == 1 ? 1.f : 0.f;
    q.top_p = which == 2 ? 1e-6f : 1.f;
    Sampler s(q);
    for (int i = 0; i < 50; i++) EXPECT_EQ(draw(s, l, none), 1) << which;
  }
  // The repetition penalty divides positive logits: 2.0/2 < 1.9, so token 3 wins greedily.
  p.repeat_penalty = 2.f;
  std::vector<int32_t> hist = {1};
  { Sampler s1(p); EXPECT_EQ(draw(s1, l, hist), 3); }
}

TEST(Sampler, FrequenciesFollowSoftmaxWithTemperature) {
  std::vector<float> l = {1.0f, 0.0f, -0.5f, 2.0f};
  SamplingParams p;
  p.temperature = 0.7f;
  p.top_k = 0;
  p.top_p = 1.f;
  p.min_p = 0.f;
  p.seed = 123;
  Sampler s(p);
  const int N = 200000;
  std::map<int, int> count;
  for (int i = 0; i < N; i++) count[draw(s, l, {})]++;
  double z = 0;
  for (float v : l) z += std::exp(v / 0.7);
  for (int t = 0; t < 4; t++) {
    double pr = std::exp(l[t] / 0.7) / z;
    // 5 standard deviations of a binomial count: fails by chance with p < 1e-6.
    EXPECT_NEAR(count[t], N * pr, 5 * std::sqrt(N * pr * (1 - pr))) << t;
  }
}

class Generate : public ::testing::Test {
 protected:
  test::TempDir tmp{"gen"};
  Model m;
  void SetUp() override {
    ModelConfig c = config_preset("tiny");
    model_save(tmp / "m", c, init_fill(c, 5), SaveOptions{DType::F32});
    m = model_load(tmp / "m");
  }
};

TEST_F(Generate, GreedyMatchesManualArgmaxLoop) {
  GenerateOptions o;
  o.max_new_tokens = 12;
  o.sampling.temperature = 0;
  std::vector<int32_t> prompt = {5, 9, 200, 3};
  auto r = generate(m, {prompt}, o);
  ASSERT_EQ(r[0].tokens.size(), 12u);
  // Re-run every step as a full prefill of the sequence so far and take the argmax.
  std::vector<int32_t> seq = prompt;
  for (int i = 0; i < 12; i++) {
    KVCache kv = KVCache::create(m.config, 1, 64);
    Scratch s;
    Batch b;
    for (size_t t = 0; t < seq.size(); t++) b.add(seq[t], 0, (int32_t)t, t + 1 == seq.size());
    const Tensor& l = llama_forward(m, kv, b, s);
    const float* p = l.host<float>();
    int32_t best = (int32_t)(std::max_element(p, p + m.config.vocab_size) - p);
    EXPECT_EQ(r[0].tokens[i], best) << "step " << i;
    seq.push_back(r[0].tokens[i]);
  }
}

TEST_F(Generate, SeedsBatchingAndStops) {
  GenerateOptions o;
  o.max_new_tokens = 20;
  o.sampling.temperature = 1.0f;
  o.sampling.seed = 7;
  std::vector<int32_t> p1 = {1, 2, 3}, p2 = {400, 401, 402, 403, 404};
  auto a = generate(m, {p1, p2}, o);
  auto b = generate(m, {p1, p2}, o);
  EXPECT_EQ(a[0].tokens, b[0].tokens);  // same seed, same output
  EXPECT_EQ(a[1].tokens, b[1].tokens);
  // Sequence i uses seed + i: prompt 2 alone with seed 8 equals its row in the batch.
  GenerateOptions o2 = o;
  o2.sampling.seed = 8;
  EXPECT_EQ(generate(m, {p2}, o2)[0].tokens, a[1].tokens);
  o2.sampling.seed = 1000;
  EXPECT_NE(generate(m, {p1}, o2)[0].tokens, a[0].tokens);
  // EOS: the first token generated becomes the stop id -> nothing is emitted.
  GenerateOptions o3 = o;
  o3.eos_ids = {a[0].tokens[0]};
  auto e = generate(m, {p1}, o3);
  EXPECT_TRUE(e[0].tokens.empty());
  EXPECT_EQ(e[0].reason, StopReason::Eos);
  // Stop sequence: the 3rd and 4th tokens; generation stops right after emitting them.
  GenerateOptions o4 = o;
  o4.stop_sequences = {{a[0].tokens[2], a[0].tokens[3]}};
  auto s = generate(m, {p1}, o4);
  EXPECT_EQ(s[0].reason, StopReason::StopSequence);
  EXPECT_EQ(s[0].tokens, std::vector<int32_t>(a[0].tokens.begin(), a[0].tokens.begin() + 4));
  // A context shorter than prompt + max_new stops with reason "context".
  GenerateOptions o5 = o;
  o5.context = 10;
  auto c = generate(m, {p1}, o5);
  EXPECT_EQ(c[0].reason, StopReason::Context);
  EXPECT_EQ(c[0].tokens.size(), 8u);  // positions 0..9 hold 3 prompt + 7 fed tokens; the 8th is sampled last
}

TEST_F(Generate, BadPrompts) {
  GenerateOptions o;
  EXPECT_THROW(generate(m, {{}}, o), Error);
  EXPECT_THROW(generate(m, {{1, 99999}}, o), Error);
  o.context = 4;
  EXPECT_THROW(generate(m, {{1, 2, 3, 4, 5}}, o), Error);
}

}  // namespace
}  // namespace llmq
