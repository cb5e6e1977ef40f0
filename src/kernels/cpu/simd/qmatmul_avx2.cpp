// Quantized matrix product for AVX2 (vpmaddubsw + vpmaddwd); the body is qmatmul_256.inc.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/kernels.h"

namespace llmq::qavx2 {
#include "kernels/cpu/simd/qmatmul_256.inc"
}  // namespace llmq::qavx2

void llmq::matmul_q_avx2(const QMatView& W, const QActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0,
                         int64_t m1) {
  if (W.bits == 8) llmq::qavx2::matmul_q_impl<8>(W, X, Y, n, ldy, m0, m1);
  else llmq::qavx2::matmul_q_impl<4>(W, X, Y, n, ldy, m0, m1);
}
