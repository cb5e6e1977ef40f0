// llmq tokenizer encode|decode|info|train: text <-> ids on stdin/stdout, and training a
// SentencePiece tokenizer for small models.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/output_dir.h"
#include "ops/ops.h"
#include "tokenizer/spm.h"
#include "tokenizer/tokenizer.h"

namespace llmq::cli {

namespace {
// Reads stdin line by line (the newline is not part of the line); binary-safe.
template <class Fn>
void for_each_stdin_line(Fn fn) {
  std::ios::sync_with_stdio(false);
  std::string line;
  while (std::getline(std::cin, line)) fn(line);
}
}  // namespace

void register_tokenizer(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenizer", "encode, decode, inspect or train tokenizers");
  cmd->require_subcommand(1);
  auto path = std::make_shared<std::string>();

  auto* enc = cmd->add_subcommand("encode", "read text on stdin; print one line of token ids per input line");
  auto bos = std::make_shared<bool>(false), special = std::make_shared<bool>(false);
  enc->add_option("--tokenizer", *path, "tokenizer file or model directory")->required();
  enc->add_flag("--bos", *bos, "start every line with the BOS token");
  enc->add_flag("--special", *special,
                "parse special-token text such as <|eot_id|> into its id. Off by default, as tiktoken's encode "
                "and data prepare treat it: text from files must not turn into control tokens (generate parses "
                "them, since a prompt is the user's own; --no-special there)");
  enc->callback([path, bos, special] {
    auto t = tokenizer_load(*path);
    if (*bos && t->bos_id < 0) fail("{}: this tokenizer has no BOS token", *path);
    std::string out;
    for_each_stdin_line([&](const std::string& line) {
      out.clear();
      if (*bos) out += std::to_string(t->bos_id);
      for (int32_t id : t->encode(line, *special)) {
        if (!out.empty()) out += ' ';
        out += std::to_string(id);
      }
      out += '\n';
      std::fwrite(out.data(), 1, out.size(), stdout);
    });
  });

  auto* dec = cmd->add_subcommand("decode", "read lines of token ids on stdin; print the text of each line");
  auto skip = std::make_shared<bool>(false);
  dec->add_option("--tokenizer", *path, "tokenizer file or model directory")->required();
  dec->add_flag("--skip-special", *skip, "leave special tokens out of the text");
  dec->callback([path, skip] {
    auto t = tokenizer_load(*path);
    int64_t n = 0;
    for_each_stdin_line([&](const std::string& line) {
      auto ids = parse_token_ids(line, fmt::format("stdin line {}", ++n), "tokenizer decode reads token ids, one sequence per line");
      std::string s = t->decode(ids, *skip) + "\n";
      std::fwrite(s.data(), 1, s.size(), stdout);
    });
  });

  auto* info = cmd->add_subcommand("info", "kind, vocabulary size, special tokens and fingerprint");
  auto json = std::make_shared<bool>(false);
  info->add_option("--tokenizer", *path, "tokenizer file or model directory")->required();
  info->add_flag("--json", *json, "machine-readable output");
  info->callback([path, json] {
    auto t = tokenizer_load(*path);
    nlohmann::json j = {{"source", t->source()},   {"kind", t->kind()}, {"vocab_size", t->vocab_size()},
                        {"bos_id", t->bos_id},     {"eos_ids", t->eos_ids}, {"add_bos", t->add_bos},
                        {"fingerprint", t->fingerprint()}};
    if (*json) return fmt::print("{}\n", j.dump());
    fmt::print("source       {}\nkind         {}\nvocab        {}\nbos          {}\neos          {}\nfingerprint  {}\n",
               t->source(), t->kind(), t->vocab_size(), t->bos_id, fmt::join(t->eos_ids, " "), t->fingerprint());
  });

  auto* train = cmd->add_subcommand("train", "train a SentencePiece tokenizer (bpe or unigram) on text files");
  auto o = std::make_shared<SpmTrainOptions>();
  auto out = std::make_shared<std::string>();
  train->add_option("--input", o->inputs, "text files, one sentence or paragraph per line")->required();
  train->add_option("--vocab", o->vocab_size, "vocabulary size (default 8000)")->check(CLI::Range(260, 1 << 20));
  train->add_option("--type", o->type, "bpe or unigram (default bpe)")->check(CLI::IsMember({"bpe", "unigram"}));
  train->add_option("--max-sentences", o->max_sentences, "lines sampled for training (default 2,000,000)");
  train->add_option("--seed", o->seed, "random seed");
  train->add_option("--out", *out, "directory to write tokenizer.model and tokenizer_config.json into")->required();
  auto overwrite = std::make_shared<bool>(false);
  train->add_flag("--overwrite", *overwrite, "replace an --out directory that llmq did not write");
  train->callback([o, out, overwrite] {
    if (o->threads <= 0) o->threads = ops_threads();  // llmq --threads N (default: all cores)
    {
      OutputDir od(*out, "tokenizer train", *overwrite);
      spm_train(*o, od.path());
      tokenizer_load(od.path());  // what is swapped in loads
      od.commit();
    }
    auto t = tokenizer_load(*out);
    fmt::print(stderr, "wrote {}/tokenizer.model: {} pieces, fingerprint {}\n", *out, t->vocab_size(), t->fingerprint());
  });
}

}  // namespace llmq::cli
