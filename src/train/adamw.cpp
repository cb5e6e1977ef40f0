// AdamW update, parallel over elements.
#include "train/adamw.h"

#include <cmath>

#include "core/error.h"

namespace llmq::train {

template <class F>
AdamW<F>::AdamW(const AdamWConfig& c, std::vector<Range> r, int64_t n_params)
    : cfg(c), m(n_params, F(0)), v(n_params, F(0)), ranges(std::move(r)) {
  int64_t covered = 0;
  for (const auto& x : ranges) {
    LLMQ_CHECK(x.offset == covered);
    covered += x.n;
  }
  LLMQ_CHECK(covered == n_params);
}

template <class F>
void AdamW<F>::update(F* params, const F* grads, double lr) {
  step++;
  const double bc1 = 1.0 - std::pow(cfg.beta1, (double)step), bc2 = 1.0 - std::pow(cfg.beta2, (double)step);
  const F b1 = F(cfg.beta1), b2 = F(cfg.beta2), eps = F(cfg.eps), step_size = F(lr / bc1), sqrt_bc2 = F(std::sqrt(bc2));
  for (const auto& r : ranges) {
    const F decay = r.decay ? F(1.0 - lr * cfg.weight_decay) : F(1);
    F *p = params + r.offset, *mm = m.data() + r.offset, *vv = v.data() + r.offset;
    const F* g = grads + r.offset;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < r.n; i++) {
      p[i] *= decay;
      mm[i] = b1 * mm[i] + (F(1) - b1) * g[i];
      vv[i] = b2 * vv[i] + (F(1) - b2) * g[i] * g[i];
      p[i] -= step_size * mm[i] / (std::sqrt(vv[i]) / sqrt_bc2 + eps);
    }
  }
}

template struct AdamW<float>;
template struct AdamW<double>;

}  // namespace llmq::train
