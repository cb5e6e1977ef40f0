// llmq serve: an OpenAI-compatible HTTP server (Debian's cpp-httplib) over the continuous-
// batching engine (serve/engine.h). Endpoints: /v1/models, /v1/completions,
// /v1/chat/completions (streaming as Server-Sent Events), /tokenize, /detokenize, /health,
// /metrics (Prometheus text), and a chat page at /.
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "cli/common.h"
#include "core/error.h"
#include "core/file_util.h"
#include "infer/text_stream.h"
#include "ops/ops.h"
#include "serve/api.h"
#include "serve/chat_page.h"
#include "serve/engine.h"
#include "tokenizer/chat.h"
#include "train/finetune.h"

namespace llmq::cli {

namespace {
using json = nlohmann::json;
using serve::ApiError;

struct Opts {
  std::string model, host = "127.0.0.1", api_key, api_key_file, name, tokenizer;
  std::vector<std::string> adapters;
  int port = 8080;
  serve::EngineOptions e;
  KvOption kv;
  double timeout = 600;
  int64_t max_body = 8 << 20;
  bool no_prefix_cache = false;
  std::string invariant = "auto";
};

// One request's state, shared by the HTTP thread and the engine's callbacks.
struct Choice {
  std::unique_ptr<TextStream> ts;  // null without a tokenizer (token ids only)
  int prompt = 0;  // which prompt of the request
  std::vector<int32_t> tokens;
  std::vector<serve::TokenLogprob> lps, prompt_lps;
  std::string finish;
  size_t lp_sent = 0;  // logprob entries streamed so far
  bool done = false, started = false;
  Choice(const Tokenizer* t, const std::vector<std::string>& stops) {
    if (t) ts = std::make_unique<TextStream>(*t, stops);
  }
};
struct Job {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> stops;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::unique_ptr<Choice>> choices;
  int remaining = 0;
  int64_t completion_tokens = 0, cached_tokens = 0;
  bool aborted = false, timed_out = false;
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
};

std::string error_body(const ApiError& e) {
  json err = {{"message", e.what()}, {"type", e.type}, {"param", e.param.empty() ? json() : json(e.param)},
              {"code", e.code.empty() ? json(e.status) : json(e.code)}};
  return json{{"error", err}}.dump(-1, ' ', false, json::error_handler_t::replace);
}
void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_body(e), "application/json");
}
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string random_id(const char* prefix) {
  static std::atomic<uint64_t> n{0};
  static const uint64_t base = std::random_device{}();
  return fmt::format("{}-{:016x}", prefix, base ^ (n.fetch_add(1) * 0x9e3779b97f4a7c15ull));
}

class Server {
 public:
  explicit Server(Opts& o) : o_(o) {}

  void load() {
    Model m = model_load(o_.model, load_mode());
    // Adapters, unmerged, each chosen per request by its name ("model"); rows of different
    // adapters share every forward (the base's products once, each adapter's on its rows).
    for (const std::string& a : o_.adapters) {
      const size_t eq = a.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == a.size()) fail("--adapter {}: expected NAME=DIR", a);
      const std::string nm = a.substr(0, eq);
      if (nm == name() || std::find(adapter_names_.begin(), adapter_names_.end(), nm) != adapter_names_.end())
        fail("--adapter {}: the name {} is already taken", a, nm);
      const float* norm0 = m.weights.norm.host<float>();
      std::vector<const float*> norms;
      for (const auto& L : m.weights.layers) norms.push_back(L.attn_norm.host<float>()), norms.push_back(L.ffn_norm.host<float>());
      train::attach_adapter(m, a.substr(eq + 1));
      bool same_norms = m.weights.norm.host<float>() == norm0;
      for (size_t l = 0; l < m.weights.layers.size(); l++)
        same_norms = same_norms && m.weights.layers[l].attn_norm.host<float>() == norms[2 * l] &&
                     m.weights.layers[l].ffn_norm.host<float>() == norms[2 * l + 1];
      if (!same_norms)
        fail("--adapter {}: it trains the norms, which every request shares; serve it merged (llmq merge) instead", a);
      for (auto& L : m.weights.layers) {
        L.served.push_back(L.lora);
        L.lora = {};
      }
      adapter_names_.push_back(nm);
    }
    o_.e.kv_type = o_.kv.resolve(m);
    // Batch invariance (docs/serving.md): integer-quantized blocks (and GGUF k-quants, whose
    // kernel computes each token alike for any batch) are invariant as they run; float ones
    // need every product on the GEMV kernels (exact, slower prefill).
    bool quantized = true;
    for (const auto& L : m.weights.layers)
      for (const Tensor* t : L.linears())
        quantized = quantized && (dtype_is_kquant(t->dtype()) ||
                                  (t->quant() && !t->quant()->fp8 && !t->quant()->act_float && !t->quant()->act_per_tensor));
    const bool inv = o_.invariant == "on" || (o_.invariant == "auto" && quantized);
    ops_set_batch_invariant(inv);
    if (!inv)
      fmt::print(stderr, "note: float weights: a request's logprobs can differ in the last bits with what it is batched "
                         "with (--batch-invariant on makes them exact at a prefill cost)\n");
    model_ = std::make_unique<Model>(std::move(m));
    const std::string tdir = o_.tokenizer.empty() ? o_.model : o_.tokenizer;
    if (!o_.tokenizer.empty() || !tokenizer_find(o_.model).empty()) {
      tok_ = tokenizer_load(tdir);
      check_tokenizer_fits(*tok_, model_->config, o_.model);
      tmpl_ = chat_template_find(tdir);
    }
    eos_ = default_eos_ids(model_->config, tok_.get());
    o_.e.prefix_cache = !o_.no_prefix_cache;
    engine_ = std::make_unique<serve::Engine>(*model_, o_.e);
    o_.e.n_blocks = engine_->options().n_blocks;
    engine_->start();
    created_ = std::time(nullptr);
    ready_ = true;
  }

  int64_t context() const { return engine_ ? engine_->context() : 0; }

  void routes(httplib::Server& svr) {
    svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      if (!ready_) return send_error(res, ApiError(503, "the model is loading", "", "server_error"));
      res.set_content("{\"status\":\"ok\"}", "application/json");
    });
    svr.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(serve::kChatPage, "text/html; charset=utf-8"); });
    svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics(), "text/plain; version=0.0.4");
    });
    auto guarded = [this](auto fn) {
      return [this, fn](const httplib::Request& req, httplib::Response& res) {
        try {
          authorize(req);
          if (!ready_) throw ApiError(503, "the model is loading", "", "server_error");
          fn(req, res);
        } catch (const ApiError& e) {
          send_error(res, e);
        } catch (const std::exception& e) {
          send_error(res, ApiError(400, e.what()));
        }
      };
    };
    svr.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
      json data = json::array();
      data.push_back({{"id", name()}, {"object", "model"}, {"created", created_}, {"owned_by", "llmq"},
                      {"root", o_.model}, {"parent", nullptr}, {"max_model_len", engine_->context()}});
      for (size_t k = 0; k < adapter_names_.size(); k++)
        data.push_back({{"id", adapter_names_[k]}, {"object", "model"}, {"created", created_}, {"owned_by", "llmq"},
                        {"root", o_.adapters[k].substr(o_.adapters[k].find('=') + 1)}, {"parent", name()},
                        {"max_model_len", engine_->context()}});
      res.set_content(dump({{"object", "list"}, {"data", data}}), "application/json");
    }));
    svr.Post("/v1/completions", guarded([this](const httplib::Request& req, httplib::Response& res) { generate(req, res, false); }));
    svr.Post("/v1/chat/completions", guarded([this](const httplib::Request& req, httplib::Response& res) { generate(req, res, true); }));
    svr.Post("/tokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
      const serve::TokenizeRequest t = serve::parse_tokenize(req.body);
      const Tokenizer& tk = need_tokenizer();
      std::vector<int32_t> ids = t.chat ? tk.encode(render(t.messages, t.add_generation_prompt), true)
                                        : encode_prompt(tk, t.prompt, true, t.add_special);
      res.set_content(dump({{"tokens", ids}, {"count", ids.size()}, {"max_model_len", engine_->context()}}), "application/json");
    }));
    svr.Post("/detokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
      const std::vector<int32_t> ids = serve::parse_detokenize(req.body);
      const Tokenizer& tk = need_tokenizer();
      for (int32_t t : ids)
        if (t >= tk.vocab_size()) throw ApiError(400, fmt::format("token id {} is outside the vocabulary", t), "tokens");
      res.set_content(dump({{"prompt", tk.decode(ids)}}), "application/json");
    }));
  }

 private:
  std::string name() const {
    if (!o_.name.empty()) return o_.name;
    return std::filesystem::path(o_.model).filename().string();
  }
  const Tokenizer& need_tokenizer() const {
    if (!tok_) throw ApiError(400, fmt::format("the model {} has no tokenizer: send token ids (or start with --tokenizer)", o_.model));
    return *tok_;
  }
  std::string render(const std::vector<ChatMessage>& msgs, bool gen_prompt) const {
    const std::string bos = tok_->bos_id >= 0 ? tok_->token_bytes(tok_->bos_id) : "";
    return chat_render(msgs, tmpl_, bos, gen_prompt);
  }
  void authorize(const httplib::Request& req) const {
    if (o_.api_key.empty()) return;
    const std::string got = req.get_header_value("Authorization");
    if (!serve::constant_time_equal(got, "Bearer " + o_.api_key))
      throw ApiError(401, "Incorrect API key provided.", "", "authentication_error", "invalid_api_key");
  }

  std::string token_text(int32_t id) const { return tok_ ? tok_->token_bytes(id) : std::to_string(id); }
  json bytes_of(const std::string& s) const {
    json b = json::array();
    for (unsigned char c : s) b.push_back((int)c);
    return b;
  }
  // Chat's logprobs entry of one token.
  json chat_lp(const serve::TokenLogprob& lp) const {
    json top = json::array();
    for (const auto& [t, l] : lp.top) {
      const std::string s = token_text(t);
      top.push_back({{"token", s}, {"logprob", l}, {"bytes", bytes_of(s)}});
    }
    const std::string s = token_text(lp.token);
    return {{"token", s}, {"logprob", lp.logprob}, {"bytes", bytes_of(s)}, {"top_logprobs", top}};
  }
  // Completions' logprobs object (tokens, token_logprobs, top_logprobs, text_offset) for lps
  // (a null first entry: the echoed first prompt token has none).
  json completion_lp(const std::vector<const serve::TokenLogprob*>& lps, const std::vector<int32_t>& ids,
                     size_t offset0) const {
    json toks = json::array(), lp = json::array(), top = json::array(), off = json::array();
    size_t off_now = offset0;
    for (size_t i = 0; i < ids.size(); i++) {
      const std::string s = token_text(ids[i]);
      toks.push_back(s);
      off.push_back(off_now);
      off_now += s.size();
      if (!lps[i]) {
        lp.push_back(nullptr), top.push_back(nullptr);
        continue;
      }
      lp.push_back(lps[i]->logprob);
      json t = json::object();
      for (const auto& [id, l] : lps[i]->top) t[token_text(id)] = l;
      top.push_back(t);
    }
    return {{"tokens", toks}, {"token_logprobs", lp}, {"top_logprobs", top}, {"text_offset", off}};
  }

  void generate(const httplib::Request& req, httplib::Response& res, bool chat) {
    serve::ApiLimits lim;
    lim.max_tokens = engine_->context();
    const serve::ApiRequest r = serve::parse_request(req.body, chat, lim);
    // "model" picks the base or one of the adapters; empty: the base.
    int adapter = 0;
    if (!r.model.empty() && r.model != name()) {
      auto it = std::find(adapter_names_.begin(), adapter_names_.end(), r.model);
      if (it == adapter_names_.end())
        throw ApiError(404, fmt::format("The model `{}` does not exist (this server has `{}`{}).", r.model, name(),
                                        adapter_names_.empty() ? "" : " and its adapters"), "model", "not_found_error", "model_not_found");
      adapter = (int)(it - adapter_names_.begin()) + 1;
    }
    auto job = std::make_shared<Job>();
    job->stops = r.stop;
    if (chat) {
      job->prompts.push_back(need_tokenizer().encode(render(r.messages, r.add_generation_prompt), true));
    } else if (!r.prompt_texts.empty()) {
      for (const auto& t : r.prompt_texts) job->prompts.push_back(encode_prompt(need_tokenizer(), t, true, true));
    } else {
      job->prompts = r.prompt_ids;
    }
    if (!r.stop.empty() && !tok_) throw ApiError(400, "'stop' strings need a tokenizer (use stop_token_ids)", "stop");
    const int64_t ctx = engine_->context(), V = model_->config.vocab_size;
    std::vector<serve::SeqRequest> seqs;
    for (size_t p = 0; p < job->prompts.size(); p++) {
      const auto& ids = job->prompts[p];
      if (ids.empty()) throw ApiError(400, "the prompt is empty", "prompt");
      for (int32_t t : ids)
        if (t >= V) throw ApiError(400, fmt::format("token id {} is outside the vocabulary (0..{})", t, V - 1), "prompt");
      const int64_t want = r.max_tokens.value_or(chat ? ctx - (int64_t)ids.size() : 16);
      if ((int64_t)ids.size() + std::max<int64_t>(want, 1) > ctx)
        throw ApiError(400, fmt::format("This model's maximum context length is {} tokens. However, you requested {} "
                                        "tokens ({} in the {}, {} in the completion). Please reduce the length.",
                                        ctx, (int64_t)ids.size() + want, ids.size(), chat ? "messages" : "prompt", want),
                       chat ? "messages" : "prompt", "invalid_request_error", "context_length_exceeded");
      for (int c = 0; c < r.n; c++) {
        const size_t ci = job->choices.size();
        job->choices.push_back(std::make_unique<Choice>(tok_.get(), job->stops));
        job->choices.back()->prompt = (int)p;
        serve::SeqRequest q;
        q.prompt = ids;
        q.sampling.temperature = r.temperature;
        q.sampling.top_p = r.top_p;
        q.sampling.top_k = r.top_k;
        q.sampling.min_p = r.min_p;
        q.sampling.repeat_penalty = r.repetition_penalty;
        q.sampling.repeat_last_n = -1;
        // Choice i of a seeded request samples with seed + i, as `llmq generate --seed`
        // samples its i-th prompt; unseeded requests draw a random seed.
        q.sampling.seed = r.seed ? *r.seed + ci : (uint64_t)std::random_device{}() << 32 ^ std::random_device{}();
        q.presence_penalty = r.presence_penalty;
        q.frequency_penalty = r.frequency_penalty;
        q.max_tokens = want;
        if (!r.ignore_eos) q.eos_ids = eos_;
        q.eos_ids.insert(q.eos_ids.end(), r.stop_token_ids.begin(), r.stop_token_ids.end());
        q.top_logprobs = r.logprobs;
        q.prompt_logprobs = r.echo && r.logprobs >= 0;
        q.cancel = job->cancel;
        q.adapter = adapter;
        q.timeout_s = o_.timeout;
        // The engine's callbacks keep the job alive: its client may be gone (cancelled).
        std::shared_ptr<Job> j = job;
        Choice* ch = job->choices.back().get();
        const bool text = tok_ != nullptr;
        q.on_prompt_logprob = [j, ch](int64_t, const serve::TokenLogprob& lp) {
          std::lock_guard lk(j->mu);
          ch->prompt_lps.push_back(lp);
        };
        q.on_token = [j, ch, text](int32_t t, const serve::TokenLogprob* lp) {
          std::lock_guard lk(j->mu);
          ch->tokens.push_back(t);
          if (lp) ch->lps.push_back(*lp);
          const bool stop = text && ch->ts->push(t);
          j->cv.notify_all();
          return stop;
        };
        q.on_done = [j, ch, text](const serve::SeqResult& sr) {
          std::lock_guard lk(j->mu);
          if (text) ch->ts->finish();
          ch->finish = sr.reason == serve::Finish::Stop ? "stop" : "length";
          if (sr.reason == serve::Finish::Abort) j->aborted = true;
          if (sr.reason == serve::Finish::Timeout) j->timed_out = true;
          ch->done = true;
          j->completion_tokens += sr.completion_tokens;
          if (ch == j->choices.front().get()) j->cached_tokens = sr.cached_tokens;  // the request's prompt hit
          j->remaining--;
          j->cv.notify_all();
        };
        seqs.push_back(std::move(q));
      }
    }
    job->remaining = (int)seqs.size();
    if (!engine_->submit(std::move(seqs)))
      throw ApiError(429, "the server's queue is full; retry later", "", "rate_limit_error", "queue_full");
    const std::string id = random_id(chat ? "chatcmpl" : "cmpl");
    const int64_t created = std::time(nullptr);
    const std::string model = adapter ? adapter_names_[(size_t)adapter - 1] : name();
    int64_t prompt_tokens = 0;
    for (const auto& p : job->prompts) prompt_tokens += (int64_t)p.size();
    auto usage = [job, prompt_tokens]() {
      return json{{"prompt_tokens", prompt_tokens}, {"completion_tokens", job->completion_tokens},
                  {"total_tokens", prompt_tokens + job->completion_tokens},
                  {"prompt_tokens_details", {{"cached_tokens", job->cached_tokens}}}};
    };
    // The client going away cancels the request (the engine frees its blocks at the next step).
    auto released = [job](bool ok) {
      if (!ok) job->cancel->store(true);
    };
    if (!r.stream) {
      res.set_chunked_content_provider("application/json", [=, this](size_t, httplib::DataSink& sink) {
        std::unique_lock lk(job->mu);
        while (job->remaining > 0) {
          job->cv.wait_for(lk, std::chrono::milliseconds(50));
          if (job->remaining > 0 && !sink.is_writable()) {
            job->cancel->store(true);
            return false;
          }
        }
        json choices = json::array();
        for (size_t i = 0; i < job->choices.size(); i++) {
          Choice& c = *job->choices[i];
          const std::string text = c.ts ? c.ts->text() : "";
          json lp = nullptr;
          if (chat) {
            if (r.logprobs >= 0) {
              json content = json::array();
              for (const auto& l : c.lps) content.push_back(chat_lp(l));
              lp = {{"content", content}};
            }
            choices.push_back({{"index", i}, {"message", {{"role", "assistant"}, {"content", text}}}, {"logprobs", lp},
                               {"finish_reason", c.finish}});
          } else {
            const auto& prompt = job->prompts[(size_t)c.prompt];
            std::string echo = r.echo && tok_ ? tok_->decode(prompt) : "";
            if (r.logprobs >= 0) {
              std::vector<const serve::TokenLogprob*> lps;
              std::vector<int32_t> ids;
              if (r.echo) {
                for (size_t k = 0; k < prompt.size(); k++) {
                  ids.push_back(prompt[k]);
                  lps.push_back(k == 0 || k - 1 >= c.prompt_lps.size() ? nullptr : &c.prompt_lps[k - 1]);
                }
              }
              for (size_t k = 0; k < c.tokens.size() && k < c.lps.size(); k++) ids.push_back(c.tokens[k]), lps.push_back(&c.lps[k]);
              lp = completion_lp(lps, ids, 0);
            }
            choices.push_back({{"index", i}, {"text", echo + text}, {"logprobs", lp}, {"finish_reason", c.finish}});
            if (!tok_) choices.back()["token_ids"] = c.tokens;
          }
        }
        lk.unlock();
        if (job->aborted || job->timed_out) {
          const ApiError e(job->timed_out ? 408 : 500, job->timed_out ? "the request timed out" : "the request was aborted");
          const std::string b = error_body(e);
          sink.write(b.data(), b.size());
          sink.done();
          return true;
        }
        const json body = {{"id", id}, {"object", chat ? "chat.completion" : "text_completion"}, {"created", created},
                           {"model", model}, {"choices", choices}, {"usage", usage()}};
        const std::string b = dump(body);
        sink.write(b.data(), b.size());
        sink.done();
        return true;
      }, released);
      return;
    }
    // Streaming: Server-Sent Events as the OpenAI API sends them.
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream", [=, this](size_t, httplib::DataSink& sink) {
      auto send = [&](const json& j) {
        const std::string s = "data: " + dump(j) + "\n\n";
        return sink.write(s.data(), s.size());
      };
      auto chunk = [&](json choices) {
        json j = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                  {"model", model}, {"choices", std::move(choices)}};
        if (r.include_usage) j["usage"] = nullptr;
        return j;
      };
      std::unique_lock lk(job->mu);
      for (;;) {
        std::vector<json> out;
        for (size_t i = 0; i < job->choices.size(); i++) {
          Choice& c = *job->choices[i];
          std::string text = c.ts ? c.ts->take() : "";
          json lp = nullptr;
          std::vector<int32_t> new_ids;
          if (r.logprobs >= 0 && c.lp_sent < c.lps.size()) {
            if (chat) {
              json content = json::array();
              for (size_t k = c.lp_sent; k < c.lps.size(); k++) content.push_back(chat_lp(c.lps[k]));
              lp = {{"content", content}};
            } else {
              std::vector<const serve::TokenLogprob*> lps;
              std::vector<int32_t> ids;
              for (size_t k = c.lp_sent; k < c.lps.size(); k++) ids.push_back(c.lps[k].token), lps.push_back(&c.lps[k]);
              lp = completion_lp(lps, ids, 0);
            }
            c.lp_sent = c.lps.size();
          }
          if (chat && !c.started) {
            out.push_back(chunk(json::array({{{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}},
                                              {"logprobs", nullptr}, {"finish_reason", nullptr}}})));
            c.started = true;
          }
          if (!chat && !c.started && r.echo && tok_) text = tok_->decode(job->prompts[(size_t)c.prompt]) + text;
          c.started = true;
          const bool fin = c.done && c.finish != "";
          if (!text.empty() || !lp.is_null()) {
            json ch = chat ? json{{"index", i}, {"delta", {{"content", text}}}, {"logprobs", lp}, {"finish_reason", nullptr}}
                           : json{{"index", i}, {"text", text}, {"logprobs", lp}, {"finish_reason", nullptr}};
            out.push_back(chunk(json::array({ch})));
          }
          if (fin) {
            json ch = chat ? json{{"index", i}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", c.finish}}
                           : json{{"index", i}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", c.finish}};
            out.push_back(chunk(json::array({ch})));
            c.finish = "";  // sent
          }
        }
        const bool all_done = job->remaining == 0;
        lk.unlock();
        for (const auto& j : out)
          if (!send(j)) {
            job->cancel->store(true);
            return false;
          }
        if (all_done) {
          if (job->aborted || job->timed_out) {
            const ApiError e(job->timed_out ? 408 : 500, job->timed_out ? "the request timed out" : "the request was aborted");
            const std::string b = "data: " + error_body(e) + "\n\n";
            sink.write(b.data(), b.size());
          }
          if (r.include_usage) {
            json j = chunk(json::array());
            j["usage"] = usage();
            send(j);
          }
          const std::string d = "data: [DONE]\n\n";
          sink.write(d.data(), d.size());
          sink.done();
          return true;
        }
        lk.lock();
        job->cv.wait_for(lk, std::chrono::milliseconds(50));
        if (!sink.is_writable()) {
          job->cancel->store(true);
          return false;
        }
      }
    }, released);
  }

  std::string metrics() const {
    std::string s;
    auto gauge = [&](const char* n, const char* help, double v, const char* type = "gauge") {
      s += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", n, help, n, type, n, v);
    };
    auto hist = [&](const char* n, const char* help, const serve::Histogram& h) {
      s += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", n, help, n);
      uint64_t cum = 0;
      for (size_t i = 0; i < h.bounds.size(); i++) {
        cum += h.counts[i];
        s += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", n, h.bounds[i], cum);
      }
      s += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", n, h.n, n, h.sum, n, h.n);
    };
    gauge("llmq_model_ready", "1 once the model is loaded", ready_ ? 1 : 0);
    if (!engine_) return s;
    const serve::EngineStats st = engine_->stats();
    gauge("llmq_requests_running", "sequences in the running batch", (double)st.running);
    gauge("llmq_requests_waiting", "sequences waiting for admission", (double)st.waiting);
    gauge("llmq_kv_cache_usage_ratio", "KV-cache blocks held by sequences / all blocks",
          st.blocks_total ? (double)st.blocks_used / (double)st.blocks_total : 0);
    gauge("llmq_kv_cache_blocks_used", "KV-cache blocks held by sequences", (double)st.blocks_used);
    gauge("llmq_kv_cache_blocks_cached", "free KV-cache blocks kept for prefix reuse", (double)st.blocks_cached);
    gauge("llmq_kv_cache_blocks_total", "KV-cache blocks", (double)st.blocks_total);
    gauge("llmq_prompt_tokens_total", "prompt tokens computed (prefix-cache hits excluded)", (double)st.prompt_tokens, "counter");
    gauge("llmq_generation_tokens_total", "tokens generated", (double)st.generation_tokens, "counter");
    gauge("llmq_prefix_cache_hit_tokens_total", "prompt tokens taken from the prefix cache", (double)st.prefix_hit_tokens, "counter");
    gauge("llmq_preemptions_total", "sequences preempted for KV-cache room (recomputed later)", (double)st.preemptions, "counter");
    gauge("llmq_request_success_total", "sequences finished (stop or length)", (double)st.requests_finished, "counter");
    gauge("llmq_request_aborted_total", "sequences cancelled or timed out", (double)st.requests_aborted, "counter");
    gauge("llmq_engine_steps_total", "scheduler steps (forward passes)", (double)st.steps, "counter");
    hist("llmq_time_to_first_token_seconds", "arrival to first generated token", st.ttft);
    hist("llmq_inter_token_latency_seconds", "time between a sequence's tokens", st.itl);
    hist("llmq_request_queue_time_seconds", "arrival to admission into the batch", st.queue);
    hist("llmq_e2e_request_latency_seconds", "arrival to the last token", st.e2e);
    return s;
  }

  Opts& o_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tok_;
  std::string tmpl_;
  std::vector<std::string> adapter_names_;
  std::vector<int32_t> eos_;
  std::unique_ptr<serve::Engine> engine_;
  std::atomic<bool> ready_{false};
  int64_t created_ = 0;
};
}  // namespace

void register_serve(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching (/v1/completions, "
                                          "/v1/chat/completions, /metrics, a chat page at /)");
  auto o = std::make_shared<Opts>();
  cmd->add_option("-m,--model", o->model, "model directory, .gguf file, or a training run (its latest checkpoint)")
      ->required()->transform(kRunLatest);
  cmd->add_option("--host", o->host, "address to bind (0.0.0.0 exposes the server to the network)")->capture_default_str();
  cmd->add_option("--port", o->port, "TCP port (0: any free port, printed at start)")->check(CLI::Range(0, 65535))->capture_default_str();
  cmd->add_option("--parallel", o->e.parallel, "sequences decoded together (KV-cache slots)")->check(kPositive)->capture_default_str();
  cmd->add_option("--ctx", o->e.ctx, "longest sequence, prompt + completion (default: the model's context)")->check(kNonNegative);
  cmd->add_option("--block-size", o->e.block_size, "positions per KV-cache block")->check(kPositive)->capture_default_str();
  cmd->add_option("--kv-blocks", o->e.n_blocks, "KV-cache blocks (default: every slot can hold --ctx)")->check(kNonNegative);
  cmd->add_option("--batch-tokens", o->e.batch_tokens, "rows per forward: decode rows, then prompt chunks")->check(kPositive)->capture_default_str();
  cmd->add_flag("--no-prefix-cache", o->no_prefix_cache, "do not reuse KV blocks of shared prompt prefixes");
  cmd->add_option("--batch-invariant", o->invariant, "auto|on|off: a request's output independent of the batch "
                  "(auto: on for integer-quantized models, where it is free; float models pay in prefill speed)")
      ->check(CLI::IsMember({"auto", "on", "off"}))->capture_default_str();
  o->kv.add(cmd);
  cmd->add_option("--api-key", o->api_key, "require 'Authorization: Bearer KEY' on /v1, /tokenize, /detokenize");
  cmd->add_option("--api-key-file", o->api_key_file, "read the API key from this file (first line)");
  cmd->add_option("--served-model-name", o->name, "the model's name in the API (default: the directory's name)");
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer file or directory (default: the model's)");
  cmd->add_option("--adapter", o->adapters, "NAME=DIR: an adapter (LoRA/DoRA, PEFT layout) served unmerged as model NAME; "
                                           "repeatable, requests for different adapters are batched together");
  cmd->add_option("--max-queue", o->e.max_queue, "sequences waiting beyond which requests get 429")->check(kPositive)->capture_default_str();
  cmd->add_option("--timeout", o->timeout, "seconds a request may take from arrival (0: no limit)")->check(kNonNegative)->capture_default_str();
  cmd->add_option("--max-body", o->max_body, "largest request body in bytes (413 beyond)")->check(kPositive)->capture_default_str();
  cmd->callback([o] {
    if (!o->api_key.empty() && !o->api_key_file.empty()) fail("give --api-key or --api-key-file, not both");
    if (!o->api_key_file.empty()) {
      std::string k = read_text_file(o->api_key_file);
      k = k.substr(0, k.find('\n'));
      while (!k.empty() && (k.back() == '\r' || k.back() == ' ')) k.pop_back();
      if (k.empty()) fail("{}: the API key file is empty", o->api_key_file);
      o->api_key = k;
    }
    // SIGINT/SIGTERM are taken by one thread that stops the server (no work in a handler).
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);

    Server server(*o);
    httplib::Server svr;
    const size_t pool = (size_t)std::clamp<int64_t>((int64_t)o->e.max_queue + o->e.parallel + 8, 8, 1024);
    svr.new_task_queue = [pool] { return new httplib::ThreadPool(pool); };
    svr.set_payload_max_length((size_t)o->max_body);
    svr.set_read_timeout(30, 0);
    svr.set_write_timeout(30, 0);
    svr.set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return;
      const std::string msg = res.status == 404 ? "no such endpoint"
                              : res.status == 413 ? "the request body is too large (--max-body)"
                              : res.status == 405 ? "method not allowed" : std::string("HTTP error");
      res.set_content(error_body(ApiError(res.status, msg)), "application/json");
    });
    svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string msg = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        msg = e.what();
      } catch (...) {
      }
      res.status = 500;
      res.set_content(error_body(ApiError(500, msg)), "application/json");
    });
    server.routes(svr);
    int port = o->port;
    if (port == 0) port = svr.bind_to_any_port(o->host);
    else if (!svr.bind_to_port(o->host, port)) port = -1;
    if (port < 0) fail("cannot listen on {}:{} (in use? another --port, or --port 0 for any)", o->host, o->port);
    fmt::print(stderr, "llmq serve: listening on http://{}:{} (loading {})\n", o->host, port, o->model);
    std::thread http([&] { svr.listen_after_bind(); });
    // stop() before the listening loop has started would be lost: wait for it first.
    auto stop_http = [&] {
      for (int i = 0; i < 5000 && !svr.is_running(); i++) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      svr.stop();
    };
    std::atomic<bool> quit{false}, failed{false};
    std::thread sig([&] {
      int s = 0;
      sigwait(&set, &s);
      if (failed) return;  // woken by the load failing below
      quit = true;
      stop_http();
    });
    try {
      server.load();
    } catch (const std::exception& e) {
      failed = true;
      stop_http();
      http.join();
      pthread_kill(sig.native_handle(), SIGTERM);
      sig.join();
      throw;
    }
    fmt::print(stderr, "llmq serve: ready: {} sequences x {} tokens, {} KV cache in {} blocks of {}\n", o->e.parallel,
               server.context(), kv_type_name(o->e.kv_type), o->e.n_blocks, o->e.block_size);
    http.join();
    if (!quit) pthread_kill(sig.native_handle(), SIGTERM), sig.join();
    else sig.join();
    fmt::print(stderr, "llmq serve: stopped\n");
  });
}

}  // namespace llmq::cli
