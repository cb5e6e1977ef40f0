// Quantized GEMV for AVX2 (vpmaddubsw + vpmaddwd); the body is qgemv_256.inc.
#include <immintrin.h>

#include "kernels/cpu/kernels.h"

namespace llmq::qavx2 {
#include "kernels/cpu/simd/qgemv_256.inc"
}  // namespace llmq::qavx2

void llmq::gemv_q_avx2(const QMatView& W, const QActView& X, float* Y, int n, int64_t ldy, int64_t m0, int64_t m1) {
  if (W.bits == 8) llmq::qavx2::gemv_q_impl<8>(W, X, Y, n, ldy, m0, m1);
  else llmq::qavx2::gemv_q_impl<4>(W, X, Y, n, ldy, m0, m1);
}
