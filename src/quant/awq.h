// AWQ (Lin et al., 2023, "Activation-aware Weight Quantization") and SmoothQuant (Xiao et
// al., 2022): the per-channel scale computations, as the authors' reference code runs them
// (mit-han-lab/llm-awq auto_scale.py / auto_clip.py, mit-han-lab/smoothquant smooth.py).
// The block pipeline (calibrated.h) feeds them activations and folds the scales into the
// preceding RMSNorm or linear; these functions are the parts tested against the references.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace llmq {

// Quantize-dequantize rows of W (rows x K) in place, per group of `group` inputs.
// reference_grid: llm-awq's pseudo_quantize_tensor (asymmetric: scale (max-min)/(2^b-1) over
// the group's own min and max, zero round(-min/scale); symmetric: amax/(2^(b-1)-1), codes
// -2^(b-1)..2^(b-1)-1); otherwise llmq's checkpoint grid (quantize_rows_rtn).
void fake_quantize_rows(float* w, int64_t rows, int64_t K, int bits, int64_t group, bool sym, bool reference_grid);

// The candidate scales for one ratio: s = max(x_mean^ratio, 1e-4), then s / sqrt(max s * min s).
std::vector<float> awq_scales_for_ratio(const std::vector<float>& x_mean, double ratio);

// out = Q(W diag(s)) diag(s)^-1: what the module computes once s is folded into the
// previous op and W diag(s) is quantized. W, out: M x K.
void awq_scaled_fake_quant(const float* W, int64_t M, int64_t K, const float* s, int bits, int64_t group, bool sym,
                           bool reference_grid, float* out);

// Grid search over ratio = i / n_grid, i = 0..n_grid-1: the scales whose loss (the inspected
// module's output MSE, computed by the caller from the candidate scales) is lowest; the first
// on ties, as the reference's strict `<` picks.
struct AwqScaleResult {
  int best = -1;
  double ratio = 0;
  std::vector<float> scales;
  std::vector<double> losses;  // per grid point
};
AwqScaleResult awq_search_scale(const std::vector<float>& x_mean, int n_grid,
                                const std::function<double(const std::vector<float>& scales)>& loss);

// Clipping search: for each (row, group), the largest |w| kept, from org amax * (1 - i/n_grid),
// i = 0 .. max_shrink*n_grid - 1 (20 and 0.5: 10 steps down to 0.55), minimising the mean
// over sampled tokens of (x_g . Q(clamp(w_g)) - x_g . w_g)^2. Tokens: every (n / n_sample)-th
// row of X (n x K). Returns max_val (M x ng).
std::vector<float> awq_search_clip(const float* W, int64_t M, int64_t K, const float* X, int64_t n, int bits,
                                   int64_t group, bool sym, bool reference_grid, int n_grid = 20,
                                   double max_shrink = 0.5, int64_t n_sample = 512);
// W (M x K) clamped to [-max_val, max_val] per (row, group).
void awq_apply_clip(float* W, int64_t M, int64_t K, int64_t group, const std::vector<float>& max_val);

// SmoothQuant's factors for linears sharing one input of K channels:
//   s_j = max(act_max_j^alpha / max(w_max_j, 1e-5)^(1-alpha), 1e-5),
// w_max_j = max |W[:, j]| over all the linears' rows. Each W is (rows x K).
struct WeightRef {
  const float* w;
  int64_t rows;
};
std::vector<float> smoothquant_scales(const std::vector<float>& act_max, const std::vector<WeightRef>& weights,
                                      double alpha);

}  // namespace llmq
