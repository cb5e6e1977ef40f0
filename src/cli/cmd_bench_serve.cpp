// llmq bench serve: a load generator for OpenAI-compatible servers (llmq serve, llama.cpp's
// llama-server, vLLM), measuring what vLLM's serving benchmark measures: time to first token,
// time per output token, inter-token latency, end-to-end latency (mean, p50, p90, p99), and
// request and output-token throughput; closed loop at each concurrency, or Poisson arrivals.
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "cli/common.h"
#include "core/error.h"
#include "core/file_util.h"

namespace llmq::cli {

namespace {
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Opts {
  std::string url = "http://127.0.0.1:8080", model, api_key, dataset, concurrency = "1,2,4,8";
  int64_t requests = 32, prompt_len = 128, gen_len = 64;
  double rate = 0;
  uint64_t seed = 0;
  bool json = false;
};

struct Sample {
  bool ok = false;
  std::string error;
  double ttft = 0, e2e = 0;
  int64_t out_tokens = 0;
  std::vector<double> itl;
};

struct Target {  // host, port and the client's options
  std::string scheme_host_port;
  httplib::Headers headers;
};

httplib::Client client(const Target& t) {
  httplib::Client c(t.scheme_host_port);
  c.set_read_timeout(600, 0);
  c.set_write_timeout(60, 0);
  c.set_connection_timeout(10, 0);
  return c;
}

// One streamed completion: timestamps of its token events.
Sample run_one(const Target& t, const json& body) {
  Sample s;
  httplib::Client c = client(t);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = t.headers;
  req.set_header("Content-Type", "application/json");
  req.body = body.dump();
  std::string buf;
  const auto t0 = Clock::now();
  Clock::time_point last = t0;
  int64_t events = 0, usage_tokens = -1;
  auto secs = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    buf.append(data, len);
    size_t i;
    while ((i = buf.find("\n\n")) != std::string::npos) {
      std::string ev = buf.substr(0, i);
      buf.erase(0, i + 2);
      if (ev.rfind("data: ", 0) != 0) continue;
      ev.erase(0, 6);
      if (ev == "[DONE]") continue;
      const json j = json::parse(ev, nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("error")) {
        s.error = j["error"].value("message", "error");
        continue;
      }
      if (j.contains("usage") && j["usage"].is_object()) usage_tokens = j["usage"].value("completion_tokens", -1);
      bool token = false;
      if (j.contains("choices"))
        for (const auto& ch : j["choices"])
          if (ch.contains("text") && ch["text"].is_string() && !ch["text"].get<std::string>().empty()) token = true;
      if (!token) continue;
      const auto now = Clock::now();
      if (events == 0) s.ttft = secs(now - t0);
      else s.itl.push_back(secs(now - last));
      last = now;
      events++;
    }
    return true;
  };
  auto res = c.send(req);
  s.e2e = secs(Clock::now() - t0);
  if (!res) {
    s.error = "connection failed: " + httplib::to_string(res.error());
    return s;
  }
  if (res->status != 200) {
    s.error = fmt::format("HTTP {}: {}", res->status, buf.substr(0, 200));
    return s;
  }
  s.out_tokens = usage_tokens >= 0 ? usage_tokens : events;
  s.ok = s.error.empty() && events > 0;
  if (!s.ok && s.error.empty()) s.error = "no tokens streamed";
  return s;
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double r = p / 100 * (double)(v.size() - 1);
  const size_t lo = (size_t)std::floor(r), hi = (size_t)std::ceil(r);
  return v[lo] + (v[hi] - v[lo]) * (r - (double)lo);
}
double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / (double)v.size();
}
json stats(const std::vector<double>& v) {
  return {{"mean", mean(v)}, {"p50", pct(v, 50)}, {"p90", pct(v, 90)}, {"p99", pct(v, 99)}};
}
}  // namespace

void register_bench_serve(CLI::App* bench) {
  auto* cmd = bench->add_subcommand("serve", "load-test an OpenAI-compatible server (llmq serve, llama-server, vLLM): "
                                             "TTFT, TPOT, ITL, latency percentiles, throughput per concurrency");
  auto o = std::make_shared<Opts>();
  cmd->add_option("--url", o->url, "server base URL")->capture_default_str();
  cmd->add_option("--model", o->model, "model name to request (default: the first of /v1/models)");
  cmd->add_option("--api-key", o->api_key, "sent as 'Authorization: Bearer KEY'");
  cmd->add_option("--concurrency", o->concurrency, "comma-separated requests in flight, one row each")->capture_default_str();
  cmd->add_option("--requests", o->requests, "requests per row")->check(kPositive)->capture_default_str();
  cmd->add_option("--rate", o->rate, "Poisson arrivals per second (0: closed loop; concurrency caps the requests in flight)")
      ->check(kNonNegative)->capture_default_str();
  cmd->add_option("--prompt-len", o->prompt_len, "prompt tokens per request (synthetic prompts)")->check(kPositive)->capture_default_str();
  cmd->add_option("--gen-len", o->gen_len, "tokens generated per request (EOS ignored)")->check(kPositive)->capture_default_str();
  cmd->add_option("--dataset", o->dataset, "JSONL of {\"prompt\": text[, \"max_tokens\": n]} instead of synthetic prompts");
  cmd->add_option("--seed", o->seed, "seed of the synthetic prompts and arrival times")->capture_default_str();
  cmd->add_flag("--json", o->json, "machine-readable output");
  cmd->callback([o] {
    Target t;
    std::string u = o->url;
    while (!u.empty() && u.back() == '/') u.pop_back();
    if (u.size() >= 3 && u.compare(u.size() - 3, 3, "/v1") == 0) u.erase(u.size() - 3);
    if (u.rfind("http://", 0) != 0) fail("--url {}: only http:// URLs", o->url);
    t.scheme_host_port = u;
    if (!o->api_key.empty()) t.headers.emplace("Authorization", "Bearer " + o->api_key);
    std::vector<int> levels;
    for (const auto& x : parse_token_ids(o->concurrency, "--concurrency")) {
      if (x < 1) fail("--concurrency: levels must be at least 1");
      levels.push_back(x);
    }
    // The model name and the prompts (token ids from the server's own /tokenize, so every
    // prompt has exactly --prompt-len tokens and no two share a prefix).
    httplib::Client c = client(t);
    auto models = c.Get("/v1/models", t.headers);
    if (!models) fail("{}: cannot connect ({}); is the server running?", o->url, httplib::to_string(models.error()));
    if (models->status != 200) fail("{}/v1/models: HTTP {}: {}", o->url, models->status, models->body.substr(0, 200));
    const json mj = json::parse(models->body, nullptr, false);
    if (o->model.empty()) {
      if (mj.is_discarded() || !mj.contains("data") || mj["data"].empty()) fail("{}/v1/models: no model listed", o->url);
      o->model = mj["data"][0].value("id", "");
    }
    std::vector<json> prompts;  // prompt field values
    std::vector<int64_t> gens;
    const int64_t n_max = o->requests * (int64_t)levels.size();
    if (!o->dataset.empty()) {
      std::istringstream in(read_text_file(o->dataset));
      std::string line;
      int64_t ln = 0;
      while (std::getline(in, line)) {
        ln++;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const json j = json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object() || !j.contains("prompt") || !j["prompt"].is_string())
          fail("{}:{}: expected a JSON object with a \"prompt\" string", o->dataset, ln);
        prompts.push_back(j["prompt"]);
        gens.push_back(j.contains("max_tokens") && j["max_tokens"].is_number_integer() ? j["max_tokens"].get<int64_t>() : o->gen_len);
      }
      if (prompts.empty()) fail("{}: no prompts", o->dataset);
    } else {
      static const char* words[] = {"the", "whale", "ship", "sea", "captain", "white", "deep", "water", "night", "morning",
                                    "harbor", "storm", "sail", "crew", "island", "wind", "ocean", "light", "shore", "voyage"};
      std::mt19937_64 rng(o->seed);
      for (int64_t i = 0; i < std::min<int64_t>(n_max, 256); i++) {
        std::string text;
        for (int64_t k = 0; k < o->prompt_len * 2; k++) text += std::string(k ? " " : "") + words[rng() % 20];
        json body = {{"prompt", text}, {"content", text}};  // llmq / vLLM take prompt, llama-server content
        auto r = c.Post("/tokenize", t.headers, body.dump(), "application/json");
        if (!r || r->status != 200) fail("{}/tokenize failed ({}); give --dataset instead", o->url, r ? std::to_string(r->status) : "no answer");
        json ids = json::parse(r->body, nullptr, false);
        if (ids.is_discarded() || !ids.contains("tokens") || !ids["tokens"].is_array()) fail("{}/tokenize: no tokens", o->url);
        std::vector<int64_t> v;
        for (const auto& x : ids["tokens"]) v.push_back(x.is_number() ? x.get<int64_t>() : x.value("id", 0));
        if ((int64_t)v.size() < o->prompt_len) fail("/tokenize gave {} tokens for {} words", v.size(), o->prompt_len * 2);
        v.resize((size_t)o->prompt_len);
        prompts.push_back(v);
        gens.push_back(o->gen_len);
      }
    }
    json rows = json::array();
    if (!o->json)
      fmt::print("{:>5} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>5}\n", "conc", "reqs", "secs",
                 "req/s", "out tok/s", "ttft p50", "ttft p99", "tpot p50", "itl p50", "itl p99", "e2e p50", "e2e p99", "fail");
    int64_t next_prompt = 0;
    for (int conc : levels) {
      std::vector<Sample> samples((size_t)o->requests);
      std::atomic<int64_t> next{0};
      std::mt19937_64 arr(o->seed + (uint64_t)conc);
      std::exponential_distribution<double> gap(o->rate > 0 ? o->rate : 1.0);
      std::vector<double> at((size_t)o->requests, 0.0);
      for (int64_t i = 1; i < o->requests && o->rate > 0; i++) at[(size_t)i] = at[(size_t)i - 1] + gap(arr);
      const int64_t base = next_prompt;
      next_prompt += o->requests;
      const auto t0 = Clock::now();
      auto worker = [&] {
        for (int64_t i = next.fetch_add(1); i < o->requests; i = next.fetch_add(1)) {
          if (o->rate > 0) std::this_thread::sleep_until(t0 + std::chrono::duration<double>(at[(size_t)i]));
          const size_t pi = (size_t)((base + i) % (int64_t)prompts.size());
          json body = {{"model", o->model}, {"prompt", prompts[pi]}, {"max_tokens", gens[pi]}, {"temperature", 0},
                       {"stream", true}, {"ignore_eos", true}, {"stream_options", {{"include_usage", true}}}};
          samples[(size_t)i] = run_one(t, body);
        }
      };
      std::vector<std::thread> th;
      for (int k = 0; k < conc; k++) th.emplace_back(worker);
      for (auto& x : th) x.join();
      const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
      std::vector<double> ttft, tpot, itl, e2e;
      int64_t out = 0, failed = 0;
      std::string first_error;
      for (const auto& s : samples) {
        if (!s.ok) {
          failed++;
          if (first_error.empty()) first_error = s.error;
          continue;
        }
        ttft.push_back(s.ttft), e2e.push_back(s.e2e);
        if (s.out_tokens > 1) tpot.push_back((s.e2e - s.ttft) / (double)(s.out_tokens - 1));
        itl.insert(itl.end(), s.itl.begin(), s.itl.end());
        out += s.out_tokens;
      }
      const int64_t done = o->requests - failed;
      json row = {{"concurrency", conc},        {"requests", o->requests},  {"failed", failed},
                  {"seconds", wall},            {"request_throughput", (double)done / wall},
                  {"output_throughput", (double)out / wall}, {"output_tokens", out},
                  {"ttft_s", stats(ttft)},      {"tpot_s", stats(tpot)},    {"itl_s", stats(itl)},
                  {"e2e_s", stats(e2e)},        {"rate", o->rate}};
      if (!first_error.empty()) row["first_error"] = first_error;
      rows.push_back(row);
      if (!o->json)
        fmt::print("{:>5} {:>5} {:>7.1f} {:>9.2f} {:>9.1f} {:>9.3f} {:>9.3f} {:>9.4f} {:>9.4f} {:>9.4f} {:>8.2f} {:>9.2f} {:>5}\n",
                   conc, o->requests, wall, (double)done / wall, (double)out / wall, pct(ttft, 50), pct(ttft, 99),
                   pct(tpot, 50), pct(itl, 50), pct(itl, 99), pct(e2e, 50), pct(e2e, 99), failed);
      if (!o->json && !first_error.empty()) fmt::print("      first error: {}\n", first_error);
    }
    if (o->json) {
      fmt::print("{}\n", json{{"url", o->url}, {"model", o->model}, {"prompt_len", o->prompt_len}, {"gen_len", o->gen_len},
                              {"rows", rows}}.dump());
      return;
    }
    const json& last = rows.back();
    fmt::print("summary: {} at concurrency {}: {:.1f} output tok/s ({:.2f}x concurrency {}), ttft p50 {:.3f} s, tpot p50 {:.4f} s\n",
               o->model, last["concurrency"].get<int>(), last["output_throughput"].get<double>(),
               rows[0]["output_throughput"].get<double>() > 0
                   ? last["output_throughput"].get<double>() / rows[0]["output_throughput"].get<double>() : 0.0,
               rows[0]["concurrency"].get<int>(), last["ttft_s"]["p50"].get<double>(), last["tpot_s"]["p50"].get<double>());
  });
}

}  // namespace llmq::cli
