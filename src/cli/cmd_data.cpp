// llmq data prepare: tokenize text or JSONL into token shards for training and evaluation.
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/file_util.h"
#include "eval/tasks.h"
#include "infer/datagen.h"
#include "io/hf_dir.h"
#include "core/progress.h"
#include <nlohmann/json.hpp>
#include "tokenizer/chat.h"
#include "core/output_dir.h"
#include "data/prepare.h"
#include "tokenizer/tokenizer.h"

namespace llmq::cli {

void register_data(CLI::App& app) {
  auto* cmd = app.add_subcommand("data", "prepare training data");
  cmd->require_subcommand(1);
  auto* gen = cmd->add_subcommand("generate", "data-free training text from a model (LLM-QAT's recipe: a first token "
                                           "across the vocabulary, a greedy prefix, then sampling), JSONL for data prepare");
  struct GOpts {
    std::string model, out, prefix = "3-5";
    DataGenOptions o;
    bool json = false;
  };
  auto g = std::make_shared<GOpts>();
  gen->add_option("-m,--model", g->model, "model directory or training run")->required()->transform(llmq::cli::kRunLatest);
  gen->add_option("--out", g->out, "JSONL file ({\"text\": ...} a line); an existing one is continued (resumable)")->required();
  gen->add_option("--samples", g->o.samples, "samples in the file when done (default 1000)")->check(llmq::cli::kPositive);
  gen->add_option("--seq-len", g->o.seq_len, "tokens per sample (default 256)")->check(llmq::cli::kPositive);
  gen->add_option("--greedy-prefix", g->prefix, "greedy tokens at the start, first token included: a length or a "
                                                 "range, cycled over the samples (default 3-5, LLM-QAT's)");
  gen->add_option("--temperature", g->o.temperature, "sampling temperature after the prefix (default 1)");
  gen->add_option("--top-k", g->o.top_k, "top-k after the prefix (default 50; 0 = off)");
  gen->add_option("--batch", g->o.batch, "sequences per forward (default 16)")->check(llmq::cli::kPositive);
  gen->add_option("--seed", g->o.seed, "seed: sample s samples with seed + s (default 1)");
  gen->add_flag("--json", g->json, "print a JSON summary");
  gen->callback([g] {
    std::tie(g->o.greedy_lo, g->o.greedy_hi) = parse_greedy_prefix(g->prefix);
    if (!(g->o.temperature > 0)) fail("data generate: --temperature must be positive (the prefix is the greedy part)");
    Model m = model_load(g->model, load_mode());
    auto tok = tokenizer_load(g->model);
    check_tokenizer_fits(*tok, m.config, g->model);
    Progress bar(fmt::format("generating {}", g->out), (uint64_t)g->o.samples, !g->json);
    const DataGenResult r = generate_data_file(m, *tok, g->o, g->out, [&](int64_t done, int64_t) { bar.update((uint64_t)done); });
    bar.finish();
    const double tps = r.seconds > 0 ? (double)r.tokens / r.seconds : 0;
    if (g->json)
      fmt::print("{}\n", nlohmann::json{{"out", g->out}, {"samples", r.kept + r.written}, {"kept", r.kept},
                                        {"written", r.written}, {"tokens", r.tokens}, {"seconds", r.seconds},
                                        {"tokens_per_s", tps}}.dump());
    else
      fmt::print("wrote {}: {} samples ({} were there), {} tokens in {} ({:.0f} tok/s)\n", g->out, r.kept + r.written,
                 r.kept, r.tokens, format_duration(r.seconds), tps);
  });

  auto* tasks = cmd->add_subcommand("tasks", "build zero-shot task files (cloze, final word) from held-out real text "
                                             "for `llmq eval tasks`");
  struct TOpts {
    std::vector<std::string> inputs;
    std::string out;
    MakeTasksOptions o;
    bool overwrite = false;
  };
  auto t = std::make_shared<TOpts>();
  tasks->add_option("--input", t->inputs, "text files (documents: blank-line separated paragraphs)")->required()->check(CLI::ExistingFile);
  tasks->add_option("--out", t->out, "output JSONL file")->required();
  tasks->add_option("--kind", t->o.kind, "cloze (pick the next sentence of four) or final-word (LAMBADA-style)")
      ->check(CLI::IsMember({"cloze", "final-word"}));
  tasks->add_option("--n", t->o.n, "items (default 200)")->check(llmq::cli::kPositive);
  tasks->add_option("--passage-words", t->o.passage_words, "words per passage, about (default 60)");
  tasks->add_option("--seed", t->o.seed, "seed (default 1)");
  tasks->callback([t] {
    std::vector<std::string> texts;
    for (const auto& f : t->inputs) texts.push_back(read_text_file(f));
    const auto lines = make_tasks(texts, t->o);
    std::string body;
    for (const auto& l : lines) body += l + "\n";
    write_file_atomic(t->out, body);
    fmt::print("wrote {}: {} {} items\n", t->out, lines.size(), t->o.kind);
  });

  auto* prep = cmd->add_subcommand("prepare", "tokenize text or JSONL files into token shards plus a manifest");
  auto o = std::make_shared<PrepareOptions>();
  auto tok_path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false), no_bos = std::make_shared<bool>(false), no_eos = std::make_shared<bool>(false);
  prep->add_option("--tokenizer", *tok_path, "tokenizer file or model directory")->required();
  prep->add_option("--input", o->inputs, "text or JSONL files")->required();
  prep->add_option("--out", o->out_dir, "output directory")->required();
  prep->add_option("--val-fraction", o->val_fraction, "share of documents held out for validation (default 0.01)")
      ->check(CLI::Range(0.0, 0.999));
  prep->add_option("--seed", o->seed, "seed of the train/validation split");
  prep->add_option("--format", o->format,
                   "auto (by extension), text, jsonl, or chat: JSONL conversations {\"messages\": [{\"role\", \"content\"}, "
                   "...]} rendered with the tokenizer's chat_template (tokenizer_config.json; else the Llama 3 format), "
                   "trained only on the assistant turns (a loss mask; conversations follow each other in the token "
                   "stream, so a training window may span two of them and attend across)")
      ->check(CLI::IsMember({"auto", "text", "jsonl", "chat"}));
  prep->add_option("--docs", o->docs, "text documents: lines (one per line), blank (blank-line separated) or file")
      ->check(CLI::IsMember({"lines", "blank", "file"}));
  prep->add_option("--text-field", o->text_field, "JSONL field with the text (default \"text\")");
  prep->add_option("--shard-tokens", o->shard_tokens, "tokens per shard file (default 67108864)")->check(llmq::cli::kPositive);
  prep->add_flag("--no-bos", *no_bos, "do not start documents with BOS");
  prep->add_flag("--no-eos", *no_eos, "do not end documents with EOS");
  prep->add_flag("--json", *json, "print a JSON summary");
  auto overwrite = std::make_shared<bool>(false);
  prep->add_flag("--overwrite", *overwrite,
                 "replace an --out directory that llmq did not write (the dataset appears whole: built under a "
                 "temporary name and swapped in, so an interrupted run leaves the previous dataset intact)");
  prep->callback([o, tok_path, json, no_bos, no_eos, overwrite] {
    auto tok = tokenizer_load(*tok_path);
    if (o->format == "chat") {
      o->chat_template = chat_template_find(*tok_path);
      o->bos_text = tok->bos_id >= 0 ? tok->token_bytes(tok->bos_id) : "";
      if (o->chat_template.empty() && !*json)
        fmt::print(stderr, "note: {} has no chat_template in tokenizer_config.json; rendering with the Llama 3 chat format\n",
                   *tok_path);
    }
    o->bos = !*no_bos;
    o->eos = !*no_eos;
    o->progress = !*json;
    OutputDir od(o->out_dir, "data prepare", *overwrite);
    PrepareOptions po = *o;
    po.out_dir = od.path();
    PrepareStats s = data_prepare(*tok, po);
    od.commit();
    const double mbs = s.bytes / 1e6 / std::max(s.seconds, 1e-9);
    if (*json) {
      fmt::print("{}\n", nlohmann::json{{"out", o->out_dir},
                                        {"bytes", s.bytes},
                                        {"documents", s.documents},
                                        {"empty_documents", s.empty_documents},
                                        {"train_tokens", s.train_tokens},
                                        {"val_tokens", s.val_tokens},
                                        {"train_documents", s.train_docs},
                                        {"val_documents", s.val_docs},
                                        {"seconds", s.seconds},
                                        {"target_tokens", o->format == "chat" ? nlohmann::json(s.target_tokens) : nlohmann::json()},
                                        {"mb_per_s", mbs}}
                             .dump());
      return;
    }
    fmt::print("wrote {}: {} document{} ({} train, {} val), {} train tokens, {} val tokens, {:.1f} MB in {:.2f}s ({:.1f} MB/s)\n",
               o->out_dir, s.documents, s.documents == 1 ? "" : "s", s.train_docs, s.val_docs, s.train_tokens,
               s.val_tokens, s.bytes / 1e6, s.seconds, mbs);
    if (o->format == "chat")
      fmt::print("chat: {} of {} tokens ({:.1f}%) are assistant turns, the only ones trained on\n", s.target_tokens,
                 s.train_tokens + s.val_tokens, 100.0 * (double)s.target_tokens / std::max<double>(1, s.train_tokens + s.val_tokens));
    if (s.val_docs == 0 && o->val_fraction > 0)
      fmt::print(stderr, "llmq: warning: the validation split is empty; raise --val-fraction\n");
  });
}

}  // namespace llmq::cli
