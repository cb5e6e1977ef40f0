// The scalar k-quant matrix product: each super-block unpacked into codes, per-16 scales and
// offsets (kernels.h, KQMatView), then the integer lanes and float lane sums the SIMD
// kernels compute, spelled out one value at a time. The reference for every ISA (tests
// compare bit for bit) and the fallback where there is no AVX2.
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cpu/kernels.h"
#include "quant/ggml_blocks.h"

namespace llmq {

namespace {

struct Unpacked {
  uint8_t u[256];
  int s[16], o[16];
  float d, dm;
};

void unpack(int type, const uint8_t* blk, Unpacked& x) {
  switch ((GgmlType)type) {
    case GgmlType::Q2_K: {
      BlockQ2_K b;
      std::memcpy(&b, blk, sizeof b);
      for (int e = 0; e < 256; e++) x.u[e] = (uint8_t)((b.qs[32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3);
      for (int j = 0; j < 16; j++) x.s[j] = b.scales[j] & 15, x.o[j] = b.scales[j] >> 4;
      x.d = f16_to_f32(b.d), x.dm = f16_to_f32(b.dmin);
      return;
    }
    case GgmlType::Q3_K: {
      BlockQ3_K b;
      std::memcpy(&b, blk, sizeof b);
      for (int e = 0; e < 256; e++) {
        const int lo = (b.qs[32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
        const int hbit = (b.hmask[e % 32] >> (e / 32)) & 1;
        x.u[e] = (uint8_t)(lo + 4 * hbit);  // weight = d*s*(u - 4)
      }
      for (int j = 0; j < 16; j++) {
        const int lo = (b.scales[j % 8] >> (4 * (j / 8))) & 15, hi = (b.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        x.s[j] = x.o[j] = (lo | (hi << 4)) - 32;
      }
      x.d = f16_to_f32(b.d), x.dm = 4.f * x.d;
      return;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool five = (GgmlType)type == GgmlType::Q5_K;
      BlockQ5_K b5;
      BlockQ4_K b4;
      const uint8_t *scales, *qs, *qh = nullptr;
      uint16_t d, dmin;
      if (five) {
        std::memcpy(&b5, blk, sizeof b5);
        scales = b5.scales, qs = b5.qs, qh = b5.qh, d = b5.d, dmin = b5.dmin;
      } else {
        std::memcpy(&b4, blk, sizeof b4);
        scales = b4.scales, qs = b4.qs, d = b4.d, dmin = b4.dmin;
      }
      for (int e = 0; e < 256; e++) {
        int q = (qs[32 * (e / 64) + e % 32] >> (4 * ((e / 32) % 2))) & 15;
        if (five) q |= ((qh[e % 32] >> (e / 32)) & 1) << 4;
        x.u[e] = (uint8_t)q;
      }
      for (int j = 0; j < 16; j++) kquant_scale_min_k4(scales, j / 2, x.s[j], x.o[j]);
      x.d = f16_to_f32(d), x.dm = f16_to_f32(dmin);
      return;
    }
    case GgmlType::Q6_K: {
      BlockQ6_K b;
      std::memcpy(&b, blk, sizeof b);
      for (int e = 0; e < 256; e++) {
        const int h = e / 128, r = e % 128;
        const int lo = (b.ql[64 * h + r % 64] >> (4 * (r / 64))) & 15, hi = (b.qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
        x.u[e] = (uint8_t)(lo | (hi << 4));  // weight = d*s*(u - 32)
      }
      for (int j = 0; j < 16; j++) x.s[j] = x.o[j] = b.scales[j];
      x.d = f16_to_f32(b.d), x.dm = 32.f * x.d;
      return;
    }
    default: break;
  }
  fail("matmul_kq: ggml type {} is not a k-quant", type);
}

float reduce_lanes(float* v, int w) {
  for (; w >= 1; w /= 2)
    for (int l = 0; l < w; l++) v[l] = v[l] + v[l + w];
  return v[0];
}

}  // namespace

void matmul_kq_ref(const KQMatView& W, const KQActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0, int64_t m1) {
  const int64_t nb = W.K / kQK_K, bb = W.row_bytes / nb;
  Unpacked x;
  for (int64_t m = m0; m < m1; m++) {
    for (int64_t i = 0; i < n; i++) {
      const int8_t* q = X.q + i * W.K;
      const float* xd = X.d + i * nb;
      const int16_t* bs = X.bsum + i * (W.K / 16);
      float F[16] = {}, G[8] = {};
      for (int64_t b = 0; b < nb; b++) {
        unpack(W.type, W.w + m * W.row_bytes + b * bb, x);
        const int8_t* qb = q + b * kQK_K;
        const int16_t* sb = bs + b * 16;
        const float f = xd[b] * x.d, fm = xd[b] * x.dm;
        const bool k45 = W.type == (int)GgmlType::Q4_K || W.type == (int)GgmlType::Q5_K;
        for (int l = 0; l < 16; l++) {
          int32_t I1 = 0;
          for (int r = 0; r < 4; r++)
            for (int k = 0; k < 4; k++) {
              const int b = 4 * l + k;  // byte b of register r is element e (kernels.h)
              const int e = k45 ? 64 * (2 * (r / 2) + b / 32) + 32 * (r % 2) + b % 32 : 64 * r + b;
              I1 += x.s[e / 16] * (int32_t)x.u[e] * (int32_t)qb[e];
            }
          F[l] = std::fma((float)I1, f, F[l]);
        }
        for (int l = 0; l < 8; l++) {
          const int32_t I2 = x.o[2 * l] * (int32_t)sb[2 * l] + x.o[2 * l + 1] * (int32_t)sb[2 * l + 1];
          G[l] = std::fma((float)I2, fm, G[l]);
        }
      }
      Y[i * ldy + m] = reduce_lanes(F, 8) - reduce_lanes(G, 4);
    }
  }
}

}  // namespace llmq
