// llmq generate: sample continuations of one or more prompts.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "infer/generator.h"
#include "io/hf_dir.h"

namespace llmq::cli {

void register_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "generate text from prompts (token ids until a tokenizer is present)");
  struct Opts {
    std::string model;
    std::vector<std::string> prompts, stops;
    std::vector<int32_t> eos;
    GenerateOptions g;
    bool ignore_eos = false, json = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("-m,--model", o->model, "model directory")->required();
  cmd->add_option("-p,--prompt", o->prompts, "prompt as token ids, e.g. \"128000 791 6864\"; repeat for a batch")->required();
  cmd->add_option("-n,--max-new-tokens", o->g.max_new_tokens, "tokens to generate per prompt")->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature", o->g.sampling.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", o->g.sampling.top_k, "keep the k most likely tokens (0 = off)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", o->g.sampling.top_p, "nucleus sampling mass (1 = off)")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--min-p", o->g.sampling.min_p, "drop tokens below min-p x p(max) (0 = off)")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--repeat-penalty", o->g.sampling.repeat_penalty, "penalty for recent tokens (1 = off)")->check(CLI::PositiveNumber);
  cmd->add_option("--repeat-last-n", o->g.sampling.repeat_last_n, "window for the penalty (-1 = whole sequence)");
  cmd->add_option("--seed", o->g.sampling.seed, "random seed (same seed, same output)");
  cmd->add_option("--eos", o->eos, "stop token ids (default: eos_token_id from config.json)");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "do not stop at end-of-sequence tokens");
  cmd->add_option("--stop", o->stops, "stop after this token-id sequence, e.g. \"13 13\"; repeatable");
  cmd->add_option("--ctx", o->g.context, "KV-cache length (default: prompt + max new tokens)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--json", o->json, "print one JSON object with tokens, stop reasons and speeds");
  cmd->callback([o] {
    Model m = model_load(o->model, load_mode());
    std::vector<std::vector<int32_t>> prompts;
    for (size_t i = 0; i < o->prompts.size(); i++)
      prompts.push_back(parse_token_ids(o->prompts[i], fmt::format("prompt {}", i + 1)));
    for (size_t i = 0; i < o->stops.size(); i++) o->g.stop_sequences.push_back(parse_token_ids(o->stops[i], "--stop"));
    if (!o->ignore_eos) {
      if (!o->eos.empty()) o->g.eos_ids = o->eos;
      else for (auto e : m.config.eos_token_ids) o->g.eos_ids.push_back((int32_t)e);
    }
    // Stream tokens as they come for a single prompt; a batch prints one line per prompt.
    const bool stream = !o->json && prompts.size() == 1;
    auto res = generate(m, prompts, o->g, [&](size_t, int32_t t) {
      if (stream) {
        std::printf("%d ", t);
        std::fflush(stdout);
      }
    });
    double prefill_s = 0, decode_s = res.empty() ? 0 : res[0].decode_seconds;
    size_t prompt_tokens = 0, gen_tokens = 0;
    for (size_t i = 0; i < res.size(); i++) {
      prefill_s += res[i].prefill_seconds;
      prompt_tokens += prompts[i].size();
      gen_tokens += res[i].tokens.size();
    }
    // The first generated token of each prompt comes from prefill.
    size_t decoded = gen_tokens >= res.size() ? gen_tokens - res.size() : 0;
    double pre_tps = prefill_s > 0 ? prompt_tokens / prefill_s : 0, dec_tps = decode_s > 0 ? decoded / decode_s : 0;
    if (o->json) {
      nlohmann::json j = {{"results", nlohmann::json::array()}, {"prefill_tok_s", pre_tps}, {"decode_tok_s", dec_tps}};
      for (auto& r : res) j["results"].push_back({{"tokens", r.tokens}, {"stop", stop_reason_name(r.reason)}});
      fmt::print("{}\n", j.dump());
      return;
    }
    if (stream) {
      std::printf("\n");
      std::fflush(stdout);
    } else {
      for (size_t i = 0; i < res.size(); i++) {
        std::string s;
        for (auto t : res[i].tokens) s += std::to_string(t) + " ";
        fmt::print("[{}] {}\n", i + 1, s);
      }
    }
    fmt::print(stderr, "stop: {}; prefill {:.1f} tok/s, decode {:.1f} tok/s\n", stop_reason_name(res[0].reason), pre_tps,
               dec_tps);
  });
}

}  // namespace llmq::cli
