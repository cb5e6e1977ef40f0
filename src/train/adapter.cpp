// Adapter configuration, PEFT names and adapter_config.json.
#include "train/adapter.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>

#include "core/error.h"
#include "core/file_util.h"
#include "io/safetensors.h"

namespace llmq::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::array<const char*, kBlockLinears> kLinearNames = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"};
const std::array<const char*, kBlockLinears> kLinearModules = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                               "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                               "mlp.down_proj"};

double AdapterConfig::scale() const { return rslora ? alpha / std::sqrt((double)rank) : alpha / (double)rank; }

void AdapterConfig::check() const {
  if (rank < 1 || rank > 65536) fail("adapter: rank {} must be between 1 and 65536", rank);
  if (!std::isfinite(alpha) || alpha == 0)
    fail("adapter: alpha {} gives the adapter no effect (scale alpha/r is 0 or not finite); give a non-zero --alpha", alpha);
  if (!(dropout >= 0 && dropout < 1)) fail("adapter: dropout {} must be in [0, 1)", dropout);
  bool any = false;
  for (bool t : targets) any = any || t;
  if (!any) fail("adapter: no target modules");
}

json AdapterConfig::options() const {
  json t = json::array();
  for (int i = 0; i < kBlockLinears; i++)
    if (targets[i]) t.push_back(kLinearNames[i]);
  return {{"adapter", dora ? "dora" : "lora"}, {"rank", rank},       {"alpha", alpha},
          {"rslora", rslora},                  {"dropout", dropout}, {"targets", t},
          {"train_norms", train_norms}};
}

std::array<bool, kBlockLinears> parse_targets(const std::string& list) {
  std::array<bool, kBlockLinears> t{};
  if (list == "all-linear" || list == "all") {
    t.fill(true);
    return t;
  }
  size_t b = 0;
  while (b <= list.size()) {
    size_t e = list.find(',', b);
    if (e == std::string::npos) e = list.size();
    std::string name = list.substr(b, e - b);
    while (!name.empty() && name.back() == ' ') name.pop_back();
    while (!name.empty() && name.front() == ' ') name.erase(name.begin());
    if (!name.empty()) {
      int i = 0;
      while (i < kBlockLinears && name != kLinearNames[i]) i++;
      if (i == kBlockLinears)
        fail("adapter: unknown target module '{}' (a Llama block has q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
             "down_proj; or give all-linear)", name);
      t[i] = true;
    }
    b = e + 1;
  }
  return t;
}

std::pair<int64_t, int64_t> linear_shape(const ModelConfig& c, int t) {
  const int64_t C = c.dim, QD = c.q_dim(), KD = c.kv_dim(), FF = c.ffn_dim;
  switch (t) {
    case 0: return {C, QD};
    case 1:
    case 2: return {C, KD};
    case 3: return {QD, C};
    case 4:
    case 5: return {C, FF};
    default: return {FF, C};
  }
}

namespace {
// The buffer's order, once: specs and, when given, each tensor's offset.
std::vector<HfTensorSpec> walk_adapter(const ModelConfig& c, const AdapterConfig& a, AdapterLayout* lay) {
  std::vector<HfTensorSpec> s;
  AdapterLayout L;
  L.lin.assign(c.n_layers, {});
  L.attn_norm.assign(c.n_layers, -1), L.ffn_norm.assign(c.n_layers, -1);
  auto add = [&](std::string name, Shape shape, bool norm, int64_t& at) {
    at = L.n;
    L.n += shape_numel(shape);
    s.push_back({std::move(name), std::move(shape), norm});
  };
  const std::string root = "base_model.model.";
  for (int l = 0; l < c.n_layers; l++) {
    const std::string pre = fmt::format("{}model.layers.{}.", root, l);
    if (a.train_norms) add(pre + "input_layernorm.weight", {c.dim}, true, L.attn_norm[l]);
    for (int t = 0; t < kBlockLinears; t++) {
      if (!a.targets[t]) continue;
      const auto [in, out] = linear_shape(c, t);
      const std::string m = pre + kLinearModules[t];
      add(m + ".lora_A.weight", {a.rank, in}, false, L.lin[l][t].A);
      add(m + ".lora_B.weight", {out, a.rank}, false, L.lin[l][t].B);
      if (a.dora) add(m + ".lora_magnitude_vector", {out}, false, L.lin[l][t].mag);
    }
    if (a.train_norms) add(pre + "post_attention_layernorm.weight", {c.dim}, true, L.ffn_norm[l]);
  }
  if (a.train_norms) add(root + "model.norm.weight", {c.dim}, true, L.norm);
  if (lay) *lay = std::move(L);
  return s;
}
}  // namespace

std::vector<HfTensorSpec> adapter_specs(const ModelConfig& c, const AdapterConfig& a) {
  return walk_adapter(c, a, nullptr);
}

AdapterLayout adapter_layout(const ModelConfig& c, const AdapterConfig& a) {
  AdapterLayout L;
  walk_adapter(c, a, &L);
  return L;
}

json adapter_config_json(const AdapterConfig& a) {
  json t = json::array();
  for (int i = 0; i < kBlockLinears; i++)
    if (a.targets[i]) t.push_back(kLinearNames[i]);
  json j = {{"peft_type", "LORA"},
            {"task_type", "CAUSAL_LM"},
            {"base_model_name_or_path", a.base},
            {"r", a.rank},
            {"lora_alpha", a.alpha},
            {"lora_dropout", a.dropout},
            {"target_modules", t},
            {"use_dora", a.dora},
            {"use_rslora", a.rslora},
            {"bias", "none"},
            {"fan_in_fan_out", false},
            {"init_lora_weights", true},
            {"inference_mode", true},
            {"modules_to_save", nullptr},
            {"layers_to_transform", nullptr},
            {"rank_pattern", json::object()},
            {"alpha_pattern", json::object()}};
  if (a.train_norms) j["modules_to_save"] = {"input_layernorm", "post_attention_layernorm", "norm"};
  return j;
}

AdapterConfig adapter_config_load(const std::string& dir) {
  const std::string path = (fs::path(dir) / "adapter_config.json").string();
  if (!fs::is_regular_file(path))
    fail("{}: missing (not a PEFT adapter directory: it needs adapter_config.json and adapter_model.safetensors)", path);
  return adapter_config_parse(read_text_file(path), path);
}

AdapterConfig adapter_config_parse(const std::string& text, const std::string& path) {
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail("{}: not a JSON object", path);
  auto str = [&](const char* k, const std::string& def) {
    if (!j.contains(k) || j[k].is_null()) return def;
    if (!j[k].is_string()) fail("{}: \"{}\" must be a string", path, k);
    return j[k].get<std::string>();
  };
  auto boolean = [&](const char* k) {
    if (!j.contains(k) || j[k].is_null()) return false;
    if (!j[k].is_boolean()) fail("{}: \"{}\" must be true or false", path, k);
    return j[k].get<bool>();
  };
  auto number = [&](const char* k, double def) {
    if (!j.contains(k) || j[k].is_null()) return def;
    if (!j[k].is_number()) fail("{}: \"{}\" must be a number", path, k);
    return j[k].get<double>();
  };
  if (str("peft_type", "") != "LORA")
    fail("{}: peft_type '{}' is not LORA (llmq runs LoRA and DoRA adapters)", path, str("peft_type", ""));
  AdapterConfig a;
  const double r = number("r", 8);
  if (r != std::floor(r) || r < 1 || r > 65536) fail("{}: \"r\" {} must be a positive whole number", path, r);
  a.rank = (int64_t)r;
  a.alpha = number("lora_alpha", 8);
  if (a.alpha == 0 || !std::isfinite(a.alpha)) fail("{}: \"lora_alpha\" {} gives the adapter no effect", path, a.alpha);
  a.dropout = number("lora_dropout", 0);
  a.dora = boolean("use_dora");
  a.rslora = boolean("use_rslora");
  a.base = str("base_model_name_or_path", "");
  if (str("bias", "none") != "none") fail("{}: bias \"{}\" is not supported (llmq adapters have no bias terms)", path, str("bias", ""));
  if (boolean("fan_in_fan_out")) fail("{}: fan_in_fan_out is for GPT-2's Conv1D layers, not Llama", path);
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (j.contains(k) && !j[k].is_null() && !(j[k].is_object() && j[k].empty()))
      fail("{}: \"{}\" (per-module ranks or alphas) is not supported", path, k);
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null())
    fail("{}: \"layers_to_transform\" is not supported (adapt every block)", path);
  if (!j.contains("target_modules")) fail("{}: missing \"target_modules\"", path);
  const json& t = j["target_modules"];
  if (t.is_string()) {
    a.targets = parse_targets(t.get<std::string>());
  } else if (t.is_array()) {
    a.targets.fill(false);
    for (const auto& x : t) {
      if (!x.is_string()) fail("{}: \"target_modules\" must list module names", path);
      std::string n = x.get<std::string>();
      const size_t dot = n.rfind('.');  // "self_attn.q_proj" names the same module
      if (dot != std::string::npos) n = n.substr(dot + 1);
      int i = 0;
      while (i < kBlockLinears && n != kLinearNames[i]) i++;
      if (i == kBlockLinears)
        fail("{}: unknown target module '{}' (a Llama block has q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
             path, x.get<std::string>());
      a.targets[i] = true;
    }
  } else {
    fail("{}: \"target_modules\" must be a list or a string", path);
  }
  if (j.contains("modules_to_save") && j["modules_to_save"].is_array() && !j["modules_to_save"].empty()) {
    for (const auto& x : j["modules_to_save"]) {
      const std::string n = x.is_string() ? x.get<std::string>() : "";
      if (n != "input_layernorm" && n != "post_attention_layernorm" && n != "norm")
        fail("{}: modules_to_save '{}' is not supported (llmq trains the RMSNorm weights beside adapters, nothing else)", path,
             x.dump());
    }
    a.train_norms = true;
  }
  try {
    a.check();
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
  return a;
}

void save_adapter(const std::string& dir, const AdapterConfig& a, const std::vector<HfTensorSpec>& specs,
                  const std::vector<int64_t>& offsets, const float* params) {
  fs::create_directories(dir);
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  for (size_t i = 0; i < specs.size(); i++) {
    const float* src = params + offsets[i];
    w.add(specs[i].name, DType::F32, specs[i].shape, [src](uint8_t* dst, uint64_t off, uint64_t n) {
      std::memcpy(dst, reinterpret_cast<const uint8_t*>(src) + off, n);
    });
  }
  w.write((fs::path(dir) / "adapter_model.safetensors").string());
  write_file_atomic((fs::path(dir) / "adapter_config.json").string(), adapter_config_json(a).dump(2) + "\n");
}

std::function<void(int64_t, int64_t, float*)> adapter_reader(const std::string& dir, const ModelConfig& c,
                                                             const AdapterConfig& a) {
  const std::string path = (fs::path(dir) / "adapter_model.safetensors").string();
  if (!fs::is_regular_file(path)) fail("{}: missing (the adapter's weights)", path);
  auto file = std::make_shared<SafetensorsFile>(path, LoadMode::Map);
  const std::vector<HfTensorSpec> specs = adapter_specs(c, a);
  auto tensors = std::make_shared<std::vector<Tensor>>();
  auto offsets = std::make_shared<std::vector<int64_t>>();
  auto names = std::make_shared<std::vector<std::string>>();
  int64_t n = 0;
  std::map<std::string, bool> wanted;
  for (const auto& s : specs) wanted[s.name] = true;
  // PEFT before 0.12 and some writers: "...lora_magnitude_vector.weight"; the ".default" adapter name kept.
  auto lookup = [&](const std::string& name) {
    const SafetensorsEntry* e = file->find(name);
    if (!e) e = file->find(name + ".weight");
    return e;
  };
  for (const auto& e : file->header().tensors) {
    std::string k = e.name;
    if (k.size() > 7 && k.compare(k.size() - 7, 7, ".weight") == 0 && !wanted.count(k)) k = k.substr(0, k.size() - 7);
    if (!wanted.count(k) && !wanted.count(e.name)) {
      int l = -1;
      const size_t at = e.name.find("layers.");
      if (at != std::string::npos) l = std::atoi(e.name.c_str() + at + 7);
      if (l >= c.n_layers)
        fail("{}: tensor {} is for block {}, but the model has {} blocks: an adapter for another model", path, e.name, l,
             c.n_layers);
      fail("{}: tensor {} is not one adapter_config.json describes (targets {}, use_dora {}, modules_to_save {}): the "
           "config and the weights disagree", path, e.name, a.options()["targets"].dump(), a.dora, a.train_norms);
    }
  }
  for (const auto& s : specs) {
    const SafetensorsEntry* e = lookup(s.name);
    if (!e) fail("{}: tensor {} is missing (adapter_config.json names its module)", path, s.name);
    if (e->shape != s.shape) {
      const bool rank_dim = s.name.find("lora_A") != std::string::npos   ? e->shape.size() == 2 && e->shape[0] != a.rank
                            : s.name.find("lora_B") != std::string::npos ? e->shape.size() == 2 && e->shape[1] != a.rank
                                                                          : false;
      if (rank_dim)
        fail("{}: tensor {} has shape {}, but adapter_config.json says r = {} (expected {}): the rank does not match its "
             "tensors", path, e->name, shape_str(e->shape), a.rank, shape_str(s.shape));
      fail("{}: tensor {} has shape {}, expected {} for this model: an adapter for another model or shape", path, e->name,
           shape_str(e->shape), shape_str(s.shape));
    }
    Tensor t = file->tensor(*e);
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
      fail("{}: tensor {} has dtype {}, expected f32, bf16 or f16", path, e->name, dtype_name(t.dtype()));
    offsets->push_back(n);
    n += shape_numel(s.shape);
    tensors->push_back(std::move(t));
    names->push_back(e->name);
  }
  offsets->push_back(n);
  return [file, tensors, offsets, names, path](int64_t b, int64_t e, float* dst) {
    LLMQ_CHECK(0 <= b && b <= e && e <= offsets->back());
    for (size_t i = 0; i < tensors->size(); i++) {
      const int64_t t0 = (*offsets)[i], t1 = (*offsets)[i + 1];
      const int64_t lo = std::max(b, t0), hi = std::min(e, t1);
      if (lo >= hi) continue;
      const Tensor& t = (*tensors)[i];
      float* out = dst + (lo - b);
      for (int64_t k = lo - t0; k < hi - t0; k++) {
        const float v = t.dtype() == DType::F32    ? t.host<float>()[k]
                        : t.dtype() == DType::BF16 ? bf16_to_f32(t.host<uint16_t>()[k])
                                                   : f16_to_f32(t.host<uint16_t>()[k]);
        if (!std::isfinite(v)) fail("{}: tensor {} holds a NaN or Inf at element {}", path, (*names)[i], k);
        *out++ = v;
      }
    }
  };
}

}  // namespace llmq::train
