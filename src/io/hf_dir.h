// Hugging Face model directories: config.json, generation_config.json and the weights in
// model.safetensors or shards listed by model.safetensors.index.json.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/llama.h"

namespace llmq {

// The tensors of a Llama checkpoint under their Hugging Face names, in file order.
struct HfTensorSpec {
  std::string name;
  Shape shape;
  bool is_norm;  // a (dim,) RMSNorm weight
};
std::vector<HfTensorSpec> hf_tensor_specs(const ModelConfig& c);
// Whether this spec is stored GPTQ-quantized (qweight/qzeros/scales/g_idx) under config c.
bool hf_is_quantized_linear(const ModelConfig& c, const std::string& name);

// Loads a model directory: weights stay memory-mapped (norms are converted to f32). Checks
// every tensor's presence, dtype (f32, bf16, f16) and shape against config.json.
// want(name), when given, selects the tensors loaded (by Hugging Face name); the others are
// not read, checked or converted and stay undefined in the weights (a rank of a sharded
// fine-tuning base loads only its units this way).
Model model_load(const std::string& dir, LoadMode mode = LoadMode::Read,
                 const std::function<bool(const std::string&)>& want = {});

// Fails, naming the file, tensor, row and column, when a float tensor holds a NaN or an Inf.
// Every loader checks every tensor once (a corrupt model is refused by every command alike,
// not printed as "######" by one and quantized into a finite-looking model by another).
void check_finite(const Tensor& x, const std::string& file, const std::string& name);

// Fills the bytes [offset, offset+n) of one tensor's data; used to stream writes.
using TensorFill = std::function<void(const HfTensorSpec& spec, DType dtype, uint8_t* dst, uint64_t offset, uint64_t n)>;

struct SaveOptions {
  DType dtype = DType::BF16;            // dtype of the linear and embedding weights
  uint64_t max_shard_bytes = 5ull << 30; // like transformers' save_pretrained default "5GB"
  bool progress = false;
};
// Writes a model directory, streaming each tensor from `fill`; every file is written
// atomically. Norms are stored in the same dtype as the other weights, as HF does.
void model_save(const std::string& dir, const ModelConfig& c, const TensorFill& fill, const SaveOptions& opt);
// Writes config.json and generation_config.json (atomically).
void write_model_configs(const std::string& dir, const ModelConfig& c);
// Copies the tokenizer files of a model directory (tokenizer.json / tokenizer.model and
// tokenizer_config.json, when present) into `out_dir`. Returns whether one was found.
bool copy_tokenizer_files(const std::string& model_dir, const std::string& out_dir);

// A loaded model's tensors under their Hugging Face names (lm_head included, also when tied).
std::map<std::string, Tensor> hf_named_tensors(const Model& m);

// Writes a loaded model (its weights converted to opt.dtype).
void model_save(const std::string& dir, const Model& m, const SaveOptions& opt);

// Random initialisation as torchtitan (Meta's open training code) does it: linears
// truncated-normal std 0.02 (wo, w_down, w_up scaled by 1/sqrt(2*(layer+1))), embeddings
// N(0, 1), the output projection std dim^-0.5 (also used for a tied embedding), norms 1.
// Deterministic in (seed, tensor name, element index).
TensorFill init_fill(const ModelConfig& c, uint64_t seed);

}  // namespace llmq
