// Llama model configuration: from Hugging Face config.json, Meta params.json, or a preset.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/dtype.h"

namespace llmq {

// Llama 3.1 "llama3" rope scaling (Meta's apply_scaling): frequencies whose wavelength is
// longer than original_max_position / low_freq_factor are divided by factor, shorter than
// original_max_position / high_freq_factor kept, and interpolated smoothly in between.
struct RopeScaling {
  bool enabled = false;
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position = 8192;
};

// config.json's quantization_config. llmq writes and reads the GPTQ checkpoint layout
// (quant_method "gptq": qweight/qzeros/scales/g_idx per linear; docs/formats.md), whatever
// algorithm chose the codes; the "llmq" sub-object records the scheme and algorithm.
struct QuantModule;

struct QuantConfig {
  bool enabled = false;
  int bits = 0;
  int64_t group = 0;  // 0: one group per output channel (group_size -1)
  bool sym = true;
  bool desc_act = false;
  bool lm_head = false;            // lm_head is quantized too
  bool zeros_minus_one = true;     // checkpoint_format "gptq" (v1) stores zero - 1
  std::string scheme = "";         // w8a16, w4a16, w8a8, fp8
  std::string algorithm = "rtn";   // rtn, gptq, awq, ... (what chose the codes)
  bool act_per_token = false;      // w8a8; fp8: per token (else per tensor)
  bool fp8 = false;                // E4M3 weights (compressed-tensors "float-quantized")
  bool weight_per_tensor = false;  // fp8: one weight scale per tensor (else per channel)
  bool float_zeros = false;        // HQQ (llmq layout): f16 "zeros" tensors, not packed qzeros
  bool awq = false;                // AWQ GEMM layout (quant_method "awq"): codes packed along the outputs
  // compressed-tensors integer checkpoints (llm-compressor): "pack-quantized" (int4/int8
  // codes packed in int32 along the inputs) or "int-quantized" (int8 .weight); "" otherwise.
  std::string ct_int;
  int hqq_axis = 1;                // HQQ: 1, groups along the inputs; 0, along the outputs (zeros/scales (M/G, K))
  bool act_static = false;         // fp8: static per-tensor activation scales (NAME.input_scale)
  bool act_per_tensor = false;     // w8a8: one dynamic activation scale per call (llmq.act "tensor")
  // Calibrated static KV-cache scales (quantization_config.kv_cache_scheme, compressed-tensors
  // style): "" none, "int8" or "fp8"; per layer self_attn.k_scale / v_scale, one f32 per KV head
  // ("attn_head") or one per layer ("tensor"): scale = calibrated amax / 127 (int8) or / 448 (fp8).
  std::string kv_cache;
  // Quantization-aware trained models (`llmq qat`, algorithm "qat"): the activations and the
  // KV cache are quantized with LLM-QAT's formula, s = qmax / (amax + 1e-6), code = round(x s),
  // value = code / (s + 1e-6), so the model runs exactly the quantizers it was trained with.
  // llmq.quantizer "llm-qat" in the config; 0: the kernels' own amax / qmax.
  float act_eps = 0;
  // llmq.quantizer "llm-qat" on a weight-only scheme: activations stay f32 at run time, as trained.
  bool act_float = false;
  // kv_cache_scheme with "dynamic": true and strategy "token": the cache quantizes each token's
  // row per KV head as it stores it (no scale tensors); "int4" or "int8" (QAT models).
  bool kv_dynamic = false;
  // Per-module mixes (quantize --recipe / --mix; GPTQModel's "dynamic" overrides; several
  // compressed-tensors config_groups and "ignore"): the linears whose quantization differs from
  // the fields above, by HF tensor name ("model.layers.3.mlp.down_proj.weight"), sorted by
  // name; an entry with enabled false is a linear left in float. Resolved from config.json
  // when it is read, so every reader asks of(name) and never matches patterns itself.
  std::vector<QuantModule> modules;
  // The quantization of one linear: its entry in modules, else *this.
  const QuantConfig& of(const std::string& name) const;
  // Whether linear `name` is stored quantized (lm_head only where the config says so).
  bool quantizes(const std::string& name) const;
};

// One linear's entry in QuantConfig::modules (a pair, spelled out so the recursive type is
// complete where vector needs it).
struct QuantModule {
  std::string first;   // HF tensor name
  QuantConfig second;  // its quantization
  QuantModule() = default;
  QuantModule(std::string name, QuantConfig q) : first(std::move(name)), second(std::move(q)) {}
};

struct ModelConfig {
  int64_t dim = 0;         // hidden_size
  int64_t n_layers = 0;    // num_hidden_layers
  int64_t n_heads = 0;     // num_attention_heads
  int64_t n_kv_heads = 0;  // num_key_value_heads (GQA: n_heads is a multiple of it)
  int64_t head_dim = 0;    // dim / n_heads unless config says otherwise
  int64_t ffn_dim = 0;     // intermediate_size
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0; // max_position_embeddings
  double norm_eps = 1e-5;
  double rope_theta = 500000.0;
  RopeScaling rope_scaling;
  bool tie_embeddings = false;
  std::vector<int64_t> bos_token_ids, eos_token_ids;
  DType dtype = DType::BF16;  // torch_dtype: what the weights are stored in
  QuantConfig quant;          // quantization_config, when the linears are quantized

  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  int64_t n_params() const;
  // Validates ranges and divisibility; `where` names the source in the message.
  void validate(const std::string& where) const;
};

// FFN width as Meta's reference computes it: int(2*4*dim/3), times ffn_dim_multiplier
// (truncated), rounded up to a multiple of multiple_of.
int64_t meta_ffn_dim(int64_t dim, int64_t multiple_of, double ffn_dim_multiplier);

// The HF tensor names of every linear a quantization_config can describe (the blocks' seven
// projections, then lm_head.weight), in file order.
std::vector<std::string> quant_linear_names(const ModelConfig& c);
// Whether two linears are quantized the same way (what the loader and the kernels see).
bool quant_same_linear(const QuantConfig& a, const QuantConfig& b);
ModelConfig config_from_hf_json(const nlohmann::json& j, const std::string& where);
ModelConfig config_from_meta_params(const nlohmann::json& j, const std::string& where);
// Parses a config.json or params.json text (detected by its keys); `where` names the file.
ModelConfig config_parse(const std::string& text, const std::string& where);
ModelConfig config_load(const std::string& path);
nlohmann::json config_to_hf_json(const ModelConfig& c);

ModelConfig config_preset(const std::string& name);
std::vector<std::string> config_preset_names();

// Rotary angle frequencies (head_dim/2 of them), with llama3 scaling applied, in float64.
std::vector<double> rope_frequencies(const ModelConfig& c);

}  // namespace llmq
