// ggml block quantization (the arithmetic of ggml's reference quantize_row_q8_0 and
// quantize_row_q4_0, written from the format's definition).
#include "quant/ggml_blocks.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace llmq {

void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++) {
    const float* v = x + b * 32;
    float amax = 0.f;
    for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
    y[b].d = f32_to_f16(d);
    for (int j = 0; j < 32; j++) y[b].qs[j] = (int8_t)std::nearbyint(v[j] * id);
  }
}

void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++) {
    const float* v = x + b * 32;
    float amax = 0.f, m = 0.f;
    for (int j = 0; j < 32; j++)
      if (std::fabs(v[j]) > amax) amax = std::fabs(v[j]), m = v[j];
    const float d = m / -8.f, id = d != 0.f ? 1.f / d : 0.f;
    y[b].d = f32_to_f16(d);
    for (int j = 0; j < 16; j++) {
      const int q0 = std::min(15, (int)(v[j] * id + 8.5f)), q1 = std::min(15, (int)(v[j + 16] * id + 8.5f));
      y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}

void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++) {
    const float d = f16_to_f32(x[b].d);
    for (int j = 0; j < 32; j++) y[b * 32 + j] = d * (float)x[b].qs[j];
  }
}

void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++) {
    const float d = f16_to_f32(x[b].d);
    for (int j = 0; j < 16; j++) {
      y[b * 32 + j] = d * (float)((x[b].qs[j] & 15) - 8);
      y[b * 32 + j + 16] = d * (float)((x[b].qs[j] >> 4) - 8);
    }
  }
}

double ggml_bits_per_weight(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return 32;
    case GgmlType::F16:
    case GgmlType::BF16: return 16;
    case GgmlType::Q8_0: return 8.0 * sizeof(BlockQ8_0) / 32;
    case GgmlType::Q4_0: return 8.0 * sizeof(BlockQ4_0) / 32;
    case GgmlType::Q2_K: return 8.0 * sizeof(BlockQ2_K) / kQK_K;
    case GgmlType::Q3_K: return 8.0 * sizeof(BlockQ3_K) / kQK_K;
    case GgmlType::Q4_K: return 8.0 * sizeof(BlockQ4_K) / kQK_K;
    case GgmlType::Q5_K: return 8.0 * sizeof(BlockQ5_K) / kQK_K;
    case GgmlType::Q6_K: return 8.0 * sizeof(BlockQ6_K) / kQK_K;
  }
  return 0;
}

bool kquant_scales_finite(GgmlType t, const uint8_t* blocks, uint64_t bytes) {
  // Offsets of the f16 fields in each block (ggml_blocks.h).
  int bb = 0, o1 = 0, o2 = -1;
  switch (t) {
    case GgmlType::Q2_K: bb = sizeof(BlockQ2_K), o1 = offsetof(BlockQ2_K, d), o2 = offsetof(BlockQ2_K, dmin); break;
    case GgmlType::Q3_K: bb = sizeof(BlockQ3_K), o1 = offsetof(BlockQ3_K, d); break;
    case GgmlType::Q4_K: bb = sizeof(BlockQ4_K), o1 = offsetof(BlockQ4_K, d), o2 = offsetof(BlockQ4_K, dmin); break;
    case GgmlType::Q5_K: bb = sizeof(BlockQ5_K), o1 = offsetof(BlockQ5_K, d), o2 = offsetof(BlockQ5_K, dmin); break;
    case GgmlType::Q6_K: bb = sizeof(BlockQ6_K), o1 = offsetof(BlockQ6_K, d); break;
    default: return false;
  }
  for (uint64_t b = 0; b + bb <= bytes; b += bb) {
    uint16_t h;
    std::memcpy(&h, blocks + b + o1, 2);
    if ((h & 0x7c00) == 0x7c00) return false;  // f16 exponent all ones: inf or NaN
    if (o2 >= 0) {
      std::memcpy(&h, blocks + b + o2, 2);
      if ((h & 0x7c00) == 0x7c00) return false;
    }
  }
  return true;
}

namespace {
// Q4_K/Q5_K: the j-th (0..7) 6-bit scale and min. Bytes 0-3 hold scales 0-3 in their low
// 6 bits, bytes 4-7 mins 0-3; scales and mins 4-7 take their low 4 bits from bytes 8-11
// (scale: low nibble, min: high nibble) and their high 2 bits from the top of bytes 0-3
// (scales) and 4-7 (mins).
void scale_min_k4(const uint8_t* s, int j, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (uint8_t)((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4));
    m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}
}  // namespace

// Element order inside a super-block (e = 0..255):
//  Q2_K: 2 halves of 128; in half h, code shift 2j (j = 0..3) of bytes qs[32h .. 32h+31]
//        gives e = 128h + 32j + l; sub-block e / 16.
//  Q3_K: low bits as Q2_K; high bit of e is bit e / 32 of hmask[e % 32]; the 16 scales: low
//        nibbles of bytes 0-7 (scales 0-7), high nibbles of bytes 0-7 (8-15), 2 high bits
//        from bytes 8-11 at shift 2 (i / 4) of byte 8 + i % 4.
//  Q4_K: 4 chunks of 64; in chunk c, the low then high nibbles of qs[32c .. 32c+31] give
//        e = 64c + 32h + l; sub-block e / 32.  Q5_K: plus bit e / 32 of qh[e % 32] as bit 4.
//  Q6_K: 2 halves of 128; low 4 bits: nibble s (0, 1) of ql[64h + m] for e = 128h + 64s + m;
//        high 2 bits: shift 2j of qh[32h + l] for e = 128h + 32j + l; sub-block e / 16.
void dequantize_row_kquant(GgmlType t, const void* blocks, float* y, int64_t n) {
  if (n % kQK_K) fail("k-quant row of {} weights is not a multiple of {}", n, kQK_K);
  const int64_t nb = n / kQK_K;
  for (int64_t b = 0; b < nb; b++, y += kQK_K) {
    switch (t) {
      case GgmlType::Q2_K: {
        const BlockQ2_K& x = static_cast<const BlockQ2_K*>(blocks)[b];
        const float d = f16_to_f32(x.d), dmin = f16_to_f32(x.dmin);
        for (int e = 0; e < 256; e++) {
          const int h = e / 128, j = (e / 32) % 4, l = e % 32, sb = e / 16;
          const int q = (x.qs[32 * h + l] >> (2 * j)) & 3;
          const float dl = d * (float)(x.scales[sb] & 15), ml = dmin * (float)(x.scales[sb] >> 4);
          y[e] = dl * (float)q - ml;
        }
        break;
      }
      case GgmlType::Q3_K: {
        const BlockQ3_K& x = static_cast<const BlockQ3_K*>(blocks)[b];
        const float d = f16_to_f32(x.d);
        int sc[16];
        for (int i = 0; i < 16; i++) {
          const int lo = (x.scales[i % 8] >> (4 * (i / 8))) & 15, hi = (x.scales[8 + i % 4] >> (2 * (i / 4))) & 3;
          sc[i] = (lo | (hi << 4)) - 32;
        }
        for (int e = 0; e < 256; e++) {
          const int h = e / 128, j = (e / 32) % 4, l = e % 32;
          const int lo = (x.qs[32 * h + l] >> (2 * j)) & 3, hbit = (x.hmask[l] >> (e / 32)) & 1;
          const float dl = d * (float)sc[e / 16];
          y[e] = dl * (float)(lo - (hbit ? 0 : 4));
        }
        break;
      }
      case GgmlType::Q4_K:
      case GgmlType::Q5_K: {
        const bool five = t == GgmlType::Q5_K;
        const uint8_t* scales = five ? static_cast<const BlockQ5_K*>(blocks)[b].scales : static_cast<const BlockQ4_K*>(blocks)[b].scales;
        const uint8_t* qs = five ? static_cast<const BlockQ5_K*>(blocks)[b].qs : static_cast<const BlockQ4_K*>(blocks)[b].qs;
        const uint8_t* qh = five ? static_cast<const BlockQ5_K*>(blocks)[b].qh : nullptr;
        const uint16_t dd = five ? static_cast<const BlockQ5_K*>(blocks)[b].d : static_cast<const BlockQ4_K*>(blocks)[b].d;
        const uint16_t dm = five ? static_cast<const BlockQ5_K*>(blocks)[b].dmin : static_cast<const BlockQ4_K*>(blocks)[b].dmin;
        const float d = f16_to_f32(dd), dmin = f16_to_f32(dm);
        for (int sb = 0; sb < 8; sb++) {
          uint8_t sc, m;
          scale_min_k4(scales, sb, sc, m);
          const float d1 = d * (float)sc, m1 = dmin * (float)m;
          for (int l = 0; l < 32; l++) {
            const int e = 32 * sb + l, c = sb / 2, h = sb % 2;
            int q = (qs[32 * c + l] >> (4 * h)) & 15;
            if (five) q |= ((qh[l] >> sb) & 1) << 4;
            y[e] = d1 * (float)q - m1;
          }
        }
        break;
      }
      case GgmlType::Q6_K: {
        const BlockQ6_K& x = static_cast<const BlockQ6_K*>(blocks)[b];
        const float d = f16_to_f32(x.d);
        for (int e = 0; e < 256; e++) {
          const int h = e / 128, r = e % 128, s = r / 64, m = r % 64, j = r / 32, l = r % 32;
          const int lo = (x.ql[64 * h + m] >> (4 * s)) & 15, hi = (x.qh[32 * h + l] >> (2 * j)) & 3;
          const float dl = d * (float)x.scales[e / 16];
          y[e] = dl * (float)((lo | (hi << 4)) - 32);
        }
        break;
      }
      default: fail("dequantize_row_kquant: ggml type {} is not a k-quant", (uint32_t)t);
    }
  }
}

}  // namespace llmq
