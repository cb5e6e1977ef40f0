// AdamW (Loshchilov & Hutter, decoupled weight decay) exactly as torch.optim.AdamW computes
// it: p -= lr*wd*p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
// p -= (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps). Moments in the parameters'
// float type. Tensors listed as no-decay (norms, optionally embeddings) skip the decay.
#pragma once
#include <cstdint>
#include <vector>

#include "core/zero_pages.h"

namespace llmq::train {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

template <class F>
struct AdamW {
  AdamWConfig cfg;
  // First and second moments, one per parameter: untouched zero pages until updated (a
  // pipeline stage updates only its own ranges).
  ZeroPageVector<F> m, v;
  int64_t step = 0;     // steps taken (t in the bias corrections)
  struct Range {
    int64_t offset, n;
    bool decay;
    bool frozen = false;  // not updated (another pipeline stage's tensor)
  };
  std::vector<Range> ranges;  // the parameter buffer, tensor by tensor

  AdamW(const AdamWConfig& c, std::vector<Range> r, int64_t n_params);
  // One update of params with grads at learning rate lr.
  void update(F* params, const F* grads, double lr);
};

extern template struct AdamW<float>;
extern template struct AdamW<double>;

}  // namespace llmq::train
