// llmq plan: size a training job before renting the cluster.
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/progress.h"
#include "dist/plan.h"
#include "io/hf_dir.h"

namespace llmq::cli {

void register_plan(CLI::App& app) {
  auto* cmd = app.add_subcommand("plan", "memory per rank and bytes communicated per step for a training job");
  struct Opts {
    std::string preset, model;
    dist::PlanOptions p;
    bool json = false;
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
  cmd->add_option("--quant", o->p.quant, "frozen quantized base for adapter training: rtn4, rtn8, hqq2, hqq3, hqq4, hqq8 (llmq finetune --quantize-base), int8, int4, nf4");
  cmd->add_option("--lora-rank", o->p.lora_rank, "train rank-R adapters on every block linear (QLoRA with --quant)");
  cmd->add_flag("--dora", o->p.dora, "the adapters are DoRA (a magnitude per output row; more activations)");
  cmd->add_flag("--recompute", o->p.recompute, "per-block activation recomputation");
  cmd->add_flag("--json", o->json, "machine-readable output");
  cmd->callback([o] {
    if (o->preset.empty() && o->model.empty()) fail("plan: give --preset NAME or -m DIR");
    if (!o->preset.empty() && !o->model.empty()) fail("plan: give --preset NAME or -m DIR, not both");
    const ModelConfig c = o->preset.empty() ? config_load(o->model + "/config.json") : config_preset(o->preset);
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
    if (o->json) {
      fmt::print("{}\n", j.dump(2));
      return;
    }
    auto count = [](double n) { return n >= 1e9 ? fmt::format("{:.2f}B", n / 1e9) : fmt::format("{:.2f}M", n / 1e6); };
    fmt::print("{}: {} parameters ({} trainable); {} ranks = dp {} x tp {}{}; batch {} x {} tokens per rank\n",
               o->preset.empty() ? o->model : o->preset, count((double)p.params), count((double)p.trainable), o->p.ranks, p.dp, o->p.tp,
               o->p.fsdp ? ", fully sharded" : "", o->p.batch, o->p.seq_len);
    fmt::print("per rank:\n");
    auto row = [](const char* what, double b) { fmt::print("  {:<28} {:>12}\n", what, format_bytes(b)); };
    row(o->p.lora_rank ? "weights (base + adapters)" : "weights (f32)", p.weight_bytes);
    row("gradients", p.grad_bytes);
    row("AdamW moments", p.optim_bytes);
    if (o->p.fsdp) row("gathered block (FSDP)", p.gathered_bytes);
    else if (p.gathered_bytes > 0) row("one block dequantized (f32)", p.gathered_bytes);
    row(o->p.recompute ? "activations (recompute)" : "activations", p.activation_bytes);
    row("total", p.total_bytes());
    row("KV cache (generation, bf16)", p.kv_cache_bytes);
    fmt::print("communication per optimizer step, sent by each rank:\n");
    row(o->p.fsdp ? "FSDP gathers + reduce-scatter" : "gradient all-reduce", p.dp_comm_bytes);
    row("tensor-parallel all-reduces", p.tp_comm_bytes);
  });
}

}  // namespace llmq::cli
