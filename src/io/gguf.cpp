// GGUF v3 writer, Llama export, parser and loader (see gguf.h).
#include "io/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/file_util.h"
#include "core/progress.h"
#include "io/hf_dir.h"
#include "quant/quant.h"
#include "tokenizer/tokenizer.h"

namespace llmq {

namespace fs = std::filesystem;
constexpr uint64_t kAlign = 32;

uint64_t ggml_type_bytes(GgmlType t, uint64_t n) {
  switch (t) {
    case GgmlType::F32: return 4 * n;
    case GgmlType::F16:
    case GgmlType::BF16: return 2 * n;
    case GgmlType::Q8_0: return n / 32 * sizeof(BlockQ8_0);
    case GgmlType::Q4_0: return n / 32 * sizeof(BlockQ4_0);
  }
  return 0;
}

const char* ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return "f32";
    case GgmlType::F16: return "f16";
    case GgmlType::BF16: return "bf16";
    case GgmlType::Q8_0: return "q8_0";
    case GgmlType::Q4_0: return "q4_0";
  }
  return "?";
}

namespace {

template <class T>
void put(std::string& b, T v) {
  b.append(reinterpret_cast<const char*>(&v), sizeof v);
}
void put_str(std::string& b, const std::string& s) {
  put<uint64_t>(b, s.size());
  b += s;
}

void put_value(std::string& b, const GgufValue& v) {
  std::visit(
      [&](const auto& x) {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, uint32_t>) put(b, (uint32_t)GgufValueType::U32), put(b, x);
        else if constexpr (std::is_same_v<X, int32_t>) put(b, (uint32_t)GgufValueType::I32), put(b, x);
        else if constexpr (std::is_same_v<X, float>) put(b, (uint32_t)GgufValueType::F32), put(b, x);
        else if constexpr (std::is_same_v<X, bool>) put(b, (uint32_t)GgufValueType::BOOL), put<uint8_t>(b, x ? 1 : 0);
        else if constexpr (std::is_same_v<X, uint64_t>) put(b, (uint32_t)GgufValueType::U64), put(b, x);
        else if constexpr (std::is_same_v<X, std::string>) put(b, (uint32_t)GgufValueType::STRING), put_str(b, x);
        else if constexpr (std::is_same_v<X, std::vector<std::string>>) {
          put(b, (uint32_t)GgufValueType::ARRAY), put(b, (uint32_t)GgufValueType::STRING), put<uint64_t>(b, x.size());
          for (const auto& s : x) put_str(b, s);
        } else if constexpr (std::is_same_v<X, std::vector<float>>) {
          put(b, (uint32_t)GgufValueType::ARRAY), put(b, (uint32_t)GgufValueType::F32), put<uint64_t>(b, x.size());
          for (float f : x) put(b, f);
        } else if constexpr (std::is_same_v<X, std::vector<int32_t>>) {
          put(b, (uint32_t)GgufValueType::ARRAY), put(b, (uint32_t)GgufValueType::I32), put<uint64_t>(b, x.size());
          for (int32_t i : x) put(b, i);
        }
      },
      v);
}

uint64_t align_up(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

}  // namespace

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<uint64_t> ne, Fill fill) {
  uint64_t n = 1;
  for (auto d : ne) n *= d;
  if ((type == GgmlType::Q8_0 || type == GgmlType::Q4_0) && ne[0] % 32 != 0)
    fail("gguf: {} rows of {} elements cannot be stored as {} (blocks of 32)", name, ne[0], ggml_type_name(type));
  tensors_.push_back({name, type, std::move(ne), ggml_type_bytes(type, n), std::move(fill)});
}

void GgufWriter::write(const std::string& path, const std::function<void(uint64_t, uint64_t)>& progress) const {
  std::string head;
  head += "GGUF";
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kv_.size());
  for (const auto& [k, v] : kv_) put_str(head, k), put_value(head, v);
  uint64_t off = 0, total = 0;
  for (const auto& t : tensors_) {
    put_str(head, t.name);
    put<uint32_t>(head, (uint32_t)t.ne.size());
    for (auto d : t.ne) put<uint64_t>(head, d);
    put<uint32_t>(head, (uint32_t)t.type);
    put<uint64_t>(head, off);
    off = align_up(off + t.bytes);
    total += t.bytes;
  }
  head.resize(align_up(head.size()), '\0');
  AtomicFile f(path);
  f.write(head.data(), head.size());
  std::vector<uint8_t> buf;
  const char zeros[kAlign] = {};
  uint64_t done = 0;
  for (const auto& t : tensors_) {
    buf.assign(t.bytes, 0);
    t.fill(buf.data());
    f.write(buf.data(), buf.size());
    const uint64_t pad = align_up(t.bytes) - t.bytes;
    if (pad) f.write(zeros, pad);
    done += t.bytes;
    if (progress) progress(done, total);
  }
  f.commit();
}

namespace {

// Element i of a float tensor as f32.
inline float at(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::F32: return t.host<float>()[i];
    case DType::BF16: return bf16_to_f32(t.host<uint16_t>()[i]);
    case DType::F16: return f16_to_f32(t.host<uint16_t>()[i]);
    default: fail("gguf export: tensor dtype {} is not a float type", dtype_name(t.dtype()));
  }
}

// Row r of the GGUF q/k matrix is this row of the Hugging Face one: within each head, GGUF
// (Meta) interleaves rotary pairs (2j, 2j+1) where HF keeps halves (j, j + hd/2).
int64_t hf_row_of_gguf(int64_t r, int64_t hd) {
  const int64_t h = r / hd, i = r % hd;
  return h * hd + (i % 2 == 0 ? i / 2 : hd / 2 + i / 2);
}

void write_rows(const Tensor& src, GgmlType type, bool permute, int64_t hd, uint8_t* dst) {
  const int64_t M = src.ndim() == 2 ? src.dim(0) : 1, K = src.ndim() == 2 ? src.dim(1) : src.dim(0);
  const uint64_t row_bytes = ggml_type_bytes(type, (uint64_t)K);
#pragma omp parallel
  {
    std::vector<float> row(K);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < M; r++) {
      const int64_t s = permute ? hf_row_of_gguf(r, hd) : r;
      for (int64_t k = 0; k < K; k++) row[k] = at(src, s * K + k);
      uint8_t* d = dst + r * row_bytes;
      switch (type) {
        case GgmlType::F32: std::memcpy(d, row.data(), K * 4); break;
        case GgmlType::F16:
          for (int64_t k = 0; k < K; k++) { uint16_t h = f32_to_f16(row[k]); std::memcpy(d + 2 * k, &h, 2); }
          break;
        case GgmlType::BF16:
          for (int64_t k = 0; k < K; k++) { uint16_t h = f32_to_bf16(row[k]); std::memcpy(d + 2 * k, &h, 2); }
          break;
        case GgmlType::Q8_0: quantize_row_q8_0(row.data(), reinterpret_cast<BlockQ8_0*>(d), K); break;
        case GgmlType::Q4_0: quantize_row_q4_0(row.data(), reinterpret_cast<BlockQ4_0*>(d), K); break;
      }
    }
  }
}

}  // namespace

void gguf_export(const std::string& model_dir, const std::string& out, const GgufExportOptions& o) {
  GgmlType mt;
  uint32_t file_type;
  if (o.type == "f32") mt = GgmlType::F32, file_type = 0;
  else if (o.type == "f16") mt = GgmlType::F16, file_type = 1;
  else if (o.type == "q8_0") mt = GgmlType::Q8_0, file_type = 7;
  else if (o.type == "q4_0") mt = GgmlType::Q4_0, file_type = 2;
  else fail("export: GGUF type '{}' is not supported (f32, f16, q8_0 or q4_0)", o.type);
  {
    const ModelConfig probe = config_load((fs::path(model_dir) / "config.json").string());
    if (probe.quant.enabled)
      fail("{}: a quantized ({}) model; export GGUF from the float model it came from", model_dir, probe.quant.scheme);
  }
  Model m = model_load(model_dir, LoadMode::Map);
  const ModelConfig& c = m.config;
  const std::string tok_path = tokenizer_find(model_dir);
  if (tok_path.empty())
    fail("{}: no tokenizer (tokenizer.json or tokenizer.model) in the model directory; llama.cpp needs one in the GGUF",
         model_dir);
  auto tok = tokenizer_load(model_dir);
  VocabExport v = tok->export_vocab();
  if ((int64_t)v.tokens.size() > c.vocab_size)
    fail("{}: the tokenizer has {} tokens but the model's vocabulary is {}", model_dir, v.tokens.size(), c.vocab_size);
  while ((int64_t)v.tokens.size() < c.vocab_size) {  // rows past the tokenizer: unused tokens
    v.tokens.push_back(fmt::format("[PAD{}]", v.tokens.size()));
    v.types.push_back(5);
    if (!v.scores.empty()) v.scores.push_back(-1e9f);
  }
  GgufWriter w;
  w.set("general.architecture", std::string("llama"));
  w.set("general.name", fs::path(model_dir).filename().string());
  w.set("general.alignment", (uint32_t)kAlign);
  w.set("general.file_type", file_type);
  if (mt == GgmlType::Q8_0 || mt == GgmlType::Q4_0) w.set("general.quantization_version", (uint32_t)2);
  w.set("llama.vocab_size", (uint32_t)c.vocab_size);
  w.set("llama.context_length", (uint32_t)c.max_seq_len);
  w.set("llama.embedding_length", (uint32_t)c.dim);
  w.set("llama.block_count", (uint32_t)c.n_layers);
  w.set("llama.feed_forward_length", (uint32_t)c.ffn_dim);
  w.set("llama.rope.dimension_count", (uint32_t)c.head_dim);
  w.set("llama.attention.head_count", (uint32_t)c.n_heads);
  w.set("llama.attention.head_count_kv", (uint32_t)c.n_kv_heads);
  w.set("llama.attention.key_length", (uint32_t)c.head_dim);
  w.set("llama.attention.value_length", (uint32_t)c.head_dim);
  w.set("llama.attention.layer_norm_rms_epsilon", (float)c.norm_eps);
  w.set("llama.rope.freq_base", (float)c.rope_theta);
  w.set("tokenizer.ggml.model", v.model);
  w.set("tokenizer.ggml.pre", v.pre);
  w.set("tokenizer.ggml.tokens", v.tokens);
  if (!v.scores.empty()) w.set("tokenizer.ggml.scores", v.scores);
  w.set("tokenizer.ggml.token_type", v.types);
  if (!v.merges.empty()) w.set("tokenizer.ggml.merges", v.merges);
  if (tok->bos_id >= 0) w.set("tokenizer.ggml.bos_token_id", (uint32_t)tok->bos_id);
  if (!tok->eos_ids.empty()) w.set("tokenizer.ggml.eos_token_id", (uint32_t)tok->eos_ids[0]);
  if (v.unk_id >= 0) w.set("tokenizer.ggml.unknown_token_id", (uint32_t)v.unk_id);
  w.set("tokenizer.ggml.add_bos_token", tok->add_bos && tok->bos_id >= 0);
  w.set("tokenizer.ggml.add_eos_token", false);
  {
    const fs::path tc = fs::path(tok_path).parent_path() / "tokenizer_config.json";
    if (fs::is_regular_file(tc)) {
      auto j = nlohmann::json::parse(read_text_file(tc.string()), nullptr, false);
      if (j.is_object() && j.contains("chat_template") && j["chat_template"].is_string())
        w.set("tokenizer.chat_template", j["chat_template"].get<std::string>());
    }
  }
  const int64_t hd = c.head_dim;
  auto mat = [&](const std::string& name, const Tensor& t, bool permute = false) {
    w.add_tensor(name, mt, {(uint64_t)t.dim(1), (uint64_t)t.dim(0)},
                 [&t, mt, permute, hd](uint8_t* d) { write_rows(t, mt, permute, hd, d); });
  };
  auto vec = [&](const std::string& name, const Tensor& t) {
    w.add_tensor(name, GgmlType::F32, {(uint64_t)t.numel()}, [&t](uint8_t* d) { write_rows(t, GgmlType::F32, false, 0, d); });
  };
  const LlamaWeights& W = m.weights;
  mat("token_embd.weight", W.embed);
  std::vector<float> rope_factors;
  if (c.rope_scaling.enabled) {
    // llama.cpp divides each rotary frequency by rope_freqs[i]: the ratio of the unscaled
    // frequency to the scaled one.
    for (int64_t i = 0; i < hd / 2; i++)
      rope_factors.push_back((float)(std::pow(c.rope_theta, -2.0 * (double)i / (double)hd) / m.rope_freqs[i]));
    w.add_tensor("rope_freqs.weight", GgmlType::F32, {(uint64_t)(hd / 2)},
                 [&rope_factors](uint8_t* d) { std::memcpy(d, rope_factors.data(), rope_factors.size() * 4); });
  }
  for (int64_t l = 0; l < c.n_layers; l++) {
    const LlamaLayer& L = W.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    vec(p + "attn_norm.weight", L.attn_norm);
    mat(p + "attn_q.weight", L.wq, true);
    mat(p + "attn_k.weight", L.wk, true);
    mat(p + "attn_v.weight", L.wv);
    mat(p + "attn_output.weight", L.wo);
    vec(p + "ffn_norm.weight", L.ffn_norm);
    mat(p + "ffn_gate.weight", L.w_gate);
    mat(p + "ffn_up.weight", L.w_up);
    mat(p + "ffn_down.weight", L.w_down);
  }
  vec("output_norm.weight", W.norm);
  if (!c.tie_embeddings) mat("output.weight", W.lm_head);
  Progress bar("exporting " + out, 1, o.progress);
  w.write(out, [&](uint64_t done, uint64_t total) {
    bar = Progress("exporting " + out, total, o.progress);
    bar.update(done);
  });
  bar.finish();
}

}  // namespace llmq
