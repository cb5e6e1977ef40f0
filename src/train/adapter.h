// Adapters for fine-tuning on a frozen (float or quantized) base: LoRA and DoRA as PEFT
// defines them (train_ops.h, Adapter), their configuration, their tensors under PEFT's names,
// and the files PEFT reads and writes (adapter_config.json, adapter_model.safetensors).
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/hf_dir.h"
#include "model/config.h"

namespace llmq::train {

// The seven linears of a block, in the order the training model keeps them.
constexpr int kBlockLinears = 7;
extern const std::array<const char*, kBlockLinears> kLinearNames;    // q_proj ... down_proj
extern const std::array<const char*, kBlockLinears> kLinearModules;  // self_attn.q_proj ... mlp.down_proj

struct AdapterConfig {
  bool dora = false;
  int64_t rank = 16;
  double alpha = 16;
  bool rslora = false;  // scale alpha / sqrt(r) instead of alpha / r
  double dropout = 0;   // on the adapter's input (training only)
  std::array<bool, kBlockLinears> targets{true, true, true, true, true, true, true};
  bool train_norms = false;  // the RMSNorm weights are trained too
  std::string base;          // base_model_name_or_path as written in adapter_config.json
  double scale() const;
  // Fails naming the problem: rank < 1, alpha 0 or not finite, dropout outside [0, 1), no target.
  void check() const;
  nlohmann::json options() const;  // what a resume must match
};

// "q_proj,v_proj", "all-linear" or "all" -> targets; fails naming an unknown module.
std::array<bool, kBlockLinears> parse_targets(const std::string& list);

// The trained tensors under PEFT's names, in the training buffer's order: block by block
// (its norms with train_norms, then each targeted linear's lora_A (r, in), lora_B (out, r)
// and DoRA's lora_magnitude_vector (out)), then the final norm with train_norms.
std::vector<HfTensorSpec> adapter_specs(const ModelConfig& c, const AdapterConfig& a);
// Where each of those tensors starts in a flat buffer of them (element offsets; -1: absent),
// by layer and linear: the one walk of that order every reader of the buffer uses.
struct AdapterLayout {
  struct Linear {
    int64_t A = -1, B = -1, mag = -1;
  };
  std::vector<std::array<Linear, kBlockLinears>> lin;  // per block
  std::vector<int64_t> attn_norm, ffn_norm;            // per block
  int64_t norm = -1;
  int64_t n = 0;  // elements in all
};
AdapterLayout adapter_layout(const ModelConfig& c, const AdapterConfig& a);
// (in, out) of linear t of a block.
std::pair<int64_t, int64_t> linear_shape(const ModelConfig& c, int t);

// adapter_config.json as PEFT writes it (peft_type LORA, r, lora_alpha, target_modules,
// use_dora, use_rslora, lora_dropout, base_model_name_or_path, modules_to_save for norms).
nlohmann::json adapter_config_json(const AdapterConfig& a);
// Reads DIR/adapter_config.json; fails naming the file and field (not LORA, rank 0, alpha 0,
// unknown target modules, options llmq does not run: bias, fan_in_fan_out, rank_pattern, ...).
AdapterConfig adapter_config_load(const std::string& dir);
// The same from the file's text (`path` names it in errors); the fuzz target's entry.
AdapterConfig adapter_config_parse(const std::string& text, const std::string& path);

}  // namespace llmq::train

namespace llmq::train {
// Writes DIR/adapter_model.safetensors (f32, the tensors of `specs` from the flat buffer) and
// DIR/adapter_config.json, each atomically.
void save_adapter(const std::string& dir, const AdapterConfig& a, const std::vector<HfTensorSpec>& specs,
                  const std::vector<int64_t>& offsets, const float* params);
// The tensors of DIR/adapter_model.safetensors (f32, bf16 or f16) in the flat order of
// adapter_specs(c, a). Fails naming the file and tensor when a tensor is missing, has another
// shape (a rank that does not match r, or an adapter for another model), or the file holds
// tensors this model has no place for.
std::function<void(int64_t b, int64_t e, float* dst)> adapter_reader(const std::string& dir, const ModelConfig& c,
                                                                       const AdapterConfig& a);
}  // namespace llmq::train
