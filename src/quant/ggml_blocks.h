// llama.cpp's (ggml's) block formats, for GGUF export and import. Each block covers 32
// consecutive weights of a row; d is an IEEE f16 scale.
#pragma once
#include <cstdint>

namespace llmq {

// Q8_0: weight = d * qs[j]; d = amax / 127, qs = round(w / d). 34 bytes: 8.5 bits per weight.
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[32];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes");

// Q4_0: weight = d * (q - 8), q in 0..15; qs[j] holds q[j] in its low nibble and q[j+16] in
// its high nibble. d = m / -8 where m is the weight of largest magnitude (sign kept), so m
// itself maps to code 0 and the others to 0..15 (clamped). 18 bytes: 4.5 bits per weight.
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block is 18 bytes");

// ggml type ids as GGUF stores them.
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, BF16 = 30 };

// Reference (scalar) conversions of one row of n weights (n % 32 == 0).
void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n);
void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n);
void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n);
void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t n);

}  // namespace llmq
