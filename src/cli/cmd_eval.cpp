// llmq eval ppl: perplexity of a model on a token file.
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/progress.h"
#include "eval/perplexity.h"
#include "core/file_util.h"
#include "io/hf_dir.h"
#include "tokenizer/tokenizer.h"

namespace llmq::cli {

void register_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "evaluate a model");
  cmd->require_subcommand(1);
  auto* ppl = cmd->add_subcommand("ppl", "perplexity over a token or text file in non-overlapping windows");
  struct Opts {
    std::string model, tokens, text, tokenizer;
    int64_t ctx = 0;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  ppl->add_option("-m,--model", o->model, "model directory")->required();
  auto* tk = ppl->add_option("--tokens", o->tokens, "file of whitespace-separated token ids");
  auto* tx = ppl->add_option("--text", o->text, "text file, tokenized with the model's tokenizer (BOS first)");
  tk->excludes(tx);
  ppl->add_option("--tokenizer", o->tokenizer, "tokenizer for --text (default: the model directory's)");
  ppl->add_option("--ctx", o->ctx, "window length in tokens (default: 512, or the model's context if smaller)");
  ppl->add_flag("--json", o->json, "print {\"tokens\", \"nll\", \"ppl\"} as JSON");
  ppl->callback([o] {
    Model m = model_load(o->model, load_mode());
    if (o->tokens.empty() == o->text.empty()) fail("give one of --tokens FILE or --text FILE");
    std::vector<int32_t> toks;
    if (!o->text.empty()) {
      auto tok = tokenizer_load(o->tokenizer.empty() ? o->model : o->tokenizer);
      if (tok->add_bos && tok->bos_id >= 0) toks.push_back(tok->bos_id);
      auto v = tok->encode(read_text_file(o->text), false);
      toks.insert(toks.end(), v.begin(), v.end());
    } else {
      toks = read_token_file(o->tokens);
    }
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
