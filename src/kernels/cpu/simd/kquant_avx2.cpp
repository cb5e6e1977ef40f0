// The k-quant matrix product on AVX2: the 512-bit kernel's lanes (kernels.h) in pairs of
// 256-bit registers. Each super-block is unpacked 32 codes at a time (register c' holds
// elements 32c' .. 32c'+31: the lower or upper half of the 512-bit kernel's register c'/2),
// multiplied by up to 2 tokens' int8 activations with vpmaddubsw, then by the sub-block
// scales with vpmaddwd into two int32 accumulators (even and odd c': lanes 0-7 and 8-15).
// Equal to the scalar kernel bit for bit.
#include <immintrin.h>

#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/kernels.h"
#include "quant/ggml_blocks.h"

namespace llmq {
namespace {

// Every line of the block kPrefetch bytes ahead is prefetched (the weights stream once per
// token; one prefetch per 144-210 byte block left every other line to the hardware and
// streamed 13 GB/s; 8 KB ahead of every line, 24 GB/s on this host, 31 GB/s read peak).
constexpr int64_t kPrefetch = 8192;

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

inline __m256i srl16(__m256i v, int n) { return _mm256_srl_epi16(v, _mm_cvtsi32_si128(n)); }
// 0xff in each byte of v with bit `bit` set.
inline __m256i bit_set(__m256i v, int bit) {
  const __m256i b = _mm256_set1_epi8((char)(1 << bit));
  return _mm256_cmpeq_epi8(_mm256_and_si256(v, b), b);
}

struct Scales {
  alignas(32) int16_t s[16];  // read back one at a time (broadcasts)
  __m256i o;                  // built in registers: a 32-byte load of 2-byte stores stalls
  float d, dm;
};

template <int T>
inline void scales(const uint8_t* p, Scales& x) {
  if constexpr (T == 10) {
    for (int j = 0; j < 16; j++) x.s[j] = p[j] & 15;
    x.o = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i*)p), 4), _mm_set1_epi8(15)));
    uint16_t h[2];
    std::memcpy(h, p + 80, 4);
    x.d = h2f(h[0]), x.dm = h2f(h[1]);
  } else if constexpr (T == 11) {
    uint32_t w[3], s[4];
    std::memcpy(w, p + 96, 12);
    s[0] = (w[0] & 0x0f0f0f0f) | ((w[2] & 0x03030303) << 4);
    s[1] = (w[1] & 0x0f0f0f0f) | (((w[2] >> 2) & 0x03030303) << 4);
    s[2] = ((w[0] >> 4) & 0x0f0f0f0f) | (((w[2] >> 4) & 0x03030303) << 4);
    s[3] = ((w[1] >> 4) & 0x0f0f0f0f) | (((w[2] >> 6) & 0x03030303) << 4);
    const __m128i sv = _mm_set_epi32((int)s[3], (int)s[2], (int)s[1], (int)s[0]);  // no store-forwarding stall
    const __m256i v = _mm256_sub_epi16(_mm256_cvtepu8_epi16(sv), _mm256_set1_epi16(32));
    _mm256_store_si256((__m256i*)x.s, v);
    x.o = v;
    uint16_t h;
    std::memcpy(&h, p + 108, 2);
    x.d = h2f(h), x.dm = 4.f * x.d;
  } else if constexpr (T == 12 || T == 13) {
    uint32_t w[3];
    std::memcpy(w, p + 4, 12);
    uint8_t sc[8], mn[8];
    const uint32_t s03 = w[0] & 0x3f3f3f3f, m03 = w[1] & 0x3f3f3f3f;
    const uint32_t s47 = (w[2] & 0x0f0f0f0f) | (((w[0] >> 6) & 0x03030303) << 4);
    const uint32_t m47 = ((w[2] >> 4) & 0x0f0f0f0f) | (((w[1] >> 6) & 0x03030303) << 4);
    std::memcpy(sc, &s03, 4), std::memcpy(sc + 4, &s47, 4), std::memcpy(mn, &m03, 4), std::memcpy(mn + 4, &m47, 4);
    for (int j = 0; j < 16; j++) x.s[j] = sc[j / 2];
    const __m128i m = _mm_cvtsi64_si128((long long)((uint64_t)m03 | ((uint64_t)m47 << 32)));
    x.o = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m));
    uint16_t h[2];
    std::memcpy(h, p, 4);
    x.d = h2f(h[0]), x.dm = h2f(h[1]);
  } else {
    const __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(p + 192)));
    _mm256_store_si256((__m256i*)x.s, v);
    x.o = v;
    uint16_t h;
    std::memcpy(&h, p + 208, 2);
    x.d = h2f(h), x.dm = 32.f * x.d;
  }
}

// Codes of elements 32c .. 32c+31.
template <int T>
inline __m256i codes(const uint8_t* p, int c) {
  const __m256i m2 = _mm256_set1_epi8(3), m4 = _mm256_set1_epi8(15);
  if constexpr (T == 10 || T == 11) {
    const uint8_t* qs = p + (T == 10 ? 16 : 32);
    __m256i u = _mm256_and_si256(srl16(_mm256_loadu_si256((const __m256i*)(qs + 32 * (c / 4))), 2 * (c % 4)), m2);
    if constexpr (T == 11)
      u = _mm256_add_epi8(u, _mm256_and_si256(bit_set(_mm256_loadu_si256((const __m256i*)p), c), _mm256_set1_epi8(4)));
    return u;
  } else if constexpr (T == 12 || T == 13) {
    // The Q4_K/Q5_K order (kernels.h): register r = c/2, half c%2: code bytes of chunk
    // 2(r/2) + c%2, nibble r%2.
    const uint8_t* qs = p + (T == 13 ? 48 : 16);
    const int r = c / 2, chunk = 2 * (r / 2) + c % 2;
    __m256i u = _mm256_and_si256(srl16(_mm256_loadu_si256((const __m256i*)(qs + 32 * chunk)), 4 * (r % 2)), m4);
    if constexpr (T == 13)
      u = _mm256_add_epi8(u, _mm256_and_si256(bit_set(_mm256_loadu_si256((const __m256i*)(p + 16)), 2 * chunk + r % 2),
                                              _mm256_set1_epi8(16)));
    return u;
  } else {
    const int h = c / 4, j = c % 4;
    const __m256i lo = _mm256_and_si256(srl16(_mm256_loadu_si256((const __m256i*)(p + 64 * h + 32 * (j % 2))), 4 * (j / 2)), m4);
    const __m256i hi = _mm256_and_si256(srl16(_mm256_loadu_si256((const __m256i*)(p + 128 + 32 * h)), 2 * j), m2);
    return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
  }
}

inline float reduce8(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  a = _mm_add_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}

template <int T, int NT>
void rows_tile(const KQMatView& W, const KQActView& X, float* Y, int64_t i0, int64_t ldy, int64_t m0, int64_t m1) {
  const int64_t K = W.K, nb = K / kQK_K, bb = W.row_bytes / nb;
  constexpr bool k45 = T == 12 || T == 13;
  const int8_t* xq = k45 ? X.q45 : X.q;
  for (int64_t m = m0; m < m1; m++) {
    const uint8_t* row = W.w + m * W.row_bytes;
    __m256 F[NT][2], G[NT];
    for (int t = 0; t < NT; t++) F[t][0] = F[t][1] = G[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
      const uint8_t* p = row + b * bb;
      for (int64_t o = 0; o < bb; o += 64) _mm_prefetch((const char*)(p + kPrefetch + o), _MM_HINT_T0);
      Scales x;
      scales<T>(p, x);
      __m256i acc[NT][2];
      for (int t = 0; t < NT; t++) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
      for (int c = 0; c < 8; c++) {
        const __m256i u = codes<T>(p, c);
        // Pairs 0-7 and 8-15 of this register: sub-blocks base and base + 1.
        const int base = k45 ? 8 * (c / 4) + 4 * (c % 2) + 2 * ((c / 2) % 2) : 2 * c;
        const __m256i s = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(x.s[base])),
                                                  _mm_set1_epi16(x.s[base + 1]), 1);
        for (int t = 0; t < NT; t++) {
          const __m256i q = _mm256_loadu_si256((const __m256i*)(xq + (i0 + t) * K + b * kQK_K + 32 * c));
          acc[t][c % 2] = _mm256_add_epi32(acc[t][c % 2], _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), s));
        }
      }
      const __m256i o = x.o;
      for (int t = 0; t < NT; t++) {
        const int64_t i = i0 + t;
        const float xd = X.d[i * nb + b];
        const __m256 f = _mm256_set1_ps(xd * x.d);
        F[t][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[t][0]), f, F[t][0]);
        F[t][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[t][1]), f, F[t][1]);
        const __m256i bs = _mm256_loadu_si256((const __m256i*)(X.bsum + i * (K / 16) + b * 16));
        G[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(o, bs)), _mm256_set1_ps(xd * x.dm), G[t]);
      }
    }
    for (int t = 0; t < NT; t++) Y[(i0 + t) * ldy + m] = reduce8(_mm256_add_ps(F[t][0], F[t][1])) - reduce8(G[t]);
  }
}

template <int T>
void matmul_type(const KQMatView& W, const KQActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0, int64_t m1) {
  int64_t i = 0;
  for (; i + 2 <= n; i += 2) rows_tile<T, 2>(W, X, Y, i, ldy, m0, m1);
  if (i < n) rows_tile<T, 1>(W, X, Y, i, ldy, m0, m1);
}

}  // namespace

void matmul_kq_avx2(const KQMatView& W, const KQActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0, int64_t m1) {
  switch (W.type) {
    case 10: return matmul_type<10>(W, X, Y, n, ldy, m0, m1);
    case 11: return matmul_type<11>(W, X, Y, n, ldy, m0, m1);
    case 12: return matmul_type<12>(W, X, Y, n, ldy, m0, m1);
    case 13: return matmul_type<13>(W, X, Y, n, ldy, m0, m1);
    default: return matmul_type<14>(W, X, Y, n, ldy, m0, m1);
  }
}

}  // namespace llmq
