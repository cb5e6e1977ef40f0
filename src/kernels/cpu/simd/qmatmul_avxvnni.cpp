// Quantized matrix product for AVX-VNNI (256-bit vpdpbusd, VEX-encoded); the body is
// qmatmul_256.inc.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/kernels.h"

#define LLMQ_QMATMUL_VNNI 1
namespace llmq::qavxvnni {
#include "kernels/cpu/simd/qmatmul_256.inc"
}  // namespace llmq::qavxvnni

void llmq::matmul_q_avxvnni(const QMatView& W, const QActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0,
                            int64_t m1) {
  if (W.bits == 8) llmq::qavxvnni::matmul_q_impl<8>(W, X, Y, n, ldy, m0, m1);
  else llmq::qavxvnni::matmul_q_impl<4>(W, X, Y, n, ldy, m0, m1);
}
