// Perplexity: each window is a fresh sequence; all its rows' logits are scored.
#include "eval/perplexity.h"

#include <cmath>

#include "core/error.h"

namespace llmq {

double nll_of(const float* logits, int64_t V, int32_t target) {
  double mx = logits[0];
  for (int64_t i = 1; i < V; i++) mx = std::max(mx, (double)logits[i]);
  double s = 0;
  for (int64_t i = 0; i < V; i++) s += std::exp((double)logits[i] - mx);
  return std::log(s) + mx - (double)logits[target];
}

PerplexityResult eval_perplexity(const Model& m, const std::vector<int32_t>& tokens, int64_t ctx,
                                 const std::function<void(int64_t, int64_t)>& on_window) {
  const ModelConfig& c = m.config;
  if (ctx < 2) fail("--ctx must be at least 2 (a window of T tokens makes T-1 predictions)");
  if (ctx > c.max_seq_len) fail("--ctx {} exceeds the model's context of {}", ctx, c.max_seq_len);
  for (size_t i = 0; i < tokens.size(); i++)
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
      fail("token {} (#{}) is outside the vocabulary (0..{})", tokens[i], i, c.vocab_size - 1);
  if (tokens.size() < 2) fail("need at least 2 tokens to score, got {}", tokens.size());
  KVCache cache = KVCache::create(c, 1, ctx);
  Scratch scratch;
  PerplexityResult r;
  double sum = 0;
  const int64_t N = (int64_t)tokens.size(), total = (N + ctx - 1) / ctx;
  for (int64_t w0 = 0; w0 < N; w0 += ctx) {
    int64_t T = std::min(ctx, N - w0);
    if (T >= 2) {
      Batch b;
      for (int64_t t = 0; t < T; t++) b.add(tokens[w0 + t], 0, (int32_t)t, t + 1 < T);
      const Tensor& logits = llama_forward(m, cache, b, scratch);
      for (int64_t t = 0; t + 1 < T; t++) sum += nll_of(logits.host<float>() + t * c.vocab_size, c.vocab_size, tokens[w0 + t + 1]);
      r.predictions += T - 1;
    }
    r.windows++;
    if (on_window) on_window(r.windows, total);
  }
  r.nll = sum / (double)r.predictions;
  r.ppl = std::exp(r.nll);
  return r;
}

}  // namespace llmq
