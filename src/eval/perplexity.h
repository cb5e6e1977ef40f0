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
                                 const std::function<void(int64_t, int64_t)>& on_window = nullptr);

// -log softmax(logits)[target], in double with max subtraction.
double nll_of(const float* logits, int64_t vocab, int32_t target);

}  // namespace llmq
