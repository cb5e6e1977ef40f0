// Config parsing, validation and the built-in presets (Meta's published hyperparameters).
#include "model/config.h"

#include <algorithm>
#include <cctype>
#include <functional>
#include <map>
#include <set>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"
#include "core/pyregex.h"

namespace llmq {

using nlohmann::json;

int64_t meta_ffn_dim(int64_t dim, int64_t multiple_of, double mult) {
  // Out-of-range sizes (a huge or non-finite multiplier, found by fuzz_config) are refused
  // here: the cast to int64 would be undefined.
  const double h0 = 2.0 * 4.0 * (double)dim / 3.0, h1 = mult > 0 ? mult * std::floor(h0) : h0;
  if (!(h1 >= 0 && h1 < 1e15) || multiple_of <= 0 || multiple_of > (int64_t(1) << 40))
    fail("params.json: dim {}, ffn_dim_multiplier {} and multiple_of {} give no valid FFN width", dim, mult, multiple_of);
  const int64_t h = (int64_t)h1;
  return multiple_of * ((h + multiple_of - 1) / multiple_of);
}

const QuantConfig& QuantConfig::of(const std::string& name) const {
  auto it = std::lower_bound(modules.begin(), modules.end(), name,
                             [](const QuantModule& e, const std::string& n) { return e.first < n; });
  return it != modules.end() && it->first == name ? it->second : *this;
}

bool QuantConfig::quantizes(const std::string& name) const {
  const QuantConfig& q = of(name);
  return q.enabled && (name != "lm_head.weight" || q.lm_head);
}

std::vector<std::string> quant_linear_names(const ModelConfig& c) {
  std::vector<std::string> v;
  for (int64_t l = 0; l < c.n_layers; l++)
    for (const char* n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                          "mlp.up_proj", "mlp.down_proj"})
      v.push_back("model.layers." + std::to_string(l) + "." + n + ".weight");
  v.push_back("lm_head.weight");
  return v;
}

bool quant_same_linear(const QuantConfig& a, const QuantConfig& b) {
  return a.enabled == b.enabled && (!a.enabled || (a.bits == b.bits && a.group == b.group && a.sym == b.sym &&
                                                   a.float_zeros == b.float_zeros && a.hqq_axis == b.hqq_axis &&
                                                   a.ct_int == b.ct_int && a.fp8 == b.fp8 &&
                                                   a.act_per_token == b.act_per_token &&
                                                   a.weight_per_tensor == b.weight_per_tensor && a.act_static == b.act_static &&
                                                   a.desc_act == b.desc_act && a.lm_head == b.lm_head));
}

int64_t ModelConfig::n_params() const {
  int64_t per_layer = dim * q_dim() * 2 + dim * kv_dim() * 2 + 3 * dim * ffn_dim + 2 * dim;
  return vocab_size * dim * (tie_embeddings ? 1 : 2) + n_layers * per_layer + dim;
}

void ModelConfig::validate(const std::string& where) const {
  auto need = [&](bool ok, const char* what) {
    if (!ok) fail("{}: invalid config: {}", where, what);
  };
  const int64_t kBig = int64_t(1) << 24;
  need(dim > 0 && dim < kBig, "hidden_size must be in 1..2^24");
  need(n_layers > 0 && n_layers <= 4096, "num_hidden_layers must be in 1..4096");
  need(n_heads > 0 && n_heads <= 4096, "num_attention_heads must be in 1..4096");
  need(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "num_attention_heads must be a multiple of num_key_value_heads");
  need(head_dim > 0 && head_dim % 2 == 0 && head_dim <= 1024, "head_dim must be even and at most 1024");
  need(ffn_dim > 0 && ffn_dim < kBig, "intermediate_size must be in 1..2^24");
  need(vocab_size > 0 && vocab_size < (int64_t(1) << 31), "vocab_size must be in 1..2^31");
  need(max_seq_len > 0 && max_seq_len <= (int64_t(1) << 24), "max_position_embeddings must be in 1..2^24");
  need(norm_eps > 0 && norm_eps < 1, "rms_norm_eps must be in (0, 1)");
  need(rope_theta > 1, "rope_theta must be > 1");
  if (rope_scaling.enabled) {
    need(rope_scaling.factor >= 1, "rope_scaling.factor must be >= 1");
    need(rope_scaling.low_freq_factor > 0 && rope_scaling.high_freq_factor > rope_scaling.low_freq_factor,
         "rope_scaling needs 0 < low_freq_factor < high_freq_factor");
    need(rope_scaling.original_max_position > 0, "rope_scaling.original_max_position_embeddings must be > 0");
  }
  for (auto t : bos_token_ids) need(t >= 0 && t < vocab_size, "bos_token_id outside the vocabulary");
  for (auto t : eos_token_ids) need(t >= 0 && t < vocab_size, "eos_token_id outside the vocabulary");
}

namespace {

// Typed field access that names the file and key in every error.
struct Reader {
  const json& j;
  const std::string& where;
  bool has(const char* k) const { return j.contains(k) && !j[k].is_null(); }
  int64_t integer(const char* k) const {
    if (!has(k)) fail("{}: missing required key \"{}\"", where, k);
    return integer_of(j[k], k);
  }
  int64_t integer_of(const json& v, const char* k) const {
    if (v.is_number_integer() || v.is_number_unsigned()) return v.get<int64_t>();
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() && std::fabs(v.get<double>()) < 1e15)
      return (int64_t)v.get<double>();
    fail("{}: \"{}\" must be an integer, got {}", where, k, v.dump());
  }
  int64_t integer_or(const char* k, int64_t d) const { return has(k) ? integer(k) : d; }
  double number_or(const char* k, double d) const {
    if (!has(k)) return d;
    if (!j[k].is_number()) fail("{}: \"{}\" must be a number, got {}", where, k, j[k].dump());
    return j[k].get<double>();
  }
  bool boolean_or(const char* k, bool d) const {
    if (!has(k)) return d;
    if (!j[k].is_boolean()) fail("{}: \"{}\" must be true or false, got {}", where, k, j[k].dump());
    return j[k].get<bool>();
  }
  std::vector<int64_t> ids(const char* k) const {  // an int or a list of ints
    std::vector<int64_t> r;
    if (!has(k)) return r;
    if (j[k].is_array()) {
      for (auto& v : j[k]) r.push_back(integer_of(v, k));
    } else {
      r.push_back(integer(k));
    }
    return r;
  }
};

void require_object(const json& j, const std::string& where) {
  if (!j.is_object()) fail("{}: expected a JSON object at the top level", where);
}

}  // namespace

namespace {
// FP8 checkpoints: llm-compressor's compressed-tensors "float-quantized" format (one config
// group of Linear targets; weights 8-bit float per channel or per tensor; input activations
// 8-bit float per token or per tensor, dynamic) and vLLM's "fp8" (per-tensor weight scales).
// obj["strategy"] of a compressed-tensors config, which must be a or b.
std::string strategy_one_of(const json& obj, const char* what, const char* a, const char* b, const std::string& where) {
  const std::string v = obj.value("strategy", std::string());
  if (v != a && v != b)
    fail("{}: quantization_config {}.strategy \"{}\" is not supported ({} or {})", where, what, v, a, b);
  return v;
}

// Python's re.match (what GPTQModel's "dynamic" and compressed-tensors' "re:" targets use):
// core/pyregex.h (PCRE2's DFA matcher, anchored at the start of the module name, with a work
// budget per config).

// A pattern that can only match one module name exactly ("^model\.layers\.0\.mlp\.up_proj$",
// as llmq writes them): that name, else "".
std::string exact_pattern_name(const std::string& p) {
  if (p.size() < 3 || p.front() != '^' || p.back() != '$') return "";
  std::string n;
  for (size_t i = 1; i + 1 < p.size(); i++) {
    const char ch = p[i];
    if (ch == '\\' && i + 2 < p.size() && p[i + 1] == '.') {
      n += '.', i++;
    } else if (std::isalnum((unsigned char)ch) || ch == '_' || ch == '-') {
      n += ch;
    } else {
      return "";
    }
  }
  return n;
}

// The module name of a linear's HF weight name ("model.layers.0.mlp.up_proj.weight" ->
// "model.layers.0.mlp.up_proj"), as the Python tools match it.
std::string module_of(const std::string& weight_name) { return weight_name.substr(0, weight_name.size() - 7); }

// Stores, for every linear whose resolved quantization differs from base, an entry in
// base.modules (sorted by name).
void set_modules(QuantConfig& base, const ModelConfig& c, const std::function<QuantConfig(const std::string&)>& resolve) {
  base.modules.clear();
  if (c.n_layers <= 0 || c.n_layers > 4096) fail("num_hidden_layers {} is out of range (1..4096)", c.n_layers);
  std::vector<QuantModule> mods;  // (filled apart: resolve copies base)
  for (const std::string& name : quant_linear_names(c)) {
    QuantConfig q = resolve(name);
    if (name == "lm_head.weight" && !q.enabled && !base.lm_head) continue;  // float either way
    if (!quant_same_linear(q, base)) mods.emplace_back(name, std::move(q));
  }
  std::sort(mods.begin(), mods.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  base.modules = std::move(mods);
}

// compressed-tensors: a config group's "weights" object, checked.
const json& ct_group_weights(const json& g, const std::string& where) {
  if (!g.is_object() || !g.contains("weights") || !g["weights"].is_object())
    fail("{}: quantization_config.config_groups: a group without \"weights\"", where);
  return g["weights"];
}

void parse_fp8_group(const json& g, const std::string& where, QuantConfig& qc) {
  qc.enabled = true;
  qc.fp8 = true;
  qc.bits = 8;
  qc.group = 0;
  qc.sym = true;
  qc.scheme = "fp8";
  qc.zeros_minus_one = false;
  const json& w = ct_group_weights(g, where);
  if (w.value("num_bits", 0) != 8 || w.value("type", std::string()) != "float")
    fail("{}: quantization_config weights must be 8-bit float (E4M3)", where);
  qc.weight_per_tensor = strategy_one_of(w, "weights", "channel", "tensor", where) == "tensor";
  qc.act_per_token = true;
  if (g.contains("input_activations") && !g["input_activations"].is_null()) {
    const json& a = g["input_activations"];
    if (!a.is_object()) fail("{}: quantization_config input_activations must be an object", where);
    qc.act_per_token = strategy_one_of(a, "input_activations", "token", "tensor", where) == "token";
    qc.act_static = !a.value("dynamic", false);
    if (qc.act_static && qc.act_per_token)
      fail("{}: static FP8 activation scales per token cannot exist (a static scale is per tensor)", where);
  }
}

// compressed-tensors integer formats (llm-compressor's W4A16 / W8A16 "pack-quantized" and
// W8A8 "int-quantized"): int weights per group or per channel, and either no activation
// quantization or int8 per token, dynamic, symmetric. pack-quantized holds 2-, 4- and 8-bit
// codes (whole codes per int32).
void parse_ct_int_group(const json& g, const std::string& format, const std::string& where, QuantConfig& qc) {
  qc.enabled = true;
  qc.ct_int = format;
  qc.zeros_minus_one = false;
  qc.algorithm = "llm-compressor";
  const json& w = ct_group_weights(g, where);
  if (w.value("type", std::string()) != "int") fail("{}: quantization_config weights must be \"int\" for {}", where, format);
  const json nb = w.value("num_bits", json(0));
  const bool packed = format == "pack-quantized";
  if (!nb.is_number_integer() || (nb.get<int>() != 2 && nb.get<int>() != 4 && nb.get<int>() != 8) ||
      (!packed && nb.get<int>() != 8))
    fail("{}: quantization_config weights num_bits {} is not supported ({}: {})", where, nb.dump(), format,
         packed ? "2, 4 or 8" : "8");
  qc.bits = nb.get<int>();
  const std::string strategy = w.value("strategy", std::string());
  if (strategy == "group") {
    const json gs = w.value("group_size", json(0));
    if (!gs.is_number_integer() || gs.get<int64_t>() < 32 || gs.get<int64_t>() % 32 != 0 || gs.get<int64_t>() > (int64_t(1) << 30))
      fail("{}: quantization_config weights group_size {} is not supported (a multiple of 32)", where, gs.dump());
    qc.group = gs.get<int64_t>();
  } else if (strategy == "channel") {
    qc.group = 0;
  } else {
    fail("{}: quantization_config weights strategy \"{}\" is not supported (group or channel)", where, strategy);
  }
  qc.sym = w.value("symmetric", true);
  if (!qc.sym && !packed)
    fail("{}: asymmetric {} weights are not supported (llm-compressor writes them symmetric)", where, format);
  if (w.contains("actorder") && !w["actorder"].is_null() && w["actorder"] != false)
    fail("{}: quantization_config weights actorder {} is not supported (weight_g_idx)", where, w["actorder"].dump());
  qc.scheme = fmt::format("w{}a16", qc.bits);
  qc.act_per_token = false;
  if (g.contains("input_activations") && !g["input_activations"].is_null()) {
    const json& a = g["input_activations"];
    if (!a.is_object() || a.value("type", std::string()) != "int" || a.value("num_bits", 0) != 8 ||
        a.value("strategy", std::string()) != "token" || !a.value("dynamic", false) || !a.value("symmetric", true) || qc.bits != 8)
      fail("{}: quantization_config input_activations: llmq runs int8 weights with int8 activations per token, dynamic, "
           "symmetric (W8A8); this is {}", where, a.dump());
    qc.scheme = "w8a8";
    qc.act_per_token = true;
  }
}

// compressed-tensors (llm-compressor): config_groups, each with "targets" (exact module names,
// "re:" patterns matched from the start of the name, or the class name "Linear") and one
// scheme, and "ignore" (the same kinds of entries) for modules left in float. A linear takes
// the group whose targets match it most specifically: an exact name before a pattern before
// "Linear" (compressed-tensors' precedence), the first such group in the file; "ignore" wins
// over every group. The base scheme is the group targeting "Linear" (else the first group);
// the others become QuantConfig::modules. format "mixed-precision" names each group's own
// "format".
void parse_ct_config(const json& q, const std::string& where, const ModelConfig& c, QuantConfig& qc) {
  const std::string top = q.value("format", std::string());
  if (!q.contains("config_groups") || !q["config_groups"].is_object() || q["config_groups"].empty())
    fail("{}: quantization_config.config_groups must hold at least one group", where);
  struct Group {
    std::string name;
    std::vector<std::string> targets;
    QuantConfig cfg;
  };
  std::vector<Group> groups;
  for (const auto& [gname, g] : q["config_groups"].items()) {
    const std::string w = where + ": quantization_config.config_groups." + gname;
    if (!g.is_object()) fail("{}: a group must be an object", w);
    std::string format = top == "mixed-precision" ? g.value("format", std::string()) : top;
    if (format == "naive-quantized") format = "int-quantized";
    Group gr;
    gr.name = gname;
    if (format == "float-quantized") parse_fp8_group(g, w, gr.cfg);
    else if (format == "pack-quantized" || format == "int-quantized") parse_ct_int_group(g, format, w, gr.cfg);
    else
      fail("{}: format {} is not supported (llmq reads compressed-tensors \"float-quantized\" FP8, \"pack-quantized\" "
           "and \"int-quantized\", or \"mixed-precision\" of those)", w, format.empty() ? std::string("(missing)") : "\"" + format + "\"");
    if (!g.contains("targets") || !g["targets"].is_array() || g["targets"].empty())
      fail("{}: \"targets\" must be a non-empty list (module names, \"re:\" patterns or \"Linear\")", w);
    for (const auto& t : g["targets"]) {
      if (!t.is_string()) fail("{}: targets must be strings", w);
      gr.targets.push_back(t.get<std::string>());
    }
    groups.push_back(std::move(gr));
  }
  std::vector<std::string> ignore;
  if (q.contains("ignore") && !q["ignore"].is_null()) {
    if (!q["ignore"].is_array()) fail("{}: quantization_config.ignore must be a list", where);
    for (const auto& e : q["ignore"]) {
      if (!e.is_string()) fail("{}: quantization_config.ignore holds a non-string", where);
      ignore.push_back(e.get<std::string>());
    }
  }
  PyRegex re(where + ": quantization_config");
  // Exact module names: the first group naming each, and the ignored ones (a map: thousands
  // of names against thousands of modules).
  std::map<std::string, size_t> exact;
  std::set<std::string> ignore_exact;
  for (size_t i = 0; i < groups.size(); i++)
    for (const auto& t : groups[i].targets)
      if (t.rfind("re:", 0) != 0 && t != "Linear") exact.emplace(t, i);
  for (const auto& e : ignore)
    if (e.rfind("re:", 0) != 0) ignore_exact.insert(e);
  // 2: pattern, 1: class "Linear", 0: no match (exact names are looked up above).
  auto level = [&](const std::string& target, const std::string& module) {
    if (target.rfind("re:", 0) == 0) return re.match(target.substr(3), module) ? 2 : 0;
    return target == "Linear" ? 1 : 0;
  };
  size_t base = 0;
  for (size_t i = 0; i < groups.size(); i++)
    if (std::find(groups[i].targets.begin(), groups[i].targets.end(), "Linear") != groups[i].targets.end()) {
      base = i;
      break;
    }
  qc = groups[base].cfg;
  auto resolve = [&](const std::string& name) {
    const std::string module = module_of(name);
    QuantConfig off = qc;
    off.enabled = false;
    off.modules.clear();
    if (ignore_exact.count(module)) return off;
    for (const auto& e : ignore)
      if (e.rfind("re:", 0) == 0 && level(e, module) > 0) return off;
    int best = 0;
    size_t at = 0;
    if (auto it = exact.find(module); it != exact.end()) {
      best = 3, at = it->second;
    } else {
      for (size_t i = 0; i < groups.size(); i++)
        for (const auto& t : groups[i].targets)
          if (t.rfind("re:", 0) == 0 || t == "Linear") {
            const int l = level(t, module);
            if (l > best) best = l, at = i;
          }
    }
    if (best == 0) return off;
    QuantConfig r = groups[at].cfg;
    r.lm_head = name == "lm_head.weight";
    return r;
  };
  {  // lm_head is quantized with the base scheme when it resolves to it
    QuantConfig h = resolve("lm_head.weight");
    h.lm_head = qc.lm_head = false;
    qc.lm_head = h.enabled && quant_same_linear(h, qc);
  }
  set_modules(qc, c, [&](const std::string& name) {
    QuantConfig r = resolve(name);
    if (name != "lm_head.weight") r.lm_head = qc.lm_head;  // the flag only matters for lm_head
    return r;
  });
}

// GPTQModel's per-module overrides (quantization_config.dynamic, as vLLM reads them): keys are
// patterns matched from the start of the module name, in the file's order, the first match
// deciding; "-:PATTERN" leaves the module in float, "+:PATTERN" (or no prefix) overrides
// bits, group_size, sym and desc_act; llmq's own keys llmq_zeros ("float": HQQ's f16 zeros)
// and llmq_axis (HQQ's axis) describe llmq's HQQ layout per module.
void parse_gptq_dynamic(const json& dyn, const std::vector<std::string>& order, const std::string& where,
                        const ModelConfig& c, QuantConfig& qc) {
  if (!dyn.is_object()) fail("{}: quantization_config.dynamic must be an object of pattern: overrides", where);
  std::vector<std::string> keys;
  for (const auto& k : order)
    if (dyn.contains(k)) keys.push_back(k);
  for (const auto& [k, v] : dyn.items())
    if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
  struct Rule {
    bool negative;
    std::string pattern;
    QuantConfig cfg;
  };
  std::vector<Rule> rules;
  for (const auto& k : keys) {
    const json& v = dyn[k];
    const std::string w = fmt::format("{}: quantization_config.dynamic \"{}\"", where, k);
    if (!v.is_object()) fail("{}: the overrides must be an object", w);
    Rule r{k.rfind("-:", 0) == 0, k.rfind("-:", 0) == 0 || k.rfind("+:", 0) == 0 ? k.substr(2) : k, qc};
    r.cfg.modules.clear();
    if (r.negative) r.cfg.enabled = false;
    if (v.contains("bits")) {
      if (!v["bits"].is_number_integer()) fail("{}: bits must be an integer", w);
      const int b = v["bits"].get<int>();
      if (b != 2 && b != 3 && b != 4 && b != 8) fail("{}: bits {} is not supported (2, 3, 4 or 8)", w, b);
      if (qc.awq && b != 4) fail("{}: bits {}: AWQ's GEMM packing holds 4-bit codes", w, b);
      r.cfg.bits = b;
      r.cfg.scheme = fmt::format("w{}a16", b);
    }
    if (v.contains("llmq_zeros")) {
      if (v["llmq_zeros"] != "float" && v["llmq_zeros"] != "int") fail("{}: llmq_zeros must be \"float\" or \"int\"", w);
      r.cfg.float_zeros = v["llmq_zeros"] == "float";
    }
    if (v.contains("llmq_axis")) {
      if (v["llmq_axis"] != 0 && v["llmq_axis"] != 1) fail("{}: llmq_axis must be 0 or 1", w);
      r.cfg.hqq_axis = v["llmq_axis"].get<int>();
      if (r.cfg.hqq_axis == 0 && !r.cfg.float_zeros) fail("{}: llmq_axis 0 is HQQ's layout (llmq_zeros \"float\")", w);
    }
    if (v.contains("group_size")) {
      if (!v["group_size"].is_number_integer()) fail("{}: group_size must be an integer", w);
      const int64_t g = v["group_size"].get<int64_t>();
      const int64_t unit = r.cfg.hqq_axis == 0 ? 16 : 32;  // HQQ axis 0 groups output channels by 16s
      if (g != -1 && (g < unit || g % unit != 0 || g > (int64_t(1) << 30)))
        fail("{}: group_size {} is not supported (-1 or a multiple of {})", w, g, unit);
      r.cfg.group = g == -1 ? 0 : g;
    }
    if (r.cfg.hqq_axis == 0 && r.cfg.group == 0) fail("{}: HQQ axis 0 needs a group_size", w);
    if (v.contains("sym")) {
      if (!v["sym"].is_boolean()) fail("{}: sym must be true or false", w);
      r.cfg.sym = v["sym"].get<bool>();
    }
    if (v.contains("desc_act")) {
      if (!v["desc_act"].is_boolean()) fail("{}: desc_act must be true or false", w);
      r.cfg.desc_act = v["desc_act"].get<bool>();
    }
    if (v.contains("llmq_method") && v["llmq_method"].is_string()) r.cfg.algorithm = v["llmq_method"].get<std::string>();
    if (r.cfg.float_zeros) r.cfg.sym = false;
    rules.push_back(std::move(r));
  }
  PyRegex re(where + ": quantization_config.dynamic");
  // Patterns naming one module exactly (what llmq writes): the first rule for each name.
  std::map<std::string, size_t> exact;
  std::vector<std::string> exact_of(rules.size());
  for (size_t i = 0; i < rules.size(); i++) {
    exact_of[i] = exact_pattern_name(rules[i].pattern);
    if (!exact_of[i].empty()) exact.emplace(exact_of[i], i);
  }
  set_modules(qc, c, [&](const std::string& name) {
    const std::string module = module_of(name);
    const auto ex = exact.find(module);
    const size_t first_exact = ex != exact.end() ? ex->second : rules.size();
    for (size_t i = 0; i < first_exact; i++)  // an earlier pattern may take it first
      if (exact_of[i].empty() && re.match(rules[i].pattern, module)) {
        QuantConfig q = rules[i].cfg;
        q.lm_head = qc.lm_head;
        return q;
      }
    if (first_exact < rules.size()) {
      QuantConfig q = rules[first_exact].cfg;
      q.lm_head = qc.lm_head;
      return q;
    }
    return qc;
  });
}
}  // namespace

namespace {
// dyn_order: the keys of quantization_config.dynamic in the file's order (json objects sort
// their keys; GPTQModel's first match depends on the order written).
ModelConfig hf_json_config(const json& j, const std::string& where, const std::vector<std::string>& dyn_order) {
  require_object(j, where);
  Reader r{j, where};
  if (r.has("model_type") && j["model_type"] != "llama")
    fail("{}: model_type {} is not supported (llmq runs \"llama\")", where, j["model_type"].dump());
  if (r.boolean_or("attention_bias", false) || r.boolean_or("mlp_bias", false))
    fail("{}: attention_bias/mlp_bias are not supported (Llama has no biases)", where);
  if (r.has("hidden_act") && j["hidden_act"] != "silu")
    fail("{}: hidden_act {} is not supported (expected \"silu\")", where, j["hidden_act"].dump());
  ModelConfig c;
  c.dim = r.integer("hidden_size");
  c.n_layers = r.integer("num_hidden_layers");
  c.n_heads = r.integer("num_attention_heads");
  c.n_kv_heads = r.integer_or("num_key_value_heads", c.n_heads);
  c.ffn_dim = r.integer("intermediate_size");
  c.vocab_size = r.integer("vocab_size");
  c.max_seq_len = r.integer_or("max_position_embeddings", 2048);
  c.norm_eps = r.number_or("rms_norm_eps", 1e-6);
  c.rope_theta = r.number_or("rope_theta", 10000.0);
  c.tie_embeddings = r.boolean_or("tie_word_embeddings", false);
  if (c.n_heads <= 0) fail("{}: num_attention_heads must be positive", where);
  c.head_dim = r.integer_or("head_dim", c.dim / c.n_heads);
  c.bos_token_ids = r.ids("bos_token_id");
  c.eos_token_ids = r.ids("eos_token_id");
  if (r.has("torch_dtype")) {
    if (!j["torch_dtype"].is_string()) fail("{}: torch_dtype must be a string", where);
    try {
      c.dtype = dtype_parse(j["torch_dtype"].get<std::string>());
    } catch (const Error& e) {
      fail("{}: torch_dtype: {}", where, e.what());
    }
  }
  if (r.has("quantization_config")) {
    const json& q = j["quantization_config"];
    if (!q.is_object()) fail("{}: quantization_config must be an object", where);
    const std::string method = q.contains("quant_method") && q["quant_method"].is_string()
                                   ? q["quant_method"].get<std::string>() : std::string();
    if (method == "compressed-tensors") {
      try {
        parse_ct_config(q, where, c, c.quant);
      } catch (const json::exception& e) {
        fail("{}: quantization_config: {}", where, e.what());
      }
    } else if (method == "fp8") {  // vLLM's fp8: E4M3 weights with one scale per tensor
      const std::string as = q.value("activation_scheme", std::string("dynamic"));
      if (as != "dynamic" && as != "static")
        fail("{}: quantization_config.activation_scheme \"{}\" (dynamic or static expected)", where, as);
      QuantConfig& qc = c.quant;
      qc.enabled = qc.fp8 = true;
      qc.bits = 8, qc.group = 0, qc.sym = true, qc.scheme = "fp8", qc.zeros_minus_one = false;
      qc.act_static = as == "static";
      qc.weight_per_tensor = true;
      qc.act_per_token = false;
      qc.lm_head = false;
    } else if (method == "hqq") {
      if (q.value("checkpoint_format", std::string()) != "llmq")
        fail("{}: quantization_config: HQQ checkpoints are read in llmq's layout only (checkpoint_format \"llmq\": "
             "GPTQ packing with float zeros); this one is the hqq library's",
             where);
      c.quant.float_zeros = true;
      const json ax = q.value("axis", json(1));
      if (!ax.is_number_integer() || (ax.get<int64_t>() != 0 && ax.get<int64_t>() != 1))
        fail("{}: quantization_config.axis {} is not supported (0 or 1)", where, ax.dump());
      c.quant.hqq_axis = (int)ax.get<int64_t>();
    } else if (method == "awq") {
      // AutoAWQ's GEMM checkpoints (what vLLM and transformers load as "awq").
      std::string version = q.value("version", std::string("gemm"));
      std::transform(version.begin(), version.end(), version.begin(), [](unsigned char ch) { return (char)std::tolower(ch); });
      if (version != "gemm")
        fail("{}: quantization_config.version \"{}\": llmq reads AWQ's \"gemm\" packing only (gemv and exllama "
             "variants are other layouts)", where, version);
      if (!q.value("zero_point", true))
        fail("{}: quantization_config.zero_point false: llmq reads AWQ checkpoints with zero points (the default)", where);
      c.quant.awq = true;
    } else if (method != "gptq") {
      fail("{}: quantization_config.quant_method {} is not supported (llmq reads \"gptq\" and \"awq\" checkpoints, llmq's \"hqq\" "
           "ones and FP8 \"compressed-tensors\" / \"fp8\" ones)",
           where, q.contains("quant_method") ? q["quant_method"].dump() : "(missing)");
    }
  }
  if (r.has("quantization_config") && !c.quant.fp8 && c.quant.ct_int.empty()) {
    const json& q = j["quantization_config"];
    Reader rq{q, where};
    QuantConfig& qc = c.quant;
    qc.enabled = true;
    qc.bits = (int)(qc.awq && !q.contains("bits") ? rq.integer("w_bit") : rq.integer("bits"));
    if (qc.bits != 2 && qc.bits != 3 && qc.bits != 4 && qc.bits != 8)
      fail("{}: quantization_config.bits {} is not supported (2, 3, 4 or 8)", where, qc.bits);
    if (qc.awq && qc.bits != 4) fail("{}: quantization_config.bits {}: AWQ's GEMM packing holds 4-bit codes", where, qc.bits);
    const int64_t g = qc.awq && !q.contains("group_size") ? rq.integer_or("q_group_size", -1) : rq.integer_or("group_size", -1);
    const int64_t unit = qc.float_zeros && qc.hqq_axis == 0 ? 16 : 32;  // HQQ axis 0: output channels by 16s
    if (g != -1 && (g < unit || g % unit != 0 || g > (int64_t(1) << 30)))
      fail("{}: quantization_config.group_size {} is not supported (-1 or a multiple of {})", where, g, unit);
    qc.group = g == -1 ? 0 : g;
    qc.sym = qc.awq ? false : rq.boolean_or("sym", true);  // AWQ: zero points always
    qc.desc_act = rq.boolean_or("desc_act", false);
    qc.lm_head = rq.boolean_or("lm_head", false);
    const std::string fmt_name = q.value("checkpoint_format", std::string("gptq"));
    if (fmt_name != "gptq" && fmt_name != "gptq_v2" && !(qc.float_zeros && fmt_name == "llmq"))
      fail("{}: quantization_config.checkpoint_format \"{}\" is not supported (gptq or gptq_v2)", where, fmt_name);
    qc.zeros_minus_one = fmt_name == "gptq" && !qc.awq;  // AWQ stores the zero points as they are
    if (qc.awq) qc.algorithm = "awq";
    qc.scheme = fmt::format("w{}a16", qc.bits);
    if (q.contains("llmq") && q["llmq"].is_object()) {
      const json& l = q["llmq"];
      if (l.contains("scheme") && l["scheme"].is_string()) qc.scheme = l["scheme"].get<std::string>();
      if (l.contains("algorithm") && l["algorithm"].is_string()) qc.algorithm = l["algorithm"].get<std::string>();
      // The stated scheme must be what the tensors are: its weight bits are quantization_config's
      // bits (which the qweight shapes are checked against), and only 8-bit weights pair with
      // 8-bit activations; a w8a8 label on a 4-bit file would silently quantize activations.
      const std::string want16 = fmt::format("w{}a16", qc.bits);
      if (qc.scheme != want16 && !(qc.scheme == "w8a8" && qc.bits == 8) && !(qc.scheme == "w4a8" && qc.bits == 4) &&
          !(qc.scheme == "w2a16" && qc.bits == 3 && qc.algorithm == "qat"))  // QAT's 2-bit levels on a 3-bit grid
        fail("{}: quantization_config.llmq.scheme \"{}\" contradicts bits {} (the tensors hold {}-bit codes: {} expected{})",
             where, qc.scheme, qc.bits, qc.bits, want16, qc.bits == 8 ? " or w8a8" : qc.bits == 4 ? " or w4a8" : "");
      qc.act_per_token = qc.scheme == "w8a8" || qc.scheme == "w4a8";
      if (l.contains("quantizer")) {
        if (l["quantizer"] != "llm-qat")
          fail("{}: quantization_config.llmq.quantizer {} is not supported (\"llm-qat\" or none)", where, l["quantizer"].dump());
        if (qc.act_per_token) qc.act_eps = 1e-6f;
        else qc.act_float = true;
      }
      if (l.contains("act") && l["act"] == "tensor" && qc.scheme == "w8a8") qc.act_per_tensor = true, qc.act_per_token = false;
    }
    if (q.contains("dynamic") && !q["dynamic"].is_null()) {
      if (qc.act_per_token || qc.act_per_tensor || qc.act_eps > 0 || qc.act_float)
        fail("{}: quantization_config.dynamic: per-module overrides are read for weight-only schemes (this is {})", where,
             qc.scheme);
      parse_gptq_dynamic(q["dynamic"], dyn_order, where, c, qc);
    }
  }
  if (r.has("quantization_config") && j["quantization_config"].contains("kv_cache_scheme") &&
      !j["quantization_config"]["kv_cache_scheme"].is_null()) {
    const json& k = j["quantization_config"]["kv_cache_scheme"];
    if (!k.is_object()) fail("{}: quantization_config.kv_cache_scheme must be an object or null", where);
    const std::string type = k.value("type", std::string());
    const json nb = k.value("num_bits", json(0));
    if (k.value("dynamic", false) == true && type == "int" && (nb == 4 || nb == 8)) {
      // A QAT model's cache: quantized per token and KV head as it is stored, as trained.
      strategy_one_of(k, "kv_cache_scheme", "token", "token", where);
      c.quant.kv_cache = nb == 4 ? "int4" : "int8";
      c.quant.kv_dynamic = true;
    } else if (nb != 8 || (type != "int" && type != "float")) {
      fail("{}: quantization_config.kv_cache_scheme: only 8-bit \"int\" or \"float\" (E4M3) caches with static scales, "
           "or dynamic 4- and 8-bit \"int\" ones per token, are supported", where);
    } else if (k.value("dynamic", false))
      fail("{}: quantization_config.kv_cache_scheme.dynamic true: llmq computes dynamic KV scales itself "
           "(--kv-cache int8|fp8); a checkpoint's scheme must be static",
           where);
    if (!c.quant.kv_dynamic) {
      strategy_one_of(k, "kv_cache_scheme", "attn_head", "tensor", where);
      c.quant.kv_cache = type == "int" ? "int8" : "fp8";
    }
  }
  if (r.has("rope_scaling")) {
    const json& s = j["rope_scaling"];
    if (!s.is_object()) fail("{}: rope_scaling must be an object or null", where);
    std::string type = s.value("rope_type", s.value("type", std::string("default")));
    if (type == "llama3") {
      Reader rs{s, where};
      c.rope_scaling.enabled = true;
      c.rope_scaling.factor = rs.number_or("factor", 8.0);
      c.rope_scaling.low_freq_factor = rs.number_or("low_freq_factor", 1.0);
      c.rope_scaling.high_freq_factor = rs.number_or("high_freq_factor", 4.0);
      c.rope_scaling.original_max_position = rs.integer_or("original_max_position_embeddings", 8192);
    } else if (type != "default") {
      fail("{}: rope_scaling type \"{}\" is not supported (only \"llama3\")", where, type);
    }
  }
  c.validate(where);
  return c;
}
}  // namespace

ModelConfig config_from_hf_json(const json& j, const std::string& where) { return hf_json_config(j, where, {}); }

ModelConfig config_from_meta_params(const json& j, const std::string& where) {
  require_object(j, where);
  Reader r{j, where};
  ModelConfig c;
  c.dim = r.integer("dim");
  c.n_layers = r.integer("n_layers");
  c.n_heads = r.integer("n_heads");
  c.n_kv_heads = r.integer_or("n_kv_heads", c.n_heads);
  if (c.n_heads <= 0 || c.dim <= 0) fail("{}: dim and n_heads must be positive", where);
  c.head_dim = c.dim / c.n_heads;
  int64_t multiple_of = r.integer_or("multiple_of", 256);
  if (multiple_of <= 0 || multiple_of > (1 << 20)) fail("{}: multiple_of must be in 1..2^20", where);
  if (c.dim > (int64_t(1) << 24)) fail("{}: dim too large", where);
  c.ffn_dim = meta_ffn_dim(c.dim, multiple_of, r.number_or("ffn_dim_multiplier", 0.0));
  c.vocab_size = r.integer("vocab_size");
  if (c.vocab_size < 0) fail("{}: vocab_size is {}: set it (Meta writes -1 when the tokenizer decides)", where, c.vocab_size);
  c.norm_eps = r.number_or("norm_eps", 1e-5);
  c.rope_theta = r.number_or("rope_theta", 10000.0);
  c.max_seq_len = r.integer_or("max_seq_len", 8192);
  if (r.boolean_or("use_scaled_rope", false)) {
    c.rope_scaling.enabled = true;
    c.rope_scaling.factor = r.number_or("rope_scaling_factor", 8.0);  // Meta's default scale_factor
    c.max_seq_len = std::max<int64_t>(c.max_seq_len, 131072);
  }
  c.dtype = DType::BF16;
  c.validate(where);
  return c;
}

ModelConfig config_parse(const std::string& text, const std::string& where) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) fail("{}: malformed JSON", where);
  require_object(j, where);
  try {
    if (j.contains("hidden_size")) {
      std::vector<std::string> order;
      if (j.contains("quantization_config") && j["quantization_config"].is_object() &&
          j["quantization_config"].contains("dynamic")) {
        const nlohmann::ordered_json o = nlohmann::ordered_json::parse(text, nullptr, false);
        if (!o.is_discarded() && o.at("quantization_config").at("dynamic").is_object())
          for (const auto& [k, v] : o.at("quantization_config").at("dynamic").items()) order.push_back(k);
      }
      return hf_json_config(j, where, order);
    }
    if (j.contains("dim")) return config_from_meta_params(j, where);
  } catch (const json::exception& e) {
    fail("{}: a field has the wrong JSON type ({})", where, e.what());
  }
  fail("{}: neither a Hugging Face config.json (hidden_size) nor a Meta params.json (dim)", where);
}

ModelConfig config_load(const std::string& path) { return config_parse(read_text_file(path), path); }

json config_to_hf_json(const ModelConfig& c) {
  json j = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"hidden_size", c.dim},
      {"intermediate_size", c.ffn_dim},
      {"num_hidden_layers", c.n_layers},
      {"num_attention_heads", c.n_heads},
      {"num_key_value_heads", c.n_kv_heads},
      {"head_dim", c.head_dim},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_seq_len},
      {"rms_norm_eps", c.norm_eps},
      {"rope_theta", c.rope_theta},
      {"tie_word_embeddings", c.tie_embeddings},
      {"hidden_act", "silu"},
      {"attention_bias", false},
      {"mlp_bias", false},
      {"torch_dtype", c.dtype == DType::BF16 ? "bfloat16" : c.dtype == DType::F16 ? "float16" : "float32"},
  };
  auto ids = [](const std::vector<int64_t>& v) -> json {
    if (v.empty()) return nullptr;
    if (v.size() == 1) return v[0];
    return v;
  };
  j["bos_token_id"] = ids(c.bos_token_ids);
  j["eos_token_id"] = ids(c.eos_token_ids);
  if (c.quant.enabled && (c.quant.fp8 || !c.quant.ct_int.empty())) {
    // compressed-tensors: one group per scheme. A single scheme targets "Linear"; a mix names
    // every module in exactly one group (no precedence between groups to get wrong), and
    // "ignore" names the linears left in float.
    const QuantConfig& q = c.quant;
    auto group_json = [](const QuantConfig& g) -> json {
      if (g.fp8)
        return {{"weights",
                 {{"num_bits", 8}, {"type", "float"}, {"strategy", g.weight_per_tensor ? "tensor" : "channel"},
                  {"symmetric", true}, {"dynamic", false}}},
                {"input_activations",
                 {{"num_bits", 8}, {"type", "float"}, {"strategy", g.act_per_token ? "token" : "tensor"},
                  {"symmetric", true}, {"dynamic", !g.act_static}}}};
      json weights = {{"num_bits", g.bits}, {"type", "int"}, {"symmetric", g.sym},
                      {"strategy", g.group ? "group" : "channel"}, {"group_size", g.group ? json(g.group) : json(nullptr)},
                      {"dynamic", false}, {"actorder", nullptr}, {"observer", "minmax"}};
      json acts = g.act_per_token ? json{{"num_bits", 8}, {"type", "int"}, {"symmetric", true}, {"strategy", "token"},
                                         {"dynamic", true}, {"observer", nullptr}}
                                  : json(nullptr);
      return {{"weights", weights}, {"input_activations", acts}, {"output_activations", nullptr}};
    };
    auto format_of = [](const QuantConfig& g) { return g.fp8 ? std::string("float-quantized") : g.ct_int; };
    json groups = json::object(), ignore = json::array();
    std::string format = format_of(q);
    if (q.modules.empty()) {
      json g = group_json(q);
      g["targets"] = {"Linear"};
      groups["group_0"] = g;
      if (!q.lm_head) ignore.push_back("lm_head");
    } else {
      std::vector<std::pair<const QuantConfig*, json>> by_scheme;  // scheme -> target names
      for (const std::string& name : quant_linear_names(c)) {
        const QuantConfig& m = q.of(name);
        const std::string module = name.substr(0, name.size() - 7);
        if (!q.quantizes(name)) {
          ignore.push_back(module);
          continue;
        }
        auto it = std::find_if(by_scheme.begin(), by_scheme.end(), [&](const auto& e) {
          QuantConfig a = *e.first, b = m;
          a.lm_head = b.lm_head = false;
          return quant_same_linear(a, b);
        });
        if (it == by_scheme.end()) by_scheme.push_back({&m, json::array()}), it = by_scheme.end() - 1;
        it->second.push_back(module);
      }
      for (size_t i = 0; i < by_scheme.size(); i++) {
        json g = group_json(*by_scheme[i].first);
        g["targets"] = by_scheme[i].second;
        if (format_of(*by_scheme[i].first) != format) format = "mixed-precision";
        groups[fmt::format("group_{}", i)] = g;
      }
      if (format == "mixed-precision")
        for (size_t i = 0; i < by_scheme.size(); i++) groups[fmt::format("group_{}", i)]["format"] = format_of(*by_scheme[i].first);
    }
    j["quantization_config"] = {{"quant_method", "compressed-tensors"},
                                {"format", format},
                                {"quantization_status", "compressed"},
                                {"config_groups", groups},
                                {"ignore", ignore},
                                {"llmq", {{"scheme", q.scheme}, {"algorithm", q.algorithm}}}};
  } else if (c.quant.enabled && c.quant.float_zeros) {
    const QuantConfig& q = c.quant;
    j["quantization_config"] = {{"quant_method", "hqq"},
                                {"checkpoint_format", "llmq"},
                                {"bits", q.bits},
                                {"group_size", q.group ? q.group : -1},
                                {"axis", q.hqq_axis},
                                {"sym", false},
                                {"lm_head", q.quantizes("lm_head.weight")},
                                {"llmq", {{"scheme", q.scheme}, {"algorithm", q.algorithm}}}};
  } else if (c.quant.enabled) {
    const QuantConfig& q = c.quant;
    j["quantization_config"] = {{"quant_method", "gptq"},
                                {"bits", q.bits},
                                {"group_size", q.group ? q.group : -1},
                                {"sym", q.sym},
                                {"desc_act", q.desc_act},
                                {"lm_head", q.quantizes("lm_head.weight")},
                                {"checkpoint_format", q.zeros_minus_one ? "gptq" : "gptq_v2"},
                                {"llmq", {{"scheme", q.scheme}, {"algorithm", q.algorithm}}}};
    if (q.act_per_tensor) j["quantization_config"]["llmq"]["act"] = "tensor";
    if (q.act_eps > 0 || q.act_float) j["quantization_config"]["llmq"]["quantizer"] = "llm-qat";
  }
  if (c.quant.enabled && !c.quant.fp8 && c.quant.ct_int.empty() && !c.quant.modules.empty()) {
    // GPTQModel's per-module overrides, one anchored pattern per module that differs from the
    // base (no pattern matches two modules, so the order of the keys cannot matter).
    const QuantConfig& q = c.quant;
    json dyn = json::object();
    for (const auto& [name, m] : q.modules) {
      std::string pat = "^";
      for (char ch : name.substr(0, name.size() - 7)) pat += ch == '.' ? std::string("\\.") : std::string(1, ch);
      pat += "$";
      if (!q.quantizes(name)) {
        if (name != "lm_head.weight") dyn["-:" + pat] = json::object();  // lm_head: the top-level flag
        continue;
      }
      json v = {{"bits", m.bits}, {"group_size", m.group ? m.group : -1}, {"sym", m.sym}, {"desc_act", m.desc_act}};
      if (m.float_zeros != q.float_zeros) v["llmq_zeros"] = m.float_zeros ? "float" : "int";
      if (m.hqq_axis != q.hqq_axis || (m.float_zeros && m.hqq_axis == 0)) v["llmq_axis"] = m.hqq_axis;
      if (m.algorithm != q.algorithm) v["llmq_method"] = m.algorithm;
      dyn["+:" + pat] = v;
    }
    j["quantization_config"]["dynamic"] = dyn;
  }
  if (c.quant.enabled && c.quant.kv_dynamic)
    j["quantization_config"]["kv_cache_scheme"] = {{"num_bits", c.quant.kv_cache == "int4" ? 4 : 8},
                                                   {"type", "int"},
                                                   {"strategy", "token"},
                                                   {"symmetric", true},
                                                   {"dynamic", true}};
  else if (c.quant.enabled && !c.quant.kv_cache.empty())
    j["quantization_config"]["kv_cache_scheme"] = {{"num_bits", 8},
                                                   {"type", c.quant.kv_cache == "int8" ? "int" : "float"},
                                                   {"strategy", "attn_head"},
                                                   {"symmetric", true},
                                                   {"dynamic", false}};
  if (c.rope_scaling.enabled) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  return j;
}

namespace {
struct Preset {
  const char* name;
  const char* about;
  int64_t dim, n_layers, n_heads, n_kv_heads, vocab, multiple_of;
  double ffn_mult;
  bool tied;
  double rope_factor;  // 0: no llama3 rope scaling
  int64_t max_seq;
};
// Llama 3 numbers from Meta's params.json files; the 3.1 models add rope scaling factor 8,
// the 3.2 ones factor 32. The tiny presets keep every feature (GQA, scaling, tying) small.
constexpr Preset kPresets[] = {
    {"llama3-8b", "Llama 3 8B", 4096, 32, 32, 8, 128256, 1024, 1.3, false, 0, 8192},
    {"llama3-70b", "Llama 3 70B", 8192, 80, 64, 8, 128256, 4096, 1.3, false, 0, 8192},
    {"llama3.1-8b", "Llama 3.1 8B", 4096, 32, 32, 8, 128256, 1024, 1.3, false, 8, 131072},
    {"llama3.1-70b", "Llama 3.1 70B", 8192, 80, 64, 8, 128256, 4096, 1.3, false, 8, 131072},
    {"llama3-405b", "Llama 3.1 405B", 16384, 126, 128, 8, 128256, 4096, 1.2, false, 8, 131072},
    {"llama3.2-1b", "Llama 3.2 1B", 2048, 16, 32, 8, 128256, 256, 1.5, true, 32, 131072},
    {"llama3.2-3b", "Llama 3.2 3B", 3072, 28, 24, 8, 128256, 256, 1.0, true, 32, 131072},
    {"tiny", "test model: GQA, untied, 2 layers", 64, 2, 4, 2, 512, 32, 0, false, 0, 256},
    {"tiny-tied", "test model: GQA, tied, rope scaling", 64, 2, 4, 1, 512, 32, 0, true, 4, 256},
    {"small", "a ~20M-parameter model for training on this machine", 384, 6, 6, 2, 8192, 64, 0, false, 0, 1024},
};
}  // namespace

std::vector<std::string> config_preset_names() {
  std::vector<std::string> v;
  for (const auto& p : kPresets) v.push_back(p.name);
  return v;
}

ModelConfig config_preset(const std::string& name) {
  for (const auto& p : kPresets) {
    if (name != p.name) continue;
    ModelConfig c;
    c.dim = p.dim;
    c.n_layers = p.n_layers;
    c.n_heads = p.n_heads;
    c.n_kv_heads = p.n_kv_heads;
    c.head_dim = p.dim / p.n_heads;
    c.ffn_dim = meta_ffn_dim(p.dim, p.multiple_of, p.ffn_mult);
    c.vocab_size = p.vocab;
    c.max_seq_len = p.max_seq;
    c.norm_eps = 1e-5;
    c.rope_theta = 500000.0;
    c.tie_embeddings = p.tied;
    if (p.rope_factor > 0) {
      c.rope_scaling.enabled = true;
      c.rope_scaling.factor = p.rope_factor;
      c.rope_scaling.original_max_position = p.vocab > 100000 ? 8192 : 64;
    }
    if (p.vocab == 128256) {
      c.bos_token_ids = {128000};
      c.eos_token_ids = {128001, 128008, 128009};  // <|end_of_text|>, <|eom_id|>, <|eot_id|>
    } else {
      c.bos_token_ids = {1};
      c.eos_token_ids = {2};
    }
    c.validate("preset " + name);
    return c;
  }
  std::string all;
  for (const auto& p : kPresets) all += std::string(all.empty() ? "" : ", ") + p.name;
  fail("unknown preset '{}' (choose one of: {})", name, all);
}

std::vector<double> rope_frequencies(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<double> f(half);
  const auto& s = c.rope_scaling;
  for (int64_t i = 0; i < half; i++) {
    double freq = 1.0 / std::pow(c.rope_theta, (double)(2 * i) / (double)c.head_dim);
    if (s.enabled) {
      const double kPi = 3.14159265358979323846;
      double low_wavelen = (double)s.original_max_position / s.low_freq_factor;
      double high_wavelen = (double)s.original_max_position / s.high_freq_factor;
      double wavelen = 2 * kPi / freq;
      if (wavelen < high_wavelen) {
        // high frequency: unchanged
      } else if (wavelen > low_wavelen) {
        freq = freq / s.factor;
      } else {
        double smooth = ((double)s.original_max_position / wavelen - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
        freq = (1 - smooth) * freq / s.factor + smooth * freq;
      }
    }
    f[i] = freq;
  }
  return f;
}

}  // namespace llmq
