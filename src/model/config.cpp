// Config parsing, validation and the built-in presets (Meta's published hyperparameters).
#include "model/config.h"

#include <algorithm>
#include <cctype>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"

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

// compressed-tensors: the one config group llmq reads (several, per-module mixes, are not
// read yet), with its "weights"; and whether "ignore" keeps lm_head in float.
const json& ct_single_group(const json& q, const std::string& where) {
  if (!q.contains("config_groups") || !q["config_groups"].is_object() || q["config_groups"].size() != 1)
    fail("{}: quantization_config.config_groups must hold exactly one group (per-module mixes are not read yet)", where);
  const json& g = q["config_groups"].begin().value();
  if (!g.is_object() || !g.contains("weights") || !g["weights"].is_object())
    fail("{}: quantization_config.config_groups: a group without \"weights\"", where);
  return g;
}
bool ct_ignores_lm_head(const json& q) {
  if (q.contains("ignore") && q["ignore"].is_array())
    for (const auto& e : q["ignore"])
      if (e.is_string() && e.get<std::string>() == "lm_head") return true;
  return false;
}

void parse_fp8_config(const json& q, const std::string& where, QuantConfig& qc) {
  qc.enabled = true;
  qc.fp8 = true;
  qc.bits = 8;
  qc.group = 0;
  qc.sym = true;
  qc.scheme = "fp8";
  qc.zeros_minus_one = false;
  if (q.value("quant_method", std::string()) == "fp8") {
    const std::string as = q.value("activation_scheme", std::string("dynamic"));
    if (as != "dynamic" && as != "static")
      fail("{}: quantization_config.activation_scheme \"{}\" (dynamic or static expected)", where, as);
    qc.act_static = as == "static";
    qc.weight_per_tensor = true;
    qc.act_per_token = false;
    qc.lm_head = false;
    return;
  }
  if (q.value("format", std::string()) != "float-quantized")
    fail("{}: quantization_config.format {} is not supported (llmq reads compressed-tensors \"float-quantized\" FP8, "
         "\"pack-quantized\" and \"int-quantized\")",
         where, q.contains("format") ? q["format"].dump() : "(missing)");
  const json& g = ct_single_group(q, where);
  const json& w = g["weights"];
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
  qc.lm_head = !ct_ignores_lm_head(q);
}
// compressed-tensors integer formats (llm-compressor's W4A16 / W8A16 "pack-quantized" and
// W8A8 "int-quantized"): one config group of int weights per group or per channel, and
// either no activation quantization or int8 per token, dynamic, symmetric.
void parse_ct_int_config(const json& q, const std::string& format, const std::string& where, QuantConfig& qc) {
  qc.enabled = true;
  qc.ct_int = format;
  qc.zeros_minus_one = false;
  qc.algorithm = "llm-compressor";
  const json& g = ct_single_group(q, where);
  const json& w = g["weights"];
  if (w.value("type", std::string()) != "int") fail("{}: quantization_config weights must be \"int\" for {}", where, format);
  const json nb = w.value("num_bits", json(0));
  if (!nb.is_number_integer() || (nb.get<int>() != 4 && nb.get<int>() != 8) || (format != "pack-quantized" && nb.get<int>() != 8))
    fail("{}: quantization_config weights num_bits {} is not supported ({}: {})", where, nb.dump(), format,
         format == "pack-quantized" ? "4 or 8" : "8");
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
  if (!qc.sym && format != "pack-quantized")
    fail("{}: asymmetric {} weights are not supported (llm-compressor writes them symmetric)", where, format);
  if (w.contains("actorder") && !w["actorder"].is_null() && w["actorder"] != false)
    fail("{}: quantization_config weights actorder {} is not supported (weight_g_idx)", where, w["actorder"].dump());
  qc.scheme = fmt::format("w{}a16", qc.bits);
  if (g.contains("input_activations") && !g["input_activations"].is_null()) {
    const json& a = g["input_activations"];
    if (!a.is_object() || a.value("type", std::string()) != "int" || a.value("num_bits", 0) != 8 ||
        a.value("strategy", std::string()) != "token" || !a.value("dynamic", false) || !a.value("symmetric", true) || qc.bits != 8)
      fail("{}: quantization_config input_activations: llmq runs int8 weights with int8 activations per token, dynamic, "
           "symmetric (W8A8); this is {}", where, a.dump());
    qc.scheme = "w8a8";
    qc.act_per_token = true;
  }
  qc.lm_head = !ct_ignores_lm_head(q);
}
}  // namespace

ModelConfig config_from_hf_json(const json& j, const std::string& where) {
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
    const std::string ct_format = q.value("format", std::string());
    if (method == "compressed-tensors" && (ct_format == "pack-quantized" || ct_format == "int-quantized" ||
                                           ct_format == "naive-quantized")) {
      try {
        parse_ct_int_config(q, ct_format == "pack-quantized" ? ct_format : "int-quantized", where, c.quant);
      } catch (const json::exception& e) {
        fail("{}: quantization_config: {}", where, e.what());
      }
    } else if (method == "compressed-tensors" || method == "fp8") {
      try {
        parse_fp8_config(q, where, c.quant);
      } catch (const json::exception& e) {
        fail("{}: quantization_config: {}", where, e.what());
      }
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
    if (g != -1 && (g < 32 || g % 32 != 0 || g > (int64_t(1) << 30)))
      fail("{}: quantization_config.group_size {} is not supported (-1 or a multiple of 32)", where, g);
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
    if (j.contains("hidden_size")) return config_from_hf_json(j, where);
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
  if (c.quant.enabled && c.quant.fp8) {
    const QuantConfig& q = c.quant;
    json group = {{"targets", {"Linear"}},
                  {"weights",
                   {{"num_bits", 8}, {"type", "float"}, {"strategy", q.weight_per_tensor ? "tensor" : "channel"},
                    {"symmetric", true}, {"dynamic", false}}},
                  {"input_activations",
                   {{"num_bits", 8}, {"type", "float"}, {"strategy", q.act_per_token ? "token" : "tensor"},
                    {"symmetric", true}, {"dynamic", !q.act_static}}}};
    j["quantization_config"] = {{"quant_method", "compressed-tensors"},
                                {"format", "float-quantized"},
                                {"quantization_status", "compressed"},
                                {"config_groups", {{"group_0", group}}},
                                {"ignore", q.lm_head ? json::array() : json::array({"lm_head"})},
                                {"llmq", {{"scheme", q.scheme}, {"algorithm", q.algorithm}}}};
  } else if (c.quant.enabled && !c.quant.ct_int.empty()) {
    const QuantConfig& q = c.quant;
    json weights = {{"num_bits", q.bits}, {"type", "int"}, {"symmetric", q.sym},
                    {"strategy", q.group ? "group" : "channel"}, {"group_size", q.group ? json(q.group) : json(nullptr)},
                    {"dynamic", false}, {"actorder", nullptr}, {"observer", "minmax"}};
    json acts = q.act_per_token ? json{{"num_bits", 8}, {"type", "int"}, {"symmetric", true}, {"strategy", "token"},
                                       {"dynamic", true}, {"observer", nullptr}}
                                : json(nullptr);
    j["quantization_config"] = {{"quant_method", "compressed-tensors"},
                                {"format", q.ct_int},
                                {"quantization_status", "compressed"},
                                {"config_groups", {{"group_0", {{"targets", {"Linear"}}, {"weights", weights},
                                                                {"input_activations", acts},
                                                                {"output_activations", nullptr}}}}},
                                {"ignore", q.lm_head ? json::array() : json::array({"lm_head"})},
                                {"llmq", {{"scheme", q.scheme}, {"algorithm", q.algorithm}}}};
  } else if (c.quant.enabled && c.quant.float_zeros) {
    const QuantConfig& q = c.quant;
    j["quantization_config"] = {{"quant_method", "hqq"},
                                {"checkpoint_format", "llmq"},
                                {"bits", q.bits},
                                {"group_size", q.group ? q.group : -1},
                                {"axis", q.hqq_axis},
                                {"sym", false},
                                {"lm_head", q.lm_head},
                                {"llmq", {{"scheme", q.scheme}, {"algorithm", q.algorithm}}}};
  } else if (c.quant.enabled) {
    const QuantConfig& q = c.quant;
    j["quantization_config"] = {{"quant_method", "gptq"},
                                {"bits", q.bits},
                                {"group_size", q.group ? q.group : -1},
                                {"sym", q.sym},
                                {"desc_act", q.desc_act},
                                {"lm_head", q.lm_head},
                                {"checkpoint_format", q.zeros_minus_one ? "gptq" : "gptq_v2"},
                                {"llmq", {{"scheme", q.scheme}, {"algorithm", q.algorithm}}}};
    if (q.act_per_tensor) j["quantization_config"]["llmq"]["act"] = "tensor";
    if (q.act_eps > 0 || q.act_float) j["quantization_config"]["llmq"]["quantizer"] = "llm-qat";
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
