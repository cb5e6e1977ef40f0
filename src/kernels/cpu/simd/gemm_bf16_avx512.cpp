// bf16 x bf16 matrix product for AVX512_BF16 (prefill of bf16 models): vdpbf16ps multiplies
// 16 pairs of bf16 and adds them to 16 f32 lanes, 32 multiply-adds per instruction, twice
// what f32 FMA gives. Weights stay in their row-major bf16 form; the activations are rounded
// to bf16 first (by the caller). A tile is 4 weight rows x 4 tokens: 16 accumulators, each
// weight load used 4 times and each activation load 4 times, summed across lanes at the end.
#include <immintrin.h>

// GCC 12 reports the deliberately undefined pass-through operands inside the header's
// reductions and conversions as uninitialized (a false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>

#include "kernels/cpu/kernels.h"

namespace llmq {
namespace {

template <int R, int NT>
void tile(const uint16_t* W, const uint16_t* X, float* Y, int64_t K, int64_t ldy, int64_t m) {
  __m512 acc[R][NT];
  for (int r = 0; r < R; r++)
    for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh x[NT];
    for (int t = 0; t < NT; t++) x[t] = (__m512bh)_mm512_loadu_si512(X + t * K + k);
    for (int r = 0; r < R; r++) {
      const __m512bh w = (__m512bh)_mm512_loadu_si512(W + (m + r) * K + k);
      for (int t = 0; t < NT; t++) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w, x[t]);
    }
  }
  if (k < K) {  // the last K % 32 elements, the rest of the registers zero
    const __mmask32 mask = (__mmask32)((1ull << (K - k)) - 1);
    __m512bh x[NT];
    for (int t = 0; t < NT; t++) x[t] = (__m512bh)_mm512_maskz_loadu_epi16(mask, X + t * K + k);
    for (int r = 0; r < R; r++) {
      const __m512bh w = (__m512bh)_mm512_maskz_loadu_epi16(mask, W + (m + r) * K + k);
      for (int t = 0; t < NT; t++) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w, x[t]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int t = 0; t < NT; t++) Y[t * ldy + m + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <int R>
void token_tiles(const uint16_t* W, const uint16_t* X, float* Y, int64_t K, int64_t n, int64_t ldy, int64_t m) {
  for (int64_t t0 = 0; t0 < n; t0 += 4) {
    const uint16_t* x = X + t0 * K;
    float* y = Y + t0 * ldy;
    switch (std::min<int64_t>(4, n - t0)) {
      case 4: tile<R, 4>(W, x, y, K, ldy, m); break;
      case 3: tile<R, 3>(W, x, y, K, ldy, m); break;
      case 2: tile<R, 2>(W, x, y, K, ldy, m); break;
      default: tile<R, 1>(W, x, y, K, ldy, m); break;
    }
  }
}

}  // namespace

void gemm_bf16_avx512bf16(const uint16_t* W, const uint16_t* X, float* Y, int64_t K, int64_t n, int64_t ldy,
                          int64_t m0, int64_t m1) {
  int64_t m = m0;
  for (; m + 4 <= m1; m += 4) token_tiles<4>(W, X, Y, K, n, ldy, m);
  for (; m < m1; m++) token_tiles<1>(W, X, Y, K, n, ldy, m);
}

}  // namespace llmq
