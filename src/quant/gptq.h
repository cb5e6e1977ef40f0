// GPTQ (Frantar et al., 2022): quantize a linear's weights one input column at a time,
// spreading each column's rounding error over the columns not yet quantized through the
// inverse Hessian of the layer's inputs, H = 2/n sum x x^T. Faithful to the authors'
// reference code (IST-DASLab/gptq, gptq.py fasterquant): dead columns, damping as a fraction
// of mean(diag H), the upper Cholesky factor of H^-1, lazy block updates, group parameters
// found when a group starts (or fixed up front: static groups), act-order (columns by
// decreasing diag H, with g_idx).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llmq {

// H = 2/n sum over the n input rows x (K) of x x^T, accumulated batch by batch (ssyrk).
class GptqHessian {
 public:
  explicit GptqHessian(int64_t K);
  void add(const float* X, int64_t rows);  // X: rows x K, row-major
  int64_t K() const { return K_; }
  int64_t samples() const { return n_; }
  // The full symmetric matrix, 2/n sum x x^T (K x K, row-major).
  std::vector<float> matrix() const;

 private:
  int64_t K_, n_ = 0;
  std::vector<float> sum_;  // upper triangle of sum x x^T (row-major), unscaled
};

struct GptqOptions {
  int bits = 4;             // 2..8
  int64_t group = 128;      // input columns per scale; 0: one per row
  bool sym = false;
  int64_t block = 128;      // columns per lazy batch update
  double damp = 0.01;       // fraction of mean(diag H) added to the diagonal
  bool act_order = false;   // columns in order of decreasing diag H (desc_act)
  bool static_groups = false;  // group parameters from the unmodified weights, before any update
  // The grid: false (default) llmq's checkpoint grid (quant.h: scales rounded up to f16,
  // zero >= 1 so GPTQ v1 files never wrap); true: the reference quantizer exactly
  // (quant.py find_params, f32), for comparisons.
  bool reference_grid = false;
};

struct GptqResult {
  std::vector<uint8_t> codes;     // M x K, original column order
  std::vector<float> scale, zero; // M x ng (group g in quantization order)
  std::vector<int32_t> g_idx;     // K: the group of each input column
  double damp_used = 0;           // the damping fraction that gave a positive definite H
  double loss = 0;                // sum over rows and columns of (w - q)^2 / (2 d^2), as gptq.py reports
  std::string message;            // set when the damping had to be raised
};

// W: M x K row-major f32 (rows = outputs). H from the layer's calibration inputs.
GptqResult gptq_quantize(const float* W, int64_t M, int64_t K, const GptqHessian& H, const GptqOptions& o);

}  // namespace llmq
