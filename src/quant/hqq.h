// HQQ (Badri & Shaji, 2023, "Half-Quadratic Quantization"): no calibration data. Each group
// starts from min-max affine quantization, then the zero point is refined by the authors'
// proximal solver (mobiusml/hqq, optimize_weights_proximal): an l_p (p < 1) shrinkage of
// the residual W - dequant(quant(W)), the zero set to the mean that fits it, beta raised by
// kappa each step, stopped early when the mean absolute error stops falling.
#pragma once
#include <cstdint>
#include <vector>

namespace llmq {

struct HqqOptions {
  int bits = 4;          // 1..8
  int64_t group = 64;    // weights per group
  int axis = 1;          // 1: groups of consecutive inputs of a row; 0: HQQ's axis 0 (see below)
  bool optimize = true;  // false: min-max only (HQQ's starting point)
  double lp_norm = 0.7, beta = 10.0, kappa = 1.01;
  int iters = 20;
};

// Codes and per-group parameters: weight ~ scale * (code - zero), zero a float.
// axis 1: codes (M x K), scale/zero (M x K/group), group g of row m = columns g*G..(g+1)*G.
// axis 0: as HQQ reshapes the flat weights to (G, N), N = M*K/G: group j (scale/zero j) is
// the flat elements j, j + N, j + 2N, ... (a column of rows N/K apart).
struct HqqResult {
  std::vector<uint8_t> codes;
  std::vector<float> scale, zero;
};
HqqResult hqq_quantize(const float* W, int64_t M, int64_t K, const HqqOptions& o);
// The dequantized weights (M x K).
std::vector<float> hqq_dequantize(const HqqResult& r, int64_t M, int64_t K, const HqqOptions& o);

}  // namespace llmq
