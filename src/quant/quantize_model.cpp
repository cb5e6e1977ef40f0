// Streaming round-to-nearest quantization of a model directory into the GPTQ layout.
#include "quant/quantize_model.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/file_util.h"
#include "core/progress.h"
#include "io/hf_dir.h"
#include "io/safetensors.h"
#include "quant/calibrated.h"
#include "train/qat.h"
#include "quant/gptq_format.h"
#include "quant/hqq.h"
#include "quant/quant.h"
#include "quant/recipe.h"

namespace llmq {

namespace fs = std::filesystem;

namespace {

float elem_f32(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::F32: return t.host<float>()[i];
    case DType::BF16: return bf16_to_f32(t.host<uint16_t>()[i]);
    case DType::F16: return f16_to_f32(t.host<uint16_t>()[i]);
    default: fail("quantize: source dtype {} is not a float type", dtype_name(t.dtype()));
  }
}

// One output tensor of the quantized directory.
struct OutTensor {
  std::string name;
  DType dtype;
  Shape shape;
  std::string linear;  // the HF name of the linear it comes from (quantized parts), else ""
  Tensor source;       // float tensors: the source tensor
};

struct QuantizedLinear {
  std::string name;
  std::vector<int32_t> qweight, qzeros, g_idx;
  std::vector<uint16_t> scales, zeros;  // zeros: HQQ's float zero points, f16 (ng, M)
  std::vector<float> scales32;          // QAT: f32 scales (ng, M)
  std::vector<uint8_t> fp8;        // fp8: E4M3 bytes (M, K)
  std::vector<float> fp8_scale;    // fp8: (M) or (1)
  float input_scale = 0;           // fp8 static: calibrated amax / 448
  // compressed-tensors integer layouts (quant/gptq_format.h ct_*): weight_packed (M, K*bits/32),
  // weight_zero_point (M*bits/32, ng), int8 .weight (M, K), f16 weight_scale (M, ng).
  std::vector<int32_t> ct_packed, ct_zp, ct_shape;
  std::vector<int8_t> ct_i8;
  std::vector<uint16_t> ct_scale;
};

// The block index of "model.layers.N....", n_layers for tensors after the blocks, -1 before.
int64_t block_of(const std::string& name, int64_t n_layers) {
  const std::string p = "model.layers.";
  if (name.rfind(p, 0) == 0) return std::stoll(name.substr(p.size()));
  return name == "model.embed_tokens.weight" ? -1 : n_layers;
}

// How one linear is quantized.
struct LinearPlan;
LinearCodes plain_codes(const LinearPlan& pl, const Tensor& s);
struct LinearPlan {
  bool quantized = false;
  QuantScheme sc;      // bits, group, sym (and the whole-model scheme's activation settings)
  std::string method;  // rtn | hqq | gptq | awq | smoothquant | qat
  int axis = 1;        // HQQ's axis
  std::string rule;    // the recipe rule that decided it, as written ("" without a recipe)
};

// The codes of a method that needs no data (HQQ, or round-to-nearest) for weights s (any
// float dtype), 16 rows at a time for round-to-nearest (no f32 copy of the whole tensor).
LinearCodes plain_codes(const LinearPlan& pl, const Tensor& s) {
  const int64_t M = s.dim(0), K = s.dim(1), G = pl.sc.group ? pl.sc.group : K, ng = K / G;
  if (pl.method == "hqq") {
    const Tensor w = to_f32(s);
    HqqOptions ho;
    ho.bits = pl.sc.bits, ho.group = G, ho.axis = pl.axis;
    HqqResult r = hqq_quantize(w.host<float>(), M, K, ho);
    return {std::move(r.codes), std::move(r.scale), std::move(r.zero), {}};
  }
  LinearCodes q;
  q.codes.resize((size_t)(M * K));
  q.scale.resize((size_t)(M * ng));
  q.zero.resize((size_t)(M * ng));
  const int64_t rows_per = 16;
#pragma omp parallel
  {
    std::vector<float> buf((size_t)(rows_per * K));
#pragma omp for schedule(dynamic, 1)
    for (int64_t r0 = 0; r0 < M; r0 += rows_per) {
      const int64_t r1 = std::min(M, r0 + rows_per);
      for (int64_t i = 0; i < (r1 - r0) * K; i++) buf[i] = elem_f32(s, r0 * K + i);
      quantize_rows_rtn(buf.data(), r1 - r0, K, pl.sc.bits, G, pl.sc.sym, q.codes.data() + r0 * K,
                        q.scale.data() + r0 * ng, q.zero.data() + r0 * ng);
    }
  }
  return q;
}

// The f32 weights (M x K) that codes q of plan pl stand for.
std::vector<float> plain_dequantize(const LinearPlan& pl, const LinearCodes& q, int64_t M, int64_t K) {
  if (pl.axis == 1) return linear_codes_dequantize(q, M, K, pl.sc.group);
  // HQQ axis 0: scale/zero (M/G, K) in HQQ's group order, weight (r, c) in group (r mod M/G, c).
  const int64_t P = M / pl.sc.group;
  std::vector<float> w((size_t)(M * K));
  for (int64_t r = 0; r < M; r++)
    for (int64_t c = 0; c < K; c++) {
      const int64_t j = (r % P) * K + c;
      w[r * K + c] = q.scale[j] * ((float)q.codes[r * K + c] - q.zero[j]);
    }
  return w;
}

// Every linear's plan (quant_linear_names), checked against its shape: one scheme for all
// linears but those kept in float, or, with a recipe, the first rule matching each (lm_head
// only when a rule names it). Returns the plan of the default (the base of the written
// config; a quantized linear's if the default leaves linears in float). Prints a warning for
// every rule that decides no linear.
// One linear's plan: the one scheme (no recipe), or recipe rule r (nullptr: the default rule)
// over the default's fields over the command line's. Fails naming the rule and the linear.
LinearPlan resolve_plan(const QuantizeOptions& o, const QuantScheme& sc, const QuantRule* r, const std::string& name,
                        bool kept) {
  const QuantRecipe& rc = o.recipe;
  const QuantRule& d = rc.defaults;
  LinearPlan pl;
  if (rc.empty()) {
    pl.quantized = !kept;
    pl.sc = sc, pl.method = o.method, pl.axis = o.hqq_axis;
    return pl;
  }
  // A rule that names a scheme starts from the command line's options (the scheme's own
  // group, rtn); one that only changes options changes the default rule's.
  const QuantRule none;
  const QuantRule& b = r && !r->scheme.empty() ? none : d;
  auto pick = [](const std::string& a, const std::string& x, const std::string& z) { return !a.empty() ? a : !x.empty() ? x : z; };
  const std::string scheme = pick(r ? r->scheme : "", b.scheme, o.scheme);
  pl.method = pick(r ? r->method : "", b.method, o.method);
  int64_t group = r && r->group != -2 ? r->group : b.group != -2 ? b.group : o.group;
  const bool sym = r && r->sym >= 0 ? r->sym == 1 : b.sym >= 0 ? b.sym == 1 : o.sym;
  pl.axis = r && r->axis >= 0 ? r->axis : b.axis >= 0 ? b.axis : o.hqq_axis;
  pl.rule = r ? r->text : rc.has_default ? d.text : "default (--scheme " + o.scheme + ")";
  pl.quantized = scheme != "float" && !kept && (name != "lm_head.weight" || r);
  if (!pl.quantized) return pl;
  const std::string at = fmt::format("quantize: rule '{}' ({})", pl.rule, name);
  if (pl.method != "rtn" && pl.method != "hqq" && pl.method != "gptq" && pl.method != "awq")
    fail("{}: method {} cannot be given per module (rtn, hqq, gptq or awq)", at, pl.method);
  if (pl.method == "hqq" && sym)
    fail("{}: hqq with symmetric codes: HQQ's zero points are float (drop sym, or choose rtn/gptq)", at);
  if (pl.method != "hqq" && pl.axis != 1)
    fail("{}: axis 0 (groups along the output channels) is HQQ's layout; {} groups input channels", at, pl.method);
  if (pl.method == "hqq" && group == -1) group = 64;  // HQQ's default group
  try {
    if (pl.axis == 0) {  // HQQ axis 0: groups of output channels, by 16s
      pl.sc = quant_scheme_parse(scheme, -1, false);
      if (group <= 0 || group % 16 != 0) fail("hqq axis 0 needs a group that is a multiple of 16 (g16, g32, ...)");
      pl.sc.group = group;
    } else {
      if (group > 0 && group < 32)
        fail("group {} along the input channels: the kernels take multiples of 32 (HQQ can group output channels "
             "by 16s: add hqq:axis0)", group);
      pl.sc = quant_scheme_parse(scheme, group, sym);
    }
  } catch (const Error& e) {
    fail("{}: {}", at, e.what());
  }
  if (pl.method == "hqq") pl.sc.sym = false;
  return pl;
}

LinearPlan plan_linears(const QuantizeOptions& o, const ModelConfig& c, const QuantScheme& sc,
                        const std::function<bool(const std::string&)>& kept, std::map<std::string, LinearPlan>& plans) {
  const QuantRecipe& rc = o.recipe;
  auto resolve = [&](const QuantRule* r, const std::string& name) { return resolve_plan(o, sc, r, name, kept(name)); };
  std::vector<int64_t> decided(rc.rules.size(), 0), matched(rc.rules.size(), 0);
  for (const std::string& name : quant_linear_names(c)) {
    int ri = -1;
    for (size_t i = 0; i < rc.rules.size(); i++)
      if (recipe_rule_matches(rc.rules[i], name, c.n_layers)) {
        matched[i]++;
        if (ri < 0) ri = (int)i, decided[i]++;
      }
    plans[name] = resolve(ri >= 0 ? &rc.rules[ri] : nullptr, name);
  }
  for (size_t i = 0; i < rc.rules.size(); i++)
    if (decided[i] == 0)
      fmt::print(stderr, "warning: recipe rule '{}' ({}) {}\n", rc.rules[i].text, rc.source,
                 matched[i] == 0 ? fmt::format("matches no linear of {}", o.model)
                                 : fmt::format("decides nothing: the {} linears it matches are taken by earlier rules",
                                               matched[i]));
  LinearPlan base = resolve(nullptr, "model.layers.0.self_attn.q_proj.weight");
  if (!base.quantized)
    for (const auto& [name, pl] : plans)
      if (pl.quantized) return pl;
  if (!base.quantized) fail("quantize: every linear would be left in float (--keep / the recipe); nothing to quantize");
  return base;
}

}  // namespace

std::vector<float> fake_quantize_linear(const Tensor& W, const std::string& spec, const std::string& name) {
  QuantizeOptions o;
  o.recipe = recipe_parse_mix("default=" + spec);
  const QuantScheme sc = quant_scheme_parse(o.scheme, o.group, o.sym);
  const LinearPlan pl = resolve_plan(o, sc, nullptr, name, false);
  const int64_t M = W.dim(0), K = W.dim(1);
  if (!pl.quantized) {
    const Tensor f = to_f32(W);
    return std::vector<float>(f.host<float>(), f.host<float>() + M * K);
  }
  if (pl.method != "rtn" && pl.method != "hqq")
    fail("'{}': {} needs calibration data per block; probe with rtn or hqq", spec, pl.method);
  const int64_t G = pl.sc.group ? pl.sc.group : K;
  if ((pl.axis == 1 && K % G != 0) || (pl.axis == 0 && M % G != 0))
    fail("'{}': group {} does not divide the {} {} channels of {}", spec, G, pl.axis == 1 ? K : M,
         pl.axis == 1 ? "input" : "output", name);
  return plain_dequantize(pl, plain_codes(pl, W), M, K);
}

namespace {
// The plan recipe rc gives linear `name` of a model with n_layers blocks (the command line's
// defaults: w4a16, rtn), for in-memory uses (fine-tuning bases, planning): rtn or hqq only.
LinearPlan recipe_plan(const QuantRecipe& rc, const std::string& name, int64_t n_layers) {
  QuantizeOptions o;
  o.recipe = rc;
  const QuantScheme sc = quant_scheme_parse(o.scheme, o.group, o.sym);
  const int ri = recipe_match(rc, name, n_layers);
  LinearPlan pl = resolve_plan(o, sc, ri >= 0 ? &rc.rules[ri] : nullptr, name, false);
  if (pl.quantized && pl.method != "rtn" && pl.method != "hqq")
    fail("recipe rule '{}' ({}): {} needs calibration data; a base quantized while it loads takes rtn and hqq rules "
         "(quantize it with `llmq quantize --recipe` first for gptq/awq)", pl.rule, name, pl.method);
  return pl;
}
}  // namespace

Tensor recipe_quantize_linear(const QuantRecipe& rc, const float* W, int64_t M, int64_t K, const std::string& name,
                              int64_t n_layers) {
  const LinearPlan pl = recipe_plan(rc, name, n_layers);
  if (!pl.quantized) return Tensor();
  const int64_t G = pl.sc.group ? pl.sc.group : K;
  if ((pl.axis == 1 && K % G != 0) || (pl.axis == 0 && M % G != 0))
    fail("recipe rule '{}': group {} does not divide the {} {} channels of {}", pl.rule, G, pl.axis == 1 ? K : M,
         pl.axis == 1 ? "input" : "output", name);
  Tensor w = Tensor::empty(DType::F32, {M, K});
  std::copy(W, W + M * K, w.host<float>());
  const LinearCodes q = plain_codes(pl, w);
  if (pl.axis == 0) return make_hqq_axis0_tensor(M, K, pl.sc.bits, G, q.codes.data(), q.scale.data(), q.zero.data());
  return make_quant_tensor(M, K, pl.sc.bits == 8 ? 8 : 4, G, pl.sc.sym, false, q.codes.data(), q.scale.data(),
                           q.zero.data(), pl.sc.bits);
}

double recipe_linear_bits(const QuantRecipe& rc, const ModelConfig& c) {
  double bits = 0, n = 0;
  for (const std::string& name : quant_linear_names(c)) {
    if (name == "lm_head.weight") continue;
    const LinearPlan pl = recipe_plan(rc, name, c.n_layers);
    const bool out_dim = name.find("o_proj") != std::string::npos || name.find("down_proj") != std::string::npos;
    const bool in_ffn = name.find("down_proj") != std::string::npos;
    const bool kv = name.find("k_proj") != std::string::npos || name.find("v_proj") != std::string::npos;
    const int64_t K = in_ffn ? c.ffn_dim : name.find("o_proj") != std::string::npos ? c.q_dim() : c.dim;
    const int64_t M = out_dim ? c.dim : kv ? c.kv_dim() : name.find("q_proj") != std::string::npos ? c.q_dim() : c.ffn_dim;
    const double w = (double)M * (double)K;
    // Codes one per nibble (2-4 bits) or byte; an f32 scale and an f32 scale x zero per group.
    bits += w * (pl.quantized ? (pl.sc.bits == 8 ? 8.0 : 4.0) + 64.0 / (double)(pl.sc.group ? pl.sc.group : K) : 32.0);
    n += w;
  }
  return bits / n;
}

QuantizeResult quantize_model(const QuantizeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const bool calibrated_method = o.method == "gptq" || o.method == "awq" || o.method == "smoothquant";
  const bool qat = o.method == "qat";
  if (o.method != "rtn" && o.method != "hqq" && !calibrated_method && !qat)
    fail("quantize: unknown method '{}' (choose rtn, hqq, gptq, awq, smoothquant or qat)", o.method);
  if (qat && o.group > 0)
    fail("quantize: --method qat quantizes per output channel, as LLM-QAT trains (leave out --group)");
  // HQQ's default group is 64 (its paper's and library's setting).
  QuantScheme sc = quant_scheme_parse(o.scheme, o.group < 0 && o.method == "hqq" ? 64 : qat ? 0 : o.group,
                                      qat || o.sym, o.weight_scale, o.act_scale);
  // QAT: LLM-QAT's weight quantizer (train/qat.h); its 2-bit levels sit on a 3-bit grid.
  const int qat_bits = sc.bits;
  if (qat) {
    if (sc.fp8 || sc.act_per_tensor) fail("quantize: --method qat writes the integer schemes llmq qat trains (w4a8, w4a16, w8a8, w3a16, w2a16)");
    if (sc.bits == 2) sc.bits = 3;
  }
  if (o.method != "rtn" && sc.fp8)
    fail("quantize: the fp8 scheme is round-to-nearest only (--method rtn); E4M3 has no integer grid for {}", o.method);
  if (o.method == "smoothquant" && sc.name != "w8a8")
    fail("quantize: smoothquant migrates activation outliers for int8 activations: use --scheme w8a8");
  if (qat && !o.kv_cache.empty() && o.kv_cache != "int8" && o.kv_cache != "int4")
    fail("quantize: --method qat --kv-cache {}: a QAT model's cache is int4 or int8, quantized per token as trained", o.kv_cache);
  if (!qat && !o.kv_cache.empty() && o.kv_cache != "int8" && o.kv_cache != "fp8" && o.kv_cache != "int4")
    fail("quantize: --kv-cache {}: int8 or fp8 (calibrated static scales), or int4 (dynamic, per token)", o.kv_cache);
  // int4 (and QAT's caches): dynamic, a scale per token and KV head computed as it is stored.
  const bool kv_dynamic = qat || o.kv_cache == "int4";
  // FP8 static activation scales and KV-cache scales come from the calibration data's maxima
  // (the "amax" pass, or the calibrated method's own passes).
  const bool recipe = !o.recipe.empty();
  if (recipe && (qat || sc.fp8 || sc.act_per_token || sc.act_per_tensor || o.method == "smoothquant" || !o.kv_cache.empty()))
    fail("quantize: a recipe (--recipe/--mix) mixes weight-only schemes (w8a16, w4a16, w3a16, w2a16) with rtn, hqq, gptq "
         "or awq; {} applies to the whole model", qat ? "--method qat" : o.method == "smoothquant" ? "--method smoothquant"
                                                 : !o.kv_cache.empty() ? "--kv-cache" : "--scheme " + sc.name);
  if (!recipe && o.method == "hqq" && (sc.act_per_token || sc.sym))
    fail("quantize: hqq quantizes weights only, with a float zero point per group: use a w*a16 scheme without --sym");
  if (o.hqq_axis != 1 && (o.method != "hqq" || o.hqq_axis != 0))
    fail("quantize: --axis {}: only hqq takes an axis, 0 or 1", o.hqq_axis);
  if (!recipe && o.hqq_axis == 0 && sc.group == 0) fail("quantize: hqq --axis 0 needs a group size (--group 64)");
  if (o.format != "gptq" && o.format != "compressed-tensors")
    fail("quantize: --format {} is not supported (gptq or compressed-tensors)", o.format);
  const bool ct = o.format == "compressed-tensors" && !sc.fp8;  // FP8 is compressed-tensors anyway
  if (ct && !recipe) {  // (a recipe's rules are checked per linear below)
    if (o.method == "hqq") fail("quantize: --format compressed-tensors holds integer zero points; hqq's are float (use --format gptq)");
    if (qat) fail("quantize: --format compressed-tensors cannot state QAT's activation quantizer (use --format gptq)");
    if (sc.bits == 3) fail("quantize: --format compressed-tensors writes 2-, 4- and 8-bit codes (w3a16's do not pack into int32)");
    if (sc.act_per_tensor) fail("quantize: --format compressed-tensors: w8a8 with per-tensor activation scales is not written (use --act-scale token)");
    if (sc.act_per_token && !sc.sym) fail("quantize: --format compressed-tensors: int-quantized w8a8 weights are symmetric");
    if (ct && o.act_order) fail("quantize: --format compressed-tensors: act-order (g_idx) is not written (use --format gptq)");
  }
  if (o.out.empty()) fail("quantize: give --out DIR");
  if (fs::exists(o.out) && fs::equivalent(o.out, o.model)) fail("quantize: --out must differ from the source model directory");
  Model src = model_load(o.model, LoadMode::Map);
  if (src.config.quant.enabled)
    fail("{}: the model is already quantized ({}, {}-bit); quantize from the original float model", o.model,
         src.config.quant.scheme, src.config.quant.bits);
  // One --keep pattern: "embed", "lm_head", or a part of tensor names.
  auto keep_matches = [](const std::string& k, const std::string& name) {
    if (k == "embed") return name == "model.embed_tokens.weight";
    if (k == "lm_head") return name == "lm_head.weight";
    return !k.empty() && name.find(k) != std::string::npos;
  };
  auto kept = [&](const std::string& name) {
    if (qat && name == "lm_head.weight") return true;  // LLM-QAT trains lm_head in float
    for (const auto& k : o.keep)
      if (keep_matches(k, name)) return true;
    return name == "model.embed_tokens.weight";  // embeddings are a lookup, always float
  };
  // How each linear is quantized: the one scheme, or the recipe rule that matches it first.
  std::map<std::string, LinearPlan> plans;
  const LinearPlan base_plan = plan_linears(o, src.config, sc, kept, plans);
  std::string cal_method = calibrated_method ? o.method : "";
  for (const auto& [name, pl] : plans)
    if (pl.quantized && (pl.method == "gptq" || pl.method == "awq")) {
      if (!cal_method.empty() && cal_method != pl.method)
        fail("quantize: the recipe uses both {} and {} (rule '{}' for {}); one calibrated method per run (the others "
             "may be rtn or hqq)", cal_method, pl.method, pl.rule, name);
      cal_method = pl.method;
    }
  if (recipe && cal_method.empty() && !o.calib.source.empty())
    fail("quantize: --calib is not used: no rule of the recipe uses gptq or awq");
  const bool calibrated = !cal_method.empty() || sc.act_static || (!o.kv_cache.empty() && !kv_dynamic);
  if (calibrated && o.calib.source.empty())
    fail("quantize: {} needs calibration data: give --calib FILE|DATA_DIR",
         !cal_method.empty() ? "--method " + cal_method : sc.act_static ? std::string("--act-scale static")
                                                                        : "--kv-cache " + o.kv_cache);
  if (ct)
    for (const auto& [name, pl] : plans) {
      if (!pl.quantized) continue;
      if (pl.method == "hqq")
        fail("quantize: {}{}: --format compressed-tensors holds integer zero points; hqq's are float (use --format gptq)",
             name, pl.rule.empty() ? "" : " (rule '" + pl.rule + "')");
      if (pl.sc.bits == 3)
        fail("quantize: {}{}: --format compressed-tensors writes 2-, 4- and 8-bit codes (3-bit codes do not pack into "
             "int32; use --format gptq)", name, pl.rule.empty() ? "" : " (rule '" + pl.rule + "')");
    }
  ModelConfig c = src.config;
  c.quant.enabled = true;
  c.quant.bits = base_plan.sc.bits;
  c.quant.group = base_plan.sc.group;
  c.quant.sym = base_plan.sc.sym;
  c.quant.scheme = base_plan.sc.name;
  c.quant.algorithm = base_plan.method;
  c.quant.act_per_token = sc.act_per_token;
  c.quant.fp8 = sc.fp8;
  c.quant.weight_per_tensor = sc.weight_per_tensor;
  c.quant.act_static = sc.act_static;
  c.quant.act_per_tensor = sc.act_per_tensor;
  c.quant.zeros_minus_one = !sc.fp8;
  c.quant.float_zeros = base_plan.method == "hqq";
  if (c.quant.float_zeros) c.quant.sym = false;
  c.quant.hqq_axis = base_plan.axis;
  c.quant.desc_act = base_plan.method == "gptq" && o.act_order;
  c.quant.lm_head = false;
  c.quant.kv_cache = o.kv_cache;
  if (qat) {
    c.quant.act_eps = sc.act_per_token ? 1e-6f : 0.f;  // LLM-QAT's activation quantizer, as trained
    c.quant.act_float = !sc.act_per_token;             // or float activations, as trained
  }
  c.quant.kv_dynamic = kv_dynamic && !o.kv_cache.empty();
  if (ct) {
    c.quant.ct_int = sc.act_per_token ? "int-quantized" : "pack-quantized";
    c.quant.zeros_minus_one = false;
  }
  // Each linear's QuantConfig; those that differ from the base are its per-module part.
  auto cfg_of = [&](const LinearPlan& pl, bool lm_head) {
    QuantConfig q = c.quant;
    q.modules.clear();
    if (!pl.quantized) {
      q.enabled = false;
      return q;
    }
    q.bits = pl.sc.bits, q.group = pl.sc.group, q.sym = pl.sc.sym, q.scheme = pl.sc.name, q.algorithm = pl.method;
    q.float_zeros = pl.method == "hqq";
    if (q.float_zeros) q.sym = false;
    q.hqq_axis = pl.axis;
    q.desc_act = pl.method == "gptq" && o.act_order;
    q.lm_head = lm_head;
    return q;
  };
  {
    const QuantConfig h = cfg_of(plans.at("lm_head.weight"), true);
    QuantConfig b = c.quant;
    b.lm_head = true;
    c.quant.lm_head = h.enabled && quant_same_linear(h, b);
  }
  for (const std::string& name : quant_linear_names(c)) {
    const bool lm = name == "lm_head.weight";
    const QuantConfig q = cfg_of(plans.at(name), lm ? true : c.quant.lm_head);
    if (lm && (!q.enabled || c.quant.lm_head)) continue;
    if (!quant_same_linear(q, c.quant)) c.quant.modules.emplace_back(name, q);
  }
  std::sort(c.quant.modules.begin(), c.quant.modules.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  if (c.quant.quantizes("lm_head.weight") && c.tie_embeddings) c.tie_embeddings = false;  // lm_head gets its own quantized copy
  // Float tensors beside GPTQ linears are f16, as GPTQ writes; a QAT model keeps the f32 it
  // trained (embeddings, norms and lm_head rounded to f16 would not be the trained model).
  if (c.dtype == DType::F32 && !sc.fp8 && !qat) c.dtype = DType::F16;

  const std::map<std::string, Tensor> srcs = hf_named_tensors(src);
  // A --keep pattern that names no tensor is a typo, said rather than ignored.
  for (const auto& k : o.keep) {
    bool any = false;
    for (const auto& [name, t] : srcs) any = any || keep_matches(k, name);
    if (!any && !(k == "lm_head" && src.config.tie_embeddings))
      fmt::print(stderr, "warning: --keep {} matches no tensor of {}\n", k, o.model);
  }
  // Quantization reads float weights; a quantized GGUF (q8_0, q4_0) is refused here, before
  // anything is written, rather than half-way through the output file.
  for (const auto& [name, t] : srcs)
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
      fail("{}: tensor {} is {}, not a float type; quantize from the float model (its directory, or an f16/f32 GGUF)",
           o.model, name, dtype_name(t.dtype()));
  // The config written must give the model's rotary frequencies (a GGUF stores only factors;
  // gguf_model_from recovers Llama 3 rope_scaling from them when it can).
  const std::vector<double> want = rope_frequencies(src.config);
  for (size_t i = 0; i < want.size() && i < src.rope_freqs.size(); i++)
    if (std::fabs(want[i] - src.rope_freqs[i]) > 1e-6 * std::fabs(src.rope_freqs[i]))
      fail("{}: the model's rope frequencies (rope_freqs) match no Llama 3 rope_scaling that config.json could hold; "
           "quantize from the model directory instead", o.model);
  QuantizeResult res;
  std::vector<OutTensor> outs;
  for (const auto& spec : hf_tensor_specs(c)) {
    const Tensor& s = srcs.at(spec.name);
    res.bytes_in += s.nbytes();
    const bool linear = spec.name.ends_with("_proj.weight") || spec.name == "lm_head.weight";
    const LinearPlan* pl = linear ? &plans.at(spec.name) : nullptr;
    const bool quantized = linear && pl->quantized;
    if (quantized && sc.fp8) {  // compressed-tensors float-quantized
      const std::string base = spec.name.substr(0, spec.name.size() - 6);
      outs.push_back({spec.name, DType::F8E4M3, spec.shape, spec.name, s});
      outs.push_back({base + "weight_scale", DType::F32, sc.weight_per_tensor ? Shape{1} : Shape{spec.shape[0], 1},
                      spec.name, s});
      if (sc.act_static) outs.push_back({base + "input_scale", DType::F32, Shape{1}, spec.name, s});
      res.quantized_tensors++;
    } else if (quantized && ct) {  // compressed-tensors integer layouts
      const QuantScheme& sc = pl->sc;
      const std::string by = pl->rule.empty() ? "" : " (recipe rule '" + pl->rule + "')";
      const int64_t M = spec.shape[0], K = spec.shape[1], G = sc.group ? sc.group : K, ng = K / G, pf = 32 / sc.bits;
      if (K % G != 0)
        fail("quantize: group size {} does not divide the {} input channels of {}{} (choose a group that divides {})",
             G, K, spec.name, by, K);
      if (K % pf != 0 || (!sc.sym && M % pf != 0))
        fail("quantize: {} has shape ({}, {}){}; {}-bit packing into int32 needs multiples of {}", spec.name, M, K, by,
             sc.bits, pf);
      const std::string base = spec.name.substr(0, spec.name.size() - 6);
      if (sc.act_per_token) {
        outs.push_back({spec.name, DType::I8, spec.shape, spec.name, s});
      } else {
        outs.push_back({base + "weight_packed", DType::I32, {M, K / pf}, spec.name, s});
        if (!sc.sym) outs.push_back({base + "weight_zero_point", DType::I32, {M / pf, ng}, spec.name, s});
        outs.push_back({base + "weight_shape", DType::I32, {2}, spec.name, s});
      }
      outs.push_back({base + "weight_scale", DType::F16, {M, ng}, spec.name, s});
      res.quantized_tensors++;
    } else if (quantized) {
      const QuantScheme& sc = pl->sc;
      const std::string by = pl->rule.empty() ? "" : " (recipe rule '" + pl->rule + "')";
      const int64_t M = spec.shape[0], K = spec.shape[1], G = sc.group ? sc.group : K, ng = K / G;
      if (pl->axis == 0 && (M % G != 0 || G % 16 != 0))
        fail("quantize: hqq axis 0: group {} does not divide the {} output channels of {}{} (choose one that "
             "divides {})", G, M, spec.name, by, M);
      if (pl->axis == 1 && K % G != 0)
        fail("quantize: group size {} does not divide the {} input channels of {}{} (choose a group that divides {})",
             G, K, spec.name, by, K);
      if (!gptq_packable(K, sc.bits) || !gptq_packable(M, sc.bits))
        fail("quantize: {} has shape ({}, {}){}; {}-bit GPTQ packing needs multiples of 32", spec.name, M, K, by, sc.bits);
      const std::string base = spec.name.substr(0, spec.name.size() - 6);
      outs.push_back({base + "qweight", DType::I32, {K * sc.bits / 32, M}, spec.name, s});
      if (pl->axis == 0) {  // groups along the outputs: zeros and scales (M/G, K), no g_idx
        outs.push_back({base + "zeros", DType::F16, {M / G, K}, spec.name, s});
        outs.push_back({base + "scales", DType::F16, {M / G, K}, spec.name, s});
      } else {
        if (pl->method == "hqq") outs.push_back({base + "zeros", DType::F16, {ng, M}, spec.name, s});
        else outs.push_back({base + "qzeros", DType::I32, {ng, M * sc.bits / 32}, spec.name, s});
        // QAT: f32 scales (1 / (s + 1e-6) is no f16 value; rounded, the model would not be the
        // one trained).
        outs.push_back({base + "scales", qat ? DType::F32 : DType::F16, {ng, M}, spec.name, s});
        outs.push_back({base + "g_idx", DType::I32, {K}, spec.name, s});
      }
      res.quantized_tensors++;
    } else {
      outs.push_back({spec.name, c.dtype, spec.shape, "", s});
      res.kept_tensors++;
    }
    if (!o.kv_cache.empty() && !kv_dynamic && spec.name.ends_with("self_attn.v_proj.weight")) {  // after k/v, as a block's tensors
      const std::string base = spec.name.substr(0, spec.name.size() - std::string("v_proj.weight").size());
      for (const char* n : {"k_scale", "v_scale"}) outs.push_back({base + n, DType::F32, {c.n_kv_heads}, "", Tensor()});
    }
  }
  // Linears left in float under --keep are written as .weight; the loader takes those.
  // Calibrated methods: blocks are run in order as the writer reaches their tensors.
  std::unique_ptr<CalibratedQuantizer> cq;
  std::map<std::string, LinearCodes> block_codes;
  std::map<std::string, std::vector<float>> block_floats;
  std::map<std::string, float> input_amax;  // fp8 static
  std::map<std::string, std::vector<float>> kv_scales;  // NAME.k_scale / v_scale
  int64_t blocks_done = 0;
  std::unique_ptr<Progress> block_bar;
  if (calibrated) {
    // Windows longer than the model's context are clamped to it, with a note (the default 2048
    // is the reference tools' setting; small models have less).
    CalibOptions cal = o.calib;
    if (cal.seq_len > c.max_seq_len) {
      fmt::print(stderr, "note: --calib-seq-len {} is longer than the model's context; using {}\n", cal.seq_len, c.max_seq_len);
      cal.seq_len = c.max_seq_len;
    }
    const CalibData data = calib_load(cal, o.model, c.vocab_size);
    CalibratedOptions co;
    co.method = !cal_method.empty() ? cal_method : "amax", co.bits = sc.bits, co.group = sc.group, co.sym = sc.sym, co.damp = o.damp,
    co.act_order = o.act_order, co.static_groups = o.static_groups, co.alpha = o.alpha, co.kv_ranges = !o.kv_cache.empty() && !kv_dynamic;
    co.linear = [&plans, m = co.method](const std::string& name) -> CalibratedOptions::Linear {
      const LinearPlan& pl = plans.at(name);
      if (!pl.quantized) return {};
      return {pl.method == "smoothquant" || m == "amax" ? m : pl.method, pl.sc.bits, pl.sc.group, pl.sc.sym};
    };
    co.other = [&plans](const std::string& name, const Tensor& W) {
      const LinearPlan& pl = plans.at(name);
      LinearCodes q = plain_codes(pl, W);
      return std::pair{q, plain_dequantize(pl, q, W.dim(0), W.dim(1))};
    };
    cq = std::make_unique<CalibratedQuantizer>(src, data, co);
    res.calib_tokens = data.tokens();
    block_bar = std::make_unique<Progress>(fmt::format("{} blocks ({} calibration tokens)", co.method, data.tokens()),
                                           (uint64_t)c.n_layers, o.progress);
    for (auto& t : outs)  // norms changed by scale folding are written in f32
      if (t.linear.empty() && t.name.find("layernorm") != std::string::npos && co.method != "gptq") t.dtype = DType::F32;
  }
  auto ensure_block = [&](const std::string& name) {
    if (!cq) return;
    const int64_t want = std::min(block_of(name, c.n_layers), c.n_layers - 1);
    while (blocks_done <= want) {
      CalibratedBlock b = cq->run_block(blocks_done++);
      for (auto& [k, v] : b.linears) block_codes[k] = std::move(v);
      for (auto& [k, v] : b.floats) block_floats[k] = std::move(v);
      for (auto& [k, v] : b.input_amax) input_amax[k] = v;
      const float qmax = o.kv_cache == "int8" ? 127.f : 448.f;
      for (auto [amax, n] : {std::pair{&b.k_amax, "k_scale"}, std::pair{&b.v_amax, "v_scale"}}) {
        std::vector<float>& s = kv_scales[block_prefix(blocks_done - 1) + "self_attn." + n];
        for (float a : *amax) s.push_back(a > 0.f ? a / qmax : 1.f);  // an all-zero head: any scale
      }
      for (auto& m : b.messages) res.messages.push_back(std::move(m));
      block_bar->update((uint64_t)blocks_done);
    }
  };
  fs::create_directories(o.out);
  QuantizedLinear cache;
  // FP8: row amax, then the row or tensor scale, then E4M3 bytes, a block of rows at a time
  // from the mapped source (no float copy of the whole tensor).
  auto quantize_linear_fp8 = [&](const OutTensor& t, int64_t M, int64_t K) {
    const Tensor& s = t.source;
    // (Every weight is finite: the model's load checked them, io/hf_dir.h check_finite.)
    std::vector<float> amax((size_t)M);
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) {
      float a = 0.f;
      for (int64_t k = 0; k < K; k++) a = std::max(a, std::fabs(elem_f32(s, m * K + k)));
      amax[m] = a;
    }
    std::vector<float> row_scale((size_t)M);
    const float all = *std::max_element(amax.begin(), amax.end());
    for (int64_t m = 0; m < M; m++) row_scale[m] = fp8_scale(sc.weight_per_tensor ? all : amax[m]);
    cache.name = t.linear;
    cache.fp8.resize((size_t)(M * K));
#pragma omp parallel
    {
      std::vector<float> row((size_t)K);
#pragma omp for schedule(static)
      for (int64_t m = 0; m < M; m++) {
        for (int64_t k = 0; k < K; k++) row[k] = elem_f32(s, m * K + k);
        quantize_rows_fp8(row.data(), 1, K, &row_scale[m], cache.fp8.data() + m * K);
      }
    }
    release_pages(s.host_data(), s.nbytes());
    if (sc.weight_per_tensor) cache.fp8_scale.assign(1, row_scale[0]);
    else cache.fp8_scale = row_scale;
    if (sc.act_static) {
      ensure_block(t.linear);
      const auto it = input_amax.find(t.linear);
      cache.input_scale = fp8_scale(it != input_amax.end() ? it->second : cq->lm_head_input_amax());
    }
  };
  // Codes of one linear: from its block (calibrated methods), HQQ, or round-to-nearest.
  auto linear_codes = [&](const OutTensor& t, int64_t M, int64_t K) -> LinearCodes {
    if (cq) {
      ensure_block(t.linear);
      auto it = block_codes.find(t.linear);
      if (it != block_codes.end()) {
        LinearCodes q = std::move(it->second);
        block_codes.erase(it);
        return q;
      }
      if (t.linear == "lm_head.weight") return cq->lm_head();
    }
    const Tensor& s = t.source;
    if (qat) {
      const Tensor w = to_f32(s);
      LinearCodes q;
      q.codes.resize((size_t)(M * K)), q.scale.resize((size_t)M), q.zero.resize((size_t)M);
      train::qat_weight_codes(w.host<float>(), M, K, qat_bits, q.codes.data(), q.scale.data(), q.zero.data());
      return q;
    }
    return plain_codes(plans.at(t.linear), s);
  };
  auto quantize_linear = [&](const OutTensor& t) {
    if (cache.name == t.linear) return;
    const Tensor& s = t.source;
    const LinearPlan& pl = plans.at(t.linear);
    const QuantScheme& sc = pl.sc;
    const int64_t M = s.dim(0), K = s.dim(1), G = sc.group ? sc.group : K, ng = K / G;
    if (sc.fp8) {
      quantize_linear_fp8(t, M, K);
      return;
    }
    const LinearCodes q = linear_codes(t, M, K);
    release_pages(s.host_data(), s.nbytes());
    cache.name = t.linear;
    if (ct) {  // the codes as they are (code = signed value + 2^(bits-1)), zero points likewise
      const int64_t pf = 32 / sc.bits;
      cache.ct_scale.resize((size_t)(M * ng));
      for (int64_t i = 0; i < M * ng; i++) cache.ct_scale[i] = f32_to_f16(q.scale[i]);
      if (sc.act_per_token) {
        cache.ct_i8.resize((size_t)(M * K));
        for (int64_t i = 0; i < M * K; i++) cache.ct_i8[i] = (int8_t)((int)q.codes[i] - 128);
        return;
      }
      cache.ct_packed.assign((size_t)(M * K / pf), 0);
      for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++)
          cache.ct_packed[m * (K / pf) + k / pf] |= (int32_t)((uint32_t)q.codes[m * K + k] << (sc.bits * (k % pf)));
      cache.ct_zp.assign((size_t)((M / pf) * ng), 0);
      if (!sc.sym)
        for (int64_t m = 0; m < M; m++)
          for (int64_t g = 0; g < ng; g++)
            cache.ct_zp[(m / pf) * ng + g] |= (int32_t)((uint32_t)q.zero[m * ng + g] << (sc.bits * (m % pf)));
      cache.ct_shape = {(int32_t)M, (int32_t)K};
      return;
    }
    cache.qweight = gptq_pack_qweight(q.codes.data(), M, K, sc.bits);
    if (pl.axis == 0) {  // (M/G, K) in HQQ's group order j = (r mod M/G)*K + c
      cache.scales.resize(q.scale.size());
      cache.zeros.resize(q.zero.size());
      for (size_t j = 0; j < q.scale.size(); j++) cache.scales[j] = f32_to_f16(q.scale[j]), cache.zeros[j] = f32_to_f16(q.zero[j]);
      return;
    }
    cache.scales.resize((size_t)(ng * M));
    for (int64_t g = 0; g < ng; g++)
      for (int64_t m = 0; m < M; m++) cache.scales[g * M + m] = f32_to_f16(q.scale[m * ng + g]);
    if (qat) {
      cache.scales32.resize((size_t)(ng * M));
      for (int64_t g = 0; g < ng; g++)
        for (int64_t m = 0; m < M; m++) cache.scales32[g * M + m] = q.scale[m * ng + g];
    }
    if (pl.method == "hqq") {
      cache.zeros.resize((size_t)(ng * M));
      for (int64_t g = 0; g < ng; g++)
        for (int64_t m = 0; m < M; m++) cache.zeros[g * M + m] = f32_to_f16(q.zero[m * ng + g]);
    } else {
      cache.qzeros = gptq_pack_qzeros(q.zero.data(), M, ng, sc.bits, true);
    }
    cache.g_idx = q.g_idx;
    if (cache.g_idx.empty())
      for (int64_t k = 0; k < K; k++) cache.g_idx.push_back((int32_t)(k / G));
  };
  auto fill = [&](const OutTensor& t, uint8_t* dst, uint64_t off, uint64_t n) {
    if (t.name.ends_with("_scale") && !t.source.defined()) {  // calibrated KV-cache scales
      ensure_block(t.name);
      std::memcpy(dst, reinterpret_cast<const uint8_t*>(kv_scales.at(t.name).data()) + off, n);
      return;
    }
    if (t.linear.empty()) {
      ensure_block(t.name);
      const auto folded = block_floats.find(t.name);
      const int64_t es = dtype_bits(t.dtype) / 8, e0 = (int64_t)(off / es), cnt = (int64_t)(n / es);
      for (int64_t i = 0; i < cnt; i++) {
        const float v = folded != block_floats.end() ? folded->second[e0 + i] : elem_f32(t.source, e0 + i);
        if (t.dtype == DType::F32) std::memcpy(dst + 4 * i, &v, 4);
        else { const uint16_t h = t.dtype == DType::BF16 ? f32_to_bf16(v) : f32_to_f16(v); std::memcpy(dst + 2 * i, &h, 2); }
      }
      if (off + n == dtype_bytes(t.dtype, shape_numel(t.shape))) release_pages(t.source.host_data(), t.source.nbytes());
      return;
    }
    quantize_linear(t);
    const uint8_t* from = nullptr;
    if (ct && t.name.ends_with("weight_packed")) from = reinterpret_cast<const uint8_t*>(cache.ct_packed.data());
    else if (ct && t.name.ends_with("weight_zero_point")) from = reinterpret_cast<const uint8_t*>(cache.ct_zp.data());
    else if (ct && t.name.ends_with("weight_shape")) from = reinterpret_cast<const uint8_t*>(cache.ct_shape.data());
    else if (ct && t.name.ends_with("weight_scale")) from = reinterpret_cast<const uint8_t*>(cache.ct_scale.data());
    else if (ct && t.name.ends_with("weight")) from = reinterpret_cast<const uint8_t*>(cache.ct_i8.data());
    else if (t.name.ends_with("qweight")) from = reinterpret_cast<const uint8_t*>(cache.qweight.data());
    else if (t.name.ends_with("qzeros")) from = reinterpret_cast<const uint8_t*>(cache.qzeros.data());
    else if (t.name.ends_with(".zeros")) from = reinterpret_cast<const uint8_t*>(cache.zeros.data());
    else if (t.name.ends_with("scales") && t.dtype == DType::F32) from = reinterpret_cast<const uint8_t*>(cache.scales32.data());
    else if (t.name.ends_with("scales")) from = reinterpret_cast<const uint8_t*>(cache.scales.data());
    else if (t.name.ends_with("weight_scale")) from = reinterpret_cast<const uint8_t*>(cache.fp8_scale.data());
    else if (t.name.ends_with("input_scale")) from = reinterpret_cast<const uint8_t*>(&cache.input_scale);
    else if (t.name.ends_with("weight")) from = cache.fp8.data();
    else from = reinterpret_cast<const uint8_t*>(cache.g_idx.data());
    std::memcpy(dst, from + off, n);
  };
  // Shards of at most max_shard_gb (a tensor never splits), as model_save does.
  const uint64_t max_shard = (uint64_t)(o.max_shard_gb * 1e9);
  std::vector<std::vector<size_t>> shards(1);
  uint64_t cur = 0, total = 0;
  for (size_t i = 0; i < outs.size(); i++) {
    const uint64_t b = dtype_bytes(outs[i].dtype, shape_numel(outs[i].shape));
    if (cur > 0 && cur + b > max_shard) shards.emplace_back(), cur = 0;
    shards.back().push_back(i);
    cur += b, total += b;
  }
  Progress bar("quantizing " + o.model + " -> " + (o.out_label.empty() ? o.out : o.out_label), total, o.progress && !cq);
  uint64_t written = 0;
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t si = 0; si < shards.size(); si++) {
    const std::string fname = shards.size() == 1 ? "model.safetensors"
                                                 : fmt::format("model-{:05d}-of-{:05d}.safetensors", si + 1, shards.size());
    SafetensorsWriter w;
    w.set_metadata("format", "pt");
    for (size_t i : shards[si]) {
      const OutTensor* t = &outs[i];
      w.add(t->name, t->dtype, t->shape, [&fill, t](uint8_t* dst, uint64_t off, uint64_t n) { fill(*t, dst, off, n); });
      weight_map[t->name] = fname;
    }
    const uint64_t base = written;
    w.write((fs::path(o.out) / fname).string(), [&](uint64_t done) { bar.update(base + done); });
    written += w.data_bytes();
  }
  bar.finish();
  if (block_bar) block_bar->finish();
  for (const auto& e : fs::directory_iterator(o.out)) {  // weight files of an earlier save
    const std::string n = e.path().filename().string();
    if (n.rfind("model", 0) == 0 && n.ends_with(".safetensors") && !weight_map.empty()) {
      bool ours = false;
      for (auto& [k, v] : weight_map.items()) ours = ours || v.get<std::string>() == n;
      if (!ours) fs::remove(e.path());
    }
  }
  if (shards.size() > 1)
    write_file_atomic((fs::path(o.out) / "model.safetensors.index.json").string(),
                      nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2) + "\n");
  else if (fs::exists(fs::path(o.out) / "model.safetensors.index.json"))
    fs::remove(fs::path(o.out) / "model.safetensors.index.json");
  write_model_configs(o.out, c);
  if (!copy_tokenizer_files(o.model, o.out))
    fmt::print(stderr, "warning: {} has no tokenizer to copy{}, so the output has none: copy tokenizer.json (or "
               "tokenizer.model) and tokenizer_config.json into {} for text prompts\n", o.model,
               fs::is_regular_file(o.model) ? " (a GGUF's own tokenizer is not converted yet)" : "",
               o.out_label.empty() ? o.out : o.out_label);
  res.bytes_out = total;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace llmq
