// Batched generation over one KV cache with a sequence slot per prompt.
#include "infer/generator.h"

#include <algorithm>
#include <cmath>
#include <chrono>

#include "core/error.h"

namespace llmq {

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Length: return "length";
    case StopReason::Eos: return "eos";
    case StopReason::StopSequence: return "stop";
    case StopReason::Context: return "context";
  }
  return "?";
}

std::vector<GenerateResult> generate(const Model& m, const std::vector<std::vector<int32_t>>& prompts,
                                     const GenerateOptions& opt, const TokenCallback& on_token) {
  const ModelConfig& c = m.config;
  const size_t B = prompts.size();
  int64_t longest = 0;
  for (size_t i = 0; i < B; i++) {
    if (prompts[i].empty()) fail("prompt {} is empty", i + 1);
    for (int32_t t : prompts[i])
      if (t < 0 || t >= c.vocab_size) fail("prompt {}: token id {} is outside the vocabulary (0..{})", i + 1, t, c.vocab_size - 1);
    longest = std::max<int64_t>(longest, (int64_t)prompts[i].size());
  }
  int64_t ctx = opt.context > 0 ? opt.context : std::min<int64_t>(c.max_seq_len, longest + opt.max_new_tokens);
  if (longest > ctx || longest > c.max_seq_len)
    fail("prompt of {} tokens is longer than the context of {} tokens", longest, std::min(ctx, c.max_seq_len));

  KVCache cache = KVCache::create(c, (int64_t)B, ctx, opt.kv_type);
  Scratch scratch;
  std::vector<GenerateResult> res(B);
  std::vector<std::vector<int32_t>> hist(prompts);
  std::vector<Sampler> samplers;
  for (size_t i = 0; i < B; i++) {
    SamplingParams p = opt.sampling;
    if (!opt.seeds.empty() && opt.seeds.size() != B) fail("generate: {} seeds for {} prompts", opt.seeds.size(), B);
    p.seed = opt.seeds.empty() ? opt.sampling.seed + i : opt.seeds[i];
    samplers.emplace_back(p);
  }
  std::vector<bool> live(B, opt.max_new_tokens > 0);
  std::vector<int32_t> next(B);
  using clock = std::chrono::steady_clock;

  auto choose = [&](size_t i, float* logits) {
    if (opt.top_logprobs > 0) {  // before the sampler transforms the logits
      const int64_t V = c.vocab_size;
      double mx = -INFINITY, s = 0;
      for (int64_t v = 0; v < V; v++) mx = std::max(mx, (double)logits[v]);
      for (int64_t v = 0; v < V; v++) s += std::exp((double)logits[v] - mx);
      const double lse = mx + std::log(s);
      std::vector<int32_t> ids((size_t)V);
      for (int64_t v = 0; v < V; v++) ids[(size_t)v] = (int32_t)v;
      const size_t k = std::min<size_t>((size_t)opt.top_logprobs, (size_t)V);
      std::partial_sort(ids.begin(), ids.begin() + (std::ptrdiff_t)k, ids.end(),
                        [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
      std::vector<std::pair<int32_t, float>> top;
      for (size_t j = 0; j < k; j++) top.push_back({ids[j], (float)((double)logits[ids[j]] - lse)});
      res[i].top.push_back(std::move(top));
    }
    int32_t t = samplers[i].sample({logits, (size_t)c.vocab_size}, hist[i]);
    auto& r = res[i];
    if (std::find(opt.eos_ids.begin(), opt.eos_ids.end(), t) != opt.eos_ids.end()) {
      r.reason = StopReason::Eos;
      live[i] = false;
      return;
    }
    r.tokens.push_back(t);
    hist[i].push_back(t);
    next[i] = t;
    bool stop = on_token && on_token(i, t);
    for (const auto& s : opt.stop_sequences)
      stop = stop || (!s.empty() && r.tokens.size() >= s.size() &&
                      std::equal(s.begin(), s.end(), r.tokens.end() - (ptrdiff_t)s.size()));
    if (stop) {
      r.reason = StopReason::StopSequence;
      live[i] = false;
      return;
    }
    if ((int)r.tokens.size() >= opt.max_new_tokens) {
      r.reason = StopReason::Length;
      live[i] = false;
    } else if ((int64_t)hist[i].size() > ctx) {  // the next feed would be at position ctx
      r.reason = StopReason::Context;
      live[i] = false;
    }
  };

  // Prefill: one forward per prompt (all its rows), logits of the last row only.
  for (size_t i = 0; i < B && opt.max_new_tokens > 0; i++) {
    auto t0 = clock::now();
    Batch b;
    for (size_t p = 0; p < prompts[i].size(); p++) b.add(prompts[i][p], (int32_t)i, (int32_t)p, p + 1 == prompts[i].size());
    const Tensor& logits = llama_forward(m, cache, b, scratch);
    res[i].prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
    choose(i, logits.host<float>());
  }
  // Decode: every live sequence contributes one row.
  auto t0 = clock::now();
  while (std::count(live.begin(), live.end(), true)) {
    Batch b;
    std::vector<size_t> who;
    for (size_t i = 0; i < B; i++)
      if (live[i]) {
        b.add(next[i], (int32_t)i, (int32_t)hist[i].size() - 1, true);
        who.push_back(i);
      }
    const Tensor& logits = llama_forward(m, cache, b, scratch);
    for (size_t j = 0; j < who.size(); j++) choose(who[j], logits.host<float>() + j * c.vocab_size);
  }
  double dt = std::chrono::duration<double>(clock::now() - t0).count();
  for (auto& r : res) r.decode_seconds = dt;
  return res;
}

}  // namespace llmq
