// HQQ: see hqq.h. The solver runs in f32 as the reference does on the CPU.
#include "quant/hqq.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace llmq {

namespace {

// Group gi's weights into x (G values): axis 1, G consecutive weights; axis 0, as HQQ
// reshapes the flat weights to (G, N): elements gi, gi + N, gi + 2N, ...
inline float elem(const float* W, int64_t gi, int64_t j, int64_t G, int64_t N, int axis) {
  return axis == 1 ? W[gi * G + j] : W[gi + j * N];
}
inline int64_t flat(int64_t gi, int64_t j, int64_t G, int64_t N, int axis) { return axis == 1 ? gi * G + j : gi + j * N; }

}  // namespace

// Every group starts from min-max: s = maxq / (max - min) (the inverse step, at most 2e4, as
// the reference clamps it), z = -min * s; code = clamp(round(w * s + z), 0, maxq). Then all
// groups step together, as the reference runs the solver on the whole tensor: the mean
// absolute error over the whole tensor decides the early stop (the zeros just updated are
// kept, as there).
HqqResult hqq_quantize(const float* W, int64_t M, int64_t K, const HqqOptions& o) {
  if (o.bits < 1 || o.bits > 8) fail("hqq: {} bits (1..8)", o.bits);
  if (o.axis != 0 && o.axis != 1) fail("hqq: axis {} (0 or 1)", o.axis);
  const int64_t G = o.group;
  if (G <= 0 || (o.axis == 1 ? K % G : (M * K) % G) != 0)
    fail("hqq: group size {} does not divide the {} (axis {})", G, o.axis == 1 ? "row" : "tensor", o.axis);
  for (int64_t i = 0; i < M * K; i++)
    if (!std::isfinite(W[i])) fail("hqq: the weight has non-finite values (NaN or Inf)");
  const int64_t N = M * K / G;  // groups
  const float maxq = (float)((1 << o.bits) - 1);
  std::vector<float> s((size_t)N), z((size_t)N);
  for (int64_t gi = 0; gi < N; gi++) {
    float mn = elem(W, gi, 0, G, N, o.axis), mx = mn;
    for (int64_t j = 1; j < G; j++) mn = std::min(mn, elem(W, gi, j, G, N, o.axis)), mx = std::max(mx, elem(W, gi, j, G, N, o.axis));
    s[gi] = std::min(maxq / (mx - mn), 2e4f);  // mx == mn: inf, clamped
    z[gi] = -mn * s[gi];
  }
  if (o.optimize) {
    const float p = (float)o.lp_norm;
    double beta = o.beta, best = 1e4;
    for (int it = 0; it < o.iters; it++) {
      const float inv_beta = (float)(1.0 / beta);
      // The shrinkage a - a^(p-1)/beta is <= 0 (so e = 0) for a <= beta^(-1/(2-p)); below
      // that threshold, with a margin for rounding, pow is skipped: same result, and most
      // residuals of real weights (|w| << 1) are far below it.
      const float a0 = (float)(std::pow(beta, -1.0 / (2.0 - (double)p)) * (1.0 - 1e-3));
      double err = 0;
#pragma omp parallel for schedule(static) reduction(+ : err)
      for (int64_t gi = 0; gi < N; gi++) {
        double zsum = 0;
        const float sg = s[gi], zg = z[gi];
        for (int64_t j = 0; j < G; j++) {
          const float x = o.axis == 1 ? W[gi * G + j] : W[gi + j * N];
          const float q = std::clamp(std::nearbyint(x * sg + zg), 0.f, maxq);
          const float r = (q - zg) / sg;
          const float d = x - r, a = std::fabs(d);
          err += a;
          // generalised soft threshold (l_p shrinkage)
          const float e = a <= a0 ? 0.f
                                  : (d > 0 ? 1.f : d < 0 ? -1.f : 0.f) *
                                        std::max(0.f, a - inv_beta * std::pow(a, p - 1.f));
          zsum += q - (x - e) * sg;
        }
        z[gi] = (float)(zsum / (double)G);
      }
      beta *= o.kappa;
      err /= (double)(M * K);
      if (err < best) best = err;
      else break;
    }
  }
  HqqResult r;
  r.codes.resize((size_t)(M * K));
  r.scale.resize((size_t)N);
  r.zero.resize((size_t)N);
#pragma omp parallel for schedule(static)
  for (int64_t gi = 0; gi < N; gi++) {
    for (int64_t j = 0; j < G; j++)
      r.codes[flat(gi, j, G, N, o.axis)] =
          (uint8_t)std::clamp(std::nearbyint(elem(W, gi, j, G, N, o.axis) * s[gi] + z[gi]), 0.f, maxq);
    r.scale[gi] = 1.f / s[gi];
    r.zero[gi] = z[gi];
  }
  return r;
}

std::vector<float> hqq_dequantize(const HqqResult& r, int64_t M, int64_t K, const HqqOptions& o) {
  std::vector<float> d((size_t)(M * K));
  const int64_t G = o.group, groups = M * K / G;
  for (int64_t f = 0; f < M * K; f++) {
    const int64_t gi = o.axis == 1 ? f / G : f % groups;
    d[f] = ((float)r.codes[f] - r.zero[gi]) * r.scale[gi];
  }
  return d;
}

}  // namespace llmq
