// llmq bench: prefill and decode speed and peak memory of a model.
#include <chrono>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "train/finetune.h"
#include "core/progress.h"
#include "io/hf_dir.h"
#include "kernels/cpu/kernels.h"
#include "ops/ops.h"
#include "quant/quant.h"

namespace llmq::cli {

namespace {
// Per kind of op: ms per forward call, share of the decode time, and for the matmuls the
// weight bytes per call over the time (their streaming rate).
nlohmann::json decode_profile_json(const Model& m, const ForwardProfile& p, double total_secs) {
  using P = ForwardProfile;
  double bytes[P::kKinds] = {};
  for (const LlamaLayer& L : m.weights.layers) {
    bytes[P::QKV] += weight_bytes(L.wq) + weight_bytes(L.wk) + weight_bytes(L.wv);
    bytes[P::Wo] += weight_bytes(L.wo);
    bytes[P::GateUp] += weight_bytes(L.w_gate) + weight_bytes(L.w_up);
    bytes[P::Down] += weight_bytes(L.w_down);
  }
  bytes[P::Head] = weight_bytes(m.weights.lm_head);
  nlohmann::json rows = nlohmann::json::array();
  const double calls = (double)std::max<int64_t>(1, p.calls);
  double timed = 0;
  for (int k = 0; k < P::kKinds; k++) {
    timed += p.secs[k];
    nlohmann::json r = {{"op", P::name(k)}, {"ms_per_token", 1e3 * p.secs[k] / calls}, {"share", p.secs[k] / total_secs}};
    if (bytes[k] > 0) r["weight_gb_s"] = bytes[k] * calls / p.secs[k] / 1e9;
    rows.push_back(r);
  }
  // Outside llama_forward: the bench loop itself (batch set-up), normally ~0.
  rows.push_back({{"op", "outside forward"}, {"ms_per_token", 1e3 * (total_secs - timed) / calls},
                  {"share", (total_secs - timed) / total_secs}});
  return rows;
}

void print_decode_profile(const nlohmann::json& rows) {
  fmt::print("  decode by op: {:<16} {:>9} {:>7} {:>10}\n", "op", "ms/token", "share", "weight GB/s");
  for (const auto& r : rows)
    fmt::print("                {:<16} {:>9.3f} {:>6.1f}% {:>10}\n", r["op"].get<std::string>(), r["ms_per_token"].get<double>(),
               100 * r["share"].get<double>(), r.contains("weight_gb_s") ? fmt::format("{:.1f}", r["weight_gb_s"].get<double>()) : "");
}
}  // namespace

void register_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "measure prefill and decode tokens/s and peak memory");
  struct Opts {
    std::vector<std::string> models;
    std::string model, adapter;
    KvOption kv;
    int64_t prompt = 512, gen = 64, batch = 1, reps = 1;
    bool json = false, profile = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("-m,--model", o->models, "model directory or .gguf; repeat for a row per model (e.g. per scheme)")->transform(llmq::cli::kRunLatest);
  register_bench_serve(cmd);
  cmd->require_subcommand(0, 1);
  cmd->add_option("--adapter", o->adapter, "an adapter directory (PEFT layout: LoRA/DoRA, llmq finetune or made elsewhere), applied unmerged" " to every model")->transform(llmq::cli::kRunLatest);
  o->kv.add(cmd);
  cmd->add_option("--prompt", o->prompt, "prompt tokens to prefill")->check(llmq::cli::kPositive);
  cmd->add_option("--gen", o->gen, "tokens to decode per sequence")->check(llmq::cli::kNonNegative);
  cmd->add_option("--batch", o->batch, "sequences decoded together")->check(CLI::Range(1, 64));
  cmd->add_option("--reps", o->reps, "repetitions (the best is reported)")->check(llmq::cli::kPositive);
  cmd->add_flag("--json", o->json, "machine-readable output");
  cmd->add_flag("--profile", o->profile,
                "also time decode by kind of op (ms per token, share, weight GB/s; last repetition)");
  cmd->callback([o, cmd] {
   if (cmd->got_subcommand("serve")) return;
   if (o->models.empty()) fail("bench: give -m MODEL (or `llmq bench serve --url URL` to load-test a server)");
   bool header = false;
   for (const std::string& model_path : o->models) {
    o->model = model_path;
    reset_peak_rss();  // this model's peak, whatever the models before it used
    using clock = std::chrono::steady_clock;
    auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    Model m = model_load(o->model, load_mode());
    if (!o->adapter.empty()) train::attach_adapter(m, o->adapter);
    const ModelConfig& c = m.config;
    const KvType kv = o->kv.resolve(m);
    const int64_t ctx = o->prompt + o->gen;
    if (ctx > c.max_seq_len) fail("--prompt + --gen = {} exceeds the model's context {}", ctx, c.max_seq_len);
    // Deterministic pseudo-random prompt ids (speed does not depend on which ids).
    std::vector<int32_t> prompt(o->prompt);
    for (int64_t i = 0; i < o->prompt; i++) prompt[i] = (int32_t)((i * 7919 + 13) % c.vocab_size);
    double best_pre = 1e30, best_dec = 1e30;
    nlohmann::json profile;
    for (int64_t rep = 0; rep < o->reps; rep++) {
      KVCache cache = KVCache::create(c, o->batch, ctx, kv);
      Scratch s;
      auto t0 = clock::now();
      for (int64_t b = 0; b < o->batch; b++) {
        Batch bt;
        for (int64_t i = 0; i < o->prompt; i++) bt.add(prompt[i], (int32_t)b, (int32_t)i, i + 1 == o->prompt);
        llama_forward(m, cache, bt, s);
      }
      ForwardProfile prof;
      if (o->profile && rep + 1 == o->reps) s.profile = &prof;
      auto t1 = clock::now();
      for (int64_t g = 0; g < o->gen; g++) {
        Batch bt;
        for (int64_t b = 0; b < o->batch; b++) bt.add((int32_t)((g * 31 + b) % c.vocab_size), (int32_t)b, (int32_t)(o->prompt + g), true);
        llama_forward(m, cache, bt, s);
      }
      auto t2 = clock::now();
      best_pre = std::min(best_pre, secs(t0, t1));
      best_dec = std::min(best_dec, secs(t1, t2));
      if (s.profile) profile = decode_profile_json(m, prof, secs(t1, t2));
    }
    const double pre_tps = o->prompt * o->batch / best_pre;
    const double dec_tps = o->gen > 0 ? o->gen * o->batch / best_dec : 0;
    // FLOPs of a prefill: 2 per weight per token in the matmuls (lm_head only for the last
    // row) plus attention's QK^T and PV, 2*2*hd per (head, query, key) pair.
    double lin = (double)(c.n_params() - c.vocab_size * c.dim * (c.tie_embeddings ? 1 : 2));
    double attn = 4.0 * c.n_layers * c.n_heads * c.head_dim * (o->prompt * (o->prompt + 1) / 2.0);
    double pre_flops = (2 * lin * o->prompt + attn + 2.0 * c.vocab_size * c.dim) * o->batch;
    nlohmann::json j = {{"model", o->model},          {"isa", cpu_kernels().isa},
                        {"threads", ops_threads()},   {"prompt", o->prompt},
                        {"gen", o->gen},              {"batch", o->batch},
                        {"prefill_tok_s", pre_tps},   {"prefill_gflops", pre_flops / best_pre / 1e9},
                        {"decode_tok_s", dec_tps},    {"peak_rss_bytes", peak_rss_bytes()},
                        {"scheme", c.quant.enabled ? (c.quant.modules.empty() ? c.quant.scheme : "mix") : std::string(dtype_name(m.weights.layers[0].wq.dtype()))},
                        {"kv_cache", kv_type_name(kv)}};
    // The weight bytes one decode step streams (every layer's matrices and the output
    // matrix): bytes / read bandwidth is the decode floor.
    double wb = weight_bytes(m.weights.lm_head);
    for (const LlamaLayer& L : m.weights.layers)
      for (const Tensor* t : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) wb += weight_bytes(*t);
    j["decode_weight_bytes"] = wb;
    if (o->profile) j["decode_profile"] = profile;
    if (o->json) {
      fmt::print("{}\n", j.dump());
      continue;
    }
    if (!header)
      fmt::print("{:<32} {:<8} {:<8} {:>7} {:>7} {:>6} {:>14} {:>16} {:>13} {:>12}\n", "model", "scheme", "isa", "threads",
                 "prompt", "batch", "prefill tok/s", "prefill GFLOP/s", "decode tok/s", "peak RSS");
    header = true;
    fmt::print("{:<32} {:<8} {:<8} {:>7} {:>7} {:>6} {:>14.1f} {:>16.1f} {:>13.2f} {:>12}\n", o->model,
               j["scheme"].get<std::string>(), cpu_kernels().isa, ops_threads(), o->prompt, o->batch, pre_tps,
               pre_flops / best_pre / 1e9, dec_tps, format_bytes(peak_rss_bytes()));
    if (o->profile) print_decode_profile(profile);
   }
  });
}

}  // namespace llmq::cli
