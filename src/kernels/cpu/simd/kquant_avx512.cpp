// The k-quant matrix product on AVX-512 (BW): each super-block unpacked into four 512-bit
// registers of codes in ggml's element order, its 16 scales and offsets into int16 vectors,
// then per token vpmaddubsw (codes x int8 activations, pairs) and vpmaddwd by the pair's
// sub-block scale (or, with AVX-512 VNNI, vpdpwssd: the same sums in one instruction). The
// lanes and the float sums are those kernels.h defines, so the result equals the scalar
// kernel bit for bit. Rows go one at a time (a decode streams each row's blocks once); up to
// 4 tokens share each unpacked block. The file is compiled with AVX-512 VNNI enabled, but
// only matmul_kq_avx512vnni uses it (vpdpwssd is never formed from vpmaddwd + vpaddd; the
// build's objdump check in tests/kquant_test.cpp's comment was done by hand).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/kernels.h"
#include "quant/ggml_blocks.h"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace llmq {
namespace {

// Every line of the block kPrefetch bytes ahead is prefetched (the weights stream once per
// token; one prefetch per 144-210 byte block left every other line to the hardware and
// streamed 13 GB/s; 8 KB ahead of every line, 24 GB/s on this host, 31 GB/s read peak).
constexpr int64_t kPrefetch = 8192;

struct Block {
  __m512i u[4];  // codes of elements 64c .. 64c+63
  __m256i s, o;  // 16 int16 scales and offsets (per 16 weights)
  float d, dm;
};

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// Bytes b of a 32-byte vector shifted right by sl (lower 32 bytes) and sh (upper 32 bytes)
// within 16-bit lanes, both halves from the same 32 bytes.
inline __m512i split_shift(__m256i v, int sl, int sh) {
  const __m512i x = _mm512_broadcast_i64x4(v);
  const __m512i cnt = _mm512_inserti64x4(_mm512_set1_epi16((short)sl), _mm256_set1_epi16((short)sh), 1);
  return _mm512_srlv_epi16(x, cnt);
}
// Bit (2c) of each byte for the lower 32 bytes, bit (2c+1) for the upper: the high-bit masks
// of Q3_K and Q5_K for elements 64c .. 64c+63.
inline __mmask64 hbits(__m512i h, int c) {
  const __m512i m = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * c))), _mm256_set1_epi8((char)(1 << (2 * c + 1))), 1);
  return _mm512_test_epi8_mask(h, m);
}
// 8 bytes to 16 int16, each twice (the 32-weight sub-blocks of Q4_K/Q5_K as 16-weight ones).
inline __m256i dup8(uint64_t b) {
  const __m128i x = _mm_cvtsi64_si128((long long)b);
  return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(x, x));
}
// Element of byte b of register r (kernels.h).
constexpr int elem(int T, int r, int b) {
  return T == 12 || T == 13 ? 64 * (2 * (r / 2) + b / 32) + 32 * (r % 2) + b % 32 : 64 * r + b;
}
// Q4_K/Q5_K scale bytes: 8 scales (sc) and 8 mins (mn), 6 bits each (ggml_blocks.cpp).
inline void scales_k4(const uint8_t* b, uint64_t& sc, uint64_t& mn) {
  uint32_t w[3];
  std::memcpy(w, b, 12);
  const uint32_t s03 = w[0] & 0x3f3f3f3f, m03 = w[1] & 0x3f3f3f3f;
  const uint32_t s47 = (w[2] & 0x0f0f0f0f) | (((w[0] >> 6) & 0x03030303) << 4);
  const uint32_t m47 = ((w[2] >> 4) & 0x0f0f0f0f) | (((w[1] >> 6) & 0x03030303) << 4);
  sc = s03 | ((uint64_t)s47 << 32);
  mn = m03 | ((uint64_t)m47 << 32);
}

template <int T>
inline void unpack(const uint8_t* p, Block& x) {
  const __m512i m2 = _mm512_set1_epi8(3), m4 = _mm512_set1_epi8(15);
  if constexpr (T == 10) {  // Q2_K: scales[16] qs[64] d dmin
    for (int c = 0; c < 4; c++) {
      const __m256i q = _mm256_loadu_si256((const __m256i*)(p + 16 + 32 * (c / 2)));
      x.u[c] = _mm512_and_si512(split_shift(q, 4 * (c % 2), 4 * (c % 2) + 2), m2);
    }
    const __m128i sc = _mm_loadu_si128((const __m128i*)p);
    x.s = _mm256_cvtepu8_epi16(_mm_and_si128(sc, _mm_set1_epi8(15)));
    x.o = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(15)));
    uint16_t h[2];
    std::memcpy(h, p + 80, 4);
    x.d = h2f(h[0]), x.dm = h2f(h[1]);
  } else if constexpr (T == 11) {  // Q3_K: hmask[32] qs[64] scales[12] d
    const __m512i hm = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)p));
    for (int c = 0; c < 4; c++) {
      const __m256i q = _mm256_loadu_si256((const __m256i*)(p + 32 + 32 * (c / 2)));
      const __m512i lo = _mm512_and_si512(split_shift(q, 4 * (c % 2), 4 * (c % 2) + 2), m2);
      x.u[c] = _mm512_mask_add_epi8(lo, hbits(hm, c), lo, _mm512_set1_epi8(4));
    }
    uint32_t w[3];
    std::memcpy(w, p + 96, 12);
    uint32_t s[4];
    s[0] = (w[0] & 0x0f0f0f0f) | ((w[2] & 0x03030303) << 4);
    s[1] = (w[1] & 0x0f0f0f0f) | (((w[2] >> 2) & 0x03030303) << 4);
    s[2] = ((w[0] >> 4) & 0x0f0f0f0f) | (((w[2] >> 4) & 0x03030303) << 4);
    s[3] = ((w[1] >> 4) & 0x0f0f0f0f) | (((w[2] >> 6) & 0x03030303) << 4);
    // Built in registers (a 16-byte load of four 4-byte stores would stall store forwarding).
    const __m128i sv = _mm_set_epi32((int)s[3], (int)s[2], (int)s[1], (int)s[0]);
    x.s = x.o = _mm256_sub_epi16(_mm256_cvtepu8_epi16(sv), _mm256_set1_epi16(32));
    uint16_t h;
    std::memcpy(&h, p + 108, 2);
    x.d = h2f(h), x.dm = 4.f * x.d;
  } else if constexpr (T == 12 || T == 13) {  // Q4_K: d dmin scales[12] qs[128]; Q5_K: ... qh[32] qs[128]
    // The Q4_K/Q5_K order: register r holds the low (r even) or high nibbles of code bytes
    // 64(r/2) .. 64(r/2)+63; no shuffles.
    const uint8_t* qs = p + (T == 13 ? 48 : 16);
    const __m512i z0 = _mm512_loadu_si512((const void*)qs), z1 = _mm512_loadu_si512((const void*)(qs + 64));
    x.u[0] = _mm512_and_si512(z0, m4);
    x.u[1] = _mm512_and_si512(_mm512_srli_epi16(z0, 4), m4);
    x.u[2] = _mm512_and_si512(z1, m4);
    x.u[3] = _mm512_and_si512(_mm512_srli_epi16(z1, 4), m4);
    if constexpr (T == 13) {  // bit e/32 of qh[e%32]: 4(r/2) + r%2, plus 2 for the upper 32 bytes
      const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(p + 16)));
      for (int r = 0; r < 4; r++) {
        const int lo = 4 * (r / 2) + r % 2;
        const __m512i m = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << lo)), _mm256_set1_epi8((char)(1 << (lo + 2))), 1);
        x.u[r] = _mm512_mask_add_epi8(x.u[r], _mm512_test_epi8_mask(qh, m), x.u[r], _mm512_set1_epi8(16));
      }
    }
    uint64_t sc, mn;
    scales_k4(p + 4, sc, mn);
    x.s = dup8(sc), x.o = dup8(mn);
    uint16_t h[2];
    std::memcpy(h, p, 4);
    x.d = h2f(h[0]), x.dm = h2f(h[1]);
  } else {  // Q6_K: ql[128] qh[64] scales[16] d
    for (int c = 0; c < 4; c++) {
      const int h = c / 2, s = c % 2;
      const __m512i ql = _mm512_loadu_si512((const void*)(p + 64 * h));
      const __m512i lo = _mm512_and_si512(s ? _mm512_srli_epi16(ql, 4) : ql, m4);
      const __m256i qh = _mm256_loadu_si256((const __m256i*)(p + 128 + 32 * h));
      const __m512i hi = _mm512_slli_epi16(_mm512_and_si512(split_shift(qh, 4 * s, 4 * s + 2), m2), 4);
      x.u[c] = _mm512_or_si512(lo, hi);
    }
    x.s = x.o = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(p + 192)));
    uint16_t h;
    std::memcpy(&h, p + 208, 2);
    x.d = h2f(h), x.dm = 32.f * x.d;
  }
}

// Lane reductions of kernels.h (v[l] += v[l + w], w = 8, 4, 2, 1; then 4, 2, 1).
inline float reduce8(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  a = _mm_add_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}
inline float reduce16(__m512 v) {
  return reduce8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

template <bool VNNI>
inline __m512i dot_acc(__m512i acc, __m512i p, __m512i s);
template <>
inline __m512i dot_acc<false>(__m512i acc, __m512i p, __m512i s) {
  return _mm512_add_epi32(acc, _mm512_madd_epi16(p, s));
}
template <>
inline __m512i dot_acc<true>(__m512i acc, __m512i p, __m512i s) {
  return _mm512_dpwssd_epi32(acc, p, s);
}

// NR rows x NT tokens per pass (NR independent rows keep more work in flight for decode).
template <int T, int NR, int NT, bool VNNI>
void rows_tile(const KQMatView& W, const KQActView& X, float* Y, int64_t i0, int64_t ldy, int64_t m0, int64_t m1) {
  const int64_t K = W.K, nb = K / kQK_K, bb = W.row_bytes / nb;
  // Pair j of register r belongs to sub-block elem(r, 2j)/16.
  constexpr bool k45 = T == 12 || T == 13;
  const int8_t* xq = k45 ? X.q45 : X.q;
  alignas(64) int16_t lane[4][32];
  for (int r = 0; r < 4; r++)
    for (int j = 0; j < 32; j++) lane[r][j] = (int16_t)(elem(T, r, 2 * j) / 16);
  __m512i idx[4];
  for (int r = 0; r < 4; r++) idx[r] = _mm512_load_si512(lane[r]);
  for (int64_t m = m0; m < m1; m += NR) {
    const int nr = (int)std::min<int64_t>(NR, m1 - m);  // the last pass may have fewer rows
    __m512 F[NR][NT];
    __m256 G[NR][NT];
    for (int j = 0; j < NR; j++)
      for (int t = 0; t < NT; t++) F[j][t] = _mm512_setzero_ps(), G[j][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
      for (int j = 0; j < NR; j++) {
        const uint8_t* p = W.w + (m + (j < nr ? j : 0)) * W.row_bytes + b * bb;
        Block x;
        unpack<T>(p, x);
        for (int64_t o = 0; o < bb; o += 64) _mm_prefetch((const char*)(p + kPrefetch + o), _MM_HINT_T0);
        __m512i S[4];
        const __m512i s512 = _mm512_castsi256_si512(x.s);
        for (int c = 0; c < 4; c++) S[c] = _mm512_permutexvar_epi16(idx[c], s512);
        for (int t = 0; t < NT; t++) {
          const int64_t i = i0 + t;
          const int8_t* q = xq + i * K + b * kQK_K;
          // Two chains (registers 0-1 and 2-3), summed: the same exact integer lanes.
          __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
          a0 = dot_acc<VNNI>(a0, _mm512_maddubs_epi16(x.u[0], _mm512_loadu_si512((const void*)q)), S[0]);
          a1 = dot_acc<VNNI>(a1, _mm512_maddubs_epi16(x.u[2], _mm512_loadu_si512((const void*)(q + 128))), S[2]);
          a0 = dot_acc<VNNI>(a0, _mm512_maddubs_epi16(x.u[1], _mm512_loadu_si512((const void*)(q + 64))), S[1]);
          a1 = dot_acc<VNNI>(a1, _mm512_maddubs_epi16(x.u[3], _mm512_loadu_si512((const void*)(q + 192))), S[3]);
          const float xd = X.d[i * nb + b];
          F[j][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1)), _mm512_set1_ps(xd * x.d), F[j][t]);
          const __m256i bs = _mm256_loadu_si256((const __m256i*)(X.bsum + i * (K / 16) + b * 16));
          G[j][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(x.o, bs)), _mm256_set1_ps(xd * x.dm), G[j][t]);
        }
      }
    }
    for (int j = 0; j < nr; j++)
      for (int t = 0; t < NT; t++) Y[(i0 + t) * ldy + m + j] = reduce16(F[j][t]) - reduce8(G[j][t]);
  }
}

template <int T, bool VNNI>
void matmul_type(const KQMatView& W, const KQActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0, int64_t m1) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) rows_tile<T, 1, 8, VNNI>(W, X, Y, i, ldy, m0, m1);
  for (; i + 4 <= n; i += 4) rows_tile<T, 1, 4, VNNI>(W, X, Y, i, ldy, m0, m1);
  switch (n - i) {
    case 3: rows_tile<T, 1, 3, VNNI>(W, X, Y, i, ldy, m0, m1); break;
    case 2: rows_tile<T, 1, 2, VNNI>(W, X, Y, i, ldy, m0, m1); break;
    case 1: rows_tile<T, 1, 1, VNNI>(W, X, Y, i, ldy, m0, m1); break;
    default: break;
  }
}

template <bool VNNI>
void matmul_kq(const KQMatView& W, const KQActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0, int64_t m1) {
  switch (W.type) {
    case 10: return matmul_type<10, VNNI>(W, X, Y, n, ldy, m0, m1);
    case 11: return matmul_type<11, VNNI>(W, X, Y, n, ldy, m0, m1);
    case 12: return matmul_type<12, VNNI>(W, X, Y, n, ldy, m0, m1);
    case 13: return matmul_type<13, VNNI>(W, X, Y, n, ldy, m0, m1);
    default: return matmul_type<14, VNNI>(W, X, Y, n, ldy, m0, m1);
  }
}

}  // namespace

void matmul_kq_avx512(const KQMatView& W, const KQActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0,
                      int64_t m1) {
  matmul_kq<false>(W, X, Y, n, ldy, m0, m1);
}
void matmul_kq_avx512vnni(const KQMatView& W, const KQActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0,
                          int64_t m1) {
  matmul_kq<true>(W, X, Y, n, ldy, m0, m1);
}

}  // namespace llmq
