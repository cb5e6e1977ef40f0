// Quantization recipes: different bits, groups and methods per module (`llmq quantize
// --recipe FILE | --mix RULES`, `llmq finetune --quantize-base` with the same). A recipe is an
// ordered list of rules, each a selector and a quantization; the first rule whose selector
// matches a linear decides it, and unmatched linears take the default. docs/quantization.md
// ("Recipes") gives the grammar; in short:
//
//   selector := alt ('|' alt)*         any alternative matches
//   alt      := term ('&' term)*       every term matches
//   term     := q | k | v | o | gate | up | down | lm_head     one projection (q_proj... too)
//             | attn | self_attn | mlp                          a block's attention / MLP linears
//             | layers.N | layers.A-B                           blocks N, or A..B (inclusive)
//             | first:N | last:N                                the first / last N blocks
//             | re:REGEX                                        a pattern from the start of the
//                                                              tensor name (as Python's re.match)
//             | TEXT                                            a part of the tensor name
//   quant    := scheme (':' option)*    scheme: w8a16 | w4a16 | w3a16 | w2a16 | float
//   option   := gN (group; 0 per channel) | sym | asym | rtn | hqq | gptq | awq | axis0 | axis1
//
// --mix 'self_attn=w4a16:g128,mlp=w2a16:g16:hqq:axis0,first:1|last:1=w8a16' and the JSON file
//   {"default": "w4a16:g128", "rules": [{"match": "mlp", "quant": "w2a16:g16:hqq:axis0"},
//                                        {"match": "first:1|last:1", "scheme": "w8a16"}]}
// say the same (a JSON rule may give "scheme", "group", "sym", "method", "axis" as fields).
// A rule that names a scheme starts from the command line's options (--method, --group ...,
// whose defaults are rtn and the scheme's own group); a rule without a scheme ("down=g32")
// changes the default rule's options.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/pyregex.h"

namespace llmq {

struct QuantRule {
  std::string text;      // as written, for messages ("mlp=w2a16:g16:hqq")
  std::string selector;  // "" for the default rule
  std::string scheme;    // w8a16 | w4a16 | w3a16 | w2a16 | float; "" = the default's
  std::string method;    // rtn | hqq | gptq | awq; "" = the default's
  int64_t group = -2;    // -2: the default's; -1: the scheme's default; 0: per channel
  int sym = -1;          // -1: the default's; 0 / 1
  int axis = -1;         // HQQ axis; -1: the default's
  std::shared_ptr<PyRegex> re;  // the recipe's matcher for re: terms (shared by its rules)
};

struct QuantRecipe {
  std::string source;  // the file, or "--mix"
  bool has_default = false;
  QuantRule defaults;
  std::vector<QuantRule> rules;
  bool empty() const { return rules.empty() && !has_default; }
};

// Whether a command-line value is a recipe (inline rules with '=', or a .json file) rather
// than a scheme name, and the recipe it is.
bool recipe_is_arg(const std::string& s);
QuantRecipe recipe_from_arg(const std::string& s);
// `path`: a JSON recipe. Fails naming the file and the rule on anything malformed.
QuantRecipe recipe_load(const std::string& path);
QuantRecipe recipe_parse_json(const std::string& text, const std::string& where);
// The inline form: "SELECTOR=QUANT,SELECTOR=QUANT,..." ("default=QUANT" sets the default).
QuantRecipe recipe_parse_mix(const std::string& mix);
// Whether rule r's selector matches linear `name` (an HF tensor name) of a model with
// n_layers blocks.
bool recipe_rule_matches(const QuantRule& r, const std::string& name, int64_t n_layers);
// The index of the first rule matching `name`, or -1 (the default).
int recipe_match(const QuantRecipe& rc, const std::string& name, int64_t n_layers);

}  // namespace llmq
