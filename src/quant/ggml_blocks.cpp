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

// Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; scales and mins 4-7
// take their low 4 bits from bytes 8-11 (scale: low nibble, min: high nibble) and their high
// 2 bits from the top of bytes 0-3 (scales) and 4-7 (mins).
void kquant_scale_min_k4(const uint8_t* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

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
          int sc, m;
          kquant_scale_min_k4(scales, sb, sc, m);
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


// ---- k-quant quantization (llmq's own; the algorithms as ggml describes them) ----
//
// Asymmetric types (Q2_K, Q4_K, Q5_K): each sub-block gets x ~ s*q - m, q in 0..nmax,
// s >= 0, m >= 0 (the block minimum, or 0 when every value is positive), chosen by
// weighted least squares over a small grid of candidate step sizes around (max - min)/nmax
// (codes from the candidate, then the best s and m for those codes in closed form, keeping
// the candidate with the least weighted squared error). The sub-block scales and mins are
// then quantized against the super-block's f16 d and dmin (6 bits, or 4 for Q2_K), and the
// codes recomputed with the scales actually stored.
// Symmetric types (Q3_K, Q6_K): x ~ s*q, q in -nmax..nmax-1, s signed (its sign is that of
// the largest-magnitude value, so that value can take the code -nmax), chosen the same way
// over candidates around nmax/|max|; scales quantized to 6-bit signed (Q3_K) or int8 (Q6_K).
namespace {

int nearest(float v) { return (int)std::nearbyint(v); }

// Weighted asymmetric fit of n values: returns s, m (x ~ s*q - m) and codes L.
void fit_asym(const float* x, const float* w, int n, int nmax, float rmin, float rdelta, int nstep, float& s_out,
              float& m_out, uint8_t* L) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; i++) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  if (lo > 0) lo = 0;
  if (hi <= lo) {
    for (int i = 0; i < n; i++) L[i] = 0;
    s_out = 0, m_out = -lo;
    return;
  }
  float best_s = (hi - lo) / (float)nmax, best_m = lo, best_err = INFINITY;
  uint8_t cand[32];
  for (int is = -1; is <= nstep; is++) {
    // is = -1: plain round-to-nearest over [lo, hi]; then the candidate steps.
    const float iscale = is < 0 ? (float)nmax / (hi - lo) : (rmin + rdelta * (float)is + (float)nmax) / (hi - lo);
    double sw = 0, sl = 0, sl2 = 0, sx = 0, sxl = 0;
    for (int i = 0; i < n; i++) {
      const int l = std::clamp(nearest(iscale * (x[i] - lo)), 0, nmax);
      cand[i] = (uint8_t)l;
      sw += w[i], sl += w[i] * l, sl2 += (double)w[i] * l * l, sx += w[i] * x[i], sxl += (double)w[i] * l * x[i];
    }
    float s = 1.f / iscale, m = lo;
    if (is >= 0) {  // least squares for the codes: minimize sum w (s*l + m - x)^2
      const double D = sw * sl2 - sl * sl;
      if (D <= 0) continue;
      s = (float)((sw * sxl - sx * sl) / D);
      m = (float)((sl2 * sx - sl * sxl) / D);
      if (m > 0) m = 0, s = sl2 > 0 ? (float)(sxl / sl2) : 0.f;
      if (s < 0) continue;
    }
    double err = 0;
    for (int i = 0; i < n; i++) {
      const double e = (double)s * cand[i] + m - x[i];
      err += w[i] * e * e;
    }
    if (err < best_err) {
      best_err = (float)err, best_s = s, best_m = m;
      std::memcpy(L, cand, (size_t)n);
    }
  }
  s_out = best_s, m_out = -best_m;
}

// Weighted symmetric fit: returns the signed s (x ~ s*q, q in -nmax..nmax-1).
float fit_sym(const float* x, const float* w, int n, int nmax) {
  float amax = 0, mx = 0;
  for (int i = 0; i < n; i++)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), mx = x[i];
  if (amax == 0) return 0;
  float best_s = -mx / (float)nmax, best_err = INFINITY;
  for (int is = -9; is <= 9; is++) {
    const float iscale = -((float)nmax + 0.1f * (float)is) / mx;
    double slx = 0, sl2 = 0;
    for (int i = 0; i < n; i++) {
      const int l = std::clamp(nearest(iscale * x[i]), -nmax, nmax - 1);
      slx += (double)w[i] * l * x[i], sl2 += (double)w[i] * l * l;
    }
    if (sl2 <= 0) continue;
    const float s = (float)(slx / sl2);
    double err = 0;
    for (int i = 0; i < n; i++) {
      const int l = s != 0 ? std::clamp(nearest(x[i] / s), -nmax, nmax - 1) : 0;
      const double e = (double)s * l - x[i];
      err += w[i] * e * e;
    }
    if (err < best_err) best_err = (float)err, best_s = s;
  }
  return best_s;
}

// Super-block scale for values v (>= 0) quantized to 0..qmax: f16 d and the codes.
float level_scale(const float* v, int n, int qmax, int* q) {
  float mx = 0;
  for (int i = 0; i < n; i++) mx = std::max(mx, v[i]);
  const float d = f16_to_f32(f32_to_f16(mx / (float)qmax));
  for (int i = 0; i < n; i++) q[i] = d > 0 ? std::clamp(nearest(v[i] / d), 0, qmax) : 0;
  return d;
}

// Asymmetric super-block: nsub sub-blocks of 256/nsub; scale/min codes to 0..qmax.
void quant_asym_block(const float* x, int nsub, int nmax, int qmax, float rmin, float rdelta, int nstep, bool weight_av,
                      uint8_t* u, int* ls, int* lm, uint16_t& d16, uint16_t& dmin16) {
  const int sn = 256 / nsub;
  float s[16], m[16], w[32];
  for (int j = 0; j < nsub; j++) {
    const float* xs = x + j * sn;
    float av = 0;
    if (weight_av) {
      double s2 = 0;
      for (int i = 0; i < sn; i++) s2 += (double)xs[i] * xs[i];
      av = (float)std::sqrt(s2 / sn);
    }
    for (int i = 0; i < sn; i++) w[i] = av + std::fabs(xs[i]);
    fit_asym(xs, w, sn, nmax, rmin, rdelta, nstep, s[j], m[j], u + j * sn);
  }
  const float d = level_scale(s, nsub, qmax, ls), dmin = level_scale(m, nsub, qmax, lm);
  d16 = f32_to_f16(d), dmin16 = f32_to_f16(dmin);
  for (int j = 0; j < nsub; j++) {
    const float dl = d * (float)ls[j], ml = dmin * (float)lm[j];
    for (int i = 0; i < sn; i++)
      u[j * sn + i] = dl > 0 ? (uint8_t)std::clamp(nearest((x[j * sn + i] + ml) / dl), 0, nmax) : 0;
  }
}

// Symmetric super-block of 16 sub-blocks of 16: codes u = q + nmax in 0..2nmax-1, the
// signed scale codes sc in -qmax..qmax-1 against d.
void quant_sym_block(const float* x, int nmax, int qmax, uint8_t* u, int* sc, uint16_t& d16) {
  float s[16], w[16], smax = 0, sm = 0;
  for (int j = 0; j < 16; j++) {
    for (int i = 0; i < 16; i++) w[i] = x[16 * j + i] * x[16 * j + i];
    s[j] = fit_sym(x + 16 * j, w, 16, nmax);
    if (std::fabs(s[j]) > smax) smax = std::fabs(s[j]), sm = s[j];
  }
  float d = 0;
  if (smax > 0) {
    d = f16_to_f32(f32_to_f16(sm / -(float)qmax));  // the largest scale takes code -qmax
  }
  d16 = f32_to_f16(d);
  for (int j = 0; j < 16; j++) {
    sc[j] = d != 0 ? std::clamp(nearest(s[j] / d), -qmax, qmax - 1) : 0;
    const float dl = d * (float)sc[j];
    for (int i = 0; i < 16; i++)
      u[16 * j + i] = (uint8_t)((dl != 0 ? std::clamp(nearest(x[16 * j + i] / dl), -nmax, nmax - 1) : 0) + nmax);
  }
}

}  // namespace

void quantize_row_kquant(GgmlType t, const float* x, void* out, int64_t n) {
  if (n % kQK_K) fail("k-quant row of {} weights is not a multiple of {}", n, kQK_K);
  for (int64_t b = 0; b < n / kQK_K; b++, x += kQK_K) {
    uint8_t u[256];
    int ls[16], lm[16];
    switch (t) {
      case GgmlType::Q2_K: {
        BlockQ2_K y{};
        quant_asym_block(x, 16, 3, 15, -0.5f, 0.1f, 15, false, u, ls, lm, y.d, y.dmin);
        for (int j = 0; j < 16; j++) y.scales[j] = (uint8_t)(ls[j] | (lm[j] << 4));
        for (int e = 0; e < 256; e++) y.qs[32 * (e / 128) + e % 32] |= (uint8_t)(u[e] << (2 * ((e / 32) % 4)));
        static_cast<BlockQ2_K*>(out)[b] = y;
        break;
      }
      case GgmlType::Q3_K: {
        BlockQ3_K y{};
        int sc[16];
        quant_sym_block(x, 4, 32, u, sc, y.d);
        for (int j = 0; j < 16; j++) {
          const int l = sc[j] + 32;  // 0..63
          y.scales[j % 8] |= (uint8_t)((l & 15) << (4 * (j / 8)));
          y.scales[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
        }
        for (int e = 0; e < 256; e++) {
          y.qs[32 * (e / 128) + e % 32] |= (uint8_t)((u[e] & 3) << (2 * ((e / 32) % 4)));
          y.hmask[e % 32] |= (uint8_t)((u[e] >> 2) << (e / 32));
        }
        static_cast<BlockQ3_K*>(out)[b] = y;
        break;
      }
      case GgmlType::Q4_K:
      case GgmlType::Q5_K: {
        const bool five = t == GgmlType::Q5_K;
        uint8_t scales[12] = {}, qs[128] = {}, qh[32] = {};
        uint16_t d, dmin;
        quant_asym_block(x, 8, five ? 31 : 15, 63, five ? -0.5f : -1.f, 0.1f, five ? 15 : 20, true, u, ls, lm, d, dmin);
        for (int j = 0; j < 8; j++) {
          if (j < 4) {
            scales[j] = (uint8_t)ls[j], scales[j + 4] = (uint8_t)lm[j];
          } else {
            scales[j + 4] = (uint8_t)((ls[j] & 15) | ((lm[j] & 15) << 4));
            scales[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            scales[j] |= (uint8_t)((lm[j] >> 4) << 6);
          }
        }
        for (int e = 0; e < 256; e++) {
          qs[32 * (e / 64) + e % 32] |= (uint8_t)((u[e] & 15) << (4 * ((e / 32) % 2)));
          if (five) qh[e % 32] |= (uint8_t)((u[e] >> 4) << (e / 32));
        }
        if (five) {
          BlockQ5_K y;
          y.d = d, y.dmin = dmin;
          std::memcpy(y.scales, scales, 12), std::memcpy(y.qh, qh, 32), std::memcpy(y.qs, qs, 128);
          static_cast<BlockQ5_K*>(out)[b] = y;
        } else {
          BlockQ4_K y;
          y.d = d, y.dmin = dmin;
          std::memcpy(y.scales, scales, 12), std::memcpy(y.qs, qs, 128);
          static_cast<BlockQ4_K*>(out)[b] = y;
        }
        break;
      }
      case GgmlType::Q6_K: {
        BlockQ6_K y{};
        int sc[16];
        quant_sym_block(x, 32, 128, u, sc, y.d);
        for (int j = 0; j < 16; j++) y.scales[j] = (int8_t)sc[j];
        for (int e = 0; e < 256; e++) {
          const int h = e / 128, r = e % 128;
          y.ql[64 * h + r % 64] |= (uint8_t)((u[e] & 15) << (4 * (r / 64)));
          y.qh[32 * h + r % 32] |= (uint8_t)((u[e] >> 4) << (2 * (r / 32)));
        }
        static_cast<BlockQ6_K*>(out)[b] = y;
        break;
      }
      default: fail("quantize_row_kquant: ggml type {} is not a k-quant", (uint32_t)t);
    }
  }
}

}  // namespace llmq
