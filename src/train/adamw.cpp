// AdamW update, parallel over elements.
#include "train/adamw.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "core/error.h"
#include "kernels/cpu/kernels.h"

namespace llmq::train {

template <class F>
AdamW<F>::AdamW(const AdamWConfig& c, std::vector<Range> r, int64_t n_params)
    : cfg(c), m(n_params), v(n_params), ranges(std::move(r)) {
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
  if constexpr (std::is_same_v<F, float>) {
    // The kernel table's vector pass, each tensor cut into 64 KB chunks shared by the threads
    // in one parallel region (the tensors differ only in their decay).
    const CpuKernels& k = cpu_kernels();
    constexpr int64_t kChunk = 16384;
    std::vector<std::pair<size_t, int64_t>> chunks;  // (range, first element)
    for (size_t ri = 0; ri < ranges.size(); ri++)
      if (!ranges[ri].frozen)
        for (int64_t i = 0; i < ranges[ri].n; i += kChunk) chunks.emplace_back(ri, i);
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < chunks.size(); c++) {
      const Range& r = ranges[chunks[c].first];
      const int64_t i = r.offset + chunks[c].second, n = std::min(kChunk, r.n - chunks[c].second);
      const AdamWStep s{r.decay ? float(1.0 - lr * cfg.weight_decay) : 1.f, b1, b2, step_size, sqrt_bc2, eps};
      k.adamw(params + i, m.data() + i, v.data() + i, grads + i, n, s);
    }
    return;
  }
  for (const auto& r : ranges) {
    if (r.frozen) continue;
    const F decay = r.decay ? F(1.0 - lr * cfg.weight_decay) : F(1);
    F *p = params + r.offset, *mm = m.data() + r.offset, *vv = v.data() + r.offset;
    const F* g = grads + r.offset;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < r.n; i++) {
      mm[i] = b1 * mm[i] + (F(1) - b1) * g[i];
      vv[i] = b2 * vv[i] + (F(1) - b2) * g[i] * g[i];
      p[i] = p[i] * decay - step_size * mm[i] / (std::sqrt(vv[i]) / sqrt_bc2 + eps);
    }
  }
}

template struct AdamW<float>;
template struct AdamW<double>;

}  // namespace llmq::train
