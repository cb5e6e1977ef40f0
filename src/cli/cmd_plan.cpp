// llmq plan: size a training job before renting the cluster.
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/progress.h"
#include "dist/plan.h"
#include "dist/stage_wire.h"
#include "io/hf_dir.h"

namespace llmq::cli {

namespace {
// "80GB" (10^9), "24GiB" / "24G" (2^30), or bytes.
double parse_memory(const std::string& s) {
  size_t n = 0;
  double v = 0;
  try {
    v = std::stod(s, &n);
  } catch (...) {
    n = 0;
  }
  std::string unit = s.substr(n);
  for (auto& ch : unit) ch = (char)std::toupper((unsigned char)ch);
  const double k = unit == "" || unit == "B" ? 1 : unit == "KB" ? 1e3 : unit == "MB" ? 1e6 : unit == "GB" ? 1e9 : unit == "TB" ? 1e12
                   : unit == "KIB" || unit == "K" ? 1024.0 : unit == "MIB" || unit == "M" ? 1048576.0
                   : unit == "GIB" || unit == "G" ? 1073741824.0 : unit == "TIB" || unit == "T" ? 1099511627776.0 : -1;
  if (n == 0 || k < 0 || !(v > 0)) fail("plan: --memory-per-rank {}: give a size such as 80GB or 24GiB", s);
  return v * k;
}
}  // namespace

void register_plan(CLI::App& app) {
  auto* cmd = app.add_subcommand("plan", "memory per rank and bytes communicated per step for a training job");
  struct Opts {
    std::string preset, model;
    dist::PlanOptions p;
    bool json = false;
    std::string memory;
    int pp = 1;
    int64_t micro = 0;
    std::string pp_split, fwd = "none", bwd = "none";
    int fwd_bits = 4, bwd_bits = 6, tile = 64, hi_bits = 4, lo_bits = 3;
    double hi_ratio = 0.8;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--preset", o->preset, "built-in shape: " + preset_list());
  cmd->add_option("-m,--model", o->model, "or a model directory (its config.json) or training run")->transform(llmq::cli::kRunLatest);
  cmd->add_option("--ranks", o->p.ranks, "ranks in the job (default 1)")->check(llmq::cli::kPositive);
  cmd->add_option("--tp", o->p.tp, "tensor-parallel ranks per replica (default 1; dp = ranks / tp)")
      ->check(llmq::cli::kPositive);
  cmd->add_flag("--fsdp", o->p.fsdp, "shard parameters, gradients and optimizer state over the dp ranks");
  cmd->add_option("--seq-len", o->p.seq_len, "tokens per sequence (default 2048)")->check(llmq::cli::kPositive);
  cmd->add_option("--batch", o->p.batch, "sequences per rank per micro-step (default 1)")->check(llmq::cli::kPositive);
  cmd->add_option("--quant", o->p.quant, "frozen quantized base for adapter training: rtn4, rtn8, hqq2, hqq3, hqq4, hqq8 (llmq finetune --quantize-base), int8, int4, nf4, or a recipe (quantize --mix rules such as 'self_attn=w4a16:g128,mlp=w2a16:g16:hqq:axis0', or a recipe .json file)");
  cmd->add_option("--lora-rank", o->p.lora_rank, "train rank-R adapters on every block linear (QLoRA with --quant)");
  cmd->add_flag("--dora", o->p.dora, "the adapters are DoRA (a magnitude per output row; more activations)");
  cmd->add_flag("--recompute", o->p.recompute, "per-block activation recomputation");
  cmd->add_option("--memory-per-rank", o->memory,
                  "answer how many ranks the job needs when each has this much memory (e.g. 80GB, 24GiB): the "
                  "smallest --ranks (a multiple of --tp) whose per-rank total fits, with --fsdp");
  cmd->add_option("--pp", o->pp, "pipeline stages (llmq train --pp): per stage its blocks, state, activations under "
                                 "gpipe and 1f1b, and the bytes on each link; --batch is then each replica's sequences per step")
      ->check(llmq::cli::kPositive);
  cmd->add_option("--micro-batches", o->micro, "--pp: micro-batches per step (default: as many as stages)")->check(llmq::cli::kPositive);
  cmd->add_option("--pp-split", o->pp_split, "--pp: blocks per stage, e.g. 10,11,11 (default: balanced by matmul cost)");
  cmd->add_option("--pp-compress-fwd", o->fwd, "--pp: activations as none, fixpoint or tah (link bytes; tah: its most)")
      ->check(CLI::IsMember({"none", "fixpoint", "tah"}));
  cmd->add_option("--pp-compress-bwd", o->bwd, "--pp: gradients as none or fixpoint")->check(CLI::IsMember({"none", "fixpoint"}));
  cmd->add_option("--fwd-bits", o->fwd_bits, "fixpoint bits forward (default 4)")->check(CLI::Range(1, 8));
  cmd->add_option("--bwd-bits", o->bwd_bits, "fixpoint bits backward (default 6)")->check(CLI::Range(1, 8));
  cmd->add_option("--tile", o->tile, "tah tile (default 64)");
  cmd->add_option("--hi-bits", o->hi_bits, "tah high bits (default 4)")->check(CLI::Range(1, 8));
  cmd->add_option("--lo-bits", o->lo_bits, "tah low bits (default 3)")->check(CLI::Range(1, 8));
  cmd->add_option("--hi-ratio", o->hi_ratio, "tah share of rows at --hi-bits (default 0.8)")->check(CLI::Range(0.0, 1.0));
  cmd->add_flag("--json", o->json, "machine-readable output");
  cmd->callback([o] {
    if (o->preset.empty() && o->model.empty()) fail("plan: give --preset NAME or -m DIR");
    if (!o->preset.empty() && !o->model.empty()) fail("plan: give --preset NAME or -m DIR, not both");
    const ModelConfig c = o->preset.empty() ? config_load(o->model + "/config.json") : config_preset(o->preset);
    // --memory-per-rank: search --ranks upwards (only --fsdp shrinks a rank's state as ranks grow).
    double mem = 0;
    int64_t fit_ranks = 0;
    if (!o->memory.empty()) {
      mem = parse_memory(o->memory);
      for (int64_t k = 1; k <= 16384; k++) {
        dist::PlanOptions q = o->p;
        q.ranks = k * q.tp;
        if (dist::make_plan(c, q).total_bytes() <= mem) {
          fit_ranks = q.ranks;
          break;
        }
        if (!q.fsdp) break;  // every rank holds the whole state: more ranks do not help
      }
      if (fit_ranks > 0) o->p.ranks = fit_ranks;
    }
    const dist::Plan p = dist::make_plan(c, o->p);
    const double tokens = (double)o->p.seq_len * o->p.batch * p.dp;
    nlohmann::json j = {
        {"model", o->preset.empty() ? o->model : o->preset},
        {"parameters", p.params},
        {"trainable", p.trainable},
        {"mesh", {{"ranks", o->p.ranks}, {"dp", p.dp}, {"tp", o->p.tp}, {"fsdp", o->p.fsdp}}},
        {"per_rank_bytes",
         {{"weights", p.weight_bytes}, {"gradients", p.grad_bytes}, {"optimizer", p.optim_bytes},
          {"gathered_block", p.gathered_bytes}, {"activations", p.activation_bytes}, {"total", p.total_bytes()},
          {"kv_cache_generation", p.kv_cache_bytes}}},
        {"comm_bytes_per_step_per_rank", {{"data_parallel", p.dp_comm_bytes}, {"tensor_parallel", p.tp_comm_bytes}}},
        {"tokens_per_step", tokens}};
    if (mem > 0)
      j["fit"] = {{"memory_per_rank", mem}, {"ranks", fit_ranks > 0 ? nlohmann::json(fit_ranks) : nlohmann::json()}};
    std::vector<dist::StagePlan> stages;
    const int64_t M = o->micro > 0 ? o->micro : o->pp;
    if (o->pp > 1 || !o->pp_split.empty() || o->micro > 0) {
      if (o->p.fsdp || o->p.tp > 1 || o->p.lora_rank > 0)
        fail("plan: --pp plans full training with data parallel beside it (llmq train --pp): not with --fsdp, --tp or adapters");
      if (o->p.ranks == 1) o->p.ranks = o->pp;  // one replica by default
      if (o->p.ranks % o->pp != 0) fail("plan: --pp {} does not divide --ranks {}", o->pp, o->p.ranks);
      dist::StageHead fh, bh;
      if (o->fwd == "fixpoint") fh.codec = dist::StageCodec::Fixpoint, fh.bits = (uint8_t)o->fwd_bits;
      if (o->fwd == "tah") {
        fh.codec = dist::StageCodec::Tah, fh.bits = (uint8_t)o->hi_bits, fh.lo_bits = (uint8_t)o->lo_bits;
        fh.tile = (uint16_t)o->tile, fh.seq = (int32_t)o->p.seq_len, fh.lo_rows = (int32_t)dist::tah_lo_rows(o->p.seq_len, o->hi_ratio);
      }
      if (o->bwd == "fixpoint") bh.codec = dist::StageCodec::Fixpoint, bh.bits = (uint8_t)o->bwd_bits;
      stages = dist::pipeline_plan(c, o->pp, M, o->pp_split, o->p.batch, o->p.seq_len, o->p.recompute, &fh, &bh);
      const double dp = (double)(o->p.ranks / o->pp);
      nlohmann::json js = nlohmann::json::array();
      for (size_t s = 0; s < stages.size(); s++) {
        const dist::StagePlan& st = stages[s];
        js.push_back({{"stage", s}, {"blocks", {st.l0, st.l1}}, {"params", st.params}, {"state_bytes", st.state_bytes},
                      {"activations_gpipe", st.act_gpipe}, {"activations_1f1b", st.act_1f1b},
                      {"total_gpipe", st.state_bytes + st.act_gpipe}, {"total_1f1b", st.state_bytes + st.act_1f1b},
                      {"link_fwd_bytes_per_step", st.link_fwd}, {"link_bwd_bytes_per_step", st.link_bwd},
                      {"dp_allreduce_bytes_per_step", 2 * (dp - 1) / dp * 4 * st.params}});
      }
      const double tied = c.tie_embeddings ? 4.0 * (double)c.vocab_size * c.dim : 0.0;
      j["pipeline"] = {{"stages", o->pp}, {"micro_batches", M}, {"dp", o->p.ranks / o->pp}, {"per_stage", js},
                       {"tied_embedding_exchange_bytes_per_step", tied}};
      j["tokens_per_step"] = (double)o->p.seq_len * o->p.batch * dp;
      j["mesh"] = {{"ranks", o->p.ranks}, {"pp", o->pp}, {"dp", o->p.ranks / o->pp}, {"tp", 1}, {"fsdp", false}};
      j.erase("per_rank_bytes"), j.erase("comm_bytes_per_step_per_rank");  // per stage instead
    }
    if (o->json) {
      fmt::print("{}\n", j.dump(2));
      return;
    }
    auto count = [](double n) { return n >= 1e9 ? fmt::format("{:.2f}B", n / 1e9) : fmt::format("{:.2f}M", n / 1e6); };
    if (!stages.empty()) {
      const int64_t dp = o->p.ranks / o->pp;
      fmt::print("{}: {} parameters; {} ranks = pp {} x dp {}; per replica and step {} sequences of {} tokens in {} "
                 "micro-batches of {}{}\n", o->preset.empty() ? o->model : o->preset, count((double)p.params), o->p.ranks,
                 o->pp, dp, o->p.batch, o->p.seq_len, M, o->p.batch / M, o->p.recompute ? ", recompute" : "");
      fmt::print("{:<6} {:<8} {:>9} {:>12} {:>14} {:>14} {:>14} {:>14}\n", "stage", "blocks", "params", "state",
                 "acts gpipe", "acts 1f1b", "total gpipe", "total 1f1b");
      for (size_t s = 0; s < stages.size(); s++) {
        const dist::StagePlan& st = stages[s];
        fmt::print("{:<6} {:<8} {:>9} {:>12} {:>14} {:>14} {:>14} {:>14}\n", s, fmt::format("{}-{}", st.l0, st.l1 - 1),
                   count(st.params), format_bytes(st.state_bytes), format_bytes(st.act_gpipe), format_bytes(st.act_1f1b),
                   format_bytes(st.state_bytes + st.act_gpipe), format_bytes(st.state_bytes + st.act_1f1b));
      }
      fmt::print("bytes per step on each link (activations forward as {}, gradients back as {}):\n", o->fwd, o->bwd);
      for (size_t s = 0; s + 1 < stages.size(); s++)
        fmt::print("  stage {} -> {}: {} forward, {} back\n", s, s + 1, format_bytes(stages[s].link_fwd),
                   format_bytes(stages[s].link_bwd));
      if (c.tie_embeddings)
        fmt::print("  stage 0 <-> {}: {} each way (the tied embedding's gradient)\n", o->pp - 1,
                   format_bytes(4.0 * (double)c.vocab_size * c.dim));
      return;
    }
    fmt::print("{}: {} parameters ({} trainable); {} ranks = dp {} x tp {}{}; batch {} x {} tokens per rank\n",
               o->preset.empty() ? o->model : o->preset, count((double)p.params), count((double)p.trainable), o->p.ranks, p.dp, o->p.tp,
               o->p.fsdp ? ", fully sharded" : "", o->p.batch, o->p.seq_len);
    fmt::print("per rank:\n");
    auto row = [](const char* what, double b) { fmt::print("  {:<28} {:>12}\n", what, format_bytes(b)); };
    row(o->p.lora_rank ? "weights (base + adapters)" : "weights (f32)", p.weight_bytes);
    row("gradients", p.grad_bytes);
    row("AdamW moments", p.optim_bytes);
    if (o->p.fsdp && o->p.lora_rank) row(o->p.quant.empty() ? "base unit in use (another rank's)" : "unit in use + block in f32", p.gathered_bytes);
    else if (o->p.fsdp) row("gathered block (FSDP)", p.gathered_bytes);
    else if (p.gathered_bytes > 0) row("one block dequantized (f32)", p.gathered_bytes);
    row(o->p.recompute ? "activations (recompute)" : "activations", p.activation_bytes);
    row("total", p.total_bytes());
    row("KV cache (generation, bf16)", p.kv_cache_bytes);
    fmt::print("communication per optimizer step, sent by each rank:\n");
    row(!o->p.fsdp ? "gradient all-reduce" : o->p.lora_rank ? "base broadcasts + all-reduce" : "FSDP gathers + reduce-scatter",
        p.dp_comm_bytes);
    row("tensor-parallel all-reduces", p.tp_comm_bytes);
    if (mem > 0) {
      if (fit_ranks > 0)
        fmt::print("fits in {} per rank: {} ranks (the fewest; shown above)\n", format_bytes(mem), fit_ranks);
      else
        fmt::print("does not fit in {} per rank at any rank count up to {}{}\n", format_bytes(mem), 16384 * o->p.tp,
                   o->p.fsdp ? "" : " (without --fsdp every rank holds the whole state: add --fsdp)");
    }
  });
}

}  // namespace llmq::cli
