// llmq generate: sample continuations of text (or token-id) prompts, chat, interactive chat.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <random>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "train/finetune.h"
#include "core/file_util.h"
#include "core/progress.h"
#include "dist/comm.h"
#include "infer/generator.h"
#include "infer/text_stream.h"
#include "io/hf_dir.h"
#include "ops/ops.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

namespace llmq::cli {

namespace {
struct Opts {
  std::string model, adapter, tokenizer, system, messages;
  std::vector<std::string> prompts, stops;
  std::vector<int32_t> eos;
  GenerateOptions g;
  KvOption kv;
  int tp = 1;
  bool ignore_eos = false, json = false, ids = false, chat = false, interactive = false, no_special = false;
  bool show_prompt = false, invariant = false;
};

// Text mode: each sequence's text (stop strings, UTF-8 held back), printed as it comes when
// `print`.
struct TextStreams {
  std::vector<TextStream> seq;
  bool print;
  TextStreams(const Tokenizer& t, const std::vector<std::string>& stops, size_t n, bool p) : print(p) {
    for (size_t i = 0; i < n; i++) seq.emplace_back(t, stops);
  }
  void emit(size_t i) {
    const std::string s = seq[i].take();
    if (print && !s.empty()) {
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);  // a token at a time, also into a pipe
    }
  }
  bool on_token(size_t i, int32_t id) {
    const bool stop = seq[i].push(id);
    emit(i);
    return stop;
  }
  void finish() {
    for (size_t i = 0; i < seq.size(); i++) seq[i].finish(), emit(i);
  }
  const std::string& text(size_t i) const { return seq[i].text(); }
};

void report(const std::vector<GenerateResult>& res, const std::vector<std::vector<int32_t>>& prompts, double& pre_tps,
            double& dec_tps) {
  double prefill_s = 0, decode_s = res.empty() ? 0 : res[0].decode_seconds;
  size_t prompt_tokens = 0, gen_tokens = 0;
  for (size_t i = 0; i < res.size(); i++) {
    prefill_s += res[i].prefill_seconds;
    prompt_tokens += prompts[i].size();
    gen_tokens += res[i].tokens.size();
  }
  // The first generated token of each prompt comes from prefill.
  size_t decoded = gen_tokens >= res.size() ? gen_tokens - res.size() : 0;
  pre_tps = prefill_s > 0 ? prompt_tokens / prefill_s : 0;
  dec_tps = decode_s > 0 ? decoded / decode_s : 0;
}

// Interactive chat in the terminal: each turn re-renders the conversation and generates
// the assistant's reply, streamed; an empty line or end of input ends the session.
void interactive(const Model& m, const Tokenizer& tok, const std::string& tmpl, Opts& o) {
  std::vector<ChatMessage> conv;
  if (!o.system.empty()) conv.push_back({"system", o.system});
  const bool tty = isatty(0);
  const std::string bos = tok.bos_id >= 0 ? tok.token_bytes(tok.bos_id) : "";
  for (;;) {
    if (tty) fmt::print(stderr, "\n> ");
    std::string line;
    if (!std::getline(std::cin, line) || line.empty()) break;
    conv.push_back({"user", line});
    auto prompt = tok.encode(chat_render(conv, tmpl, bos), true);
    if ((int64_t)prompt.size() + o.g.max_new_tokens > m.config.max_seq_len)
      fail("the conversation ({} tokens) no longer fits the model's context of {} tokens", prompt.size(), m.config.max_seq_len);
    TextStreams ts(tok, o.stops, 1, true);
    generate(m, {prompt}, o.g, [&](size_t i, int32_t t) { return ts.on_token(i, t); });
    ts.finish();
    std::printf("\n");
    std::fflush(stdout);
    conv.push_back({"assistant", ts.text(0)});
  }
}
}  // namespace

std::vector<int32_t> encode_prompt(const Tokenizer& t, const std::string& text, bool special, bool bos) {
  std::vector<int32_t> ids;
  if (bos && t.add_bos && t.bos_id >= 0) ids.push_back(t.bos_id);
  auto v = t.encode(text, special);
  ids.insert(ids.end(), v.begin(), v.end());
  return ids;
}

std::vector<int32_t> default_eos_ids(const ModelConfig& c, const Tokenizer* tok) {
  std::vector<int32_t> ids;
  for (auto e : c.eos_token_ids) ids.push_back((int32_t)e);
  if (tok)
    for (auto e : tok->eos_ids)
      if (std::find(ids.begin(), ids.end(), e) == ids.end()) ids.push_back(e);
  return ids;
}

void register_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "generate text from prompts, or chat");
  auto o = std::make_shared<Opts>();
  cmd->add_option("-m,--model", o->model, "model directory, .gguf file, or a training run (its latest checkpoint)")->required()->transform(llmq::cli::kRunLatest);
  cmd->add_option("--adapter", o->adapter, "an adapter directory (PEFT layout: LoRA/DoRA, llmq finetune or made elsewhere), applied unmerged")->transform(llmq::cli::kRunLatest);
  cmd->add_option("-p,--prompt", o->prompts, "prompt text (token ids with --ids or without a tokenizer); repeat for a batch");
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer file or directory (default: the model directory's)");
  cmd->add_flag("--ids", o->ids, "prompts and --stop are token ids, output is token ids");
  cmd->add_flag("--no-special", o->no_special, "do not parse special-token text such as <|eot_id|> in prompts");
  cmd->add_flag("--chat", o->chat, "wrap the prompt (or --messages) in the chat template");
  cmd->add_option("--system", o->system, "system message for --chat and --interactive");
  cmd->add_option("--messages", o->messages, "JSON file of [{\"role\", \"content\"}] messages (implies --chat)");
  cmd->add_flag("-i,--interactive", o->interactive, "chat in the terminal, one user line per turn");
  cmd->add_flag("--show-prompt", o->show_prompt, "print the rendered chat prompt on stderr before generating");
  cmd->add_option("-n,--max-new-tokens", o->g.max_new_tokens, "tokens to generate per prompt")->check(llmq::cli::kNonNegative);
  // Sampling defaults: the model's generation_config.json (temperature, top_p, top_k,
  // do_sample) when it has one, as transformers and vLLM use it; else the values shown.
  auto* temp = cmd->add_option("--temperature", o->g.sampling.temperature, "0 = greedy (default: the model's generation_config.json, else this)")
      ->check(llmq::cli::kNonNegative)->capture_default_str();
  auto* topk = cmd->add_option("--top-k", o->g.sampling.top_k, "keep the k most likely tokens (0 = off)")
      ->check(llmq::cli::kNonNegative)->capture_default_str();
  auto* topp = cmd->add_option("--top-p", o->g.sampling.top_p, "nucleus sampling mass (1 = off; default: generation_config.json, else this)")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--min-p", o->g.sampling.min_p, "drop tokens below min-p x p(max) (0 = off)")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--repeat-penalty", o->g.sampling.repeat_penalty, "penalty for recent tokens (1 = off)")
      ->check(llmq::cli::kPositive)->capture_default_str();
  cmd->add_option("--repeat-last-n", o->g.sampling.repeat_last_n, "window for the penalty (-1 = whole sequence)")
      ->capture_default_str();
  auto seed = std::make_shared<int64_t>(0);
  cmd->add_option("--seed", *seed, "random seed (same seed, same output); -1 = a random seed, printed on stderr")
      ->capture_default_str();
  cmd->add_option("--eos", o->eos, "stop token ids (default: the model's and tokenizer's end-of-sequence ids)");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "do not stop at end-of-sequence tokens");
  cmd->add_option("--stop", o->stops, "stop once this text (token ids with --ids) has been generated; repeatable");
  cmd->add_option("--ctx", o->g.context, "KV-cache length (default: prompt + max new tokens)")->check(llmq::cli::kNonNegative);
  o->kv.add(cmd);
  cmd->add_flag("--json", o->json, "print one JSON object with tokens, text, stop reasons and speeds");
  cmd->add_option("--logprobs", o->g.top_logprobs, "with --json: the N most likely tokens and their log probabilities at each step")
      ->check(CLI::Range(0, 20));
  cmd->add_flag("--batch-invariant", o->invariant, "every product on the GEMV kernels, as llmq serve runs float models "
                "with --batch-invariant on (same bits; quantized models are the same either way)");
  cmd->add_option("--tp", o->tp, "tensor-parallel ranks: run under `mpirun -np N` with --tp N (Megatron layout; "
                               "every rank computes the same tokens, rank 0 prints)")
      ->check(llmq::cli::kPositive);
  cmd->callback([o, temp, topk, topp, seed] {
    if (*seed < -1) fail("--seed must be -1 (random) or a non-negative number");
    if (*seed == -1) {
      o->g.sampling.seed = std::random_device{}() ^ (uint64_t)std::random_device{}() << 32;
      fmt::print(stderr, "seed {}\n", o->g.sampling.seed);
    } else {
      o->g.sampling.seed = (uint64_t)*seed;
    }
    const std::string gen_cfg = (std::filesystem::path(o->model) / "generation_config.json").string();
    if (std::filesystem::is_regular_file(gen_cfg)) {
      const nlohmann::json gc = nlohmann::json::parse(read_text_file(gen_cfg), nullptr, false);
      if (!gc.is_object()) fail("{}: not a JSON object", gen_cfg);
      auto number = [&](const char* k) { return gc.contains(k) && gc[k].is_number(); };
      if (temp->count() == 0 && gc.contains("do_sample") && gc["do_sample"] == false) o->g.sampling.temperature = 0;
      else if (temp->count() == 0 && number("temperature")) o->g.sampling.temperature = gc["temperature"].get<float>();
      if (topp->count() == 0 && number("top_p")) o->g.sampling.top_p = gc["top_p"].get<float>();
      if (topk->count() == 0 && number("top_k")) o->g.sampling.top_k = gc["top_k"].get<int>();
    }
    Model m = model_load(o->model, load_mode());
    if (!o->adapter.empty()) train::attach_adapter(m, o->adapter);
    o->g.kv_type = o->kv.resolve(m);
    ops_set_batch_invariant(o->invariant);
    shard_for_tp(m, o->tp, "generate");
    std::unique_ptr<Tokenizer> tok;
    if (!o->tokenizer.empty()) tok = tokenizer_load(o->tokenizer);
    else if (!o->ids && !tokenizer_find(o->model).empty()) tok = tokenizer_load(o->model);
    if (o->ids) tok.reset();
    // Options that would be ignored in this combination are refused.
    if (!o->messages.empty() && (!o->prompts.empty() || !o->system.empty()))
      fail("--messages holds the whole conversation: drop -p/--system (or put them in the file)");
    if (!o->system.empty() && !o->chat && !o->interactive)
      fail("--system is a chat message: add --chat (or -i)");
    if (o->interactive && !o->prompts.empty()) fail("-i reads the prompts from the terminal: drop -p");
    const bool chat = o->chat || !o->messages.empty() || o->interactive;
    if (chat && !tok) fail("--chat, --messages and --interactive need a tokenizer (none in {}; pass --tokenizer)", o->model);
    if (tok) check_tokenizer_fits(*tok, m.config, o->model);
    if (!o->ignore_eos) {
      o->g.eos_ids = o->eos.empty() ? default_eos_ids(m.config, tok.get()) : o->eos;
    }
    const std::string tmpl = tok ? chat_template_find(o->tokenizer.empty() ? o->model : o->tokenizer) : "";
    // Without a template the Llama 3 format is used; a model trained on other text will not
    // know its header tokens, so say so (--show-prompt prints what the model is given).
    if (chat && tmpl.empty())
      fmt::print(stderr, "warning: {} has no chat_template in tokenizer_config.json; using the Llama 3 chat format\n",
                 o->tokenizer.empty() ? o->model : o->tokenizer);
    if (o->interactive) return interactive(m, *tok, tmpl, *o);

    // Why prompts are token ids here: --ids, or a model without a tokenizer.
    const std::string ids_hint = o->ids ? "--ids makes prompts and --stop token ids (drop it to give text)"
                                        : "text prompts need a tokenizer: the model directory has none (give --tokenizer PATH)";
    std::vector<std::vector<int32_t>> prompts;
    if (chat) {
      std::vector<ChatMessage> msgs;
      if (!o->messages.empty()) msgs = chat_messages_load(o->messages);
      else {
        if (o->prompts.size() != 1) fail("--chat takes one --prompt (or a --messages file)");
        if (!o->system.empty()) msgs.push_back({"system", o->system});
        msgs.push_back({"user", o->prompts[0]});
      }
      const std::string bos = tok->bos_id >= 0 ? tok->token_bytes(tok->bos_id) : "";
      const std::string rendered = chat_render(msgs, tmpl, bos);
      if (o->show_prompt) fmt::print(stderr, "--- prompt ---\n{}\n--- end of prompt ---\n", rendered);
      prompts.push_back(tok->encode(rendered, true));
    } else {
      if (o->prompts.empty()) fail("give a --prompt (or --chat/--messages/--interactive)");
      for (size_t i = 0; i < o->prompts.size(); i++)
        prompts.push_back(tok ? encode_prompt(*tok, o->prompts[i], !o->no_special, true)
                              : parse_token_ids(o->prompts[i], fmt::format("prompt {}", i + 1), ids_hint));
    }
    if (!tok)
      for (size_t i = 0; i < o->stops.size(); i++)
        o->g.stop_sequences.push_back(parse_token_ids(o->stops[i], "--stop", ids_hint));
    {
      // The KV cache is sized to the longest prompt + -n (at most the model's context): say
      // when that is large, and when -n runs past the context.
      const ModelConfig& c = m.config;
      size_t longest = 0;
      for (const auto& p : prompts) longest = std::max(longest, p.size());
      const int64_t want = (int64_t)longest + o->g.max_new_tokens;
      const int64_t ctx = o->g.context > 0 ? o->g.context : std::min<int64_t>(c.max_seq_len, want);
      const int eb = o->g.kv_type == KvType::F32 ? 4 : o->g.kv_type == KvType::BF16 ? 2 : 1;
      const double bytes = 2.0 * (double)c.n_layers * (double)c.kv_dim() * (double)ctx * (double)prompts.size() * eb;
      if (want > c.max_seq_len && o->g.context <= 0)
        fmt::print(stderr, "note: prompt + -n = {} tokens is more than the model's context of {}; generation stops there\n",
                   want, c.max_seq_len);
      if (bytes >= 1e9)
        fmt::print(stderr, "note: KV cache of {} x {} tokens takes {} ({}); --kv-cache bf16 or int8 halves or quarters it\n",
                   prompts.size(), ctx, format_bytes(bytes), kv_type_name(o->g.kv_type));
    }
    // Stream a single prompt as it is generated; a batch prints one block per prompt.
    const bool stream = !o->json && prompts.size() == 1;
    std::unique_ptr<TextStreams> ts;
    if (tok) ts = std::make_unique<TextStreams>(*tok, o->stops, prompts.size(), stream);
    auto res = generate(m, prompts, o->g, [&](size_t i, int32_t t) {
      if (ts) return ts->on_token(i, t);
      if (stream) {
        std::printf("%d ", t);
        std::fflush(stdout);
      }
      return false;
    });
    if (ts) ts->finish();
    double pre_tps, dec_tps;
    report(res, prompts, pre_tps, dec_tps);
    if (o->json) {
      nlohmann::json j = {{"results", nlohmann::json::array()}, {"prefill_tok_s", pre_tps}, {"decode_tok_s", dec_tps}};
      for (size_t i = 0; i < res.size(); i++) {
        nlohmann::json r = {{"prompt_tokens", prompts[i].size()}, {"tokens", res[i].tokens}, {"stop", stop_reason_name(res[i].reason)}};
        if (ts) r["text"] = ts->text(i);
        if (o->g.top_logprobs > 0) {
          nlohmann::json tl = nlohmann::json::array();
          for (const auto& step : res[i].top) {
            nlohmann::json a = nlohmann::json::array();
            for (const auto& [id, lp] : step) a.push_back({{"id", id}, {"logprob", lp}});
            tl.push_back(a);
          }
          r["top_logprobs"] = tl;
        }
        j["results"].push_back(r);
      }
      fmt::print("{}\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      return;
    }
    if (stream) {
      std::printf("\n");
      std::fflush(stdout);
    } else {
      for (size_t i = 0; i < res.size(); i++) {
        std::string s;
        if (ts) s = ts->text(i);
        else
          for (auto t : res[i].tokens) s += std::to_string(t) + " ";
        fmt::print("[{}] {}\n", i + 1, s);
      }
    }
    std::string reasons;  // one per prompt
    for (size_t i = 0; i < res.size(); i++)
      reasons += (i ? ", " : "") + (res.size() > 1 ? fmt::format("[{}] ", i + 1) : "") + stop_reason_name(res[i].reason);
    if (dist::world().rank() == 0)  // one line per job (tensor-parallel ranks all decode)
      fmt::print(stderr, "stop: {}; prefill {:.1f} tok/s, decode {:.1f} tok/s\n", reasons, pre_tps, dec_tps);
  });
}

}  // namespace llmq::cli
