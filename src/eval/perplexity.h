// Perplexity over a token stream, scored in non-overlapping windows.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/llama.h"

namespace llmq {

struct PerplexityResult {
  int64_t predictions = 0;  // a window of T tokens makes T-1 predictions
  double nll = 0;           // mean negative log-likelihood, nats
  double ppl = 0;           // exp(nll)
  int64_t windows = 0;
};

// Windows of `ctx` tokens (the last may be shorter; a 1-token tail predicts nothing).
// on_window(done, total) reports progress.
PerplexityResult eval_perplexity(const Model& m, const std::vector<int32_t>& tokens, int64_t ctx,
                                 const std::function<void(int64_t, int64_t)>& on_window = nullptr,
                                 KvType kv = KvType::F32);

// A quantized (or otherwise changed) model against its base on the same windows: what
// llama.cpp's perplexity --kl-divergence reports.
struct CompareResult {
  int64_t predictions = 0, windows = 0;
  double nll_base = 0, nll_quant = 0, ppl_base = 0, ppl_quant = 0, ppl_ratio = 0;
  double kld_mean = 0, kld_p99 = 0, kld_max = 0;  // KL(P_base || P_quant) per position, nats
  double top1_agreement = 0;                      // fraction of positions with the same argmax
};
// kv_quant: the KV-cache type of the second run (the base always runs with f32).
CompareResult eval_compare(const Model& base, const Model& quant, const std::vector<int32_t>& tokens, int64_t ctx,
                           const std::function<void(int64_t, int64_t)>& on_window = nullptr,
                           KvType kv_quant = KvType::F32);

// Tokens of the held-out (val) or train split of a prepared data directory, in order,
// at most max_tokens (0: all).
// tokenizer: the model's tokenizer file ("" when it has none); the shards must have been made
// with it (their manifest's fingerprint), as train requires, else one error; without one, a
// warning says the check could not be made.
std::vector<int32_t> data_split_tokens(const std::string& dir, const std::string& split, int64_t max_tokens,
                                       const std::string& tokenizer);

// -log softmax(logits)[target], in double with max subtraction.
double nll_of(const float* logits, int64_t vocab, int32_t target);

}  // namespace llmq
