// ggml block quantization (the arithmetic of ggml's reference quantize_row_q8_0 and
// quantize_row_q4_0, written from the format's definition).
#include "quant/ggml_blocks.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"

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

}  // namespace llmq
