// Reading and writing Hugging Face-layout Llama directories.
#include "io/hf_dir.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"
#include "core/progress.h"
#include "core/rng.h"
#include "io/safetensors.h"

namespace llmq {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<HfTensorSpec> hf_tensor_specs(const ModelConfig& c) {
  std::vector<HfTensorSpec> v;
  v.push_back({"model.embed_tokens.weight", {c.vocab_size, c.dim}, false});
  for (int64_t l = 0; l < c.n_layers; l++) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    v.push_back({p + "input_layernorm.weight", {c.dim}, true});
    v.push_back({p + "self_attn.q_proj.weight", {c.q_dim(), c.dim}, false});
    v.push_back({p + "self_attn.k_proj.weight", {c.kv_dim(), c.dim}, false});
    v.push_back({p + "self_attn.v_proj.weight", {c.kv_dim(), c.dim}, false});
    v.push_back({p + "self_attn.o_proj.weight", {c.dim, c.q_dim()}, false});
    v.push_back({p + "post_attention_layernorm.weight", {c.dim}, true});
    v.push_back({p + "mlp.gate_proj.weight", {c.ffn_dim, c.dim}, false});
    v.push_back({p + "mlp.up_proj.weight", {c.ffn_dim, c.dim}, false});
    v.push_back({p + "mlp.down_proj.weight", {c.dim, c.ffn_dim}, false});
  }
  v.push_back({"model.norm.weight", {c.dim}, true});
  if (!c.tie_embeddings) v.push_back({"lm_head.weight", {c.vocab_size, c.dim}, false});
  return v;
}

namespace {

// All safetensors files of a directory, and which file holds each tensor name.
struct WeightFiles {
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, std::pair<const SafetensorsFile*, const SafetensorsEntry*>> where;
};

WeightFiles open_weights(const std::string& dir, LoadMode mode) {
  WeightFiles w;
  std::vector<std::string> names;
  fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    json j = json::parse(read_text_file(index.string()), nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail("{}: malformed index (expected an object with a \"weight_map\" object)", index.string());
    for (auto& [k, v] : j["weight_map"].items()) {
      if (!v.is_string()) fail("{}: weight_map[\"{}\"] must be a file name", index.string(), k);
      std::string f = v.get<std::string>();
      if (f.find('/') != std::string::npos || f == ".." || f.empty())
        fail("{}: weight_map[\"{}\"] = \"{}\" must name a file in the directory", index.string(), k, f);
      if (std::find(names.begin(), names.end(), f) == names.end()) names.push_back(f);
    }
  } else if (fs::exists(fs::path(dir) / "model.safetensors")) {
    names.push_back("model.safetensors");
  } else {
    fail("{}: no model.safetensors or model.safetensors.index.json (is this a model directory?)", dir);
  }
  for (const auto& n : names) {
    auto f = std::make_unique<SafetensorsFile>((fs::path(dir) / n).string(), mode);
    for (const auto& e : f->header().tensors) {
      if (w.where.count(e.name)) fail("{}: tensor '{}' appears in more than one file", dir, e.name);
      w.where[e.name] = {f.get(), &e};
    }
    w.files.push_back(std::move(f));
  }
  return w;
}

Tensor to_f32(const Tensor& t) {
  Tensor r = Tensor::empty(DType::F32, t.shape());
  float* o = r.host<float>();
  for (int64_t i = 0; i < t.numel(); i++) {
    switch (t.dtype()) {
      case DType::F32: o[i] = t.host<float>()[i]; break;
      case DType::BF16: o[i] = bf16_to_f32(t.host<uint16_t>()[i]); break;
      case DType::F16: o[i] = f16_to_f32(t.host<uint16_t>()[i]); break;
      default: LLMQ_CHECK(false);
    }
  }
  return r;
}

}  // namespace

Model model_load(const std::string& dir, LoadMode mode) {
  fs::path cfg = fs::path(dir) / "config.json";
  if (!fs::is_directory(dir)) fail("{}: not a directory (expected a Hugging Face model directory)", dir);
  if (!fs::exists(cfg)) fail("{}: missing config.json", dir);
  Model m;
  m.config = config_load(cfg.string());
  m.source = dir;
  m.rope_freqs = rope_frequencies(m.config);
  const ModelConfig& c = m.config;
  WeightFiles wf = open_weights(dir, mode);
  std::map<std::string, Tensor> t;
  for (const auto& spec : hf_tensor_specs(c)) {
    auto it = wf.where.find(spec.name);
    if (it == wf.where.end()) fail("{}: missing tensor '{}'", dir, spec.name);
    const auto [file, e] = it->second;
    if (e->dtype != DType::F32 && e->dtype != DType::BF16 && e->dtype != DType::F16)
      fail("{}: tensor '{}' has dtype {} (supported: F32, BF16, F16)", file->path(), spec.name,
           dtype_safetensors_name(e->dtype));
    if (e->shape != spec.shape)
      fail("{}: tensor '{}' has shape {} but config.json implies {}", file->path(), spec.name, shape_str(e->shape),
           shape_str(spec.shape));
    Tensor x = file->tensor(*e);
    t[spec.name] = spec.is_norm ? to_f32(x) : x;
  }
  LlamaWeights& w = m.weights;
  w.embed = t["model.embed_tokens.weight"];
  for (int64_t l = 0; l < c.n_layers; l++) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    LlamaLayer L;
    L.attn_norm = t[p + "input_layernorm.weight"];
    L.wq = t[p + "self_attn.q_proj.weight"];
    L.wk = t[p + "self_attn.k_proj.weight"];
    L.wv = t[p + "self_attn.v_proj.weight"];
    L.wo = t[p + "self_attn.o_proj.weight"];
    L.ffn_norm = t[p + "post_attention_layernorm.weight"];
    L.w_gate = t[p + "mlp.gate_proj.weight"];
    L.w_up = t[p + "mlp.up_proj.weight"];
    L.w_down = t[p + "mlp.down_proj.weight"];
    w.layers.push_back(std::move(L));
  }
  w.norm = t["model.norm.weight"];
  w.lm_head = c.tie_embeddings ? w.embed : t["lm_head.weight"];
  return m;
}

namespace {
void write_json(const fs::path& p, const json& j) { write_file_atomic(p.string(), j.dump(2) + "\n"); }

json generation_config(const ModelConfig& c) {
  json j = {{"_from_model_config", true}, {"do_sample", true}, {"temperature", 0.6}, {"top_p", 0.9}};
  auto ids = [](const std::vector<int64_t>& v) -> json { return v.size() == 1 ? json(v[0]) : json(v); };
  if (!c.bos_token_ids.empty()) j["bos_token_id"] = ids(c.bos_token_ids);
  if (!c.eos_token_ids.empty()) j["eos_token_id"] = ids(c.eos_token_ids);
  return j;
}
}  // namespace

void model_save(const std::string& dir, const ModelConfig& cfg, const TensorFill& fill, const SaveOptions& opt) {
  fs::create_directories(dir);
  ModelConfig c = cfg;
  c.dtype = opt.dtype;
  auto specs = hf_tensor_specs(c);
  // Group tensors into shards of at most max_shard_bytes (a tensor never splits).
  std::vector<std::vector<size_t>> shards(1);
  uint64_t cur = 0, total = 0;
  for (size_t i = 0; i < specs.size(); i++) {
    uint64_t b = dtype_bytes(opt.dtype, shape_numel(specs[i].shape));
    if (cur > 0 && cur + b > opt.max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(i);
    cur += b;
    total += b;
  }
  // Remove weight files of an earlier save with another sharding, after the new ones exist.
  std::vector<fs::path> stale;
  for (auto& e : fs::directory_iterator(dir)) {
    std::string n = e.path().filename().string();
    if (n.rfind("model", 0) == 0 && (n.ends_with(".safetensors") || n.ends_with(".safetensors.index.json")))
      stale.push_back(e.path());
  }
  Progress bar("writing " + dir, total, opt.progress);
  uint64_t written = 0;
  json weight_map = json::object();
  std::vector<std::string> names;
  for (size_t s = 0; s < shards.size(); s++) {
    std::string fname = shards.size() == 1 ? "model.safetensors"
                                           : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
    SafetensorsWriter w;
    w.set_metadata("format", "pt");  // what transformers expects from a PyTorch checkpoint
    for (size_t i : shards[s]) {
      const HfTensorSpec spec = specs[i];
      w.add(spec.name, opt.dtype, spec.shape,
            [&fill, spec, dt = opt.dtype](uint8_t* dst, uint64_t off, uint64_t n) { fill(spec, dt, dst, off, n); });
      weight_map[spec.name] = fname;
    }
    uint64_t base = written;
    w.write((fs::path(dir) / fname).string(), [&](uint64_t done) { bar.update(base + done); });
    written += w.data_bytes();
    names.push_back(fname);
  }
  bar.finish();
  if (shards.size() > 1)
    write_json(fs::path(dir) / "model.safetensors.index.json",
               {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
  for (const auto& p : stale)
    if (std::find(names.begin(), names.end(), p.filename().string()) == names.end() &&
        !(shards.size() > 1 && p.filename() == "model.safetensors.index.json"))
      fs::remove(p);
  write_json(fs::path(dir) / "config.json", config_to_hf_json(c));
  write_json(fs::path(dir) / "generation_config.json", generation_config(c));
}

namespace {
// Writes elements [e0, e0+count) of `src` (any float dtype) as `dt` into dst.
void convert_elems(const Tensor& src, int64_t e0, int64_t count, DType dt, uint8_t* dst) {
  for (int64_t i = 0; i < count; i++) {
    float v;
    switch (src.dtype()) {
      case DType::F32: v = src.host<float>()[e0 + i]; break;
      case DType::BF16: v = bf16_to_f32(src.host<uint16_t>()[e0 + i]); break;
      case DType::F16: v = f16_to_f32(src.host<uint16_t>()[e0 + i]); break;
      default: LLMQ_CHECK(false);
    }
    switch (dt) {
      case DType::F32: std::memcpy(dst + 4 * i, &v, 4); break;
      case DType::BF16: { uint16_t h = f32_to_bf16(v); std::memcpy(dst + 2 * i, &h, 2); break; }
      case DType::F16: { uint16_t h = f32_to_f16(v); std::memcpy(dst + 2 * i, &h, 2); break; }
      default: LLMQ_CHECK(false);
    }
  }
}
}  // namespace

void model_save(const std::string& dir, const Model& m, const SaveOptions& opt) {
  std::map<std::string, Tensor> t;
  const auto& w = m.weights;
  t["model.embed_tokens.weight"] = w.embed;
  for (size_t l = 0; l < w.layers.size(); l++) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    const auto& L = w.layers[l];
    t[p + "input_layernorm.weight"] = L.attn_norm;
    t[p + "self_attn.q_proj.weight"] = L.wq;
    t[p + "self_attn.k_proj.weight"] = L.wk;
    t[p + "self_attn.v_proj.weight"] = L.wv;
    t[p + "self_attn.o_proj.weight"] = L.wo;
    t[p + "post_attention_layernorm.weight"] = L.ffn_norm;
    t[p + "mlp.gate_proj.weight"] = L.w_gate;
    t[p + "mlp.up_proj.weight"] = L.w_up;
    t[p + "mlp.down_proj.weight"] = L.w_down;
  }
  t["model.norm.weight"] = w.norm;
  t["lm_head.weight"] = w.lm_head;
  model_save(dir, m.config,
             [&](const HfTensorSpec& s, DType dt, uint8_t* dst, uint64_t off, uint64_t n) {
               const int64_t es = dtype_bits(dt) / 8;
               convert_elems(t.at(s.name), (int64_t)(off / es), (int64_t)(n / es), dt, dst);
             },
             opt);
}

TensorFill init_fill(const ModelConfig& c, uint64_t seed) {
  return [c, seed](const HfTensorSpec& s, DType dt, uint8_t* dst, uint64_t off, uint64_t n) {
    const int64_t es = dtype_bits(dt) / 8;
    const int64_t e0 = (int64_t)(off / es), count = (int64_t)(n / es);
    double std = 0.02;
    bool normal_untruncated = false;
    int64_t layer = 0;
    if (s.is_norm) {
      std = 0;
    } else if (s.name == "model.embed_tokens.weight") {
      if (c.tie_embeddings) std = 1.0 / std::sqrt((double)c.dim);
      else { std = 1.0; normal_untruncated = true; }
    } else if (s.name == "lm_head.weight") {
      std = 1.0 / std::sqrt((double)c.dim);
    } else {
      std::sscanf(s.name.c_str(), "model.layers.%ld.", &layer);
      if (s.name.ends_with("o_proj.weight") || s.name.ends_with("down_proj.weight") || s.name.ends_with("up_proj.weight"))
        std = 0.02 / std::sqrt(2.0 * (double)(layer + 1));
    }
    const uint64_t stream = splitmix64(seed) ^ hash_str(s.name);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; i++) {
      double v = 1.0;
      if (!s.is_norm) {
        // Truncate at 3 std by redrawing with the next counter values (deterministic).
        uint64_t k = (uint64_t)(e0 + i);
        double z = rng_normal(stream, k);
        for (uint64_t r = 1; !normal_untruncated && std::fabs(z) > 3.0; r++) z = rng_normal(stream, k + (r << 48));
        v = z * std;
      }
      float f = (float)v;
      switch (dt) {
        case DType::F32: std::memcpy(dst + 4 * i, &f, 4); break;
        case DType::BF16: { uint16_t h = f32_to_bf16(f); std::memcpy(dst + 2 * i, &h, 2); break; }
        case DType::F16: { uint16_t h = f32_to_f16(f); std::memcpy(dst + 2 * i, &h, 2); break; }
        default: break;
      }
    }
  };
}

}  // namespace llmq
