// llama.cpp's (ggml's) block formats, for GGUF export and import. Each block covers 32
// consecutive weights of a row; d is an IEEE f16 scale.
#pragma once
#include <cstdint>

#include "core/dtype.h"

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

// The k-quants: super-blocks of 256 weights (kQK_K) in 16 sub-blocks of 16 (Q2_K, Q3_K,
// Q6_K) or 8 of 32 (Q4_K, Q5_K), each sub-block with its own scale (and min) quantized to
// 4, 6 or 8 bits against the super-block's f16 d (and dmin). Layouts as ggml defines them
// (ggml-common.h); the element order inside a super-block is spelled out at each
// dequantizer in ggml_blocks.cpp.
constexpr int64_t kQK_K = 256;

// Q2_K: w = d * (scales[i] & 15) * q - dmin * (scales[i] >> 4), q in 0..3. 2.625 bits/weight.
struct BlockQ2_K {
  uint8_t scales[16];  // per sub-block of 16: scale (low nibble), min (high nibble)
  uint8_t qs[64];      // 2-bit codes
  uint16_t d, dmin;
};
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block is 84 bytes");

// Q3_K: w = d * (s[i] - 32) * (q - 4 * !hbit), q in 0..3, s 6 bits. 3.4375 bits/weight.
struct BlockQ3_K {
  uint8_t hmask[32];   // the high bit of each code (set: no offset)
  uint8_t qs[64];      // low 2 bits
  uint8_t scales[12];  // 16 6-bit scales
  uint16_t d;
};
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block is 110 bytes");

// Q4_K: w = d * sc[i] * q - dmin * m[i], q in 0..15, sc/m 6 bits, 8 sub-blocks of 32. 4.5 bits/weight.
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];  // 8 scales and 8 mins, 6 bits each
  uint8_t qs[128];
};
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block is 144 bytes");

// Q5_K: Q4_K with a fifth bit per code (qh), q in 0..31. 5.5 bits/weight.
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block is 176 bytes");

// Q6_K: w = d * scales[i] * (q - 32), q in 0..63 (4 low bits in ql, 2 high in qh), int8
// scales, 16 sub-blocks of 16. 6.5625 bits/weight.
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block is 210 bytes");

// ggml type ids as GGUF stores them.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, BF16 = 30
};

// The runtime dtype of a k-quant ggml type (Q2_K -> DType::Q2K ...) and back.
inline DType kquant_dtype(GgmlType t) { return (DType)((int)DType::Q2K + ((int)t - (int)GgmlType::Q2_K)); }
inline GgmlType kquant_ggml(DType t) { return (GgmlType)((int)GgmlType::Q2_K + ((int)t - (int)DType::Q2K)); }
inline bool ggml_is_kquant(GgmlType t) { return t >= GgmlType::Q2_K && t <= GgmlType::Q6_K; }

// Q4_K/Q5_K: the j-th (0..7) 6-bit scale and min of a block's 12 scale bytes.
void kquant_scale_min_k4(const uint8_t* scales, int j, int& sc, int& m);

// Bits per weight of a ggml block type (32 for F32, ..., 2.625 for Q2_K); 0 if unknown.
double ggml_bits_per_weight(GgmlType t);

// Reference (scalar) dequantization of n weights (n % 256 == 0) of a k-quant type, in f32
// arithmetic in ggml's order (products not fused), so the values are ggml's bit for bit.
void dequantize_row_kquant(GgmlType t, const void* blocks, float* y, int64_t n);

// llmq's k-quant quantizer of n weights (n % 256 == 0) into n/256 blocks of type t
// (algorithm at its definition in ggml_blocks.cpp).
void quantize_row_kquant(GgmlType t, const float* x, void* blocks, int64_t n);

// Whether every super-block's f16 scales (d, and dmin where the type has one) in `bytes`
// bytes of k-quant blocks are finite.
bool kquant_scales_finite(GgmlType t, const uint8_t* blocks, uint64_t bytes);

// Reference (scalar) conversions of one row of n weights (n % 32 == 0).
void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n);
void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n);
void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n);
void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t n);

}  // namespace llmq
