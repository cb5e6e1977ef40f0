// The GPTQ checkpoint layout (AutoGPTQ / GPTQModel, quant_method "gptq"), for one linear
// W (M out, K in) quantized to `bits` with groups of G input channels (ng = K/G groups):
//   qweight  int32 (K*bits/32, M)   codes packed along the input dimension: element (r, m)
//                                   holds codes[m, r*P + j] in bits [bits*j, bits*(j+1)),
//                                   P = 32/bits values per int32, j = 0 lowest
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

// codes (M, K) one per byte -> qweight (K*bits/32, M).
std::vector<int32_t> gptq_pack_qweight(const uint8_t* codes, int64_t M, int64_t K, int bits);
// zero (M, ng) (integers stored as float) -> qzeros (ng, M*bits/32).
std::vector<int32_t> gptq_pack_qzeros(const float* zero, int64_t M, int64_t ng, int bits, bool minus_one);
// The inverses. qweight must hold (K*bits/32)*M values, qzeros ng*(M*bits/32).
void gptq_unpack_qweight(const int32_t* qweight, int64_t M, int64_t K, int bits, uint8_t* codes);
void gptq_unpack_qzeros(const int32_t* qzeros, int64_t M, int64_t ng, int bits, bool minus_one, float* zero);

}  // namespace llmq
