// `llmq quantize`: a model directory in, a quantized model directory out (GPTQ layout; HQQ
// with float zeros in llmq's variant of it; compressed-tensors for fp8), streamed from the
// memory-mapped source: one tensor at a time for rtn/hqq/fp8 (peak memory ~ the largest
// linear plus buffers), one block at a time plus the calibration activations for the
// calibrated methods (calibrated.h). Never the whole model.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "quant/calibration.h"
#include "quant/recipe.h"

namespace llmq {

struct QuantizeOptions {
  std::string model, out;
  std::string out_label;  // the name shown for out (the target when out is a temporary directory)
  std::string method = "rtn";  // rtn | hqq (no data) | gptq | awq | smoothquant (need calib)
  std::string scheme = "w4a16";
  int64_t group = -1;  // -1: the scheme's default
  bool sym = false;
  std::string weight_scale, act_scale;  // fp8: channel|tensor, token|tensor ("" = default)
  // Tensors left in float: "lm_head", "embed" (always), or any substring of a tensor name
  // ("down_proj", "layers.0.").
  std::vector<std::string> keep = {"embed"};
  double max_shard_gb = 5;
  CalibOptions calib;          // gptq, awq, smoothquant
  double damp = 0.01;          // gptq: fraction of mean(diag H)
  bool act_order = false;      // gptq: desc_act
  bool static_groups = false;  // gptq
  double alpha = 0.8;          // smoothquant migration strength
  int hqq_axis = 1;             // hqq: 1, groups along the inputs; 0, along the outputs
  std::string kv_cache;        // "" | int8 | fp8: calibrated static KV-cache scales (need calib)
  // Output layout of integer schemes: "gptq" (AutoGPTQ's, the default) or "compressed-tensors"
  // (llm-compressor's: pack-quantized w4a16/w8a16, int-quantized w8a8). FP8 is always
  // compressed-tensors float-quantized.
  std::string format = "gptq";
  // Per-module rules (--recipe FILE / --mix): the options above are the default for linears no
  // rule matches; --keep still leaves its tensors in float. lm_head stays in float unless a
  // rule names it. Empty: one scheme for every linear.
  QuantRecipe recipe;
  bool progress = true;
};

struct QuantizeResult {
  int64_t quantized_tensors = 0, kept_tensors = 0;
  uint64_t bytes_in = 0, bytes_out = 0;
  double seconds = 0;
  int64_t calib_tokens = 0;
  std::vector<std::string> messages;  // what the methods reported (damping raised, AWQ ratios)
  // With a recipe: each rule as written and the linears it decided (0: a warning was printed).
  std::vector<std::pair<std::string, int64_t>> rule_counts;
};

QuantizeResult quantize_model(const QuantizeOptions& o);

// Linear `name`'s weights W (any float dtype, (M, K)) quantized as recipe quantization `spec`
// says ("w2a16:g16:hqq:axis0"; rtn or hqq) and dequantized: what a checkpoint would hold, in
// f32. For sensitivity probes.
std::vector<float> fake_quantize_linear(const Tensor& W, const std::string& spec, const std::string& name);

// Linear `name` (of a model with n_layers blocks) quantized in memory as recipe rc says (rtn
// and hqq rules; the defaults w4a16 g128 rtn): the runtime tensor, or an empty one for a
// linear the recipe leaves in float. For `llmq finetune --quantize-base RECIPE`.
Tensor recipe_quantize_linear(const QuantRecipe& rc, const float* W, int64_t M, int64_t K, const std::string& name,
                              int64_t n_layers);
// The blocks' linears' mean bits per weight in memory under recipe rc (for planning).
double recipe_linear_bits(const QuantRecipe& rc, const ModelConfig& c);

}  // namespace llmq
