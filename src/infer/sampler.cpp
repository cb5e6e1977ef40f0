// Sampling in llama.cpp's usual order: penalties, top-k, top-p, min-p, temperature, draw.
#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace llmq {

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> history) {
  const int32_t V = (int32_t)logits.size();
  if (p_.repeat_penalty != 1.0f && p_.repeat_last_n != 0) {
    size_t start = p_.repeat_last_n < 0 || (size_t)p_.repeat_last_n >= history.size()
                       ? 0 : history.size() - (size_t)p_.repeat_last_n;
    std::unordered_set<int32_t> seen(history.begin() + (ptrdiff_t)start, history.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= V) continue;
      float& l = logits[t];
      l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
    }
  }
  if (p_.temperature <= 0.f) return (int32_t)(std::max_element(logits.begin(), logits.end()) - logits.begin());

  // Candidates sorted by logit (descending); ties broken by token id for determinism.
  cand_.resize(V);
  for (int32_t i = 0; i < V; i++) cand_[i] = {logits[i], i};
  auto by_logit = [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; };
  size_t n = (size_t)V;
  if (p_.top_k > 0 && (size_t)p_.top_k < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), by_logit);
    n = (size_t)p_.top_k;
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Probabilities at temperature 1 for the top-p and min-p cuts (as llama.cpp applies them
  // before temperature in its default chain), in double.
  std::vector<double> pr(n);
  double mx = cand_[0].first, sum = 0;
  for (size_t i = 0; i < n; i++) sum += pr[i] = std::exp((double)cand_[i].first - mx);
  if (p_.top_p < 1.f) {
    double acc = 0;
    for (size_t i = 0; i < n; i++) {
      acc += pr[i] / sum;
      if (acc >= p_.top_p) { n = i + 1; break; }
    }
  }
  if (p_.min_p > 0.f) {
    double cut = p_.min_p * pr[0];
    size_t keep = 1;
    while (keep < n && pr[keep] >= cut) keep++;
    n = keep;
  }
  // Temperature, then one draw from the remaining candidates.
  double total = 0;
  for (size_t i = 0; i < n; i++) total += pr[i] = std::exp(((double)cand_[i].first - mx) / p_.temperature);
  double u = rng_.uniform() * total;
  for (size_t i = 0; i < n; i++) {
    u -= pr[i];
    if (u < 0) return cand_[i].second;
  }
  return cand_[n - 1].second;
}

}  // namespace llmq
