// libFuzzer target: the other text formats llmq reads from outside: the token-shard
// manifest (data/shards.h), chat templates (the Jinja subset) and JSONL calibration files
// (quant/calibration.h), task files of `llmq eval tasks` (eval/tasks.h), quantization recipes
// (quant/recipe.h: JSON files and --mix rules, matched against a model's linears). The first
// byte picks the parser; any input must give a result or an llmq::Error.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "data/shards.h"
#include "eval/tasks.h"
#include "quant/calibration.h"
#include "quant/recipe.h"
#include "tokenizer/jinja.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] >= 0xf0) {  // a recipe (0xf0: JSON file, else --mix), matched against 3 blocks' names
      const llmq::QuantRecipe rc = data[0] == 0xf0 ? llmq::recipe_parse_json(text, "fuzz") : llmq::recipe_parse_mix(text);
      for (const char* n : {"model.layers.0.self_attn.q_proj.weight", "model.layers.2.mlp.down_proj.weight", "lm_head.weight"}) {
        const int i = llmq::recipe_match(rc, n, 3);
        if (i < -1 || i >= (int)rc.rules.size()) std::abort();
      }
    } else if (data[0] % 4 == 3) {
      for (const auto& it : llmq::parse_tasks(text, "fuzz"))
        if (!it.generate() && (it.answer < 0 || it.answer >= (int64_t)it.choices.size())) std::abort();
    } else if (data[0] % 4 == 2) {
      for (const auto& d : llmq::calib_jsonl_texts(text, "fuzz"))
        if (d.size() > text.size()) std::abort();  // a document is part of the input
    } else if (data[0] % 4 == 0) {
      llmq::ShardManifest m = llmq::ShardManifest::parse(text, "fuzz");
      // Parsed counts must be consistent (parse checked the sums).
      int64_t t = 0;
      for (const auto& s : m.train.shards) t += s.tokens;
      if (t != m.train.tokens) std::abort();
    } else {
      nlohmann::json ctx = {{"messages", {{{"role", "system"}, {"content", " sys "}}, {{"role", "user"}, {"content", "hi"}}}},
                            {"bos_token", "<s>"},
                            {"add_generation_prompt", true}};
      llmq::jinja_render(text, ctx, "fuzz");
    }
  } catch (const llmq::Error&) {
  }
  return 0;
}
