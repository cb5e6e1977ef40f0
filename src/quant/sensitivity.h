// `llmq quantize --sensitivity`: how much each role (all blocks' q, k, ... down) and each block
// (its seven linears) costs when it alone is quantized at a low setting, measured as the KL
// divergence of the model's next-token distributions from the float model's on calibration
// text, so a recipe can protect what matters (the measured order is what fsdp_qlora's "block
// influence" approximates without data).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "quant/calibration.h"

namespace llmq {

struct SensitivityOptions {
  std::string model;
  CalibOptions calib;
  std::string probe = "w2a16:g16:hqq:axis0";  // the low setting each unit is tried at (rtn or hqq)
  int64_t protect = 2;                        // blocks the suggested recipe keeps at protect_spec
  std::string protect_spec = "w8a16";
  bool progress = true;
};

struct SensitivityRow {
  std::string unit;      // "q", ..., "down" or "block 3"
  std::string selector;  // the recipe selector for it ("q", "layers.3")
  double kld_mean = 0, kld_p99 = 0, top1 = 0, ppl_ratio = 0;
};

struct SensitivityResult {
  std::vector<SensitivityRow> roles, blocks;  // each sorted by decreasing KL divergence
  std::string suggested_mix;                  // --mix protecting the `protect` most sensitive blocks
  int64_t tokens = 0;
};

SensitivityResult quantize_sensitivity(const SensitivityOptions& o);

}  // namespace llmq
