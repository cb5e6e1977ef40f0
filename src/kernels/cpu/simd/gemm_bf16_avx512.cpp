// bf16 x bf16 matrix product for AVX512_BF16 (prefill of bf16 models): vdpbf16ps multiplies
// 16 pairs of bf16 and adds them to 16 f32 lanes, 32 multiply-adds per instruction, twice
// what f32 FMA gives. Weights stay in their row-major bf16 form; the activations come packed
// (kernels.h: panels of 16 tokens, each lane one token's pair of adjacent k), so a tile is
// NR weight rows x NJ token panels: each step broadcasts one (w[k], w[k+1]) pair of a row
// and multiplies it into NJ panels of 16 tokens, NR*NJ accumulators, no horizontal sums.
// Per step NJ 64-byte activation loads and NR 4-byte weight broadcasts feed NR*NJ
// instructions, so the activations stream from cache at a third of the rate of the older
// 4x4 dot-product tile (which reloaded 4 activation rows per 16 instructions and summed
// each accumulator across lanes at the end).
#include <immintrin.h>

// GCC 12 reports the deliberately undefined pass-through operands inside the header's
// reductions and conversions as uninitialized (a false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstring>

#include "kernels/cpu/kernels.h"

namespace llmq {
namespace {

// Rows [m, m+NR) against token panels [tp, tp+NJ) over all of K.
template <int NR, int NJ>
void tile(const uint16_t* W, const uint16_t* Xp, float* Y, int64_t K, int64_t n, int64_t ldy, int64_t m, int64_t tp) {
  const int64_t Kh = K / 2, Kp2 = (K + 1) / 2;  // whole pairs; pairs with the odd tail
  const int32_t* xp[NJ];
  for (int j = 0; j < NJ; j++) xp[j] = reinterpret_cast<const int32_t*>(Xp) + (tp + j) * Kp2 * 16;
  const uint16_t* w[NR];
  for (int r = 0; r < NR; r++) w[r] = W + (m + r) * K;
  __m512 acc[NR][NJ];
  for (int r = 0; r < NR; r++)
    for (int j = 0; j < NJ; j++) acc[r][j] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < Kh; kp++) {
    __m512bh x[NJ];
    for (int j = 0; j < NJ; j++) x[j] = (__m512bh)_mm512_loadu_si512(xp[j] + kp * 16);
    for (int r = 0; r < NR; r++) {
      int32_t v;
      std::memcpy(&v, w[r] + 2 * kp, 4);
      const __m512bh b = (__m512bh)_mm512_set1_epi32(v);
      for (int j = 0; j < NJ; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], b, x[j]);
    }
  }
  if (K & 1) {  // the odd last column: its pair's second weight is 0 (as is the packed x)
    __m512bh x[NJ];
    for (int j = 0; j < NJ; j++) x[j] = (__m512bh)_mm512_loadu_si512(xp[j] + Kh * 16);
    for (int r = 0; r < NR; r++) {
      const __m512bh b = (__m512bh)_mm512_set1_epi32((int32_t)w[r][K - 1]);
      for (int j = 0; j < NJ; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], b, x[j]);
    }
  }
  // Lane l of acc[r][j] is Y[token 16(tp+j)+l, row m+r]: stored through a small buffer
  // (NR*NJ*16 stores against NR*NJ*K/2 multiply instructions).
  alignas(64) float buf[16];
  for (int j = 0; j < NJ; j++) {
    const int64_t t0 = (tp + j) * 16, nt = std::min<int64_t>(16, n - t0);
    for (int r = 0; r < NR; r++) {
      _mm512_store_ps(buf, acc[r][j]);
      for (int64_t l = 0; l < nt; l++) Y[(t0 + l) * ldy + m + r] = buf[l];
    }
  }
}

// All token panels for NR rows from m, NJ panels at a time.
template <int NR, int NJMAX>
void rows(const uint16_t* W, const uint16_t* Xp, float* Y, int64_t K, int64_t n, int64_t ldy, int64_t m) {
  const int64_t np = (n + 15) / 16;
  int64_t tp = 0;
  for (; tp + NJMAX <= np; tp += NJMAX) tile<NR, NJMAX>(W, Xp, Y, K, n, ldy, m, tp);
  if constexpr (NJMAX > 1) {
    if (np - tp >= 2) tile<NR, 2>(W, Xp, Y, K, n, ldy, m, tp), tp += 2;
  }
  if (tp < np) tile<NR, 1>(W, Xp, Y, K, n, ldy, m, tp);
}

// Tile shape: 8 rows x 3 token panels = 24 accumulators (of 32 registers), 3 activation
// loads and 8 broadcasts per 24 multiply instructions.
constexpr int kRows = 8, kPanels = 3;

}  // namespace

void gemm_bf16_avx512bf16(const uint16_t* W, const uint16_t* Xp, float* Y, int64_t K, int64_t n, int64_t ldy,
                          int64_t m0, int64_t m1) {
  int64_t m = m0;
  for (; m + kRows <= m1; m += kRows) rows<kRows, kPanels>(W, Xp, Y, K, n, ldy, m);
  for (; m + 4 <= m1; m += 4) rows<4, kPanels>(W, Xp, Y, K, n, ldy, m);
  for (; m < m1; m++) rows<1, kPanels>(W, Xp, Y, K, n, ldy, m);
}

}  // namespace llmq
