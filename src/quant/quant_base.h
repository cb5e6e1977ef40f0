// Quantizing a float linear in memory, for a frozen fine-tuning base (`llmq finetune
// --quantize-base`): the same codes `llmq quantize` would write for the method, as a runtime
// tensor the kernels and dequantize_tensor_rows read.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace llmq {

// "rtn4", "rtn8" (round-to-nearest, asymmetric, groups of 128 / 64 inputs where they divide
// the row, else 32), "hqq2", "hqq3", "hqq4", "hqq8" (HQQ axis 1 with its proximal zero
// refinement; groups of 64 for 4 and 8 bits, 32 for 2 and 3). Fails naming the valid names.
struct BaseQuant {
  std::string name;
  bool hqq = false;
  int bits = 4;
  int64_t group = 64;
  double bits_per_weight(int64_t K) const;  // codes plus f16 scale and zero per group
};
BaseQuant base_quant_parse(const std::string& name);
// The group a row of K inputs gets (the preferred one, else the largest of 64, 32 dividing K).
int64_t base_quant_group(const BaseQuant& q, int64_t K);
Tensor quantize_base_linear(const float* W, int64_t M, int64_t K, const BaseQuant& q);

}  // namespace llmq
