// AWQ scale and clip search, SmoothQuant factors: see awq.h.
#include "quant/awq.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "quant/quant.h"

namespace llmq {

void fake_quantize_rows(float* w, int64_t rows, int64_t K, int bits, int64_t group, bool sym, bool reference_grid) {
  LLMQ_CHECK(group > 0 && K % group == 0 && bits >= 1 && bits <= 8);
  const int64_t ng = K / group;
  if (!reference_grid) {
    std::vector<uint8_t> codes((size_t)(rows * K));
    std::vector<float> scale((size_t)(rows * ng)), zero((size_t)(rows * ng));
    quantize_rows_rtn(w, rows, K, bits, group, sym, codes.data(), scale.data(), zero.data());
    dequantize_rows(codes.data(), scale.data(), zero.data(), rows, K, group, w);
    return;
  }
  for (int64_t r = 0; r < rows; r++)
    for (int64_t g = 0; g < ng; g++) {
      float* x = w + r * K + g * group;
      if (sym) {
        float amax = 0.f;
        for (int64_t i = 0; i < group; i++) amax = std::max(amax, std::fabs(x[i]));
        const float qmax = (float)((1 << (bits - 1)) - 1), qmin = -(float)(1 << (bits - 1));
        const float s = std::max(amax, 1e-5f) / qmax;
        for (int64_t i = 0; i < group; i++) x[i] = std::clamp(std::nearbyint(x[i] / s), qmin, qmax) * s;
      } else {
        float lo = x[0], hi = x[0];
        for (int64_t i = 1; i < group; i++) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
        const float qmax = (float)((1 << bits) - 1);
        const float s = std::max(hi - lo, 1e-5f) / qmax;
        const float z = std::clamp(-std::nearbyint(lo / s), 0.f, qmax);
        for (int64_t i = 0; i < group; i++) x[i] = (std::clamp(std::nearbyint(x[i] / s) + z, 0.f, qmax) - z) * s;
      }
    }
}

std::vector<float> awq_scales_for_ratio(const std::vector<float>& x_mean, double ratio) {
  std::vector<float> s(x_mean.size());
  for (size_t j = 0; j < s.size(); j++) s[j] = std::max(std::pow(x_mean[j], (float)ratio), 1e-4f);
  const auto [mn, mx] = std::minmax_element(s.begin(), s.end());
  const float norm = std::sqrt(*mx * *mn);
  for (float& v : s) v /= norm;
  return s;
}

void awq_scaled_fake_quant(const float* W, int64_t M, int64_t K, const float* s, int bits, int64_t group, bool sym,
                           bool reference_grid, float* out) {
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; m++) {
    float* o = out + m * K;
    for (int64_t k = 0; k < K; k++) o[k] = W[m * K + k] * s[k];
    fake_quantize_rows(o, 1, K, bits, group, sym, reference_grid);
    for (int64_t k = 0; k < K; k++) o[k] /= s[k];
  }
}

AwqScaleResult awq_search_scale(const std::vector<float>& x_mean, int n_grid,
                                const std::function<double(const std::vector<float>&)>& loss) {
  LLMQ_CHECK(n_grid > 0 && !x_mean.empty());
  AwqScaleResult r;
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < n_grid; i++) {
    const double ratio = (double)i / n_grid;
    std::vector<float> s = awq_scales_for_ratio(x_mean, ratio);
    const double l = loss(s);
    r.losses.push_back(l);
    if (l < best) best = l, r.best = i, r.ratio = ratio, r.scales = std::move(s);
  }
  if (r.best < 0)
    fail("AWQ: every candidate scale gave a non-finite output error (NaN or Inf activations in the calibration data?)");
  return r;
}

std::vector<float> awq_search_clip(const float* W, int64_t M, int64_t K, const float* X, int64_t n, int bits,
                                   int64_t group, bool sym, bool reference_grid, int n_grid, double max_shrink,
                                   int64_t n_sample) {
  LLMQ_CHECK(group > 0 && K % group == 0 && n > 0);
  const int64_t G = group, ng = K / G, step = std::max<int64_t>(1, n / n_sample);
  const int64_t ns = (n + step - 1) / step;
  std::vector<float> xs((size_t)(ns * K));
  for (int64_t t = 0; t < ns; t++) std::copy(X + t * step * K, X + (t * step + 1) * K, xs.begin() + t * K);
  std::vector<float> best((size_t)(M * ng));
  const int steps = (int)(max_shrink * n_grid);
  std::vector<float> wg((size_t)(M * G)), org((size_t)(ns * M)), cur((size_t)(ns * M)), amax((size_t)M),
      err_best((size_t)M);
  for (int64_t g = 0; g < ng; g++) {
    // org (ns x M) = X_g (ns x G) W_g^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)ns, (int)M, (int)G, 1.f, xs.data() + g * G, (int)K,
                W + g * G, (int)K, 0.f, org.data(), (int)M);
    for (int64_t m = 0; m < M; m++) {
      float a = 0.f;
      for (int64_t i = 0; i < G; i++) a = std::max(a, std::fabs(W[m * K + g * G + i]));
      amax[m] = a;
      best[m * ng + g] = a;
      err_best[m] = 1e9f;
    }
    for (int is = 0; is < steps; is++) {
#pragma omp parallel for schedule(static)
      for (int64_t m = 0; m < M; m++) {
        const float mv = amax[m] * (float)(1.0 - (double)is / n_grid);
        for (int64_t i = 0; i < G; i++) wg[m * G + i] = std::clamp(W[m * K + g * G + i], -mv, mv);
        fake_quantize_rows(wg.data() + m * G, 1, G, bits, G, sym, reference_grid);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)ns, (int)M, (int)G, 1.f, xs.data() + g * G, (int)K,
                  wg.data(), (int)G, 0.f, cur.data(), (int)M);
      for (int64_t m = 0; m < M; m++) {
        double e = 0;
        for (int64_t t = 0; t < ns; t++) {
          const double d = (double)cur[t * M + m] - (double)org[t * M + m];
          e += d * d;
        }
        const float ef = (float)(e / (double)ns);
        if (ef < err_best[m]) err_best[m] = ef, best[m * ng + g] = amax[m] * (float)(1.0 - (double)is / n_grid);
      }
    }
  }
  return best;
}

void awq_apply_clip(float* W, int64_t M, int64_t K, int64_t group, const std::vector<float>& max_val) {
  const int64_t ng = K / group;
  LLMQ_CHECK((int64_t)max_val.size() == M * ng);
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) {
      const float mv = max_val[m * ng + k / group];
      W[m * K + k] = std::clamp(W[m * K + k], -mv, mv);
    }
}

std::vector<float> smoothquant_scales(const std::vector<float>& act_max, const std::vector<WeightRef>& weights,
                                      double alpha) {
  const int64_t K = (int64_t)act_max.size();
  std::vector<float> wmax((size_t)K, 0.f);
  for (const auto& w : weights)
    for (int64_t r = 0; r < w.rows; r++)
      for (int64_t k = 0; k < K; k++) wmax[k] = std::max(wmax[k], std::fabs(w.w[r * K + k]));
  std::vector<float> s((size_t)K);
  for (int64_t k = 0; k < K; k++) {
    if (!std::isfinite(act_max[k]))
      fail("SmoothQuant: activation channel {} has a non-finite maximum (NaN or Inf in the calibration activations)", k);
    s[k] = std::max((float)(std::pow((double)act_max[k], alpha) /
                            std::pow((double)std::max(wmax[k], 1e-5f), 1.0 - alpha)),
                    1e-5f);
  }
  return s;
}

}  // namespace llmq
