// Deterministic test weights for a model config, shared by the forward and training oracles.
#pragma once
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/rng.h"
#include "io/hf_dir.h"

namespace llmq::test {

// Weights large enough that attention is far from uniform (q/k std 2/sqrt(dim) gives scores
// of several units) and norms that are not all ones, so a wrong RoPE pairing, head mapping
// or norm shows in the logits. Deterministic in (seed, name, index).
inline TensorFill test_fill(const ModelConfig& c, uint64_t seed) {
  return [c, seed](const HfTensorSpec& s, DType dt, uint8_t* dst, uint64_t off, uint64_t n) {
    const int64_t es = dtype_bits(dt) / 8;
    const uint64_t stream = seed ^ hash_str(s.name);
    double in = (double)s.shape.back(), std = 1.0 / std::sqrt(in);
    if (s.name.find("q_proj") != std::string::npos || s.name.find("k_proj") != std::string::npos) std *= 2;
    if (s.name.find("embed") != std::string::npos || s.name.find("lm_head") != std::string::npos) std = 1.0;
    for (int64_t i = 0; i < (int64_t)(n / es); i++) {
      int64_t e = (int64_t)(off / es) + i;
      double v = s.is_norm ? 1.0 + 0.2 * rng_normal(stream, e) : std * rng_normal(stream, e);
      float f = (float)v;
      if (dt == DType::F32) std::memcpy(dst + 4 * i, &f, 4);
      if (dt == DType::BF16) { uint16_t h = f32_to_bf16(f); std::memcpy(dst + 2 * i, &h, 2); }
      if (dt == DType::F16) { uint16_t h = f32_to_f16(f); std::memcpy(dst + 2 * i, &h, 2); }
    }
  };
}

// The tiny preset with the Llama 3 vocabulary and BOS/EOS ids (so the fetched Llama 3
// tokenizer fits it), test_fill's weights, saved as f32 into dir and loaded as a user's model.
inline Model tiny_llama3_model(const std::string& dir, uint64_t seed) {
  ModelConfig c = config_preset("tiny");
  c.vocab_size = 128256;
  c.bos_token_ids = {128000};
  c.eos_token_ids = {128001};
  model_save(dir, c, test_fill(c, seed), SaveOptions{DType::F32});
  return model_load(dir);
}

}  // namespace llmq::test
