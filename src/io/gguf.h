// GGUF v3 (llama.cpp's model file): writing a Llama model with its tokenizer, and reading
// one back as a model source. Layout (little-endian, docs/formats.md):
//   "GGUF" u32 version=3, u64 tensor_count, u64 kv_count,
//   kv_count x (string key, u32 type, value), tensor_count x (string name, u32 n_dims,
//   u64 ne[n_dims] (ne[0] = row length), u32 ggml type, u64 offset from the data start),
//   padding to general.alignment (32), the tensor data, each tensor aligned.
// Strings are u64 length + bytes; arrays are u32 element type, u64 count, elements.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "io/safetensors.h"
#include "model/llama.h"
#include "quant/ggml_blocks.h"

namespace llmq {

enum class GgufValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9, U64 = 10, I64 = 11,
  F64 = 12
};

// One metadata value (arrays of strings, f32 and i32 are what Llama files use).
using GgufValue = std::variant<uint32_t, int32_t, float, bool, std::string, uint64_t, std::vector<std::string>,
                               std::vector<float>, std::vector<int32_t>>;

class GgufWriter {
 public:
  using Fill = std::function<void(uint8_t* dst)>;  // writes the tensor's whole data
  void set(const std::string& key, GgufValue v) { kv_.push_back({key, std::move(v)}); }
  // dims as GGUF writes them: ne[0] is the row length.
  void add_tensor(const std::string& name, GgmlType type, std::vector<uint64_t> ne, Fill fill);
  // Atomic (temp, fsync, rename); progress(done bytes, total bytes).
  void write(const std::string& path, const std::function<void(uint64_t, uint64_t)>& progress = nullptr) const;

 private:
  struct T {
    std::string name;
    GgmlType type;
    std::vector<uint64_t> ne;
    uint64_t bytes;
    Fill fill;
  };
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<T> tensors_;
};

// Bytes of n elements of a ggml type (n % 32 == 0 for block types).
uint64_t ggml_type_bytes(GgmlType t, uint64_t n);
const char* ggml_type_name(GgmlType t);

// The types gguf_export writes, for messages and --help.
extern const char* kGgufExportTypes;
// A matrix's role in llama.cpp's k-quant mixes.
enum class GgufRole { Other, Output, AttnV, AttnOutput, FfnDown };
// The ggml type llama.cpp's quantizer (llama-quant.cpp, Llama architecture, no experts, no
// importance matrix) gives a matrix of `role` in `layer` for a k-quant file type (q2_k,
// q3_k_s/m/l, q4_k_s/m, q5_k_s/m, q6_k): the output (and tied embeddings) Q6_K; attn_v,
// attn_output and ffn_down raised in the _m/_l/q2_k mixes; rows that are not whole
// super-blocks fall back (Q2_K/Q3_K to Q4_0; the rest to Q8_0, where llama.cpp would take
// Q5_0/Q5_1, which llmq does not write). K is the row length.
GgmlType gguf_kmix_type(const std::string& ftype, GgufRole role, int64_t layer, int64_t n_layers, int64_t n_gqa,
                        int64_t K);

struct GgufExportOptions {
  std::string type = "f16";  // f32 | f16 | q8_0 | q4_0 | a k-quant file type (kGgufExportTypes)
  bool progress = true;
  // Per-tensor types (a quantization recipe mapped onto GGUF types): given a matrix's HF name
  // and its row length, the type to write, or nullopt for the file type's choice.
  std::function<std::optional<GgmlType>(const std::string& hf_name, int64_t K)> type_of;
};
// Exports a (float) model directory with its tokenizer to a GGUF file llama.cpp loads:
// llama.* keys, q/k rows permuted back to Meta's interleaved rotary order, rope_freqs for
// Llama 3.1-style scaling, Llama 3 BPE or SentencePiece vocabulary. Norms stay f32; with
// q8_0/q4_0 every matrix (embeddings and output included) uses the type; a k-quant file type
// mixes types per matrix as llama.cpp does (gguf_kmix_type).
void gguf_export(const std::string& model_dir, const std::string& out, const GgufExportOptions& o);

// A LoRA adapter as llama.cpp loads one (convert_lora_to_gguf.py's layout): general.type
// "adapter", adapter.type "lora", adapter.lora.alpha; per adapted linear
// blk.N.<attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down>.weight.lora_a (ne in, r)
// and .lora_b (ne r, out), q/k's lora_b rows permuted as the base's q/k rows are. llama.cpp
// scales the product by alpha / r.
struct GgufLoraLinear {
  int layer, module;  // module: 0..6 = q, k, v, o, gate, up, down
  Tensor A, B;        // (r, in), (out, r) f32
};
void gguf_export_lora(const ModelConfig& c, const std::vector<GgufLoraLinear>& lin, float alpha, const std::string& type,
                      const std::string& name, const std::string& out);

// A parsed GGUF file: metadata and tensor directory (data stays in the mapping).
struct GgufFile {
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<uint64_t> ne;
    uint64_t offset, bytes;
  };
  std::string path;
  uint32_t version = 0;
  std::map<std::string, GgufValue> kv;
  std::vector<Tensor> tensors;
  uint64_t data_start = 0;
  std::shared_ptr<const void> mapping;  // keeps the file mapped (gguf_parse)
  std::shared_ptr<Storage> buffer;      // or the file read into memory (gguf_load_model, LoadMode::Read)
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};
// The file type a GGUF declares (general.file_type: "q4_k_m", "q8_0", ...; "unknown (N)"),
// or, without one, "mixed".
std::string gguf_file_type_name(const GgufFile& f);
// Validates everything (sizes, offsets, types, counts) and fails naming the file.
GgufFile gguf_parse(const std::string& path);
// Parses from memory (the fuzz target's entry point); `path` names it in errors.
GgufFile gguf_parse_bytes(const uint8_t* data, uint64_t size, const std::string& path);
// A Llama GGUF (f32/f16/bf16/q8_0/q4_0 tensors) as a model: q8_0/q4_0 become llmq's 8/4-bit
// layout with groups of 32 (exact), q/k rows go back to Hugging Face order.
// Float tensors whose rows need no reordering are views of the file's bytes (no copy): of
// the mapping under LoadMode::Map (pages dropped after the NaN check, so a streaming reader
// keeps its peak), of the file read into memory under LoadMode::Read. A quantized
// token_embd stays quantized (lookups dequantize rows).
Model gguf_load_model(const std::string& path, LoadMode mode = LoadMode::Read);
// The same from a parsed file (its data must stay valid while the model is built).
Model gguf_model_from(GgufFile f);
// Llama 3 rope_scaling parameters (factor, low/high frequency factors, original context)
// that reproduce a GGUF's rope frequencies (rope_freqs.weight), if a common set does.
std::optional<RopeScaling> gguf_fit_llama3_scaling(const ModelConfig& c, const std::vector<double>& freqs);

}  // namespace llmq
