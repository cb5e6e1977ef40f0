// Reading and writing Hugging Face-layout Llama directories.
#include "io/hf_dir.h"

#include <algorithm>
#include <numeric>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/gguf_tokenizer.h"
#include "core/file_util.h"
#include "core/progress.h"
#include "core/rng.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "quant/gptq_format.h"
#include "quant/quant.h"

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
  } else if (fs::exists(fs::path(dir) / "sharded_state.json")) {
    fail("{}: a sharded training checkpoint, not a model directory; make one with `llmq export -m {} --format hf --out DIR`",
         dir, dir);
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

// A GPTQ-format linear (see quant/gptq_format.h) as a runtime quantized tensor.
Tensor load_gptq_linear(const WeightFiles& wf, const std::string& dir, const HfTensorSpec& spec, const QuantConfig& q) {
  const std::string base = spec.name.substr(0, spec.name.size() - std::string("weight").size());
  const int64_t M = spec.shape[0], K = spec.shape[1];
  const int64_t G = q.group ? q.group : K;
  if (q.hqq_axis == 0 && (G % 16 != 0 || M % G != 0))
    fail("{}: HQQ axis 0 groups of {} must divide the {} output channels of {} (and be a multiple of 16)", dir, G, M,
         spec.name);
  if (q.hqq_axis != 0 && K % G != 0)
    fail("{}: group_size {} does not divide the {} input channels of {}", dir, G, K, spec.name);
  if (q.awq && M % 8 != 0)
    fail("{}: {} has {} output channels, which AWQ's packing (8 per int32) cannot hold", dir, spec.name, M);
  if (!q.awq && (!gptq_packable(K, q.bits) || !gptq_packable(M, q.bits)))
    fail("{}: {} has shape ({}, {}), which {}-bit GPTQ packing cannot hold (multiples of 32 needed)", dir, spec.name, M,
         K, q.bits);
  const int64_t ng = K / G;
  auto get = [&](const char* suffix, std::initializer_list<DType> dts, const Shape& shape, bool required) -> Tensor {
    const std::string name = base + suffix;
    auto it = wf.where.find(name);
    if (it == wf.where.end()) {
      if (required) fail("{}: missing tensor '{}' (config.json says the model is {}-quantized)", dir, name, q.awq ? "AWQ" : "GPTQ");
      return Tensor();
    }
    const auto [file, e] = it->second;
    if (std::find(dts.begin(), dts.end(), e->dtype) == dts.end())
      fail("{}: tensor '{}' has dtype {}, not what {} stores", file->path(), name, dtype_safetensors_name(e->dtype), q.awq ? "AWQ" : "GPTQ");
    if (e->shape != shape)
      fail("{}: tensor '{}' has shape {} but {}-bit group-{} quantization of {} implies {}", file->path(), name,
           shape_str(e->shape), q.bits, G, shape_str(spec.shape), shape_str(shape));
    return file->tensor(*e);
  };
  if (q.awq) {  // AWQ GEMM: qweight (K, M/8), qzeros (ng, M/8), scales (ng, M)
    Tensor aqw = get("qweight", {DType::I32}, {K, M / 8}, true);
    Tensor aqz = get("qzeros", {DType::I32}, {ng, M / 8}, true);
    Tensor asc = get("scales", {DType::F16, DType::BF16, DType::F32}, {ng, M}, true);
    std::vector<uint8_t> codes((size_t)(M * K));
    std::vector<float> zero((size_t)(M * ng)), scale((size_t)(M * ng));
    awq_unpack_qweight(aqw.host<int32_t>(), M, K, codes.data());
    awq_unpack_qzeros(aqz.host<int32_t>(), M, ng, zero.data());
    const Tensor s32 = to_f32(asc);
    for (int64_t g = 0; g < ng; g++)
      for (int64_t m = 0; m < M; m++) {
        const float v = s32.host<float>()[g * M + m];
        if (!std::isfinite(v)) fail("{}: {}scales has a non-finite value at ({}, {})", dir, base, g, m);
        scale[m * ng + g] = v;
      }
    for (const Tensor* x : {&aqw, &aqz, &asc}) release_pages(x->host_data(), x->nbytes());
    return make_quant_tensor(M, K, 4, G, false, false, codes.data(), scale.data(), zero.data(), 4);
  }
  Tensor qw = get("qweight", {DType::I32}, {K * q.bits / 32, M}, true);
  if (q.hqq_axis == 0) {  // HQQ axis 0: zeros and scales (M/G, K), element (r mod M/G, c) for weight (r, c)
    const int64_t P = M / G;
    Tensor fz0 = get("zeros", {DType::F16, DType::BF16, DType::F32}, {P, K}, true);
    Tensor sc0 = get("scales", {DType::F16, DType::BF16, DType::F32}, {P, K}, true);
    std::vector<uint8_t> codes((size_t)(M * K));
    gptq_unpack_qweight(qw.host<int32_t>(), M, K, q.bits, codes.data());
    const Tensor s32 = to_f32(sc0), z32 = to_f32(fz0);
    for (int64_t j = 0; j < P * K; j++)
      if (!std::isfinite(s32.host<float>()[j]) || !std::isfinite(z32.host<float>()[j]))
        fail("{}: {}scales or zeros has a non-finite value at ({}, {})", dir, base, j / K, j % K);
    for (const Tensor* x : {&qw, &fz0, &sc0}) release_pages(x->host_data(), x->nbytes());
    return make_hqq_axis0_tensor(M, K, q.bits, G, codes.data(), s32.host<float>(), z32.host<float>());
  }
  // HQQ checkpoints (llmq's layout) keep float zero points in "zeros" instead of "qzeros".
  Tensor qz = q.float_zeros ? Tensor() : get("qzeros", {DType::I32}, {ng, M * q.bits / 32}, true);
  Tensor fz = q.float_zeros ? get("zeros", {DType::F16, DType::BF16, DType::F32}, {ng, M}, true) : Tensor();
  Tensor sc = get("scales", {DType::F16, DType::BF16, DType::F32}, {ng, M}, true);
  Tensor gi = get("g_idx", {DType::I32}, {K}, false);
  // Act-order (desc_act): g_idx names each input column's group in any order. The columns
  // are stored grouped (perm: by group, then input column), and the activations gathered
  // the same way at run time.
  std::vector<int32_t> perm;
  if (gi.defined()) {
    const int32_t* g = gi.host<int32_t>();
    bool identity = true;
    std::vector<int64_t> count((size_t)ng, 0);
    for (int64_t k = 0; k < K; k++) {
      if (g[k] < 0 || g[k] >= ng) fail("{}: {}g_idx[{}] = {} is not a group (0..{})", dir, base, k, g[k], ng - 1);
      count[g[k]]++;
      identity = identity && g[k] == (int32_t)(k / G);
    }
    for (int64_t c : count)
      if (c != G) fail("{}: {}g_idx gives a group {} columns; llmq needs {} per group", dir, base, c, G);
    if (!identity) {
      perm.resize((size_t)K);
      std::iota(perm.begin(), perm.end(), 0);
      std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return g[a] < g[b]; });
    }
  }
  std::vector<uint8_t> codes((size_t)(M * K));
  std::vector<float> scale((size_t)(M * ng)), zero((size_t)(M * ng));
  gptq_unpack_qweight(qw.host<int32_t>(), M, K, q.bits, codes.data());
  if (qz.defined()) gptq_unpack_qzeros(qz.host<int32_t>(), M, ng, q.bits, q.zeros_minus_one, zero.data());
  auto elem = [](const Tensor& t, int64_t i) {
    switch (t.dtype()) {
      case DType::F16: return f16_to_f32(t.host<uint16_t>()[i]);
      case DType::BF16: return bf16_to_f32(t.host<uint16_t>()[i]);
      default: return t.host<float>()[i];
    }
  };
  for (int64_t g = 0; g < ng; g++)
    for (int64_t m = 0; m < M; m++) {
      const float v = elem(sc, g * M + m);
      if (!std::isfinite(v)) fail("{}: {}scales has a non-finite value at ({}, {})", dir, base, g, m);
      scale[m * ng + g] = v;
      if (fz.defined()) {
        zero[m * ng + g] = elem(fz, g * M + m);
        if (!std::isfinite(zero[m * ng + g])) fail("{}: {}zeros has a non-finite value at ({}, {})", dir, base, g, m);
      }
    }
  const int rbits = q.bits == 8 ? 8 : 4;  // 2-bit codes run in the 4-bit layout
  for (const Tensor* x : {&qw, &qz, &fz, &sc, &gi})
    if (x->defined()) release_pages(x->host_data(), x->nbytes());
  if (!perm.empty()) {
    std::vector<uint8_t> stored((size_t)(M * K));
    for (int64_t m = 0; m < M; m++)
      for (int64_t j = 0; j < K; j++) stored[m * K + j] = codes[m * K + perm[j]];
    codes.swap(stored);
  }
  Tensor t = make_quant_tensor(M, K, rbits, G, q.sym, q.act_per_token, codes.data(), scale.data(), zero.data(), q.bits);
  if (perm.empty() && !q.act_per_tensor && q.act_eps == 0 && !q.act_float) return t;
  auto info = std::make_shared<QuantInfo>(*t.quant());
  info->perm = std::move(perm);
  info->act_per_tensor = q.act_per_tensor;
  info->act_eps = q.act_eps;
  info->act_float = q.act_float;
  t.set_quant(info);
  return t;
}

// A compressed-tensors integer linear (llm-compressor): "pack-quantized" .weight_packed int32
// (M, K*bits/32), value k of row m at word k/(32/bits), bits (k % (32/bits))*bits, stored
// as q + 2^(bits-1) for the signed code q; "int-quantized" .weight int8 (M, K). Both with
// .weight_scale (M, K/G) or (M, 1) and, asymmetric, .weight_zero_point packed the same way
// along the OUTPUT dimension ((M/(32/bits), K/G) int32). weight = scale * (q - zero_point).
Tensor load_ct_int_linear(const WeightFiles& wf, const std::string& dir, const HfTensorSpec& spec, const QuantConfig& q) {
  const std::string base = spec.name.substr(0, spec.name.size() - std::string("weight").size());
  const int64_t M = spec.shape[0], K = spec.shape[1], G = q.group ? q.group : K, bits = q.bits, pf = 32 / bits;
  if (K % G != 0) fail("{}: group_size {} does not divide the {} input channels of {}", dir, G, K, spec.name);
  const int64_t ng = K / G;
  const bool packed = q.ct_int == "pack-quantized";
  if (packed && (K % pf != 0 || (!q.sym && M % pf != 0)))
    fail("{}: {} has shape ({}, {}), which {}-bit packing into int32 cannot hold", dir, spec.name, M, K, bits);
  auto get = [&](const std::string& suffix, std::initializer_list<DType> dts, std::vector<Shape> shapes) -> Tensor {
    auto it = wf.where.find(base + suffix);
    if (it == wf.where.end())
      fail("{}: missing tensor '{}{}' (config.json says the model is compressed-tensors {})", dir, base, suffix, q.ct_int);
    const auto [file, e] = it->second;
    if (std::find(dts.begin(), dts.end(), e->dtype) == dts.end())
      fail("{}: tensor '{}{}' has dtype {}, not what compressed-tensors {} stores", file->path(), base, suffix,
           dtype_safetensors_name(e->dtype), q.ct_int);
    if (std::find(shapes.begin(), shapes.end(), e->shape) == shapes.end())
      fail("{}: tensor '{}{}' has shape {}, but {}-bit {} quantization of {} implies {}", file->path(), base, suffix,
           shape_str(e->shape), bits, q.group ? fmt::format("group-{}", G) : std::string("per-channel"),
           shape_str(spec.shape), shape_str(shapes[0]));
    return file->tensor(*e);
  };
  if (auto it = wf.where.find(base + "weight_shape"); it != wf.where.end()) {
    const Tensor ws = it->second.first->tensor(*it->second.second);
    const int64_t n = ws.numel();
    auto at = [&](int64_t i) { return ws.dtype() == DType::I64 ? ws.host<int64_t>()[i] : (int64_t)ws.host<int32_t>()[i]; };
    if (n != 2 || (ws.dtype() != DType::I32 && ws.dtype() != DType::I64) || at(0) != M || at(1) != K)
      fail("{}: {}weight_shape does not say ({}, {})", dir, base, M, K);
  }
  const int64_t off = int64_t(1) << (bits - 1);
  std::vector<uint8_t> codes((size_t)(M * K));
  Tensor w = packed ? get("weight_packed", {DType::I32}, {{M, K / pf}}) : get("weight", {DType::I8}, {{M, K}});
  if (packed) {
    const uint32_t* p = reinterpret_cast<const uint32_t*>(w.host<int32_t>());
    for (int64_t m = 0; m < M; m++)
      for (int64_t k = 0; k < K; k++)
        codes[m * K + k] = (uint8_t)((p[m * (K / pf) + k / pf] >> (bits * (k % pf))) & ((1u << bits) - 1));
  } else {
    const int8_t* p = w.host<int8_t>();
    for (int64_t i = 0; i < M * K; i++) {
      if (p[i] == -128) fail("{}: {} holds -128, outside int8's symmetric range [-127, 127]", dir, spec.name);
      codes[i] = (uint8_t)(p[i] + off);
    }
  }
  Tensor sc = get("weight_scale", {DType::F32, DType::BF16, DType::F16}, ng == 1 ? std::vector<Shape>{{M, 1}, {M}} : std::vector<Shape>{{M, ng}});
  const Tensor s32 = to_f32(sc);
  std::vector<float> scale((size_t)(M * ng)), zero((size_t)(M * ng), (float)off);
  for (int64_t i = 0; i < M * ng; i++) {
    scale[i] = s32.host<float>()[i];
    if (!std::isfinite(scale[i])) fail("{}: {}weight_scale has a non-finite value at ({}, {})", dir, base, i / ng, i % ng);
  }
  Tensor zp;
  if (!q.sym) {
    zp = get("weight_zero_point", {DType::I32}, {{M / pf, ng}});
    const uint32_t* p = reinterpret_cast<const uint32_t*>(zp.host<int32_t>());
    for (int64_t m = 0; m < M; m++)
      for (int64_t g = 0; g < ng; g++)
        zero[m * ng + g] = (float)((p[(m / pf) * ng + g] >> (bits * (m % pf))) & ((1u << bits) - 1));
  }
  for (const Tensor* x : {&w, &sc, &zp})
    if (x->defined()) release_pages(x->host_data(), x->nbytes());
  return make_quant_tensor(M, K, bits == 8 ? 8 : 4, G, q.sym, q.act_per_token, codes.data(), scale.data(), zero.data(),
                           (int)bits);
}

// An FP8 linear (compressed-tensors float-quantized or vLLM fp8): .weight in F8_E4M3 and
// .weight_scale per channel ((M, 1) or (M)) or per tensor ((1) or ()).
Tensor load_fp8_linear(const WeightFiles& wf, const std::string& dir, const HfTensorSpec& spec, const QuantConfig& q) {
  const std::string base = spec.name.substr(0, spec.name.size() - std::string("weight").size());
  const int64_t M = spec.shape[0], K = spec.shape[1];
  const auto [wfile, we] = wf.where.at(spec.name);
  if (we->shape != spec.shape)
    fail("{}: tensor '{}' has shape {} but config.json implies {}", wfile->path(), spec.name, shape_str(we->shape),
         shape_str(spec.shape));
  auto it = wf.where.find(base + "weight_scale");
  if (it == wf.where.end())
    fail("{}: missing tensor '{}weight_scale' (an FP8 weight needs its scale)", dir, base);
  const auto [sfile, se] = it->second;
  const int64_t ns = shape_numel(se->shape);
  if (ns != M && ns != 1)
    fail("{}: tensor '{}weight_scale' has shape {}; expected one scale per output channel ({}) or one per tensor",
         sfile->path(), base, shape_str(se->shape), M);
  if (se->dtype != DType::F32 && se->dtype != DType::BF16 && se->dtype != DType::F16)
    fail("{}: tensor '{}weight_scale' has dtype {} (F32, BF16 or F16 expected)", sfile->path(), base,
         dtype_safetensors_name(se->dtype));
  Tensor st = sfile->tensor(*se);
  std::vector<float> scale((size_t)M);
  for (int64_t m = 0; m < M; m++) {
    const int64_t i = ns == 1 ? 0 : m;
    const float v = se->dtype == DType::F32    ? st.host<float>()[i]
                    : se->dtype == DType::BF16 ? bf16_to_f32(st.host<uint16_t>()[i])
                                               : f16_to_f32(st.host<uint16_t>()[i]);
    if (!std::isfinite(v) || v <= 0.f) fail("{}: {}weight_scale has a non-positive or non-finite value ({})", dir, base, v);
    scale[m] = v;
  }
  Tensor w = wfile->tensor(*we);
  const uint8_t* b = w.host<uint8_t>();
  for (int64_t i = 0; i < M * K; i++)
    if ((b[i] & 0x7f) == 0x7f) fail("{}: {} holds an E4M3 NaN (byte {:#04x} at element {})", dir, spec.name, b[i], i);
  Tensor t = make_fp8_tensor(M, K, b, scale.data(), ns == 1, q.act_per_token);
  release_pages(w.host_data(), w.nbytes());
  if (q.act_static) {  // the calibrated activation scale
    auto is = wf.where.find(base + "input_scale");
    if (is == wf.where.end())
      fail("{}: missing tensor '{}input_scale' (config.json says the activation scales are static)", dir, base);
    const auto [ifile, ie] = is->second;
    if (shape_numel(ie->shape) != 1 || (ie->dtype != DType::F32 && ie->dtype != DType::BF16 && ie->dtype != DType::F16))
      fail("{}: tensor '{}input_scale' must be one F32/BF16/F16 value, got {} {}", ifile->path(), base,
           dtype_safetensors_name(ie->dtype), shape_str(ie->shape));
    const float v = to_f32(ifile->tensor(*ie)).host<float>()[0];
    if (!std::isfinite(v) || v <= 0.f) fail("{}: {}input_scale is {} (a positive scale expected)", dir, base, v);
    auto info = std::make_shared<QuantInfo>(*t.quant());
    info->act_scale = v;
    t.set_quant(info);
  }
  return t;
}

// A calibrated KV-cache scale (one per KV head, or one for the layer) as the per-head range
// max |x| = scale * 127 (int8) or * 448 (fp8) that op_kv_store takes.
std::vector<float> load_kv_range(const WeightFiles& wf, const std::string& dir, const std::string& name,
                                 const ModelConfig& c) {
  auto it = wf.where.find(name);
  if (it == wf.where.end())
    fail("{}: missing tensor '{}' (config.json's quantization_config.kv_cache_scheme says the KV-cache scales are "
         "calibrated)", dir, name);
  const auto [file, e] = it->second;
  const int64_t n = shape_numel(e->shape);
  if ((n != 1 && n != c.n_kv_heads) || (e->dtype != DType::F32 && e->dtype != DType::BF16 && e->dtype != DType::F16))
    fail("{}: tensor '{}' must hold 1 or {} (one per KV head) F32/BF16/F16 values, got {} {}", file->path(), name,
         c.n_kv_heads, dtype_safetensors_name(e->dtype), shape_str(e->shape));
  const Tensor v = to_f32(file->tensor(*e));
  const float qmax = c.quant.kv_cache == "int8" ? 127.f : 448.f;
  std::vector<float> r((size_t)c.n_kv_heads);
  for (int64_t h = 0; h < c.n_kv_heads; h++) {
    const float s = v.host<float>()[n == 1 ? 0 : h];
    if (!std::isfinite(s * qmax) || s <= 0.f) fail("{}: {} holds {} (positive finite scales expected)", dir, name, s);
    r[h] = s * qmax;
  }
  return r;
}

}  // namespace

void check_finite(const Tensor& x, const std::string& file, const std::string& name) {
  const int64_t i = first_nonfinite(x.host_data(), x.dtype(), x.numel());
  if (i < 0) return;
  const int64_t K = x.ndim() == 2 ? x.dim(1) : x.numel();
  fail("{}: tensor '{}' holds a non-finite value (NaN or Inf) at row {}, column {}: the weights are corrupt (a "
       "diverged run or a damaged file); use an earlier checkpoint or re-export the model", file, name, i / K, i % K);
}

bool hf_is_quantized_linear(const ModelConfig& c, const std::string& name) {
  if (!c.quant.enabled) return false;
  if (name != "lm_head.weight" && !name.ends_with("_proj.weight")) return false;
  return c.quant.quantizes(name);
}

Model model_load(const std::string& dir, LoadMode mode, const std::function<bool(const std::string&)>& want) {
  if (fs::is_regular_file(dir)) {  // a GGUF file (llama.cpp's format) as a model source
    if (dir.ends_with(".gguf")) return gguf_load_model(dir, mode);
    fail("{}: a file; give a model directory (config.json + safetensors) or a .gguf file", dir);
  }
  fs::path cfg = fs::path(dir) / "config.json";
  if (!fs::is_directory(dir)) fail("{}: not a directory (expected a Hugging Face model directory)", dir);
  if (!fs::exists(cfg)) fail("{}: missing config.json", dir);
  Model m;
  m.config = config_load(cfg.string());
  m.source = dir;
  m.rope_freqs = rope_frequencies(m.config);
  const ModelConfig& c = m.config;
  // Quantized checkpoints are unpacked into the kernels' layout, so their files are mapped
  // (and each consumed tensor's pages dropped) rather than read into a second copy.
  const LoadMode file_mode = c.quant.enabled ? LoadMode::Map : mode;
  WeightFiles wf = open_weights(dir, file_mode);
  std::map<std::string, Tensor> t;
  for (const auto& spec : hf_tensor_specs(c)) {
    if (want && !want(spec.name)) continue;
    // A quantized model's linears are GPTQ tensors, except those kept in float (.weight);
    // FP8 linears are .weight in F8_E4M3 with a .weight_scale.
    const bool qlinear = hf_is_quantized_linear(c, spec.name);
    const QuantConfig& q = c.quant.of(spec.name);  // this linear's scheme (a mix: quantization_config's per-module part)
    if (qlinear && q.fp8 && wf.where.count(spec.name) && wf.where.at(spec.name).second->dtype == DType::F8E4M3) {
      t[spec.name] = load_fp8_linear(wf, dir, spec, q);
      continue;
    }
    if (qlinear && !q.ct_int.empty()) {
      t[spec.name] = load_ct_int_linear(wf, dir, spec, q);
      continue;
    }
    if (qlinear && !q.fp8 && !wf.where.count(spec.name)) {
      t[spec.name] = load_gptq_linear(wf, dir, spec, q);
      continue;
    }
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
    check_finite(x, file->path(), spec.name);
    // A mapped file's pages were touched only by the check: drop them from this process
    // (they stay in the page cache), so a streaming reader such as quantize keeps its peak.
    if (file_mode == LoadMode::Map && !spec.is_norm) release_pages(x.host_data(), x.nbytes());
    t[spec.name] = spec.is_norm ? to_f32(x) : x;
  }
  LlamaWeights& w = m.weights;
  w.embed = t["model.embed_tokens.weight"];
  if (c.quant.enabled) {  // float tensors of a quantized model: owned memory, not the mapping
    for (auto& [name, x] : t)
      if (!x.quant() && x.dtype() != DType::F32) {
        Tensor own = Tensor::empty(x.dtype(), x.shape());
        std::memcpy(own.host_data(), x.host_data(), x.nbytes());
        release_pages(x.host_data(), x.nbytes());
        x = own;
      }
    w.embed = t["model.embed_tokens.weight"];
  }
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
    if (!c.quant.kv_cache.empty() && !c.quant.kv_dynamic) {
      L.k_amax = load_kv_range(wf, dir, p + "self_attn.k_scale", c);
      L.v_amax = load_kv_range(wf, dir, p + "self_attn.v_scale", c);
    }
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
  write_model_configs(dir, c);
}

void write_model_configs(const std::string& dir, const ModelConfig& c) {
  write_json(fs::path(dir) / "config.json", config_to_hf_json(c));
  write_json(fs::path(dir) / "generation_config.json", generation_config(c));
}

bool copy_tokenizer_files(const std::string& model_dir, const std::string& out_dir) {
  if (model_dir.ends_with(".gguf") && fs::is_regular_file(model_dir)) {  // the tokenizer the GGUF carries
    if (!gguf_has_tokenizer(model_dir)) return false;
    const TokenizerFiles t = gguf_tokenizer_files(model_dir);
    write_file_atomic((fs::path(out_dir) / t.main_name).string(), t.main);
    write_file_atomic((fs::path(out_dir) / "tokenizer_config.json").string(), t.config);
    return true;
  }
  bool found = false;
  for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}) {
    const fs::path src = fs::path(model_dir) / f;
    if (!fs::is_regular_file(src)) continue;
    write_file_atomic((fs::path(out_dir) / f).string(), read_text_file(src.string()));
    found = found || std::string(f) != "tokenizer_config.json";
  }
  return found;
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

std::map<std::string, Tensor> hf_named_tensors(const Model& m) {
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
  return t;
}

void model_save(const std::string& dir, const Model& m, const SaveOptions& opt) {
  if (m.config.quant.enabled)
    fail("{}: saving a quantized model as float weights is not supported; quantize again from the original", dir);
  const std::map<std::string, Tensor> t = hf_named_tensors(m);
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
