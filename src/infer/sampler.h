// Token sampling: repetition penalty, temperature, top-k, top-p, min-p, seeded draws.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "core/rng.h"

namespace llmq {

struct SamplingParams {
  float temperature = 0.8f;  // 0: greedy (argmax)
  int top_k = 40;            // 0: off
  float top_p = 0.95f;       // 1: off
  float min_p = 0.05f;       // 0: off; keep tokens with p >= min_p * p_max
  float repeat_penalty = 1.0f;  // CTRL-style: logit/penalty if > 0 else logit*penalty
  int repeat_last_n = 64;       // window of previous tokens the penalty looks at
  uint64_t seed = 0;
};

// Chooses the next token from one row of logits (modified in place by the penalty).
// `history` holds the sequence so far (prompt and generated tokens).
class Sampler {
 public:
  explicit Sampler(const SamplingParams& p) : p_(p) { rng_.seed = p.seed; }
  int32_t sample(std::span<float> logits, std::span<const int32_t> history);

 private:
  SamplingParams p_;
  Rng rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

}  // namespace llmq
