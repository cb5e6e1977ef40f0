#include "quant/quant_base.h"

#include <vector>

#include "core/error.h"
#include "quant/hqq.h"
#include "quant/quant.h"

namespace llmq {

BaseQuant base_quant_parse(const std::string& name) {
  BaseQuant q;
  q.name = name;
  if (name == "rtn4") q.bits = 4, q.group = 128;
  else if (name == "rtn8") q.bits = 8, q.group = 64;
  else if (name == "hqq4" || name == "hqq8") q.hqq = true, q.bits = name[3] - '0', q.group = 64;
  else if (name == "hqq2" || name == "hqq3") q.hqq = true, q.bits = name[3] - '0', q.group = 32;
  else fail("unknown base quantization '{}' (choose rtn4, rtn8, hqq2, hqq3, hqq4 or hqq8)", name);
  return q;
}

int64_t base_quant_group(const BaseQuant& q, int64_t K) {
  for (int64_t g : {q.group, (int64_t)64, (int64_t)32})
    if (g <= q.group && K % g == 0) return g;
  fail("a row of {} inputs cannot be quantized in groups of 32 (the kernels' smallest group)", K);
}

double BaseQuant::bits_per_weight(int64_t K) const { return bits + 32.0 / (double)base_quant_group(*this, K); }

Tensor quantize_base_linear(const float* W, int64_t M, int64_t K, const BaseQuant& q) {
  const int64_t G = base_quant_group(q, K);
  const int rbits = q.bits == 8 ? 8 : 4;  // 2- and 3-bit codes run in the 4-bit layout
  if (q.hqq) {
    HqqOptions o;
    o.bits = q.bits, o.group = G, o.axis = 1;
    const HqqResult r = hqq_quantize(W, M, K, o);
    return make_quant_tensor(M, K, rbits, G, false, false, r.codes.data(), r.scale.data(), r.zero.data(), q.bits);
  }
  std::vector<uint8_t> codes((size_t)(M * K));
  std::vector<float> scale((size_t)(M * (K / G))), zero(scale.size());
  quantize_rows_rtn(W, M, K, q.bits, G, false, codes.data(), scale.data(), zero.data());
  return make_quant_tensor(M, K, rbits, G, false, false, codes.data(), scale.data(), zero.data(), q.bits);
}

}  // namespace llmq
