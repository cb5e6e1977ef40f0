// AVX-512 (F, BW, VL, DQ) kernel table (16 floats per vector).
#include <immintrin.h>

// GCC 12 reports the deliberately undefined pass-through operands inside the header's
// reductions and conversions as uninitialized (a false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cpu/kernels.h"

namespace llmq::avx512 {
namespace {
constexpr const char* kIsaName = "avx512";

struct V {
  using F = __m512;
  static constexpr int L = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F sqrt(F a) { return _mm512_sqrt_ps(a); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F round(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F abs(F a) { return _mm512_abs_ps(a); }
  static F zero_nan(F a) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, a, _CMP_ORD_Q), a); }
  // v holds integers in [-127, 127].
  static void store_i8(int8_t* p, F v) { _mm_storeu_si128((__m128i*)p, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v))); }
  static F pow2i(F n) {
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_castsi512_ps(e);
  }
  static float hsum(F v) { return _mm512_reduce_add_ps(v); }
  // Lane i = the sum of the lanes of v[i], i < 16: halving steps that each add two vectors'
  // halves side by side (4 levels, 45 instructions for 16 sums). After the four levels
  // lane 4l + k holds the sum of input l + 4k, so the inputs are taken in that order.
  static F transpose_sum(const F* v) {
    auto in = [v](int j) { return v[4 * (j % 4) + j / 4]; };
    F w[8], x[4];
    for (int i = 0; i < 8; i++) {
      const F a = in(2 * i), b = in(2 * i + 1);  // 128-bit lanes [a0 a1 b0 b1] + [a2 a3 b2 b3]
      w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));
    }
    for (int j = 0; j < 4; j++)  // [a0 a2 b0 b2] + [a1 a3 b1 b3]: lane l holds input 4j + l
      x[j] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * j], w[2 * j + 1], 0x88),
                           _mm512_shuffle_f32x4(w[2 * j], w[2 * j + 1], 0xdd));
    const F s01 = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
    const F s23 = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
    return _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xee));
  }
  static float hmax(F v) { return _mm512_reduce_max_ps(v); }
  static F load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
  static F load_e4m3(const uint8_t* p) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
    const __m512i mag = _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x7f)), 20);
    const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0x80)), 24);
    return _mm512_mul_ps(_mm512_castsi512_ps(_mm512_or_si512(mag, sign)), _mm512_set1_ps(0x1p120f));
  }
  static void load_bf16_pairs(const uint16_t* p, F& even, F& odd) {
    __m512i v = _mm512_loadu_si512(p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
  }
  static void store_interleaved(float* y, F even, F odd) {
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    _mm512_storeu_ps(y, _mm512_permutex2var_ps(even, lo, odd));
    _mm512_storeu_ps(y + L, _mm512_permutex2var_ps(even, hi, odd));
  }
#include "kernels/cpu/simd/vec_exp.inc"
};

#include "kernels/cpu/simd/kernels_simd.inc"
}  // namespace
}  // namespace llmq::avx512

const llmq::CpuKernels* llmq::cpu_kernels_avx512() { return &llmq::avx512::kTable; }
