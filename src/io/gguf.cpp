// GGUF v3 writer, Llama export, parser and loader (see gguf.h).
#include "io/gguf.h"

#include <set>

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
    case GgmlType::Q2_K: return n / kQK_K * sizeof(BlockQ2_K);
    case GgmlType::Q3_K: return n / kQK_K * sizeof(BlockQ3_K);
    case GgmlType::Q4_K: return n / kQK_K * sizeof(BlockQ4_K);
    case GgmlType::Q5_K: return n / kQK_K * sizeof(BlockQ5_K);
    case GgmlType::Q6_K: return n / kQK_K * sizeof(BlockQ6_K);
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
    case GgmlType::Q2_K: return "q2_k";
    case GgmlType::Q3_K: return "q3_k";
    case GgmlType::Q4_K: return "q4_k";
    case GgmlType::Q5_K: return "q5_k";
    case GgmlType::Q6_K: return "q6_k";
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
        default: quantize_row_kquant(type, row.data(), d, K); break;
      }
    }
  }
}

// The k-quant file types llama.cpp's quantizer names (llama_ftype ids) and their base type.
struct KFileType {
  const char* name;
  uint32_t id;
  GgmlType base;
};
constexpr KFileType kKFileTypes[] = {
    {"q2_k", 10, GgmlType::Q2_K},   {"q3_k_s", 11, GgmlType::Q3_K}, {"q3_k_m", 12, GgmlType::Q3_K},
    {"q3_k_l", 13, GgmlType::Q3_K}, {"q4_k_s", 14, GgmlType::Q4_K}, {"q4_k_m", 15, GgmlType::Q4_K},
    {"q5_k_s", 16, GgmlType::Q5_K}, {"q5_k_m", 17, GgmlType::Q5_K}, {"q6_k", 18, GgmlType::Q6_K},
};

}  // namespace

const char* kGgufExportTypes = "f32, f16, q8_0, q4_0, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k";

std::string gguf_file_type_name(const GgufFile& f) {
  auto it = f.kv.find("general.file_type");
  if (it == f.kv.end() || !std::holds_alternative<uint32_t>(it->second)) return "mixed";
  const uint32_t id = std::get<uint32_t>(it->second);
  for (const auto& k : kKFileTypes)
    if (k.id == id) return k.name;
  switch (id) {
    case 0: return "f32";
    case 1: return "f16";
    case 2: return "q4_0";
    case 7: return "q8_0";
    case 32: return "bf16";
    default: return fmt::format("unknown ({})", id);
  }
}

GgmlType gguf_kmix_type(const std::string& ftype, GgufRole role, int64_t layer, int64_t n_layers, int64_t n_gqa,
                        int64_t K) {
  const KFileType* ft = nullptr;
  for (const auto& k : kKFileTypes)
    if (ftype == k.name) ft = &k;
  if (!ft) fail("export: '{}' is not a k-quant file type ({})", ftype, kGgufExportTypes);
  const GgmlType Q3 = GgmlType::Q3_K, Q4 = GgmlType::Q4_K, Q5 = GgmlType::Q5_K, Q6 = GgmlType::Q6_K;
  const std::string f = ftype;
  // llama.cpp's use_more_bits: the first and last eighth of the layers and every third between.
  const bool more = layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
  GgmlType t = ft->base;
  switch (role) {
    case GgufRole::Output:
      if (K % kQK_K != 0) return GgmlType::Q8_0;
      return Q6;
    case GgufRole::AttnV:
      if (f == "q2_k") t = n_gqa >= 4 ? Q4 : Q3;
      else if (f == "q3_k_m") t = layer < 2 ? Q5 : Q4;
      else if (f == "q3_k_l") t = Q5;
      else if ((f == "q4_k_m" || f == "q5_k_m") && more) t = Q6;
      else if (f == "q4_k_s" && layer < 4) t = Q5;
      break;
    case GgufRole::FfnDown:
      if (f == "q2_k") t = Q3;
      else if (f == "q3_k_m") t = layer < n_layers / 16 ? Q5 : Q4;
      else if (f == "q3_k_l") t = Q5;
      else if ((f == "q4_k_m" || f == "q5_k_m") && more) t = Q6;
      else if (f == "q4_k_s" && layer < n_layers / 8) t = Q5;
      break;
    case GgufRole::AttnOutput:
      if (f == "q2_k") t = Q3;
      else if (f == "q3_k_m") t = Q4;
      else if (f == "q3_k_l") t = Q5;
      break;
    default: break;
  }
  if (K % kQK_K != 0)  // rows that are not whole super-blocks: llama.cpp's fallbacks, Q5_0/Q5_1 as Q8_0
    return t == GgmlType::Q2_K || t == Q3 ? GgmlType::Q4_0 : GgmlType::Q8_0;
  return t;
}

void gguf_export(const std::string& model_dir, const std::string& out, const GgufExportOptions& o) {
  GgmlType mt;
  uint32_t file_type;
  const KFileType* kft = nullptr;
  for (const auto& k : kKFileTypes)
    if (o.type == k.name) kft = &k;
  if (o.type == "f32") mt = GgmlType::F32, file_type = 0;
  else if (o.type == "f16") mt = GgmlType::F16, file_type = 1;
  else if (o.type == "q8_0") mt = GgmlType::Q8_0, file_type = 7;
  else if (o.type == "q4_0") mt = GgmlType::Q4_0, file_type = 2;
  else if (kft) mt = kft->base, file_type = kft->id;
  else fail("export: GGUF type '{}' is not supported ({})", o.type, kGgufExportTypes);
  if (fs::is_regular_file(model_dir))
    fail("{}: export --format gguf reads a float model directory; a GGUF is exported already (for another type, "
         "export from the model directory it came from)", model_dir);
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
  if (mt != GgmlType::F32 && mt != GgmlType::F16) w.set("general.quantization_version", (uint32_t)2);
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
  // Each matrix's type: the file type's, or for a k-quant file type llama.cpp's choice for
  // its role and layer (gguf_kmix_type).
  auto mat = [&](const std::string& name, const Tensor& t, bool permute = false, GgufRole role = GgufRole::Other,
                 int64_t layer = 0, const std::string& hf_name = "") {
    GgmlType ty = kft ? gguf_kmix_type(o.type, role, layer, c.n_layers, c.n_heads / c.n_kv_heads, t.dim(1)) : mt;
    if (o.type_of && !hf_name.empty())
      if (const auto r = o.type_of(hf_name, t.dim(1))) ty = *r;
    w.add_tensor(name, ty, {(uint64_t)t.dim(1), (uint64_t)t.dim(0)},
                 [&t, ty, permute, hd](uint8_t* d) { write_rows(t, ty, permute, hd, d); });
  };
  auto vec = [&](const std::string& name, const Tensor& t) {
    w.add_tensor(name, GgmlType::F32, {(uint64_t)t.numel()}, [&t](uint8_t* d) { write_rows(t, GgmlType::F32, false, 0, d); });
  };
  const LlamaWeights& W = m.weights;
  // Tied embeddings are the output matrix too: llama.cpp quantizes them as the output.
  mat("token_embd.weight", W.embed, false, c.tie_embeddings ? GgufRole::Output : GgufRole::Other);
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
    mat(p + "attn_q.weight", L.wq, true, GgufRole::Other, l, "model.layers." + std::to_string(l) + ".self_attn.q_proj.weight");
    mat(p + "attn_k.weight", L.wk, true, GgufRole::Other, l, "model.layers." + std::to_string(l) + ".self_attn.k_proj.weight");
    mat(p + "attn_v.weight", L.wv, false, GgufRole::AttnV, l, "model.layers." + std::to_string(l) + ".self_attn.v_proj.weight");
    mat(p + "attn_output.weight", L.wo, false, GgufRole::AttnOutput, l, "model.layers." + std::to_string(l) + ".self_attn.o_proj.weight");
    vec(p + "ffn_norm.weight", L.ffn_norm);
    mat(p + "ffn_gate.weight", L.w_gate, false, GgufRole::Other, l, "model.layers." + std::to_string(l) + ".mlp.gate_proj.weight");
    mat(p + "ffn_up.weight", L.w_up, false, GgufRole::Other, l, "model.layers." + std::to_string(l) + ".mlp.up_proj.weight");
    mat(p + "ffn_down.weight", L.w_down, false, GgufRole::FfnDown, l, "model.layers." + std::to_string(l) + ".mlp.down_proj.weight");
  }
  vec("output_norm.weight", W.norm);
  if (!c.tie_embeddings) mat("output.weight", W.lm_head, false, GgufRole::Output, 0, "lm_head.weight");
  Progress bar("exporting " + out, 1, o.progress);
  w.write(out, [&](uint64_t done, uint64_t total) {
    bar = Progress("exporting " + out, total, o.progress);
    bar.update(done);
  });
  bar.finish();
}

void gguf_export_lora(const ModelConfig& c, const std::vector<GgufLoraLinear>& lin, float alpha, const std::string& type,
                      const std::string& name, const std::string& out) {
  GgmlType mt;
  if (type == "f32") mt = GgmlType::F32;
  else if (type == "f16") mt = GgmlType::F16;
  else fail("export --format gguf-lora: type '{}' (choose f32 or f16)", type);
  static const char* kNames[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  GgufWriter w;
  w.set("general.architecture", std::string("llama"));
  w.set("general.type", std::string("adapter"));
  w.set("general.name", name);
  w.set("general.alignment", (uint32_t)kAlign);
  w.set("adapter.type", std::string("lora"));
  w.set("adapter.lora.alpha", alpha);
  const int64_t hd = c.head_dim;
  for (const auto& x : lin) {
    const std::string p = fmt::format("blk.{}.{}.weight.", x.layer, kNames[x.module]);
    const bool permute = x.module == 0 || x.module == 1;
    w.add_tensor(p + "lora_a", mt, {(uint64_t)x.A.dim(1), (uint64_t)x.A.dim(0)},
                 [&x, mt](uint8_t* d) { write_rows(x.A, mt, false, 0, d); });
    w.add_tensor(p + "lora_b", mt, {(uint64_t)x.B.dim(1), (uint64_t)x.B.dim(0)},
                 [&x, mt, permute, hd](uint8_t* d) { write_rows(x.B, mt, permute, hd, d); });
  }
  w.write(out);
}

}  // namespace llmq

namespace llmq {

namespace {

// Bounds-checked little-endian reader over the file's bytes; every failure names the file.
struct Reader {
  const uint8_t* p;
  uint64_t size, pos = 0;
  const std::string& path;
  template <class T>
  T get(const char* what) {
    if (size - pos < sizeof(T)) fail("{}: truncated GGUF ({} at byte {})", path, what, pos);
    T v;
    std::memcpy(&v, p + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    const uint64_t n = get<uint64_t>(what);
    if (n > size - pos) fail("{}: {} string of {} bytes runs past the end of the file (byte {})", path, what, n, pos);
    std::string s(reinterpret_cast<const char*>(p + pos), n);
    pos += n;
    return s;
  }
  void skip(uint64_t n, const char* what) {
    if (n > size - pos) fail("{}: truncated GGUF ({} at byte {})", path, what, pos);
    pos += n;
  }
};

uint64_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8: case GgufValueType::I8: case GgufValueType::BOOL: return 1;
    case GgufValueType::U16: case GgufValueType::I16: return 2;
    case GgufValueType::U32: case GgufValueType::I32: case GgufValueType::F32: return 4;
    case GgufValueType::U64: case GgufValueType::I64: case GgufValueType::F64: return 8;
    default: return 0;
  }
}

GgufValue read_value(Reader& r, GgufValueType t, const std::string& key) {
  switch (t) {
    case GgufValueType::U8: return (uint32_t)r.get<uint8_t>("u8");
    case GgufValueType::I8: return (int32_t)r.get<int8_t>("i8");
    case GgufValueType::U16: return (uint32_t)r.get<uint16_t>("u16");
    case GgufValueType::I16: return (int32_t)r.get<int16_t>("i16");
    case GgufValueType::U32: return r.get<uint32_t>("u32");
    case GgufValueType::I32: return r.get<int32_t>("i32");
    case GgufValueType::F32: return r.get<float>("f32");
    case GgufValueType::BOOL: {
      const uint8_t b = r.get<uint8_t>("bool");
      if (b > 1) fail("{}: key {} holds bool value {}", r.path, key, b);
      return b == 1;
    }
    case GgufValueType::STRING: return r.str("string value");
    case GgufValueType::U64: return r.get<uint64_t>("u64");
    case GgufValueType::I64: return (uint64_t)r.get<int64_t>("i64");
    case GgufValueType::F64: return (float)r.get<double>("f64");
    case GgufValueType::ARRAY: {
      const auto et = (GgufValueType)r.get<uint32_t>("array type");
      const uint64_t n = r.get<uint64_t>("array length");
      if (et == GgufValueType::STRING) {
        if (n > (r.size - r.pos) / 8) fail("{}: key {}: {} strings cannot fit in the file", r.path, key, n);
        std::vector<std::string> v;
        v.reserve(n);
        for (uint64_t i = 0; i < n; i++) v.push_back(r.str("array string"));
        return v;
      }
      const uint64_t es = scalar_size(et);
      if (es == 0) fail("{}: key {}: array element type {} is not supported", r.path, key, (uint32_t)et);
      if (n > (r.size - r.pos) / es) fail("{}: key {}: array of {} elements runs past the end of the file", r.path, key, n);
      if (et == GgufValueType::F32) {
        std::vector<float> v(n);
        if (n) std::memcpy(v.data(), r.p + r.pos, n * 4);
        r.pos += n * 4;
        return v;
      }
      if (et == GgufValueType::I32 || et == GgufValueType::U32) {
        std::vector<int32_t> v(n);
        if (n) std::memcpy(v.data(), r.p + r.pos, n * 4);
        r.pos += n * 4;
        return v;
      }
      r.skip(n * es, "array");  // other numeric arrays are not used by Llama files
      return std::vector<int32_t>{};
    }
  }
  fail("{}: key {} has unknown value type {}", r.path, key, (uint32_t)t);
}

}  // namespace

GgufFile gguf_parse_bytes(const uint8_t* data, uint64_t size, const std::string& path) {
  GgufFile f;
  f.path = path;
  f.data = data;
  f.size = size;
  Reader r{data, size, 0, f.path};
  if (size < 4 || std::memcmp(data, "GGUF", 4) != 0) fail("{}: not a GGUF file (no \"GGUF\" magic)", path);
  r.pos = 4;
  f.version = r.get<uint32_t>("version");
  if (f.version != 3 && f.version != 2) fail("{}: GGUF version {} is not supported (2 or 3)", path, f.version);
  const uint64_t nt = r.get<uint64_t>("tensor count"), nkv = r.get<uint64_t>("metadata count");
  if (nkv > size / 13) fail("{}: {} metadata entries cannot fit in a {}-byte file", path, nkv, size);
  if (nt > size / 25) fail("{}: {} tensors cannot fit in a {}-byte file", path, nt, size);
  for (uint64_t i = 0; i < nkv; i++) {
    std::string key = r.str("metadata key");
    const auto t = (GgufValueType)r.get<uint32_t>("value type");
    GgufValue v = read_value(r, t, key);
    if (f.kv.count(key)) fail("{}: metadata key {} appears twice", path, key);
    f.kv.emplace(std::move(key), std::move(v));
  }
  uint64_t align = kAlign;
  if (auto it = f.kv.find("general.alignment"); it != f.kv.end()) {
    const uint32_t* a = std::get_if<uint32_t>(&it->second);
    if (!a || *a == 0 || (*a & (*a - 1)) != 0 || *a > 1024) fail("{}: general.alignment must be a power of two up to 1024", path);
    align = *a;
  }
  for (uint64_t i = 0; i < nt; i++) {
    GgufFile::Tensor t;
    t.name = r.str("tensor name");
    const uint32_t nd = r.get<uint32_t>("tensor dims");
    if (nd == 0 || nd > 4) fail("{}: tensor {} has {} dimensions (1 to 4 expected)", path, t.name, nd);
    uint64_t n = 1;
    for (uint32_t d = 0; d < nd; d++) {
      const uint64_t e = r.get<uint64_t>("tensor dim");
      if (e == 0 || e > (uint64_t(1) << 40) || n > (uint64_t(1) << 40) / e) fail("{}: tensor {} has an impossible shape", path, t.name);
      t.ne.push_back(e);
      n *= e;
    }
    const uint32_t ty = r.get<uint32_t>("tensor type");
    t.type = (GgmlType)ty;
    if (ty != 0 && ty != 1 && ty != 2 && ty != 8 && ty != 30 && !ggml_is_kquant(t.type))
      fail("{}: tensor {} has ggml type {} (llmq reads f32, f16, bf16, q8_0, q4_0, q2_k, q3_k, q4_k, q5_k, q6_k)", path,
           t.name, ty);
    if ((t.type == GgmlType::Q8_0 || t.type == GgmlType::Q4_0) && t.ne[0] % 32 != 0)
      fail("{}: tensor {}: rows of {} are not whole blocks of 32", path, t.name, t.ne[0]);
    if (ggml_is_kquant(t.type) && t.ne[0] % kQK_K != 0)
      fail("{}: tensor {}: rows of {} are not whole {} super-blocks of 256", path, t.name, t.ne[0], ggml_type_name(t.type));
    t.offset = r.get<uint64_t>("tensor offset");
    if (t.offset % align != 0) fail("{}: tensor {} offset {} is not aligned to {}", path, t.name, t.offset, align);
    t.bytes = ggml_type_bytes(t.type, n);
    f.tensors.push_back(std::move(t));
  }
  f.data_start = (r.pos + align - 1) / align * align;
  for (const auto& t : f.tensors)
    if (f.data_start > size || t.offset > size - f.data_start || t.bytes > size - f.data_start - t.offset)
      fail("{}: tensor {} ({} bytes at {}) runs past the end of the file ({} bytes); the file is truncated", path,
           t.name, t.bytes, t.offset, size);
  // No two tensors share bytes (an offset pointed at another tensor, or a type that makes one
  // read into its neighbour), and no name appears twice: as the safetensors reader requires.
  std::vector<const GgufFile::Tensor*> by_off;
  for (const auto& t : f.tensors) by_off.push_back(&t);
  std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_off.size(); i++)
    if (by_off[i]->offset < by_off[i - 1]->offset + by_off[i - 1]->bytes && by_off[i - 1]->bytes > 0)
      fail("{}: tensor {} (at {}) overlaps tensor {} ({} bytes at {})", path, by_off[i]->name, by_off[i]->offset,
           by_off[i - 1]->name, by_off[i - 1]->bytes, by_off[i - 1]->offset);
  std::set<std::string> names;
  for (const auto& t : f.tensors)
    if (!names.insert(t.name).second) fail("{}: tensor {} appears twice", path, t.name);
  return f;
}

GgufFile gguf_parse(const std::string& path) {
  auto mf = map_file(path);
  GgufFile f = gguf_parse_bytes(mf->data, mf->size, path);
  f.mapping = mf;
  return f;
}

namespace {
template <class T>
T kv_get(const GgufFile& f, const std::string& key) {
  auto it = f.kv.find(key);
  if (it == f.kv.end()) fail("{}: missing metadata {}", f.path, key);
  if (const T* v = std::get_if<T>(&it->second)) return *v;
  if constexpr (std::is_same_v<T, uint32_t>)
    if (const uint64_t* v = std::get_if<uint64_t>(&it->second); v && *v <= 0xffffffffu) return (uint32_t)*v;
  fail("{}: metadata {} has an unexpected type", f.path, key);
}
}  // namespace

Model gguf_load_model(const std::string& path, LoadMode mode) {
  if (mode == LoadMode::Map) return gguf_model_from(gguf_parse(path));
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) fail("{}: {}", path, ec.message());
  auto buf = Storage::allocate(size);
  read_file_range(path, 0, size, static_cast<uint8_t*>(buf->data));
  GgufFile f = gguf_parse_bytes(static_cast<const uint8_t*>(buf->data), size, path);
  f.buffer = buf;
  return gguf_model_from(std::move(f));
}

std::optional<RopeScaling> gguf_fit_llama3_scaling(const ModelConfig& c, const std::vector<double>& freqs) {
  // The factors are f32 in the file: candidates must reproduce every frequency to a few f32
  // roundings (1e-6 relative); distinct parameter sets differ by far more somewhere.
  auto matches = [&](const RopeScaling& s) {
    ModelConfig t = c;
    t.rope_scaling = s;
    const std::vector<double> f = rope_frequencies(t);
    for (size_t i = 0; i < f.size(); i++)
      if (std::fabs(f[i] - freqs[i]) > 1e-6 * std::fabs(freqs[i])) return false;
    return true;
  };
  if (matches(RopeScaling{})) return std::nullopt;  // every factor 1: no scaling to state
  double fmax = 1;  // the largest factor is the scale factor when any dimension is low-frequency
  for (size_t i = 0; i < freqs.size(); i++)
    fmax = std::max(fmax, std::pow(c.rope_theta, -2.0 * (double)i / (double)c.head_dim) / freqs[i]);
  const double factors[] = {8, 32, 16, 4, 2, 64, std::round(fmax * 1e4) / 1e4};
  const double lows[] = {1, 0.5, 2, 0.25}, highs[] = {4, 2, 8, 16, 1};
  std::vector<int64_t> origs = {8192};
  for (int64_t o = 16; o <= (int64_t(1) << 20); o *= 2) origs.push_back(o);
  // Only original/low and original/high are identifiable (scaling all three gives the same
  // frequencies), so the usual low 1, high 4 are tried first, then other pairs.
  for (double fa : factors)
    for (double lo : lows)
      for (double hi : highs)
        for (int64_t o : origs) {
          if (hi <= lo || fa < 1) continue;
          const RopeScaling s{true, fa, lo, hi, o};
          if (matches(s)) return s;
        }
  return std::nullopt;
}

Model gguf_model_from(GgufFile f) {
  const std::string path = f.path;
  const std::string arch = f.kv.count("general.architecture") && std::holds_alternative<std::string>(f.kv["general.architecture"])
                               ? std::get<std::string>(f.kv["general.architecture"]) : "";
  if (arch != "llama") fail("{}: general.architecture is '{}' (llmq reads llama)", path, arch);
  ModelConfig c;
  c.dim = kv_get<uint32_t>(f, "llama.embedding_length");
  c.n_layers = kv_get<uint32_t>(f, "llama.block_count");
  c.n_heads = kv_get<uint32_t>(f, "llama.attention.head_count");
  c.n_kv_heads = f.kv.count("llama.attention.head_count_kv") ? kv_get<uint32_t>(f, "llama.attention.head_count_kv") : c.n_heads;
  c.ffn_dim = kv_get<uint32_t>(f, "llama.feed_forward_length");
  c.max_seq_len = kv_get<uint32_t>(f, "llama.context_length");
  c.norm_eps = kv_get<float>(f, "llama.attention.layer_norm_rms_epsilon");
  c.rope_theta = f.kv.count("llama.rope.freq_base") ? kv_get<float>(f, "llama.rope.freq_base") : 10000.f;
  if (c.n_heads <= 0) fail("{}: llama.attention.head_count must be positive", path);
  c.head_dim = f.kv.count("llama.attention.key_length") ? kv_get<uint32_t>(f, "llama.attention.key_length") : c.dim / c.n_heads;
  if (f.kv.count("tokenizer.ggml.bos_token_id")) c.bos_token_ids = {kv_get<uint32_t>(f, "tokenizer.ggml.bos_token_id")};
  if (f.kv.count("tokenizer.ggml.eos_token_id")) c.eos_token_ids = {kv_get<uint32_t>(f, "tokenizer.ggml.eos_token_id")};
  std::map<std::string, const GgufFile::Tensor*> byname;
  for (const auto& t : f.tensors) byname[t.name] = &t;
  const auto* emb = byname.count("token_embd.weight") ? byname["token_embd.weight"] : nullptr;
  if (!emb || emb->ne.size() != 2) fail("{}: missing 2-D token_embd.weight", path);
  c.vocab_size = (int64_t)emb->ne[1];
  c.tie_embeddings = !byname.count("output.weight");
  c.dtype = DType::F32;
  c.validate(path);
  Model m;
  m.config = c;
  m.source = path;
  m.rope_freqs = rope_frequencies(c);
  if (auto it = byname.find("rope_freqs.weight"); it != byname.end()) {
    // Llama 3.1-style scaling as llama.cpp stores it: each frequency divided by a factor.
    const GgufFile::Tensor& t = *it->second;
    if (t.type != GgmlType::F32 || t.ne.size() != 1 || (int64_t)t.ne[0] != c.head_dim / 2)
      fail("{}: rope_freqs.weight must be f32 of head_dim/2 = {} values", path, c.head_dim / 2);
    const uint8_t* src = f.data + f.data_start + t.offset;
    for (int64_t i = 0; i < c.head_dim / 2; i++) {
      float factor;
      std::memcpy(&factor, src + 4 * i, 4);
      if (!(factor > 0.f) || !std::isfinite(factor)) fail("{}: rope_freqs.weight[{}] = {} is not a positive factor", path, i, factor);
      m.rope_freqs[i] = std::pow(c.rope_theta, -2.0 * (double)i / (double)c.head_dim) / (double)factor;
    }
    // config.json says the same thing as Llama 3 rope_scaling parameters; GGUF keeps only the
    // factors, so find the parameters that give them (quantize and export write configs from
    // this; without it a GGUF's scaling was silently dropped from every config written).
    if (auto rs = gguf_fit_llama3_scaling(c, m.rope_freqs)) m.config.rope_scaling = *rs;
  }
  const int64_t hd = c.head_dim;
  // The file's mapping as tensor storage (float tensors are views of it); none when the bytes
  // are not a file mapping (gguf_parse_bytes: the fuzz target), whose pages are never released.
  std::shared_ptr<Storage> file_storage = f.buffer;
  const bool mapped = f.mapping != nullptr && !f.buffer;
  if (mapped) file_storage = Storage::borrow(const_cast<uint8_t*>(f.data), f.size, std::const_pointer_cast<void>(f.mapping));
  // One tensor: shape check, then f32/f16/bf16 as is, q8_0/q4_0 into llmq's layout.
  auto load = [&](const std::string& name, Shape shape, bool permute) -> Tensor {
    auto it = byname.find(name);
    if (it == byname.end()) fail("{}: missing tensor {}", path, name);
    const GgufFile::Tensor& t = *it->second;
    std::vector<uint64_t> want;
    for (auto d = shape.rbegin(); d != shape.rend(); ++d) want.push_back((uint64_t)*d);
    if (t.ne != want) fail("{}: tensor {} has the wrong shape for the model's metadata", path, name);
    const uint8_t* src = f.data + f.data_start + t.offset;
    const int64_t M = shape.size() == 2 ? shape[0] : 1, K = shape.back();
    const uint64_t row_bytes = ggml_type_bytes(t.type, (uint64_t)K);
    // Rows in Hugging Face order: HF row s is GGUF row gguf_row_of_hf(s).
    auto gguf_row = [&](int64_t s) {
      if (!permute) return s;
      const int64_t h = s / hd, i = s % hd;
      return h * hd + (i < hd / 2 ? 2 * i : 2 * (i - hd / 2) + 1);
    };
    if (t.type == GgmlType::Q8_0 || t.type == GgmlType::Q4_0) {
      const bool q8 = t.type == GgmlType::Q8_0;
      if (!q8 && K % 64 != 0) fail("{}: {} has rows of {}; llmq's 4-bit layout needs a multiple of 64", path, name, K);
      std::vector<uint8_t> codes((size_t)(M * K));
      std::vector<float> scale((size_t)(M * K / 32)), zero((size_t)(M * K / 32), q8 ? 128.f : 8.f);
      for (int64_t r = 0; r < M; r++) {
        const uint8_t* row = src + gguf_row(r) * row_bytes;
        for (int64_t b = 0; b < K / 32; b++) {
          if (q8) {
            BlockQ8_0 blk;
            std::memcpy(&blk, row + b * sizeof(BlockQ8_0), sizeof blk);
            scale[r * (K / 32) + b] = f16_to_f32(blk.d);
            for (int j = 0; j < 32; j++) codes[r * K + b * 32 + j] = (uint8_t)(blk.qs[j] + 128);
          } else {
            BlockQ4_0 blk;
            std::memcpy(&blk, row + b * sizeof(BlockQ4_0), sizeof blk);
            scale[r * (K / 32) + b] = f16_to_f32(blk.d);
            for (int j = 0; j < 16; j++) {
              codes[r * K + b * 32 + j] = blk.qs[j] & 15;
              codes[r * K + b * 32 + j + 16] = blk.qs[j] >> 4;
            }
          }
        }
      }
      for (float s : scale)
        if (!std::isfinite(s)) fail("{}: {} has a non-finite block scale", path, name);
      if (file_storage) release_pages(src, (uint64_t)M * row_bytes);  // converted: the file's pages are done
      return make_quant_tensor(M, K, q8 ? 8 : 4, 32, true, false, codes.data(), scale.data(), zero.data());
    }
    if (ggml_is_kquant(t.type)) {
      // k-quants run as the file stores them (kernels.h, KQMatView): a view of the file's
      // bytes when the rows are in order, else the rows copied in Hugging Face order.
      if (shape.size() != 2) fail("{}: {} is {}; llmq reads norms and vectors as float only", path, name, ggml_type_name(t.type));
      const DType dt = kquant_dtype(t.type);
      Tensor out;
      if (!permute && file_storage) {
        out = Tensor::view(file_storage, (size_t)(src - static_cast<const uint8_t*>(file_storage->data)), dt, shape);
      } else {
        out = Tensor::empty(dt, shape);
        for (int64_t r = 0; r < M; r++)
          std::memcpy(out.host<uint8_t>() + r * row_bytes, src + gguf_row(r) * row_bytes, row_bytes);
        if (file_storage) release_pages(src, (uint64_t)M * row_bytes);
      }
      if (!kquant_scales_finite(t.type, out.host<uint8_t>(), (uint64_t)M * row_bytes))
        fail("{}: {} has a non-finite super-block scale", path, name);
      if (mapped && !permute) release_pages(out.host_data(), out.nbytes());  // touched only by the check
      return out;
    }
    const DType dt = t.type == GgmlType::F32 ? DType::F32 : t.type == GgmlType::F16 ? DType::F16 : DType::BF16;
    Tensor out;
    if (!permute && shape.size() == 2 && file_storage) {
      // Rows already in order: a view of the file's bytes, no copy (a 1B f16 GGUF used to
      // take its size twice: the copy plus the pages read to make it).
      out = Tensor::view(file_storage, (size_t)(src - static_cast<const uint8_t*>(file_storage->data)), dt, shape);
      check_finite(out, path, name);
      if (mapped) release_pages(out.host_data(), out.nbytes());  // touched only by the check
      return out;
    }
    out = Tensor::empty(dt, shape);
    for (int64_t r = 0; r < M; r++)
      std::memcpy(out.host<uint8_t>() + r * row_bytes, src + gguf_row(r) * row_bytes, row_bytes);
    if (file_storage) release_pages(src, (uint64_t)M * row_bytes);
    check_finite(out, path, name);
    if (dt != DType::F32 && shape.size() == 1) {  // norms run in f32
      Tensor f32 = Tensor::empty(DType::F32, shape);
      for (int64_t k = 0; k < K; k++)
        f32.host<float>()[k] = dt == DType::F16 ? f16_to_f32(out.host<uint16_t>()[k]) : bf16_to_f32(out.host<uint16_t>()[k]);
      return f32;
    }
    return out;
  };
  LlamaWeights& w = m.weights;
  // A quantized table stays quantized: lookups dequantize their rows (op_embedding), so a
  // q4_0 1B model no longer holds a 1 GB f32 copy of its 128k x 2048 embeddings.
  w.embed = load("token_embd.weight", {c.vocab_size, c.dim}, false);
  for (int64_t l = 0; l < c.n_layers; l++) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LlamaLayer L;
    L.attn_norm = load(p + "attn_norm.weight", {c.dim}, false);
    L.wq = load(p + "attn_q.weight", {c.q_dim(), c.dim}, true);
    L.wk = load(p + "attn_k.weight", {c.kv_dim(), c.dim}, true);
    L.wv = load(p + "attn_v.weight", {c.kv_dim(), c.dim}, false);
    L.wo = load(p + "attn_output.weight", {c.dim, c.q_dim()}, false);
    L.ffn_norm = load(p + "ffn_norm.weight", {c.dim}, false);
    L.w_gate = load(p + "ffn_gate.weight", {c.ffn_dim, c.dim}, false);
    L.w_up = load(p + "ffn_up.weight", {c.ffn_dim, c.dim}, false);
    L.w_down = load(p + "ffn_down.weight", {c.dim, c.ffn_dim}, false);
    w.layers.push_back(std::move(L));
  }
  w.norm = load("output_norm.weight", {c.dim}, false);
  if (!c.tie_embeddings) w.lm_head = load("output.weight", {c.vocab_size, c.dim}, false);
  else if (!w.lm_head.defined()) w.lm_head = w.embed;
  return m;
}

}  // namespace llmq
