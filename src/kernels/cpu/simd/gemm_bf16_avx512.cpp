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

// Row m+r of W starts at w(r) and its pair kp at w(r) + kp*ps (ps 2 for row-major rows, 32
// for rows in packed panels). Rows [m, m+NR) against token panels [tp, tp+NJ) over the pairs
// [kp0, kp1) of the Kp2 pairs each packed panel holds (its stride) (the odd tail column, if any, is the
// caller's: see gemm_bf16_avx512bf16). The NR x NJ accumulators go to `store(r, j, acc)`.
template <int NR, int NJ, class RowAt, class Store>
inline void tile(RowAt&& row_at, int64_t ps, const uint16_t* Xp, int64_t Kp2, int64_t kp0, int64_t kp1, int64_t tp,
                 Store&& store) {
  const int32_t* xp[NJ];
  for (int j = 0; j < NJ; j++) xp[j] = reinterpret_cast<const int32_t*>(Xp) + (tp + j) * Kp2 * 16;
  const uint16_t* w[NR];
  for (int r = 0; r < NR; r++) w[r] = row_at(r);
  __m512 acc[NR][NJ];
  for (int r = 0; r < NR; r++)
    for (int j = 0; j < NJ; j++) acc[r][j] = _mm512_setzero_ps();
  for (int64_t kp = kp0; kp < kp1; kp++) {
    __m512bh x[NJ];
    for (int j = 0; j < NJ; j++) x[j] = (__m512bh)_mm512_loadu_si512(xp[j] + kp * 16);
    for (int r = 0; r < NR; r++) {
      int32_t v;
      std::memcpy(&v, w[r] + kp * ps, 4);
      const __m512bh b = (__m512bh)_mm512_set1_epi32(v);
      for (int j = 0; j < NJ; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], b, x[j]);
    }
  }
  for (int r = 0; r < NR; r++)
    for (int j = 0; j < NJ; j++) store(r, j, acc[r][j]);
}

// The prefill product's tile: whole pairs, then the odd last column (its pair's second
// weight is 0, as is the packed x); lane l of acc[r][j] is Y[token 16(tp+j)+l, row m+r],
// stored through a small buffer (NR*NJ*16 stores against NR*NJ*K/2 multiply instructions).
template <int NR, int NJ>
void tile_prefill(const uint16_t* W, const uint16_t* Xp, float* Y, int64_t K, int64_t n, int64_t ldy, int64_t m,
                  int64_t tp) {
  const int64_t Kh = K / 2, Kp2 = (K + 1) / 2;
  __m512 sum[NR][NJ];
  tile<NR, NJ>([&](int r) { return W + (m + r) * K; }, 2, Xp, Kp2, 0, Kh, tp,
               [&](int r, int j, __m512 a) { sum[r][j] = a; });
  if (K & 1) {
    __m512bh x[NJ];
    for (int j = 0; j < NJ; j++)
      x[j] = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const int32_t*>(Xp) + ((tp + j) * Kp2 + Kh) * 16);
    for (int r = 0; r < NR; r++) {
      const __m512bh b = (__m512bh)_mm512_set1_epi32((int32_t)W[(m + r) * K + K - 1]);
      for (int j = 0; j < NJ; j++) sum[r][j] = _mm512_dpbf16_ps(sum[r][j], b, x[j]);
    }
  }
  alignas(64) float buf[16];
  for (int j = 0; j < NJ; j++) {
    const int64_t t0 = (tp + j) * 16, nt = std::min<int64_t>(16, n - t0);
    for (int r = 0; r < NR; r++) {
      _mm512_store_ps(buf, sum[r][j]);
      for (int64_t l = 0; l < nt; l++) Y[(t0 + l) * ldy + m + r] = buf[l];
    }
  }
}

// All token panels for NR rows from m, NJ panels at a time.
template <int NR, int NJMAX>
void rows(const uint16_t* W, const uint16_t* Xp, float* Y, int64_t K, int64_t n, int64_t ldy, int64_t m) {
  const int64_t np = (n + 15) / 16;
  int64_t tp = 0;
  for (; tp + NJMAX <= np; tp += NJMAX) tile_prefill<NR, NJMAX>(W, Xp, Y, K, n, ldy, m, tp);
  if constexpr (NJMAX > 1) {
    if (np - tp >= 2) tile_prefill<NR, 2>(W, Xp, Y, K, n, ldy, m, tp), tp += 2;
  }
  if (tp < np) tile_prefill<NR, 1>(W, Xp, Y, K, n, ldy, m, tp);
}

// Tile shape: 8 rows x 3 token panels = 24 accumulators (of 32 registers), 3 activation
// loads and 8 broadcasts per 24 multiply instructions.
constexpr int kRows = 8, kPanels = 3;

// Training's row-major tile: lane l of acc[r][j] is C[m+r, 16(tp+j)+l], so each accumulator
// is one (masked at the edge) vector store, C = alpha*acc (+ C).
template <int NR, int NJ>
void tile_rows(const GemmBf16Args& a, int64_t kp0, int64_t kp1, int64_t m, int64_t tp, bool accumulate) {
  const __m512 alpha = _mm512_set1_ps(a.alpha);
  auto row_at = [&](int r) {
    const int64_t i = m + r;
    return a.a_panels ? a.A + ((i / 16) * a.Kp2 * 16 + i % 16) * 2 : a.A + i * a.lda;
  };
  tile<NR, NJ>(row_at, a.a_panels ? 32 : 2, a.Bp, a.b_kp2 ? a.b_kp2 : a.Kp2, kp0, kp1, tp, [&](int r, int j, __m512 acc) {
    const int64_t c0 = (tp + j) * 16, nc = std::min<int64_t>(16, a.n - c0);
    const __mmask16 mask = nc >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nc) - 1);
    float* c = a.C + (m + r) * a.ldc + c0;
    const __m512 v = accumulate ? _mm512_fmadd_ps(alpha, acc, _mm512_maskz_loadu_ps(mask, c)) : _mm512_mul_ps(alpha, acc);
    _mm512_mask_storeu_ps(c, mask, v);
  });
}

template <int NR>
void rows_train(const GemmBf16Args& a, int64_t kp0, int64_t kp1, int64_t m, int64_t tp0, int64_t tp1, bool accumulate) {
  int64_t tp = tp0;
  for (; tp + kPanels <= tp1; tp += kPanels) tile_rows<NR, kPanels>(a, kp0, kp1, m, tp, accumulate);
  if (tp1 - tp >= 2) tile_rows<NR, 2>(a, kp0, kp1, m, tp, accumulate), tp += 2;
  if (tp < tp1) tile_rows<NR, 1>(a, kp0, kp1, m, tp, accumulate);
}

}  // namespace

void gemm_bf16_avx512bf16(const uint16_t* W, const uint16_t* Xp, float* Y, int64_t K, int64_t n, int64_t ldy,
                          int64_t m0, int64_t m1) {
  int64_t m = m0;
  for (; m + kRows <= m1; m += kRows) rows<kRows, kPanels>(W, Xp, Y, K, n, ldy, m);
  for (; m + 4 <= m1; m += 4) rows<4, kPanels>(W, Xp, Y, K, n, ldy, m);
  for (; m < m1; m++) rows<1, kPanels>(W, Xp, Y, K, n, ldy, m);
}

}  // namespace llmq

namespace llmq {

// f32 -> bf16 with vcvtne2ps2bf16 (round to nearest even, as f32_to_bf16; it also treats
// denormal inputs as zero, which the training values never are in practice).
void pack_bf16_rows_avx512bf16(const float* S, int64_t ld, int64_t rows, int64_t k, uint16_t* dst) {
  const int64_t Kp = (k + 1) / 2 * 2;
  for (int64_t i = 0; i < rows; i++) {
    const float* s = S + i * ld;
    uint16_t* d = dst + i * Kp;
    for (int64_t c = 0; c < Kp; c += 32) {
      const int64_t nl = std::clamp<int64_t>(k - c, 0, 16), nh = std::clamp<int64_t>(k - c - 16, 0, 16);
      const __m512 lo = _mm512_maskz_loadu_ps((__mmask16)((1u << nl) - 1), s + c);
      const __m512 hi = _mm512_maskz_loadu_ps((__mmask16)((1u << nh) - 1), s + c + 16);
      const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
      const int64_t nd = std::min<int64_t>(32, Kp - c);
      _mm512_mask_storeu_epi16(d + c, nd >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << nd) - 1), v);
    }
  }
}

// Panels of X(j, c) = S[c*ld + j]: rows 2kp and 2kp+1 of S give the 16 pairs of a panel at
// once (converted together, then interleaved).
void pack_bf16_panels_t_avx512bf16(const float* S, int64_t ld, int64_t n, int64_t k, uint16_t* dst, int64_t p0,
                                   int64_t p1) {
  const int64_t Kp2 = (k + 1) / 2;
  alignas(64) static const uint16_t kIdx[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kIdx);
  // Blocks of 4 pairs (8 rows of S) across all the panels: each row is read as one run of
  // (p1 - p0) * 64 bytes. Panel by panel instead, the reads step down a column ld floats apart,
  // and with ld a multiple of 1024 every row lands in the same L1 set (9 GB/s against 36 for
  // the row packer at n 1024).
  for (int64_t kb = 0; kb < Kp2; kb += 4) {
    const int64_t ke = std::min(Kp2, kb + 4);
    for (int64_t p = p0; p < p1; p++) {
      const int64_t nr = std::clamp<int64_t>(n - p * 16, 0, 16);
      const __mmask16 mr = (__mmask16)((1u << nr) - 1);
      for (int64_t kp = kb; kp < ke; kp++) {
        const float* r0 = S + 2 * kp * ld + p * 16;
        const __m512 a = _mm512_maskz_loadu_ps(mr, r0);
        const __m512 b = 2 * kp + 1 < k ? _mm512_maskz_loadu_ps(mr, r0 + ld) : _mm512_setzero_ps();
        const __m512i v = _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(b, a));
        _mm512_storeu_si512(dst + (p * Kp2 + kp) * 32, v);
      }
    }
  }
}

// Panels of X(j, c) = S[j*ld + c]: 16 rows converted 32 columns at a time into a 16 x 16
// block of pairs, then written transposed (each pair column of the block is one 64-byte row
// of the panel).
void pack_bf16_panels_avx512bf16(const float* S, int64_t ld, int64_t n, int64_t k, uint16_t* dst, int64_t p0,
                                 int64_t p1) {
  const int64_t Kp2 = (k + 1) / 2;
  alignas(64) uint32_t blk[16 * 16];
  const __m512i rows16 = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(16));
  for (int64_t p = p0; p < p1; p++) {
    const int64_t nr = std::clamp<int64_t>(n - p * 16, 0, 16);
    for (int64_t kb = 0; kb < Kp2; kb += 4) {
      const int64_t c = 2 * kb, nl = std::clamp<int64_t>(k - c, 0, 16), nh = std::clamp<int64_t>(k - c - 16, 0, 16);
      for (int r = 0; r < 16; r++) {
        __m512i v = _mm512_setzero_si512();
        if (r < nr) {
          const float* s = S + (p * 16 + r) * ld + c;
          const __m512 lo = _mm512_maskz_loadu_ps((__mmask16)((1u << nl) - 1), s);
          const __m512 hi = _mm512_maskz_loadu_ps((__mmask16)((1u << nh) - 1), s + 16);
          v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        }
        _mm512_store_si512(blk + r * 16, v);
      }
      const int64_t nk = std::min<int64_t>(16, Kp2 - kb);
      for (int64_t q = 0; q < nk; q++)
        _mm512_storeu_si512(dst + (p * Kp2 + kb + q) * 32,
                            _mm512_i32gather_epi32(_mm512_add_epi32(rows16, _mm512_set1_epi32((int)q)), blk, 4));
    }
  }
}

// Blocked like GotoBLAS: 288 columns (18 panels, a multiple of the 3-panel tile) by 256 pairs
// of B is 288 KB, which stays in L2 while the rows stream past it 8 at a time (8 rows x 256
// pairs = 8 KB of A in L1).
void gemm_bf16_rows_avx512bf16(const GemmBf16Args& a, int64_t m0, int64_t m1) {
  constexpr int64_t kPanelBlock = 18, kPairBlock = 256;
  const int64_t np = (a.n + 15) / 16;
  for (int64_t tp0 = 0; tp0 < np; tp0 += kPanelBlock) {
    const int64_t tp1 = std::min(np, tp0 + kPanelBlock);
    for (int64_t kp0 = 0; kp0 < a.Kp2 || kp0 == 0; kp0 += kPairBlock) {
      const int64_t kp1 = std::min(a.Kp2, kp0 + kPairBlock);
      const bool acc = a.accumulate || kp0 > 0;
      int64_t m = m0;
      for (; m + kRows <= m1; m += kRows) rows_train<kRows>(a, kp0, kp1, m, tp0, tp1, acc);
      for (; m + 4 <= m1; m += 4) rows_train<4>(a, kp0, kp1, m, tp0, tp1, acc);
      for (; m < m1; m++) rows_train<1>(a, kp0, kp1, m, tp0, tp1, acc);
      if (a.Kp2 == 0) break;
    }
  }
}

}  // namespace llmq
