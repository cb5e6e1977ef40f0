// GPTQ checkpoint packing (see gptq_format.h).
#include "quant/gptq_format.h"

#include <algorithm>

#include "core/error.h"

namespace llmq {

std::vector<int32_t> gptq_pack_qweight(const uint8_t* codes, int64_t M, int64_t K, int bits) {
  const int P = 32 / bits;
  LLMQ_CHECK(32 % bits == 0 && K % P == 0);
  const uint32_t mask = (1u << bits) - 1;
  std::vector<int32_t> out((size_t)(K / P * M));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < K / P; r++)
    for (int64_t m = 0; m < M; m++) {
      uint32_t v = 0;
      for (int j = 0; j < P; j++) v |= ((uint32_t)codes[m * K + r * P + j] & mask) << (bits * j);
      out[r * M + m] = (int32_t)v;
    }
  return out;
}

std::vector<int32_t> gptq_pack_qzeros(const float* zero, int64_t M, int64_t ng, int bits, bool minus_one) {
  const int P = 32 / bits;
  LLMQ_CHECK(32 % bits == 0 && M % P == 0);
  const uint32_t mask = (1u << bits) - 1;
  std::vector<int32_t> out((size_t)(ng * (M / P)));
  for (int64_t g = 0; g < ng; g++)
    for (int64_t c = 0; c < M / P; c++) {
      uint32_t v = 0;
      for (int j = 0; j < P; j++) {
        const int64_t z = (int64_t)zero[(c * P + j) * ng + g] - (minus_one ? 1 : 0);
        v |= ((uint32_t)z & mask) << (bits * j);
      }
      out[g * (M / P) + c] = (int32_t)v;
    }
  return out;
}

void gptq_unpack_qweight(const int32_t* qweight, int64_t M, int64_t K, int bits, uint8_t* codes) {
  const int P = 32 / bits;
  const uint32_t mask = (1u << bits) - 1;
  // Blocks of 64 output rows per thread: each reads a strip of qweight and writes 64 rows.
#pragma omp parallel for schedule(static)
  for (int64_t m0 = 0; m0 < M; m0 += 64)
  for (int64_t r = 0; r < K / P; r++)
    for (int64_t m = m0; m < std::min(M, m0 + 64); m++) {
      const uint32_t v = (uint32_t)qweight[r * M + m];
      for (int j = 0; j < P; j++) codes[m * K + r * P + j] = (uint8_t)((v >> (bits * j)) & mask);
    }
}

void gptq_unpack_qzeros(const int32_t* qzeros, int64_t M, int64_t ng, int bits, bool minus_one, float* zero) {
  const int P = 32 / bits;
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t g = 0; g < ng; g++)
    for (int64_t c = 0; c < M / P; c++) {
      const uint32_t v = (uint32_t)qzeros[g * (M / P) + c];
      for (int j = 0; j < P; j++)
        zero[(c * P + j) * ng + g] = (float)((v >> (bits * j)) & mask) + (minus_one ? 1.f : 0.f);
    }
}

}  // namespace llmq
