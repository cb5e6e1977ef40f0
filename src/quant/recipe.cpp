// Quantization recipes: see recipe.h.
#include "quant/recipe.h"

#include <cctype>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"

namespace llmq {

namespace {

// "model.layers.L.self_attn.q_proj.weight" -> block L (-1 for lm_head) and role "q".
void name_parts(const std::string& name, int64_t& block, std::string& role) {
  block = -1;
  role.clear();
  const std::string p = "model.layers.";
  if (name == "lm_head.weight") {
    role = "lm_head";
    return;
  }
  if (name.rfind(p, 0) != 0) return;
  size_t i = p.size(), j = name.find('.', i);
  if (j == std::string::npos) return;
  block = std::stoll(name.substr(i, j - i));
  const size_t a = name.rfind('.', name.size() - 8);  // before "X_proj.weight"
  std::string proj = name.substr(a + 1, name.size() - 7 - (a + 1));
  if (proj.ends_with("_proj")) proj = proj.substr(0, proj.size() - 5);
  role = proj;
}

bool parse_int(const std::string& s, int64_t& v) {
  if (s.empty() || s.size() > 9) return false;
  for (char ch : s)
    if (ch < '0' || ch > '9') return false;
  v = std::stoll(s);
  return true;
}

bool term_matches(const std::string& t, const std::string& name, int64_t n_layers, const QuantRule& r) {
  const std::string& rule = r.text;
  int64_t block;
  std::string role;
  name_parts(name, block, role);
  static const char* kRoles[] = {"q", "k", "v", "o", "gate", "up", "down"};
  for (const char* r : kRoles)
    if (t == r || t == std::string(r) + "_proj") return role == r;
  if (t == "lm_head") return role == "lm_head";
  if (t == "attn" || t == "self_attn") return role == "q" || role == "k" || role == "v" || role == "o";
  if (t == "mlp") return role == "gate" || role == "up" || role == "down";
  int64_t a, b;
  if (t.rfind("first:", 0) == 0 || t.rfind("last:", 0) == 0) {
    const bool first = t[0] == 'f';
    if (!parse_int(t.substr(first ? 6 : 5), a)) fail("recipe rule '{}': {} needs a number of blocks", rule, t);
    return block >= 0 && (first ? block < a : block >= n_layers - a);
  }
  if (t.rfind("layers.", 0) == 0 || t.rfind("blocks.", 0) == 0) {
    const std::string r = t.substr(t.find('.') + 1);
    const size_t dash = r.find('-');
    if (dash == std::string::npos ? !parse_int(r, a) : !(parse_int(r.substr(0, dash), a) && parse_int(r.substr(dash + 1), b)))
      fail("recipe rule '{}': {} is not a block or a range of blocks (layers.3, layers.0-1)", rule, t);
    if (dash == std::string::npos) b = a;
    if (b < a) fail("recipe rule '{}': the range {} is empty (write the lower block first)", rule, t);
    return block >= a && block <= b;
  }
  if (t.rfind("re:", 0) == 0) {
    if (!r.re) fail("recipe rule '{}': no pattern matcher (a rule made outside the recipe parsers)", rule);
    return r.re->match(t.substr(3), name);
  }
  return !t.empty() && name.find(t) != std::string::npos;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> v(1);
  for (char ch : s) {
    if (ch == sep) v.emplace_back();
    else if (ch != ' ' && ch != '\t') v.back() += ch;
  }
  return v;
}

// "w2a16:g16:hqq:axis0" into r's scheme, group, sym, method, axis.
void parse_quant(const std::string& spec, QuantRule& r) {
  const auto parts = split(spec, ':');
  if (parts[0].empty()) fail("recipe rule '{}': no scheme or option (w8a16, w4a16, w3a16, w2a16, float; gN, sym, ...)", r.text);
  for (size_t i = 0; i < parts.size(); i++) {
    const std::string& p = parts[i];
    int64_t v;
    if (i == 0 && (p == "w8a16" || p == "w4a16" || p == "w3a16" || p == "w2a16" || p == "float" || p == "keep")) {
      r.scheme = p == "keep" ? "float" : p;
    } else if (i == 0 && (p == "w8a8" || p == "w4a8" || p == "fp8" || (p.size() > 1 && p[0] == 'w' && std::isdigit((unsigned char)p[1])))) {
      fail("recipe rule '{}': scheme '{}' cannot be given per module (choose w8a16, w4a16, w3a16, w2a16 or float; "
           "activation-quantized schemes w8a8/w4a8/fp8 apply to a whole model: use --scheme)", r.text, p);
    } else if (p.size() > 1 && p[0] == 'g' && parse_int(p.substr(1), v)) {
      r.group = v;
    } else if (p == "sym" || p == "asym") {
      r.sym = p == "sym";
    } else if (p == "rtn" || p == "hqq" || p == "gptq" || p == "awq") {
      r.method = p;
    } else if (p == "axis0" || p == "axis1") {
      r.axis = p == "axis0" ? 0 : 1;
    } else if (p == "smoothquant" || p == "qat") {
      fail("recipe rule '{}': --method {} applies to a whole model, not to some modules", r.text, p);
    } else {
      fail("recipe rule '{}': unknown option '{}' (gN, sym, asym, rtn, hqq, gptq, awq, axis0, axis1)", r.text, p);
    }
  }
}

// One pattern matcher for the recipe's re: terms, shared by its rules.
void attach_matcher(QuantRecipe& rc) {
  auto re = std::make_shared<PyRegex>("recipe " + rc.source);
  for (auto& r : rc.rules) r.re = re;
  rc.defaults.re = re;
}

}  // namespace

bool recipe_rule_matches(const QuantRule& r, const std::string& name, int64_t n_layers) {
  for (const std::string& alt : split(r.selector, '|')) {
    bool all = !alt.empty();
    for (const std::string& t : split(alt, '&')) all = all && term_matches(t, name, n_layers, r);
    if (all) return true;
  }
  return false;
}

int recipe_match(const QuantRecipe& rc, const std::string& name, int64_t n_layers) {
  for (size_t i = 0; i < rc.rules.size(); i++)
    if (recipe_rule_matches(rc.rules[i], name, n_layers)) return (int)i;
  return -1;
}

QuantRecipe recipe_parse_mix(const std::string& mix) {
  QuantRecipe rc;
  rc.source = "--mix";
  for (const std::string& item : split(mix, ',')) {
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    QuantRule r;
    r.text = item;
    if (eq == std::string::npos || eq == 0)
      fail("--mix: '{}' is not SELECTOR=QUANT (e.g. mlp=w2a16:g16:hqq:axis0)", item);
    r.selector = item.substr(0, eq);
    parse_quant(item.substr(eq + 1), r);
    if (r.selector == "default") {
      if (rc.has_default) fail("--mix: two default rules");
      r.selector.clear();
      rc.defaults = r, rc.has_default = true;
    } else {
      rc.rules.push_back(r);
    }
  }
  if (rc.empty()) fail("--mix '{}': no rules", mix);
  attach_matcher(rc);
  return rc;
}

QuantRecipe recipe_parse_json(const std::string& text, const std::string& where) {
  using nlohmann::json;
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) fail("{}: malformed JSON", where);
  if (!j.is_object()) fail("{}: a recipe is a JSON object with \"rules\" (and \"default\")", where);
  for (const auto& [k, v] : j.items())
    if (k != "default" && k != "rules" && k != "comment")
      fail("{}: unknown key \"{}\" (a recipe has \"default\" and \"rules\")", where, k);
  QuantRecipe rc;
  rc.source = where;
  auto rule = [&](const json& v, const std::string& what, bool is_default) {
    QuantRule r;
    if (v.is_string()) {
      r.text = what + "=" + v.get<std::string>();
      parse_quant(v.get<std::string>(), r);
      return r;
    }
    if (!v.is_object()) fail("{}: {} must be an object or a \"scheme:options\" string", where, what);
    for (const auto& [k, x] : v.items())
      if (k != "match" && k != "quant" && k != "scheme" && k != "group" && k != "sym" && k != "method" && k != "axis" &&
          k != "comment")
        fail("{}: {}: unknown key \"{}\" (match, quant, scheme, group, sym, method, axis)", where, what, k);
    if (!is_default) {
      if (!v.contains("match") || !v["match"].is_string() || v["match"].get<std::string>().empty())
        fail("{}: {} needs \"match\" (a selector such as \"mlp\", \"layers.0-1\", \"first:2|last:2\")", where, what);
      r.selector = v["match"].get<std::string>();
    }
    r.text = (is_default ? std::string("default") : r.selector) + "=" + v.dump();
    if (v.contains("quant")) {
      if (!v["quant"].is_string()) fail("{}: {}: \"quant\" must be a string such as \"w4a16:g128\"", where, what);
      parse_quant(v["quant"].get<std::string>(), r);
    }
    try {
      if (v.contains("scheme")) {
        QuantRule s;
        s.text = r.text;
        parse_quant(v["scheme"].get<std::string>(), s);
        r.scheme = s.scheme;
      }
      if (v.contains("group")) r.group = v["group"].get<int64_t>();
      if (v.contains("sym")) r.sym = v["sym"].get<bool>() ? 1 : 0;
      if (v.contains("method")) {
        QuantRule s;
        s.text = r.text;
        parse_quant("float:" + v["method"].get<std::string>(), s);
        r.method = s.method;
      }
      if (v.contains("axis")) {
        const int64_t a = v["axis"].get<int64_t>();
        if (a != 0 && a != 1) fail("{}: {}: axis {} (0 or 1)", where, what, a);
        r.axis = (int)a;
      }
    } catch (const json::exception& e) {
      fail("{}: {}: a field has the wrong type ({})", where, what, e.what());
    }
    if (r.group < -2 || r.group > (int64_t(1) << 30)) fail("{}: {}: group {} is out of range", where, what, r.group);
    if (r.scheme.empty() && r.method.empty() && r.group == -2 && r.sym < 0 && r.axis < 0)
      fail("{}: {} says nothing about how to quantize (give \"quant\" or \"scheme\", ...)", where, what);
    return r;
  };
  if (j.contains("default")) {
    rc.defaults = rule(j["default"], "default", true);
    rc.has_default = true;
  }
  if (j.contains("rules")) {
    if (!j["rules"].is_array()) fail("{}: \"rules\" must be a list", where);
    for (size_t i = 0; i < j["rules"].size(); i++) {
      const json& v = j["rules"][i];
      if (v.is_array() && v.size() == 2 && v[0].is_string() && v[1].is_string()) {  // ["mlp", "w2a16:g16"]
        QuantRule r;
        r.selector = v[0].get<std::string>();
        r.text = r.selector + "=" + v[1].get<std::string>();
        parse_quant(v[1].get<std::string>(), r);
        rc.rules.push_back(r);
      } else {
        rc.rules.push_back(rule(v, fmt::format("rules[{}]", i), false));
      }
    }
  }
  if (rc.empty()) fail("{}: the recipe has no rules", where);
  attach_matcher(rc);
  return rc;
}

QuantRecipe recipe_load(const std::string& path) { return recipe_parse_json(read_text_file(path), path); }

bool recipe_is_arg(const std::string& s) { return s.find('=') != std::string::npos || s.ends_with(".json"); }

QuantRecipe recipe_from_arg(const std::string& s) {
  return s.find('=') != std::string::npos ? recipe_parse_mix(s) : recipe_load(s);
}

}  // namespace llmq
