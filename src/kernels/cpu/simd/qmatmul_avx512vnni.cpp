// Quantized matrix product for AVX-512 VNNI. The weights are interleaved in panels of 16
// rows (kernels.h), so one 512-bit vpdpbusd multiplies 4 codes of each of 16 rows by the
// same 4 activation codes, broadcast: 64 multiply-adds per instruction, no horizontal sums.
// Codes are unsigned (u8 weights, 0..255 or 0..15) times signed int8 activations, which is
// vpdpbusd's operand order, so no sign handling is needed. After each 32-column block the
// int32 sums are converted and scaled by the activation block's scale; after each weight
// group by the group's weight scale, less the zero-point term.
//
// A tile is NP panels x NT tokens, all accumulators in registers (NP*NT independent
// vpdpbusd chains: enough in flight to hide its latency). Decode (one token) takes 4 panels
// at a time; prefill 2 panels x 4 tokens, the panels' weights reused from cache for every
// group of 4 tokens.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/kernels.h"

// GCC 12 reports the deliberately undefined pass-through operand inside the header's
// _mm512_cvtepi32_ps as uninitialized (a false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace llmq {
namespace {

constexpr int64_t kPrefetch = 1024;  // bytes ahead in each weight stream (decode)

inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// The 16 rows' scales and zero-point terms of (panel, group) index i = p*(K/group) + g.
inline void group_scales(const QMatView& W, int64_t i, __m512& s, __m512& zs) {
  if (W.sz16 && W.szs == 16) {
    s = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(W.sz16 + i * 16)));
    zs = _mm512_mul_ps(s, _mm512_set1_ps(W.zero));
  } else if (W.sz16) {
    const __m512i v = _mm512_loadu_si512(W.sz16 + i * 32);
    s = _mm512_cvtph_ps(_mm512_castsi512_si256(v));
    zs = _mm512_mul_ps(s, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1)));
  } else {
    s = _mm512_loadu_ps(W.scale + i * kQPanel);
    zs = _mm512_loadu_ps(W.zs + i * kQPanel);
  }
}

// Panels p0, p0 + ps, ..., p0 + (NP-1)*ps.
template <int BITS, int NP, int NT>
void tile(const QMatView& W, const QActView& X, float* Y, int64_t ldy, int64_t p0, int64_t m1, int64_t ps = 1) {
  const int64_t K = W.K, G = W.group, ng = K / G, nb = K / 32, bpg = G / 32;
  constexpr int64_t kBytesPerCol = BITS == 8 ? kQPanel : kQPanel / 2;  // per panel
  const uint8_t* wp[NP];
  int64_t pan[NP];
  for (int j = 0; j < NP; j++) pan[j] = p0 + j * ps, wp[j] = W.q + pan[j] * K * kBytesPerCol;
  const int8_t* xq[NT];
  const float *xs[NT], *gs[NT];
  for (int t = 0; t < NT; t++) xq[t] = X.q + t * K, xs[t] = X.bscale + t * nb, gs[t] = X.gsum + t * ng;
  const __m512i lo4 = _mm512_set1_epi8(15);
  __m512 out[NP][NT];
  for (int j = 0; j < NP; j++)
    for (int t = 0; t < NT; t++) out[j][t] = _mm512_setzero_ps();
  // The scales and zero points are a second stream per panel (32, 64 or 128 bytes per group):
  // prefetched as far ahead as the codes, so a group's scales are not a demand miss.
  const int64_t sz_ahead = kPrefetch / (G * kBytesPerCol) + 1;  // groups
  for (int64_t g = 0; g < ng; g++) {
    if constexpr (NT == 1) {
      if (g + sz_ahead < ng)
        for (int j = 0; j < NP; j++) {
          const int64_t i = pan[j] * ng + g + sz_ahead;
          if (W.sz16) {
            _mm_prefetch((const char*)(W.sz16 + i * W.szs), _MM_HINT_T0);
          } else {
            _mm_prefetch((const char*)(W.scale + i * kQPanel), _MM_HINT_T0);
            _mm_prefetch((const char*)(W.zs + i * kQPanel), _MM_HINT_T0);
          }
        }
    }
    __m512 accf[NP][NT];
    for (int j = 0; j < NP; j++)
      for (int t = 0; t < NT; t++) accf[j][t] = _mm512_setzero_ps();
    for (int64_t b = g * bpg; b < (g + 1) * bpg; b++) {
      // Two accumulators per (panel, token) in decode: even and odd steps (8-bit), low and
      // high nibbles (4-bit, one instruction fewer per 64 bytes, below).
      constexpr int C = NT == 1 ? 2 : 1;
      __m512i acc[C][NP][NT];
      for (int c = 0; c < C; c++)
        for (int j = 0; j < NP; j++)
          for (int t = 0; t < NT; t++) acc[c][j][t] = _mm512_setzero_si512();
      if constexpr (BITS == 8) {
        for (int64_t k0 = b * 32; k0 < b * 32 + 32; k0 += 4 * C)
          for (int c = 0; c < C; c++) {
            const int64_t k = k0 + 4 * c;
            __m512i x[NT];
            for (int t = 0; t < NT; t++) x[t] = bcast4(xq[t] + k);
            for (int j = 0; j < NP; j++) {
              if constexpr (NT == 1) _mm_prefetch((const char*)(wp[j] + k * kQPanel + kPrefetch), _MM_HINT_T0);
              const __m512i w = _mm512_loadu_si512(wp[j] + k * kQPanel);
              for (int t = 0; t < NT; t++) acc[c][j][t] = _mm512_dpbusd_epi32(acc[c][j][t], w, x[t]);
            }
          }
      } else {
        for (int64_t k = b * 32; k < b * 32 + 32; k += 8) {
          __m512i xl[NT], xh[NT];
          for (int t = 0; t < NT; t++) xl[t] = bcast4(xq[t] + k), xh[t] = bcast4(xq[t] + k + 4);
          for (int j = 0; j < NP; j++) {
            if constexpr (NT == 1) _mm_prefetch((const char*)(wp[j] + k * (kQPanel / 2) + kPrefetch), _MM_HINT_T0);
            const __m512i v = _mm512_loadu_si512(wp[j] + k * (kQPanel / 2));
            // With a separate high-nibble accumulator the high nibble is used in place, as
            // 16 * code (v & 0xf0), and the sum shifted right by 4 once per block (exact: a
            // multiple of 16); one instruction fewer per 64 bytes.
            const __m512i wl = _mm512_and_si512(v, lo4);
            const __m512i wh = C == 2 ? _mm512_andnot_si512(lo4, v) : _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
            for (int t = 0; t < NT; t++) {
              acc[0][j][t] = _mm512_dpbusd_epi32(acc[0][j][t], wl, xl[t]);
              acc[C - 1][j][t] = _mm512_dpbusd_epi32(acc[C - 1][j][t], wh, xh[t]);
            }
          }
        }
      }
      if constexpr (C == 2)
        for (int j = 0; j < NP; j++)
          for (int t = 0; t < NT; t++)
            acc[0][j][t] = _mm512_add_epi32(acc[0][j][t], BITS == 4 ? _mm512_srai_epi32(acc[1][j][t], 4) : acc[1][j][t]);
      for (int t = 0; t < NT; t++) {
        const __m512 s = _mm512_set1_ps(xs[t][b]);
        for (int j = 0; j < NP; j++) accf[j][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[0][j][t]), s, accf[j][t]);
      }
    }
    for (int j = 0; j < NP; j++) {
      __m512 s, z;
      group_scales(W, pan[j] * ng + g, s, z);
      for (int t = 0; t < NT; t++)
        out[j][t] = _mm512_fnmadd_ps(z, _mm512_set1_ps(gs[t][g]), _mm512_fmadd_ps(accf[j][t], s, out[j][t]));
    }
  }
  for (int j = 0; j < NP; j++) {
    const int64_t m = (p0 + j * ps) * kQPanel;
    const __mmask16 mask = m + kQPanel <= m1 ? (__mmask16)0xFFFF : (__mmask16)((1u << (m1 - m)) - 1);
    for (int t = 0; t < NT; t++) _mm512_mask_storeu_ps(Y + t * ldy + m, mask, out[j][t]);
  }
}

// Tokens in tiles of 4 (the remainder as one smaller tile) for NP panels from p.
template <int BITS, int NP>
void token_tiles(const QMatView& W, const QActView& X, float* Y, int64_t n, int64_t ldy, int64_t p, int64_t m1) {
  const int64_t K = W.K, nb = K / 32, ng = K / W.group;
  for (int64_t t0 = 0; t0 < n; t0 += 4) {
    const QActView x = {X.q + t0 * K, X.bscale + t0 * nb, X.gsum + t0 * ng};
    float* y = Y + t0 * ldy;
    switch (std::min<int64_t>(4, n - t0)) {
      case 4: tile<BITS, NP, 4>(W, x, y, ldy, p, m1); break;
      case 3: tile<BITS, NP, 3>(W, x, y, ldy, p, m1); break;
      case 2: tile<BITS, NP, 2>(W, x, y, ldy, p, m1); break;
      default: tile<BITS, NP, 1>(W, x, y, ldy, p, m1); break;
    }
  }
}

template <int BITS>
void matmul_q_impl(const QMatView& W, const QActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0, int64_t m1) {
  const int64_t p_end = (m1 + kQPanel - 1) / kQPanel;
  int64_t p = m0 / kQPanel;
  if (n == 1) {
    // Decode: four weight streams per thread, from the four quarters of the rows, each
    // prefetched 2 KiB ahead (bench_kernels: 4 streams ~10% faster than 2, which were
    // faster than 1 or than neighbouring panels; a plain read of 1 GiB shows the same).
    const int64_t quarter = (p_end - p) / 4;
    for (int64_t i = 0; i < quarter; i++) tile<BITS, 4, 1>(W, X, Y, ldy, p + i, m1, quarter);
    p += 4 * quarter;
    if (p + 2 <= p_end) tile<BITS, 2, 1>(W, X, Y, ldy, p, m1), p += 2;
    for (; p < p_end; p++) tile<BITS, 1, 1>(W, X, Y, ldy, p, m1);
  }
  for (; p + 2 <= p_end; p += 2) token_tiles<BITS, 2>(W, X, Y, n, ldy, p, m1);
  for (; p < p_end; p++) token_tiles<BITS, 1>(W, X, Y, n, ldy, p, m1);
}

}  // namespace

void matmul_q_avx512vnni(const QMatView& W, const QActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0,
                         int64_t m1) {
  if (W.bits == 8) matmul_q_impl<8>(W, X, Y, n, ldy, m0, m1);
  else matmul_q_impl<4>(W, X, Y, n, ldy, m0, m1);
}

}  // namespace llmq
