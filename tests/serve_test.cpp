// The serving engine (serve/engine.h): the paged KV cache against the slot cache, batch
// invariance (a sequence's tokens and logprobs do not depend on what else is batched),
// preemption and prefix caching leaving outputs unchanged, cancellation freeing blocks,
// and the request parser's checks (serve/api.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <thread>
#include <chrono>
#include <fmt/format.h>

#include "core/rng.h"
#include "infer/generator.h"
#include "model/llama.h"
#include "ops/ops.h"
#include "model_fill.h"
#include "quant/ggml_blocks.h"
#include "quant/quantize_model.h"
#include "serve/api.h"
#include "serve/engine.h"
#include "test_util.h"
#include "train/adapter.h"
#include "train/finetune.h"
#include "train/llama_train.h"

namespace llmq {
namespace {

std::vector<int32_t> random_tokens(uint64_t seed, int64_t n, int64_t vocab) {
  std::vector<int32_t> t((size_t)n);
  for (int64_t i = 0; i < n; i++) t[(size_t)i] = (int32_t)(rng_uniform(seed, (uint64_t)i) * (double)vocab);
  return t;
}

// A saved tiny model, f32 or quantized to `scheme` (round to nearest).
Model tiny(const test::TempDir& tmp, const std::string& scheme) {
  const ModelConfig cfg = config_preset("tiny");
  model_save(tmp / "f32", cfg, test::test_fill(cfg, 11), SaveOptions{DType::F32});
  if (scheme == "f32") return model_load(tmp / "f32");
  if (scheme == "bf16") {
    model_save(tmp / "bf16", cfg, test::test_fill(cfg, 11), SaveOptions{DType::BF16});
    return model_load(tmp / "bf16");
  }
  if (scheme == "q4_k_m") {
    // GGUF k-quants as a Q4_K_M file mixes them (down and the output matrix Q6_K, the rest
    // Q4_K), on the tiny shape widened to whole super-blocks (rows of 256 and 512).
    ModelConfig kc = cfg;
    kc.dim = 256, kc.ffn_dim = 512, kc.head_dim = 64;
    model_save(tmp / "kf32", kc, test::test_fill(kc, 11), SaveOptions{DType::F32});
    Model m = model_load(tmp / "kf32");
    auto kq = [](Tensor& W, GgmlType t) {
      const int64_t M = W.dim(0), K = W.dim(1);
      Tensor q = Tensor::empty(kquant_dtype(t), {M, K});
      const size_t rb = dtype_bytes(q.dtype(), K);
      for (int64_t r = 0; r < M; r++) quantize_row_kquant(t, W.host<float>() + r * K, q.host<uint8_t>() + r * rb, K);
      W = q;
    };
    for (auto& L : m.weights.layers) {
      for (Tensor* W : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up}) kq(*W, GgmlType::Q4_K);
      kq(L.w_down, GgmlType::Q6_K);
    }
    kq(m.weights.lm_head, GgmlType::Q6_K);
    return m;
  }
  QuantizeOptions q;
  q.model = tmp / "f32", q.out = tmp / scheme, q.scheme = scheme, q.group = 32, q.progress = false;
  quantize_model(q);
  return model_load(tmp / scheme);
}

// Paged and slot caches hold the same rows: logits of a prefill + decode bit for bit equal,
// with block tables that are neither contiguous nor in order, for every cache type.
TEST(Serve, PagedCacheEqualsSlotCache) {
  test::TempDir tmp("serve_paged");
  const Model m = tiny(tmp, "f32");
  const ModelConfig& c = m.config;
  for (KvType kt : {KvType::F32, KvType::BF16, KvType::I8, KvType::I4, KvType::FP8}) {
    const int64_t bs = 5, T = 37;  // odd block size; T not a multiple of it
    const std::vector<int32_t> a = random_tokens(1, T, c.vocab_size), b = random_tokens(2, 23, c.vocab_size);
    KVCache slots = KVCache::create(c, 2, T + 1, kt);
    KVCache paged = KVCache::create_paged(c, 20, bs, kt);
    std::vector<std::vector<int32_t>> tables = {{13, 2, 19, 7, 0, 11, 4, 16}, {5, 17, 1, 9, 14}};
    Scratch s1, s2;
    auto both = [&](Batch bt) {
      std::vector<float> x;
      const Tensor& l1 = llama_forward(m, slots, bt, s1);
      x.assign(l1.host<float>(), l1.host<float>() + l1.numel());
      bt.pages = {bs, &tables};
      const Tensor& l2 = llama_forward(m, paged, bt, s2);
      ASSERT_EQ(l2.numel(), (int64_t)x.size());
      EXPECT_EQ(std::memcmp(x.data(), l2.host<float>(), x.size() * 4), 0) << kv_type_name(kt);
    };
    Batch p;  // both prompts in one forward, interleaved chunks
    for (int64_t t = 0; t < T; t++) p.add(a[(size_t)t], 0, (int32_t)t, t % 7 == 3 || t == T - 1);
    for (int64_t t = 0; t < 23; t++) p.add(b[(size_t)t], 1, (int32_t)t, t == 22);
    both(p);
    Batch d;
    d.add(5, 1, 23, true);
    d.add(9, 0, (int32_t)T, true);
    both(d);
  }
  // A paged cache without block tables (and a slot cache with them) is refused.
  KVCache paged = KVCache::create_paged(c, 4, 8);
  Scratch s;
  Batch bt;
  bt.add(1, 0, 0, true);
  test::expect_error_containing([&] { llama_forward(m, paged, bt, s); }, "forward", {"block tables"});
}

struct Served {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<float>> logprobs;
  std::vector<serve::Finish> finish;
  std::vector<int64_t> cached;
};

// Runs every prompt through an engine; with `concurrent`, all are submitted before the first
// step, else one at a time (each to its end before the next).
Served serve_all(const Model& m, serve::EngineOptions o, const std::vector<std::vector<int32_t>>& prompts, int64_t max_tokens,
              bool concurrent, float temperature = 0, int top_logprobs = 3,
              const std::function<void(serve::Engine&, size_t)>& each_step = nullptr) {
  serve::Engine e(m, o);
  Served r;
  const size_t n = prompts.size();
  r.tokens.resize(n), r.logprobs.resize(n), r.finish.resize(n), r.cached.resize(n);
  auto submit = [&](size_t i) {
    serve::SeqRequest q;
    q.prompt = prompts[i];
    q.sampling.temperature = temperature;
    q.sampling.seed = 100 + i;
    q.max_tokens = max_tokens;
    q.top_logprobs = top_logprobs;
    q.on_token = [&r, i](int32_t t, const serve::TokenLogprob* lp) {
      r.tokens[i].push_back(t);
      if (lp) {
        r.logprobs[i].push_back(lp->logprob);
        for (const auto& [id, l] : lp->top) r.logprobs[i].push_back((float)id), r.logprobs[i].push_back(l);
      }
      return false;
    };
    q.on_done = [&r, i](const serve::SeqResult& sr) { r.finish[i] = sr.reason, r.cached[i] = sr.cached_tokens; };
    EXPECT_TRUE(e.submit({q}));
  };
  size_t steps = 0;
  if (concurrent) {
    for (size_t i = 0; i < n; i++) submit(i);
    while (e.step())
      if (each_step) each_step(e, steps++);
  } else {
    for (size_t i = 0; i < n; i++) {
      submit(i);
      while (e.step()) {}
    }
  }
  EXPECT_EQ(e.stats().blocks_used, 0);  // every block came back
  return r;
}

std::vector<std::vector<int32_t>> mixed_prompts(int64_t vocab, size_t n) {
  std::vector<std::vector<int32_t>> p;
  for (size_t i = 0; i < n; i++) p.push_back(random_tokens(50 + i, 3 + (int64_t)(i * 37 % 71), vocab));
  return p;
}

// Batch invariance: greedy tokens and logprobs at concurrency 1, 4 and 16 (mixed prompt
// lengths, chunked prefill beside decode rows) equal, bit for bit, and equal to generate().
// Integer-quantized weights: every row's integer products and scale sums are computed the
// same way whatever the number of rows (one kernel for decode and prefill), so this holds
// in the default mode. Float weights need batch-invariant mode (ops_set_batch_invariant,
// on in llmq serve): by default decode-sized products (<= 16 rows) run the GEMV kernel and
// larger ones sgemm (bf16 weights: bf16 dot products on bf16-rounded activations), whose
// sums differ; the default mode's differences are measured and printed for docs/serving.md.
struct Invariance {
  double worst = 0;
  bool tokens_equal = true, equal_to_generate = true;
};
Invariance concurrency_check(const Model& m) {
  const auto prompts = mixed_prompts(m.config.vocab_size, 16);
  const int64_t max_tokens = 12;
  serve::EngineOptions o;
  o.ctx = 128, o.block_size = 8, o.batch_tokens = 48;  // long prompts take several chunks
  o.parallel = 1;
  const Served one = serve_all(m, o, prompts, max_tokens, false);
  o.parallel = 4;
  const Served four = serve_all(m, o, prompts, max_tokens, true);
  o.parallel = 16;
  const Served sixteen = serve_all(m, o, prompts, max_tokens, true);
  GenerateOptions g;
  g.max_new_tokens = (int)max_tokens;
  g.sampling.temperature = 0;
  Invariance r;
  for (size_t i = 0; i < prompts.size(); i++) {
    r.equal_to_generate = r.equal_to_generate && one.tokens[i] == generate(m, {prompts[i]}, g)[0].tokens;
    r.tokens_equal = r.tokens_equal && four.tokens[i] == one.tokens[i] && sixteen.tokens[i] == one.tokens[i];
    if (four.logprobs[i].size() != one.logprobs[i].size() || sixteen.logprobs[i].size() != one.logprobs[i].size()) {
      r.worst = INFINITY;
      continue;
    }
    for (size_t k = 0; k < one.logprobs[i].size(); k++)
      r.worst = std::max({r.worst, (double)std::fabs(four.logprobs[i][k] - one.logprobs[i][k]),
                          (double)std::fabs(sixteen.logprobs[i][k] - one.logprobs[i][k])});
  }
  return r;
}

class ServeInvariance : public ::testing::TestWithParam<std::string> {};

TEST_P(ServeInvariance, ConcurrencyDoesNotChangeOutputs) {
  test::TempDir tmp("serve_inv");
  const Model m = tiny(tmp, GetParam());
  const bool quantized = GetParam()[0] == 'w' || GetParam()[0] == 'q';  // integer or k-quant products
  if (!quantized) {  // the default mode: measured, printed
    const Invariance d = concurrency_check(m);
    std::printf("%s weights, default mode: largest logprob difference across concurrency %.3g, tokens %s\n",
                GetParam().c_str(), d.worst, d.tokens_equal ? "equal" : "differ");
  }
  struct Reset {
    ~Reset() { ops_set_batch_invariant(false); }
  } reset;
  ops_set_batch_invariant(!quantized);
  const Invariance r = concurrency_check(m);
  EXPECT_TRUE(r.tokens_equal);
  EXPECT_TRUE(r.equal_to_generate);  // generate() in the same mode
  EXPECT_EQ(r.worst, 0.0);           // bit for bit
}
INSTANTIATE_TEST_SUITE_P(Weights, ServeInvariance, ::testing::Values("w4a16", "w8a16", "q4_k_m", "f32", "bf16"));

// Too few blocks for all sequences at once: the newest are preempted and recomputed, and
// every sequence's output (sampled, seeded) is what it is with room to spare.
TEST(Serve, PreemptionKeepsOutputs) {
  test::TempDir tmp("serve_preempt");
  const Model m = tiny(tmp, "w4a16");
  const auto prompts = mixed_prompts(m.config.vocab_size, 8);
  serve::EngineOptions o;
  o.ctx = 128, o.block_size = 4, o.batch_tokens = 64, o.parallel = 8;
  const Served roomy = serve_all(m, o, prompts, 24, true, 0.8f);
  o.n_blocks = 40;  // 160 positions for 8 sequences of up to ~100
  uint64_t preemptions = 0;
  const Served tight = serve_all(m, o, prompts, 24, true, 0.8f, 3, [&](serve::Engine& e, size_t) {
    preemptions = std::max<uint64_t>(preemptions, e.stats().preemptions);
  });
  EXPECT_GT(preemptions, 0u);
  for (size_t i = 0; i < prompts.size(); i++) {
    EXPECT_EQ(tight.tokens[i], roomy.tokens[i]) << i;
    EXPECT_EQ(tight.logprobs[i], roomy.logprobs[i]) << i;
  }
  // The same seeds through generate(): the engine samples as `llmq generate --seed` does.
  GenerateOptions g;
  g.max_new_tokens = 24;
  g.sampling.temperature = 0.8f;
  for (size_t i = 0; i < prompts.size(); i++) {
    g.seeds = {100 + i};
    EXPECT_EQ(generate(m, {prompts[i]}, g)[0].tokens, roomy.tokens[i]) << i;
  }
}

// Prefix caching: requests sharing a 40-token prefix reuse its full blocks (reported as
// cached tokens) and produce what they produce without the cache.
TEST(Serve, PrefixCacheReusesBlocks) {
  test::TempDir tmp("serve_prefix");
  const Model m = tiny(tmp, "w4a16");
  const auto shared = random_tokens(7, 40, m.config.vocab_size);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 4; i++) {
    auto p = shared;
    auto tail = random_tokens(90 + i, 5 + i, m.config.vocab_size);
    p.insert(p.end(), tail.begin(), tail.end());
    prompts.push_back(p);
  }
  serve::EngineOptions o;
  o.ctx = 96, o.block_size = 8, o.parallel = 2;
  const Served with = serve_all(m, o, prompts, 8, false);
  o.prefix_cache = false;
  const Served without = serve_all(m, o, prompts, 8, false);
  EXPECT_EQ(with.cached[0], 0);
  for (size_t i = 1; i < prompts.size(); i++) EXPECT_EQ(with.cached[i], 40) << i;  // 5 full blocks of 8
  for (size_t i = 0; i < prompts.size(); i++) {
    EXPECT_EQ(with.tokens[i], without.tokens[i]) << i;
    EXPECT_EQ(with.logprobs[i], without.logprobs[i]) << i;
  }
}

// A cancelled sequence ends (Abort) at the next step, also mid-prefill, and its blocks return.
TEST(Serve, CancelFreesBlocks) {
  test::TempDir tmp("serve_cancel");
  const Model m = tiny(tmp, "w4a16");
  serve::EngineOptions o;
  o.ctx = 256, o.block_size = 8, o.batch_tokens = 16, o.parallel = 2;
  serve::Engine e(m, o);
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  serve::Finish got = serve::Finish::Length;
  int done = 0;
  serve::SeqRequest q;
  q.prompt = random_tokens(3, 200, m.config.vocab_size);  // 13 chunks of 16
  q.max_tokens = 50;
  q.cancel = cancel;
  q.on_done = [&](const serve::SeqResult& r) { got = r.reason, done++; };
  ASSERT_TRUE(e.submit({q}));
  for (int i = 0; i < 3; i++) ASSERT_TRUE(e.step());
  EXPECT_GT(e.stats().blocks_used, 0);
  cancel->store(true);
  e.step();
  EXPECT_EQ(done, 1);
  EXPECT_EQ(got, serve::Finish::Abort);
  EXPECT_EQ(e.stats().blocks_used, 0);
  // A timeout ends a sequence (Finish::Timeout) at the first step past it, blocks returned.
  serve::SeqRequest slow = q;
  slow.cancel = nullptr;
  slow.timeout_s = 0.05;
  slow.on_done = [&](const serve::SeqResult& r) { got = r.reason, done++; };
  ASSERT_TRUE(e.submit({slow}));
  e.step();
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  e.step();
  EXPECT_EQ(done, 2);
  EXPECT_EQ(got, serve::Finish::Timeout);
  EXPECT_EQ(e.stats().blocks_used, 0);
  // A bounded queue: max_queue sequences waiting, the next submission is refused.
  serve::EngineOptions small = o;
  small.max_queue = 2;
  serve::Engine f(m, small);
  serve::SeqRequest r;
  r.prompt = {1, 2, 3};
  EXPECT_TRUE(f.submit({r, r}));
  EXPECT_FALSE(f.submit({r}));
}

// Adapters served unmerged, chosen per sequence: base, LoRA and DoRA sequences batched
// together give what each gives with its adapter attached alone (generate()).
TEST(Serve, AdaptersPerRequestInOneBatch) {
  test::TempDir tmp("serve_adapters");
  const ModelConfig cfg = config_preset("tiny");
  model_save(tmp / "m", cfg, test::test_fill(cfg, 11), SaveOptions{DType::F32});
  for (int k = 0; k < 2; k++) {
    train::AdapterConfig ac;
    ac.dora = k == 1, ac.rank = 4 + 2 * k, ac.alpha = 8;
    ac.targets = train::parse_targets(k ? "q_proj,v_proj,down_proj" : "q_proj,k_proj,o_proj,gate_proj,up_proj");
    train::LlamaTrain<float> t(cfg, ac);
    t.fill(test::test_fill(cfg, 11));
    t.init_adapters(5 + k);
    // As if trained: every adapter value moved well away from its start.
    for (int64_t i = 0; i < t.n_params(); i++) t.params[i] += (float)(0.3 * rng_normal(60 + k, (uint64_t)i));
    train::save_adapter(tmp / fmt::format("ad{}", k), ac, t.specs, t.offsets, t.params.data());
  }
  Model served = model_load(tmp / "m");
  for (int k = 0; k < 2; k++) {
    train::attach_adapter(served, tmp / fmt::format("ad{}", k));
    for (auto& L : served.weights.layers) L.served.push_back(L.lora), L.lora = {};
  }
  const auto prompts = mixed_prompts(cfg.vocab_size, 9);
  serve::EngineOptions o;
  o.ctx = 128, o.block_size = 8, o.batch_tokens = 40, o.parallel = 9;
  serve::Engine e(served, o);
  std::vector<std::vector<int32_t>> got(prompts.size());
  for (size_t i = 0; i < prompts.size(); i++) {
    serve::SeqRequest q;
    q.prompt = prompts[i];
    q.sampling.temperature = 0;
    q.max_tokens = 10;
    q.adapter = (int)(i % 3);
    q.on_token = [&got, i](int32_t t, const serve::TokenLogprob*) { return got[i].push_back(t), false; };
    ASSERT_TRUE(e.submit({q}));
  }
  while (e.step()) {}
  GenerateOptions g;
  g.max_new_tokens = 10;
  g.sampling.temperature = 0;
  std::vector<Model> alone;
  alone.push_back(model_load(tmp / "m"));
  for (int k = 0; k < 2; k++) {
    alone.push_back(model_load(tmp / "m"));
    train::attach_adapter(alone.back(), tmp / fmt::format("ad{}", k));
  }
  std::set<std::vector<int32_t>> distinct;
  for (size_t i = 0; i < prompts.size(); i++) {
    EXPECT_EQ(got[i], generate(alone[i % 3], {prompts[i]}, g)[0].tokens) << i;
    if (i < 3) distinct.insert(generate(alone[i % 3], {prompts[0]}, g)[0].tokens);
  }
  EXPECT_EQ(distinct.size(), 3u);  // the adapters change the output (the test can fail)
  serve::SeqRequest bad;
  bad.prompt = {1, 2};
  bad.adapter = 3;
  test::expect_error_containing([&] { e.submit({bad}); }, "submit", {"adapter 3 is not loaded"});
}

TEST(ServeApi, ParsesWhatVllmAccepts) {
  const serve::ApiRequest r = serve::parse_request(
      R"({"model":"m","prompt":[[1,2,3],[4]],"max_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":-1,"min_p":0.1,
          "seed":-3,"stop":"\n","n":2,"presence_penalty":0.5,"frequency_penalty":-0.5,"logprobs":3,"echo":true,
          "stream":true,"stream_options":{"include_usage":true},"ignore_eos":true,"stop_token_ids":[9]})",
      false);
  EXPECT_EQ(r.prompt_ids.size(), 2u);
  EXPECT_EQ(*r.max_tokens, 7);
  EXPECT_EQ(r.top_k, 0);
  EXPECT_EQ(*r.seed, (uint64_t)-3);
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.logprobs, 3);
  EXPECT_TRUE(r.echo && r.stream && r.include_usage && r.ignore_eos);
  const serve::ApiRequest c = serve::parse_request(
      R"({"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],
          "logprobs":true,"top_logprobs":2,"max_completion_tokens":5})", true);
  ASSERT_EQ(c.messages.size(), 2u);
  EXPECT_EQ(c.messages[1].content, "hi");
  EXPECT_EQ(c.logprobs, 2);
  EXPECT_EQ(*c.max_tokens, 5);
}

TEST(ServeApi, RefusesBadRequests) {
  struct Case {
    const char* body;
    bool chat;
    const char* param;
  };
  const Case cases[] = {
      {"{", false, ""},
      {"[1,2]", false, ""},
      {R"({"max_tokens":3})", false, "prompt"},
      {R"({"prompt":"a","max_tokens":"3"})", false, "max_tokens"},
      {R"({"prompt":"a","max_tokens":0})", false, "max_tokens"},
      {R"({"prompt":"a","temperature":-1})", false, "temperature"},
      {R"({"prompt":"a","n":0})", false, "n"},
      {R"({"prompt":"a","n":17})", false, "n"},
      {R"({"prompt":"a","logprobs":21})", false, "logprobs"},
      {R"({"prompt":[1,-2]})", false, "prompt"},
      {R"({"prompt":[1,"a"]})", false, "prompt"},
      {R"({"prompt":"a","stop":[1]})", false, "stop"},
      {R"({"prompt":"a","stream_options":{"include_usage":true}})", false, "stream_options"},
      {R"({"messages":[]})", true, "messages"},
      {R"({"messages":[{"role":"wizard","content":"x"}]})", true, "messages"},
      {R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", true, "messages"},
      {R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":2})", true, "top_logprobs"},
      {R"({"messages":[{"role":"user","content":"x"}],"seed":1.5})", true, "seed"},
  };
  // An empty text prompt parses (the server refuses it once tokenized: it may be just BOS).
  EXPECT_NO_THROW(serve::parse_request(R"({"prompt":""})", false));
  for (const Case& k : cases) {
    try {
      serve::parse_request(k.body, k.chat);
      ADD_FAILURE() << "accepted: " << k.body;
    } catch (const serve::ApiError& e) {
      EXPECT_EQ(e.status, 400) << k.body;
      EXPECT_EQ(e.param, k.param) << k.body;
      EXPECT_EQ(e.type, "invalid_request_error");
    }
  }
  EXPECT_TRUE(serve::constant_time_equal("Bearer abc", "Bearer abc"));
  EXPECT_FALSE(serve::constant_time_equal("Bearer abc", "Bearer abd"));
  EXPECT_FALSE(serve::constant_time_equal("Bearer ab", "Bearer abc"));
}

}  // namespace
}  // namespace llmq
