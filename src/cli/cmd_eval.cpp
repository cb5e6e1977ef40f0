// llmq eval ppl: perplexity of a model on a token file.
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/progress.h"
#include "eval/perplexity.h"
#include "io/hf_dir.h"

namespace llmq::cli {

void register_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "evaluate a model");
  cmd->require_subcommand(1);
  auto* ppl = cmd->add_subcommand("ppl", "perplexity over a token file in non-overlapping windows");
  struct Opts {
    std::string model, tokens;
    int64_t ctx = 0;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  ppl->add_option("-m,--model", o->model, "model directory")->required();
  ppl->add_option("--tokens", o->tokens, "file of whitespace-separated token ids")->required();
  ppl->add_option("--ctx", o->ctx, "window length in tokens (default: 512, or the model's context if smaller)");
  ppl->add_flag("--json", o->json, "print {\"tokens\", \"nll\", \"ppl\"} as JSON");
  ppl->callback([o] {
    Model m = model_load(o->model, load_mode());
    auto toks = read_token_file(o->tokens);
    if (o->ctx == 0) o->ctx = std::min<int64_t>(512, m.config.max_seq_len);
    Progress bar("perplexity", 1, !o->json);
    auto r = eval_perplexity(m, toks, o->ctx, [&](int64_t done, int64_t total) {
      bar = Progress("perplexity", (uint64_t)total, !o->json && total > 1);
      bar.update((uint64_t)done);
    });
    bar.finish();
    if (o->json) {
      fmt::print("{}\n", nlohmann::json{{"tokens", r.predictions}, {"nll", r.nll}, {"ppl", r.ppl}}.dump());
    } else {
      fmt::print("predictions {}  windows {}  nll {:.6f} nats  perplexity {:.4f}\n", r.predictions, r.windows, r.nll, r.ppl);
    }
  });
}

}  // namespace llmq::cli
