// GPTQ checkpoint packing (see gptq_format.h): a little-endian bit stream of `bits`-bit
// values along the packed dimension, 32 bits per int32 word. For 2, 4 and 8 bits a word holds
// 32/bits whole values; for 3 bits, 32 values fill 3 words and values 10 and 21 straddle
// words, exactly as AutoGPTQ's 3-bit pack loop places them.
#include "quant/gptq_format.h"

#include <algorithm>

#include "core/error.h"

namespace llmq {

namespace {

// Value i of a stream of `bits`-bit values starting at word w0, words `stride` apart.
inline uint32_t get_bits(const int32_t* words, int64_t stride, int64_t i, int bits) {
  const int64_t b = i * bits, w = b / 32, s = b % 32;
  uint64_t v = (uint32_t)words[w * stride];
  if (s + bits > 32) v |= (uint64_t)(uint32_t)words[(w + 1) * stride] << 32;
  return (uint32_t)(v >> s) & ((1u << bits) - 1);
}
inline void put_bits(int32_t* words, int64_t stride, int64_t i, int bits, uint32_t value) {
  const int64_t b = i * bits, w = b / 32, s = b % 32;
  const uint64_t v = (uint64_t)(value & ((1u << bits) - 1)) << s;
  words[w * stride] = (int32_t)((uint32_t)words[w * stride] | (uint32_t)v);
  if (s + bits > 32) words[(w + 1) * stride] = (int32_t)((uint32_t)words[(w + 1) * stride] | (uint32_t)(v >> 32));
}

}  // namespace

bool gptq_packable(int64_t n, int bits) { return bits >= 2 && bits <= 8 && (n * bits) % 32 == 0 && (bits != 3 || n % 32 == 0); }

std::vector<int32_t> gptq_pack_qweight(const uint8_t* codes, int64_t M, int64_t K, int bits) {
  LLMQ_CHECK(gptq_packable(K, bits));
  std::vector<int32_t> out((size_t)(K * bits / 32 * M), 0);
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) put_bits(out.data() + m, M, k, bits, codes[m * K + k]);
  return out;
}

std::vector<int32_t> gptq_pack_qzeros(const float* zero, int64_t M, int64_t ng, int bits, bool minus_one) {
  LLMQ_CHECK(gptq_packable(M, bits));
  const int64_t W = M * bits / 32;
  std::vector<int32_t> out((size_t)(ng * W), 0);
  for (int64_t g = 0; g < ng; g++)
    for (int64_t m = 0; m < M; m++)
      put_bits(out.data() + g * W, 1, m, bits, (uint32_t)((int64_t)zero[m * ng + g] - (minus_one ? 1 : 0)));
  return out;
}

void gptq_unpack_qweight(const int32_t* qweight, int64_t M, int64_t K, int bits, uint8_t* codes) {
  // A row of output channels per thread step: reads its column of qweight.
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) codes[m * K + k] = (uint8_t)get_bits(qweight + m, M, k, bits);
}

void gptq_unpack_qzeros(const int32_t* qzeros, int64_t M, int64_t ng, int bits, bool minus_one, float* zero) {
  const int64_t W = M * bits / 32;
  for (int64_t g = 0; g < ng; g++)
    for (int64_t m = 0; m < M; m++)
      zero[m * ng + g] = (float)get_bits(qzeros + g * W, 1, m, bits) + (minus_one ? 1.f : 0.f);
}

namespace {
// The nibble that holds output 8c + j: the inverse of AWQ's order (0, 2, 4, 6, 1, 3, 5, 7).
constexpr int kAwqNibble[8] = {0, 4, 1, 5, 2, 6, 3, 7};
}  // namespace

void awq_unpack_qweight(const int32_t* qweight, int64_t M, int64_t K, uint8_t* codes) {
  for (int64_t k = 0; k < K; k++)
    for (int64_t m = 0; m < M; m++)
      codes[m * K + k] = (uint8_t)(((uint32_t)qweight[k * (M / 8) + m / 8] >> (4 * kAwqNibble[m % 8])) & 15);
}

void awq_unpack_qzeros(const int32_t* qzeros, int64_t M, int64_t ng, float* zero) {
  for (int64_t g = 0; g < ng; g++)
    for (int64_t m = 0; m < M; m++)
      zero[m * ng + g] = (float)(((uint32_t)qzeros[g * (M / 8) + m / 8] >> (4 * kAwqNibble[m % 8])) & 15);
}

}  // namespace llmq
