// Perplexity: each window is a fresh sequence; all its rows' logits are scored.
#include "eval/perplexity.h"

#include <cmath>

#include "core/error.h"
#include "data/shards.h"
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <vector>

namespace llmq {

double nll_of(const float* logits, int64_t V, int32_t target) {
  double mx = logits[0];
  for (int64_t i = 1; i < V; i++) mx = std::max(mx, (double)logits[i]);
  double s = 0;
  for (int64_t i = 0; i < V; i++) s += std::exp((double)logits[i] - mx);
  return std::log(s) + mx - (double)logits[target];
}

namespace {
void check_tokens(const ModelConfig& c, const std::vector<int32_t>& tokens, int64_t ctx);
}

PerplexityResult eval_perplexity(const Model& m, const std::vector<int32_t>& tokens, int64_t ctx,
                                 const std::function<void(int64_t, int64_t)>& on_window, KvType kv) {
  const ModelConfig& c = m.config;
  check_tokens(c, tokens, ctx);
  KVCache cache = KVCache::create(c, 1, ctx, kv);
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

namespace {
void check_tokens(const ModelConfig& c, const std::vector<int32_t>& tokens, int64_t ctx) {
  if (ctx < 2) fail("--ctx must be at least 2 (a window of T tokens makes T-1 predictions)");
  if (ctx > c.max_seq_len) fail("--ctx {} exceeds the model's context of {}", ctx, c.max_seq_len);
  for (size_t i = 0; i < tokens.size(); i++)
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
      fail("token {} (#{}) is outside the vocabulary (0..{})", tokens[i], i, c.vocab_size - 1);
  if (tokens.size() < 2) fail("need at least 2 tokens to score, got {}", tokens.size());
}

// log-softmax of one row in double.
void log_softmax(const float* x, int64_t V, std::vector<double>& out) {
  out.resize(V);
  double mx = x[0];
  for (int64_t i = 1; i < V; i++) mx = std::max(mx, (double)x[i]);
  double s = 0;
  for (int64_t i = 0; i < V; i++) s += std::exp((double)x[i] - mx);
  const double lse = std::log(s) + mx;
  for (int64_t i = 0; i < V; i++) out[i] = (double)x[i] - lse;
}
}  // namespace

CompareResult eval_compare(const Model& base, const Model& quant, const std::vector<int32_t>& tokens, int64_t ctx,
                           const std::function<void(int64_t, int64_t)>& on_window, KvType kv_quant) {
  const ModelConfig& c = base.config;
  if (quant.config.vocab_size != c.vocab_size || quant.config.max_seq_len != c.max_seq_len)
    fail("eval compare: the models differ in vocabulary ({} vs {}) or context; compare a model with its quantized copy",
         c.vocab_size, quant.config.vocab_size);
  check_tokens(c, tokens, ctx);
  KVCache cb = KVCache::create(c, 1, ctx), cq = KVCache::create(quant.config, 1, ctx, kv_quant);
  Scratch sb, sq;
  CompareResult r;
  std::vector<double> kl, lb, lq;
  double sum_b = 0, sum_q = 0;
  int64_t agree = 0;
  const int64_t N = (int64_t)tokens.size(), total = (N + ctx - 1) / ctx, V = c.vocab_size;
  for (int64_t w0 = 0; w0 < N; w0 += ctx) {
    const int64_t T = std::min(ctx, N - w0);
    if (T >= 2) {
      Batch b;
      for (int64_t t = 0; t < T; t++) b.add(tokens[w0 + t], 0, (int32_t)t, t + 1 < T);
      const Tensor& xb = llama_forward(base, cb, b, sb);
      const Tensor& xq = llama_forward(quant, cq, b, sq);
      for (int64_t t = 0; t + 1 < T; t++) {
        const float *pb = xb.host<float>() + t * V, *pq = xq.host<float>() + t * V;
        log_softmax(pb, V, lb);
        log_softmax(pq, V, lq);
        const int32_t target = tokens[w0 + t + 1];
        sum_b -= lb[target];
        sum_q -= lq[target];
        double k = 0;
        for (int64_t i = 0; i < V; i++) k += std::exp(lb[i]) * (lb[i] - lq[i]);
        kl.push_back(std::max(0.0, k));
        agree += std::max_element(pb, pb + V) - pb == std::max_element(pq, pq + V) - pq;
      }
      r.predictions += T - 1;
    }
    r.windows++;
    if (on_window) on_window(r.windows, total);
  }
  r.nll_base = sum_b / (double)r.predictions;
  r.nll_quant = sum_q / (double)r.predictions;
  r.ppl_base = std::exp(r.nll_base);
  r.ppl_quant = std::exp(r.nll_quant);
  r.ppl_ratio = r.ppl_quant / r.ppl_base;
  double s = 0;
  for (double k : kl) s += k;
  r.kld_mean = s / (double)kl.size();
  std::sort(kl.begin(), kl.end());
  r.kld_p99 = kl[std::min(kl.size() - 1, (size_t)(0.99 * (double)kl.size()))];
  r.kld_max = kl.back();
  r.top1_agreement = (double)agree / (double)r.predictions;
  return r;
}

std::vector<int32_t> data_split_tokens(const std::string& dir, const std::string& split, int64_t max_tokens,
                                       const std::string& tokenizer) {
  TokenDataset d = token_dataset_open(dir);
  if (!tokenizer.empty())
    d.require_tokenizer(tokenizer_load(tokenizer)->fingerprint(), tokenizer);
  else
    fmt::print(stderr, "warning: the model has no tokenizer, so {}'s tokenizer ({}) cannot be checked against it\n", dir,
               d.manifest.tokenizer_source);
  if (split != "val" && split != "train") fail("--split must be val or train, got '{}'", split);
  const TokenSplit& s = split == "val" ? d.val : d.train;
  std::vector<int32_t> out;
  for (const auto& sh : s.shards)
    for (int64_t i = 0; i < sh.tokens && (max_tokens <= 0 || (int64_t)out.size() < max_tokens); i++)
      out.push_back((int32_t)(sh.ids()[i] & ~kLossMaskBit));  // chat data: every token counts here
  if (out.empty()) fail("{}: the {} split has no tokens", dir, split);
  return out;
}

}  // namespace llmq
