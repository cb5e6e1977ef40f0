// Quantized GEMV for AVX-VNNI (256-bit vpdpbusd, VEX-encoded); the body is qgemv_256.inc.
#include <immintrin.h>

#include "kernels/cpu/kernels.h"

#define LLMQ_QGEMV_VNNI 1
namespace llmq::qavxvnni {
#include "kernels/cpu/simd/qgemv_256.inc"
}  // namespace llmq::qavxvnni

void llmq::gemv_q_avxvnni(const QMatView& W, const QActView& X, float* Y, int n, int64_t ldy, int64_t m0, int64_t m1) {
  if (W.bits == 8) llmq::qavxvnni::gemv_q_impl<8>(W, X, Y, n, ldy, m0, m1);
  else llmq::qavxvnni::gemv_q_impl<4>(W, X, Y, n, ldy, m0, m1);
}
