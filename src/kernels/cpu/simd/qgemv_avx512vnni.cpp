// Quantized GEMV for AVX-512 VNNI: one 512-bit vpdpbusd multiplies a 64-weight chunk (two
// 32-weight blocks: int32 lanes 0-7 belong to the first, 8-15 to the second) by the
// activation codes; codes are unsigned (u8 weights, 0..255 or 0..15) times signed int8
// activations, so no sign handling is needed. See kernels.h for the layout and the formula.
#include <immintrin.h>

#include "kernels/cpu/kernels.h"

namespace llmq {
namespace {

template <int BITS>
inline __m512i load_chunk(const uint8_t* row, int64_t c) {
  if constexpr (BITS == 8) {
    return _mm512_loadu_si512(row + c * 64);
  } else {
    const __m256i p = _mm256_loadu_si256((const __m256i*)(row + c * 32));
    const __m256i m = _mm256_set1_epi8(15);
    const __m256i lo = _mm256_and_si256(p, m), hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  }
}

// N activation rows at compile time, so the accumulators live in registers. Two
// accumulators per row (even and odd chunks) keep two FMA chains in flight.
template <int BITS, int N>
void gemv_q_rows(const QMatView& W, const QActView& X, float* Y, int64_t ldy, int64_t m0, int64_t m1) {
  const int64_t K = W.K, G = W.group, ng = K / G, nc = K / 64;
  const int64_t row_bytes = BITS == 8 ? K : K / 2;
  const int8_t* xq[N];
  const float* bsv[N];
  for (int i = 0; i < N; i++) xq[i] = X.q + i * K, bsv[i] = X.bsv + i * nc * 16;
  for (int64_t m = m0; m < m1; m++) {
    const uint8_t* row = W.q + m * row_bytes;
    const float* sc = W.scale + m * ng;
    if (m + 1 < m1) {
      _mm_prefetch((const char*)(row + row_bytes), _MM_HINT_T0);
      _mm_prefetch((const char*)(row + row_bytes + 64), _MM_HINT_T0);
    }
    __m512 acc[N];
    for (int i = 0; i < N; i++) acc[i] = _mm512_setzero_ps();
    if (G % 64 == 0) {
      const int64_t cpg = G / 64;
      for (int64_t g = 0; g < ng; g++) {
        __m512 a0[N], a1[N];
        for (int i = 0; i < N; i++) a0[i] = a1[i] = _mm512_setzero_ps();
        int64_t c = g * cpg;
        const int64_t ce = (g + 1) * cpg;
        for (; c + 2 <= ce; c += 2) {
          const __m512i w0 = load_chunk<BITS>(row, c), w1 = load_chunk<BITS>(row, c + 1);
          for (int i = 0; i < N; i++) {
            const __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, _mm512_loadu_si512(xq[i] + c * 64));
            const __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, _mm512_loadu_si512(xq[i] + c * 64 + 64));
            a0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_loadu_ps(bsv[i] + c * 16), a0[i]);
            a1[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_loadu_ps(bsv[i] + c * 16 + 16), a1[i]);
          }
        }
        if (c < ce) {
          const __m512i w0 = load_chunk<BITS>(row, c);
          for (int i = 0; i < N; i++) {
            const __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, _mm512_loadu_si512(xq[i] + c * 64));
            a0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_loadu_ps(bsv[i] + c * 16), a0[i]);
          }
        }
        const __m512 s = _mm512_set1_ps(sc[g]);
        for (int i = 0; i < N; i++) acc[i] = _mm512_fmadd_ps(_mm512_add_ps(a0[i], a1[i]), s, acc[i]);
      }
    } else {  // group 32: the two halves of a chunk have their own weight scale
      // [s0 x8, s1 x8] from one 8-byte load and a permute; two accumulators per row.
      const __m512i half_idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
      __m512 acc1[N];
      for (int i = 0; i < N; i++) acc1[i] = _mm512_setzero_ps();
      int64_t c = 0;
      for (; c + 2 <= nc; c += 2) {
        const __m512i w0 = load_chunk<BITS>(row, c), w1 = load_chunk<BITS>(row, c + 1);
        const __m512 s0 = _mm512_permutexvar_ps(half_idx, _mm512_castpd_ps(_mm512_castpd128_pd512(_mm_load_sd((const double*)(sc + 2 * c)))));
        const __m512 s1 = _mm512_permutexvar_ps(half_idx, _mm512_castpd_ps(_mm512_castpd128_pd512(_mm_load_sd((const double*)(sc + 2 * c + 2)))));
        for (int i = 0; i < N; i++) {
          const __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, _mm512_loadu_si512(xq[i] + c * 64));
          const __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, _mm512_loadu_si512(xq[i] + c * 64 + 64));
          acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_mul_ps(_mm512_loadu_ps(bsv[i] + c * 16), s0), acc[i]);
          acc1[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_mul_ps(_mm512_loadu_ps(bsv[i] + c * 16 + 16), s1), acc1[i]);
        }
      }
      for (; c < nc; c++) {
        const __m512i w = load_chunk<BITS>(row, c);
        const __m512 s = _mm512_insertf32x8(_mm512_set1_ps(sc[2 * c]), _mm256_set1_ps(sc[2 * c + 1]), 1);
        for (int i = 0; i < N; i++) {
          const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512(xq[i] + c * 64));
          acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(_mm512_loadu_ps(bsv[i] + c * 16), s), acc[i]);
        }
      }
      for (int i = 0; i < N; i++) acc[i] = _mm512_add_ps(acc[i], acc1[i]);
    }
    const float* zs = W.zs + m * ng;
    for (int i = 0; i < N; i++) {
      float corr = 0.f;
      const float* gs = X.gsum + i * ng;
      for (int64_t g = 0; g < ng; g++) corr += zs[g] * gs[g];
      Y[i * ldy + m] = _mm512_reduce_add_ps(acc[i]) - corr;
    }
  }
}

template <int BITS>
void gemv_q_impl(const QMatView& W, const QActView& X, float* Y, int n, int64_t ldy, int64_t m0, int64_t m1) {
  switch (n) {
    case 1: return gemv_q_rows<BITS, 1>(W, X, Y, ldy, m0, m1);
    case 2: return gemv_q_rows<BITS, 2>(W, X, Y, ldy, m0, m1);
    case 3: return gemv_q_rows<BITS, 3>(W, X, Y, ldy, m0, m1);
    default: return gemv_q_rows<BITS, 4>(W, X, Y, ldy, m0, m1);
  }
}

}  // namespace

void gemv_q_avx512vnni(const QMatView& W, const QActView& X, float* Y, int n, int64_t ldy, int64_t m0, int64_t m1) {
  if (W.bits == 8) gemv_q_impl<8>(W, X, Y, n, ldy, m0, m1);
  else gemv_q_impl<4>(W, X, Y, n, ldy, m0, m1);
}

}  // namespace llmq
