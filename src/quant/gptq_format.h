// The GPTQ checkpoint layout (AutoGPTQ / GPTQModel, quant_method "gptq"), for one linear
// W (M out, K in) quantized to `bits` with groups of G input channels (ng = K/G groups):
//   qweight  int32 (K*bits/32, M)   codes packed along the input dimension as a little-endian
//                                   bit stream: code k of column m at stream bits
//                                   [bits*k, bits*(k+1)), word r = stream bits [32r, 32r+32)
//                                   (2/4/8 bits: word r holds codes r*P .. r*P+P-1, P = 32/bits,
//                                   the lowest first; 3 bits: 32 codes in 3 words, codes 10
//                                   and 21 straddling two words, as AutoGPTQ packs them)
//   qzeros   int32 (ng, M*bits/32)  zero points packed along the output dimension the same
//                                   way; checkpoint_format "gptq" (v1) stores zero - 1,
//                                   "gptq_v2" stores zero
//   scales   f16   (ng, M)
//   g_idx    int32 (K)              group of each input channel: k / G without act-order
// weight[m, k] = scales[g, m] * (code[m, k] - zero[g, m]),  g = g_idx[k].
#pragma once
#include <cstdint>
#include <vector>

namespace llmq {

// Whether n values of `bits` bits pack into whole words (2-8 bits; 3 bits: n % 32 == 0).
bool gptq_packable(int64_t n, int bits);
// codes (M, K) one per byte -> qweight (K*bits/32, M).
std::vector<int32_t> gptq_pack_qweight(const uint8_t* codes, int64_t M, int64_t K, int bits);
// zero (M, ng) (integers stored as float) -> qzeros (ng, M*bits/32).
std::vector<int32_t> gptq_pack_qzeros(const float* zero, int64_t M, int64_t ng, int bits, bool minus_one);
// The inverses. qweight must hold (K*bits/32)*M values, qzeros ng*(M*bits/32).
void gptq_unpack_qweight(const int32_t* qweight, int64_t M, int64_t K, int bits, uint8_t* codes);
void gptq_unpack_qzeros(const int32_t* qzeros, int64_t M, int64_t ng, int bits, bool minus_one, float* zero);

// AWQ's GEMM layout (AutoAWQ / llm-awq, quant_method "awq", version "gemm"), 4-bit codes
// packed along the OUTPUT dimension, eight per int32 in AWQ's interleaved order:
//   qweight  int32 (K, M/8)   nibble i of word (k, c) is the code of output m = 8c + order[i],
//                             order = (0, 2, 4, 6, 1, 3, 5, 7)
//   qzeros   int32 (ng, M/8)  the zero points (stored as they are, 0..15), packed the same way
//   scales   f16   (ng, M)
// weight[m, k] = scales[k/G, m] * (code[m, k] - zero[k/G, m]).
// codes (M, K) one per byte from qweight; zero (M, ng) from qzeros.
void awq_unpack_qweight(const int32_t* qweight, int64_t M, int64_t K, uint8_t* codes);
void awq_unpack_qzeros(const int32_t* qzeros, int64_t M, int64_t ng, float* zero);

}  // namespace llmq
