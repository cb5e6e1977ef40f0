// llmq bench: prefill and decode speed and peak memory of a model.
#include <chrono>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/progress.h"
#include "io/hf_dir.h"
#include "kernels/cpu/kernels.h"
#include "ops/ops.h"

namespace llmq::cli {

void register_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "measure prefill and decode tokens/s and peak memory");
  struct Opts {
    std::vector<std::string> models;
    std::string model;
    KvOption kv;
    int64_t prompt = 512, gen = 64, batch = 1, reps = 1;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("-m,--model", o->models, "model directory or .gguf; repeat for a row per model (e.g. per scheme)")->required();
  o->kv.add(cmd);
  cmd->add_option("--prompt", o->prompt, "prompt tokens to prefill")->check(CLI::PositiveNumber);
  cmd->add_option("--gen", o->gen, "tokens to decode per sequence")->check(CLI::NonNegativeNumber);
  cmd->add_option("--batch", o->batch, "sequences decoded together")->check(CLI::Range(1, 64));
  cmd->add_option("--reps", o->reps, "repetitions (the best is reported)")->check(CLI::PositiveNumber);
  cmd->add_flag("--json", o->json, "machine-readable output");
  cmd->callback([o] {
   bool header = false;
   for (const std::string& model_path : o->models) {
    o->model = model_path;
    using clock = std::chrono::steady_clock;
    auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    Model m = model_load(o->model, load_mode());
    const ModelConfig& c = m.config;
    const KvType kv = o->kv.resolve(m);
    const int64_t ctx = o->prompt + o->gen;
    if (ctx > c.max_seq_len) fail("--prompt + --gen = {} exceeds the model's context {}", ctx, c.max_seq_len);
    // Deterministic pseudo-random prompt ids (speed does not depend on which ids).
    std::vector<int32_t> prompt(o->prompt);
    for (int64_t i = 0; i < o->prompt; i++) prompt[i] = (int32_t)((i * 7919 + 13) % c.vocab_size);
    double best_pre = 1e30, best_dec = 1e30;
    for (int64_t rep = 0; rep < o->reps; rep++) {
      KVCache cache = KVCache::create(c, o->batch, ctx, kv);
      Scratch s;
      auto t0 = clock::now();
      for (int64_t b = 0; b < o->batch; b++) {
        Batch bt;
        for (int64_t i = 0; i < o->prompt; i++) bt.add(prompt[i], (int32_t)b, (int32_t)i, i + 1 == o->prompt);
        llama_forward(m, cache, bt, s);
      }
      auto t1 = clock::now();
      for (int64_t g = 0; g < o->gen; g++) {
        Batch bt;
        for (int64_t b = 0; b < o->batch; b++) bt.add((int32_t)((g * 31 + b) % c.vocab_size), (int32_t)b, (int32_t)(o->prompt + g), true);
        llama_forward(m, cache, bt, s);
      }
      auto t2 = clock::now();
      best_pre = std::min(best_pre, secs(t0, t1));
      best_dec = std::min(best_dec, secs(t1, t2));
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
                        {"scheme", c.quant.enabled ? c.quant.scheme : std::string(dtype_name(m.weights.layers[0].wq.dtype()))},
                        {"kv_cache", kv_type_name(kv)}};
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
   }
  });
}

}  // namespace llmq::cli
