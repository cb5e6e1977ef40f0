// `llmq quantize`: a model directory in, a GPTQ-layout quantized model directory out,
// streamed one tensor at a time from the memory-mapped source (peak memory ~ the largest
// linear's codes plus buffers, never the whole model).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llmq {

struct QuantizeOptions {
  std::string model, out;
  std::string method = "rtn";
  std::string scheme = "w4a16";
  int64_t group = -1;  // -1: the scheme's default
  bool sym = false;
  std::string weight_scale, act_scale;  // fp8: channel|tensor, token|tensor ("" = default)
  // Tensors left in float: "lm_head", "embed" (always), or any substring of a tensor name
  // ("down_proj", "layers.0.").
  std::vector<std::string> keep = {"embed"};
  double max_shard_gb = 5;
  bool progress = true;
};

struct QuantizeResult {
  int64_t quantized_tensors = 0, kept_tensors = 0;
  uint64_t bytes_in = 0, bytes_out = 0;
  double seconds = 0;
};

QuantizeResult quantize_model(const QuantizeOptions& o);

}  // namespace llmq
