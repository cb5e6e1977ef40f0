// llmq train: train a Llama from scratch or from a checkpoint on prepared token shards.
#include <csignal>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/output_dir.h"
#include "core/progress.h"
#include "quant/quantize_model.h"
#include "train/qat.h"
#include "train/trainer.h"

namespace llmq::cli {

namespace {

// The options `llmq train` and `llmq finetune` share (what a user of one knows from the other).
void add_training_options(CLI::App* cmd, const std::shared_ptr<train::TrainOptions>& o) {
  cmd->add_option("--data", o->data, "prepared data directory")->required();
  cmd->add_option("--out", o->out, "run directory: checkpoints, metrics.jsonl")->required();
  cmd->add_option("--steps", o->steps, fmt::format("optimizer steps (default {})", o->steps))->check(llmq::cli::kPositive);
  cmd->add_option("--batch", o->batch, "sequences per micro-batch (default 8)")->check(llmq::cli::kPositive);
  cmd->add_option("--seq-len", o->seq_len, "tokens per sequence (default 256)")->check(llmq::cli::kPositive);
  cmd->add_option("--grad-accum", o->grad_accum, "micro-batches per step (default 1)")->check(llmq::cli::kPositive);
  cmd->add_option("--lr", o->lr, fmt::format("peak learning rate (default {})", o->lr))->check(llmq::cli::kPositive);
  cmd->add_option("--min-lr-ratio", o->min_lr_ratio, "final lr as a fraction of --lr (default 0.1)")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--decay", o->decay, "cosine or linear (default cosine)")->check(CLI::IsMember({"cosine", "linear"}));
  cmd->add_option("--weight-decay", o->adamw.weight_decay,
                  fmt::format("AdamW decoupled weight decay (default {}; never on norms)", o->adamw.weight_decay));
  cmd->add_option("--beta1", o->adamw.beta1, "AdamW beta1 (default 0.9)");
  cmd->add_option("--beta2", o->adamw.beta2, fmt::format("AdamW beta2 (default {})", o->adamw.beta2));
  cmd->add_option("--eps", o->adamw.eps, "AdamW epsilon (default 1e-8)");
  cmd->add_option("--clip", o->clip, "clip the global gradient norm to this (default 1; 0 = off)")->check(llmq::cli::kNonNegative);
  cmd->add_option("--seed", o->seed, "initialisation seed");
  cmd->add_option("--eval-every", o->eval_every, "validation every N steps (default 100)");
  cmd->add_option("--eval-batches", o->eval_batches, "validation batches (default 8)");
  cmd->add_option("--save-every", o->save_every, "checkpoint every N steps (default 500; always at the end)");
  cmd->add_option("--keep", o->keep, "checkpoints kept (default 2)")->check(llmq::cli::kPositive);
  cmd->add_option("--log-every", o->log_every, "progress line every N steps (default 10)")->check(llmq::cli::kPositive);
  cmd->add_option("--precision", o->precision,
                  "products of every linear, forward and backward: f32, or bf16 (bf16 operands, f32 sums; weights, "
                  "gradients and AdamW stay f32; default f32, or the run's own on --resume)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_flag("--recompute", o->recompute, "recompute each block's activations in backward (less memory, ~1/3 more compute)");
  cmd->add_flag("--deterministic", o->deterministic,
                "record the thread count in checkpoints and resume on it, so resumed runs are bitwise identical");
  cmd->add_flag_function("--no-overlap", [o](std::int64_t) { o->overlap_comm = false; },
                "data parallel: all-reduce the gradients after the backward pass instead of each unit's while "
                "backward goes on (for comparison; the sums are the same)");
  cmd->add_flag("--resume", o->resume, "continue from the run directory's newest complete checkpoint");
  cmd->add_flag("--overwrite", o->overwrite,
                "delete an earlier run in --out and start again (without it, or --resume, a non-empty --out is refused)");
  cmd->add_option("--stop-after", o->stop_after, "stop with a checkpoint after this step (resume later with --resume)");
  cmd->footer("Ctrl-C (or SIGTERM) saves a checkpoint at the current step and stops (exit 130/143); a second one aborts.\n"
              "Options may also come from a file: --options FILE with `key = value` lines (e.g. `lr = 3e-4`,\n"
              "`recompute = true`); flags given on the command line win.");
}

// Runs the training and prints its summary (text, or one JSON object with --json). `finish`
// (rank 0, after a run that reached --steps) makes a further output and returns its path.
void run_training(train::TrainOptions& o, bool json, const CLI::Option* warmup_opt,
                  const std::function<std::string()>& finish = {}) {
  if (o.warmup >= o.steps) {
    const int64_t w = std::max<int64_t>(0, o.steps / 10);
    // Said, not silent: a warm-up as long as the run would never reach the peak rate.
    if (warmup_opt->count() > 0)
      fmt::print(stderr, "warning: --warmup {} is not below --steps {}: warming up for {} steps (a tenth of the run)\n",
                 o.warmup, o.steps, w);
    o.warmup = w;
  }
  auto r = train::train_run(o);
  // Stopped by SIGINT/SIGTERM: the checkpoint at the stop is saved; exit as the signal's
  // conventional status (130/143) after the summary, so scripts see the interruption.
  if (r.stop_signal) g_exit_code = 128 + r.stop_signal;
  if (r.stop_signal && r.rank == 0)
    fmt::print(stderr, "stopped by {} after step {}: checkpoint saved in {}; continue with --resume\n",
               r.stop_signal == SIGINT ? "Ctrl-C (SIGINT)" : "SIGTERM", r.steps, o.out);
  if (r.rank != 0) return;  // one summary per job
  const std::string made = finish && r.steps == o.steps && !r.stop_signal ? finish() : "";
  // No placeholders: a value that was not measured is null in JSON and said so in text.
  const bool trained = r.steps > r.start_step, has_val = trained && r.last_val_loss >= 0;
  const std::string why_no_val = !trained ? "nothing was trained" : r.val_note.empty() ? "not evaluated" : r.val_note;
  if (json) {
    nlohmann::json j{{"steps", r.steps}, {"start_step", r.start_step},
                     {"loss", trained ? nlohmann::json(r.last_loss) : nlohmann::json()},
                     {"val_loss", has_val ? nlohmann::json(r.last_val_loss) : nlohmann::json()},
                     {"tokens_per_s", trained ? nlohmann::json(r.tokens_per_s) : nlohmann::json()},
                     {"peak_rss_bytes", peak_rss_bytes()}, {"ranks", r.world}, {"bytes_sent_per_rank", r.bytes_sent},
                     {"precision", r.precision}, {"trained_params", r.trained_params},
                     {"rss_end_bytes", r.rss_end_bytes}};
    if (o.finetune) j["base_linear_bytes"] = r.base_bytes;
    if (!r.ranks.empty()) {
      nlohmann::json rk = nlohmann::json::array();
      for (size_t i = 0; i < r.ranks.size(); i++)
        rk.push_back({{"rank", i}, {"stage", r.ranks[i].stage}, {"peak_rss_bytes", r.ranks[i].peak_rss},
                      {"stage_fwd_bytes", r.ranks[i].fwd_bytes}, {"stage_bwd_bytes", r.ranks[i].bwd_bytes},
                      {"stage_eval_bytes", r.ranks[i].eval_bytes}});
      j["pipeline_ranks"] = rk;
    }
    if (!o.qat.empty()) {
      j["scheme"] = o.qat;
      j["quantized"] = made.empty() ? nlohmann::json() : nlohmann::json(made);
      j["kl"] = r.last_kl >= 0 && trained ? nlohmann::json(r.last_kl) : nlohmann::json();
      j["ce"] = r.last_ce >= 0 && trained ? nlohmann::json(r.last_ce) : nlohmann::json();
    }
    if (!has_val) j["val_loss_note"] = why_no_val;
    fmt::print("{}\n", j.dump());
  } else if (!trained) {
    fmt::print("nothing to train: {} is at step {} of --steps {} (give a larger --steps to train on)\n", o.out, r.steps,
               o.steps);
  } else {
    fmt::print("trained steps {}-{} of {}: loss {:.4f}, {}, {:.0f} tok/s, peak RSS {}\n", r.start_step + 1, r.steps, o.steps,
               r.last_loss, has_val ? fmt::format("val loss {:.4f}", r.last_val_loss) : "no val loss (" + why_no_val + ")",
               r.tokens_per_s, format_bytes(peak_rss_bytes()));
    if (!made.empty())
      fmt::print("wrote {}: the {} model it trained for, on llmq's integer kernels (llmq generate/eval/bench -m {})\n",
                 made, o.qat, made);
  }
}
}  // namespace

void register_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "train a model on token shards (from `llmq data prepare`)");
  auto o = std::make_shared<train::TrainOptions>();
  auto json = std::make_shared<bool>(false);
  auto* m = cmd->add_option("-m,--model", o->model, "start from this model directory");
  auto* p = cmd->add_option("--preset", o->preset, "start from a random model of this preset shape");
  auto* c = cmd->add_option("--config", o->config, "start from a random model of this config.json / params.json")->check(CLI::ExistingFile);
  m->excludes(p)->excludes(c);
  p->excludes(c);
  add_training_options(cmd, o);
  auto* warmup_opt = cmd->add_option("--warmup", o->warmup, "warm-up steps (default 100; a tenth of --steps when that is fewer)")->check(llmq::cli::kNonNegative);
  // Flag functions rather than CLI11's "!--flag" (whose help prints "--flag{false}").
  cmd->add_flag_function("--no-decay-embeddings", [o](std::int64_t) { o->decay_embeddings = false; },
                         "no weight decay on the embedding and output matrices");
  cmd->add_option("--sample-tokens", o->sample_tokens, "tokens sampled from each checkpoint (default 32; 0 = none)");
  cmd->add_flag("--fsdp", o->fsdp, "under mpirun: shard parameters, gradients and AdamW state over the ranks "
                                  "(each block gathered before use; same results as data parallel)");
  cmd->add_option("--checkpoint-format", o->checkpoint_format,
                  "sharded: each rank writes its own shard file (the default with --fsdp; `llmq export --format hf` "
                  "makes a model directory of it); full: a model directory plus optimizer state, written by rank 0")
      ->check(CLI::IsMember({"auto", "full", "sharded"}));
  cmd->add_flag("--fsdp-overlap", o->fsdp_overlap,
                "--fsdp: start the next unit's all-gather while a unit computes and reduce-scatter behind the next "
                "unit's backward, on a communication thread (same results and bytes; measured slower on a 2-core "
                "host, where that thread competes with compute: for machines with cores to spare)");
  cmd->add_option("--pp", o->pp,
                  "under mpirun: pipeline stages (the blocks split over N stages, ranks = N x data-parallel replicas, "
                  "stages outermost; default 1)")
      ->check(llmq::cli::kPositive);
  cmd->add_option("--pp-schedule", o->pp_schedule, "gpipe (all forwards, then all backwards) or 1f1b (default: less memory, same updates)")
      ->check(CLI::IsMember({"gpipe", "1f1b"}));
  cmd->add_option("--micro-batches", o->micro_batches, "--pp: micro-batches per step and replica (default: as many as stages)")
      ->check(llmq::cli::kPositive);
  cmd->add_option("--pp-split", o->pp_split, "--pp: blocks per stage, e.g. 10,11,11 (default: balanced by matmul cost, head included)");
  cmd->add_option("--profile-trace", o->profile_trace, "--pp: write a Chrome trace (chrome://tracing, Perfetto) of every rank's "
                                                       "forward, backward, send, receive, encode and decode to FILE.json");
  cmd->add_option("--pp-compress-fwd", o->pp_compress_fwd,
                  "--pp: activations sent forward as none (f32, default), fixpoint (AQ-SGD: per-channel fp16 scale, "
                  "--fwd-bits codes), tah (TAH-Quant: entropy-chosen --hi-bits/--lo-bits rows, Hadamard-rotated outlier "
                  "tiles), delta or delta-lowbits (AQ-SGD: a fixpoint code of the change from a per-window cache both "
                  "ends keep, fp16 or --delta-cache-bits)")
      ->check(CLI::IsMember({"none", "fixpoint", "tah", "delta", "delta-lowbits"}));
  cmd->add_option("--delta-cache-bits", o->delta_cache_bits, "delta-lowbits: bits of the cached activations, 2, 4 or 8 (default 4)")
      ->check(CLI::IsMember({2, 4, 8}));
  cmd->add_option("--pp-compress-bwd", o->pp_compress_bwd, "--pp: gradients sent back as none (default) or fixpoint (--bwd-bits)")
      ->check(CLI::IsMember({"none", "fixpoint"}));
  cmd->add_option("--fwd-bits", o->fwd_bits, "fixpoint bits of forward activations (default 4)")->check(CLI::Range(1, 8));
  cmd->add_option("--bwd-bits", o->bwd_bits, "fixpoint bits of backward gradients (default 6)")->check(CLI::Range(1, 8));
  cmd->add_option("--tile", o->tile, "tah: values per tile along a row (a power of two dividing the width; default 64)");
  cmd->add_option("--hi-bits", o->hi_bits, "tah: bits of the high-entropy rows (default 4)")->check(CLI::Range(1, 8));
  cmd->add_option("--lo-bits", o->lo_bits, "tah: bits of the low-entropy rows (default 3)")->check(CLI::Range(1, 8));
  cmd->add_option("--hi-ratio", o->hi_ratio, "tah: share of each sequence's rows at --hi-bits (default 0.8)")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--pp-warmup-epochs", o->pp_warmup_epochs, "--pp: epochs of the training data sent uncompressed first (default 0)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag_function("--pp-eval-uncompressed", [o](std::int64_t) { o->pp_compress_eval = false; },
                         "--pp: validation activations go uncompressed (default: coded as training's)");
  cmd->add_flag("--json", *json, "print a JSON summary at the end (progress lines still go to stderr)");
  cmd->callback([o, json, warmup_opt] { run_training(*o, *json, warmup_opt); });
}

void register_finetune(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "finetune", "train LoRA/DoRA adapters on a frozen base (float or quantized: QLoRA, QDoRA); writes PEFT adapters");
  auto o = std::make_shared<train::TrainOptions>();
  auto json = std::make_shared<bool>(false);
  o->finetune = true;
  // PEFT / Hugging Face Trainer habits: lr 2e-4, no weight decay, AdamW beta2 0.999.
  o->lr = 2e-4, o->adamw.weight_decay = 0.0, o->adamw.beta2 = 0.999, o->steps = 500, o->sample_tokens = 0;
  cmd->add_option("-m,--model", o->model, "the base model directory (float, or quantized: RTN, GPTQ, AWQ, HQQ)")->required();
  auto adapter = std::make_shared<std::string>("lora");
  auto targets = std::make_shared<std::string>("all-linear");
  cmd->add_option("--adapter", *adapter, "lora or dora (default lora)")->check(CLI::IsMember({"lora", "dora"}));
  cmd->add_option("--rank", o->adapter.rank, "adapter rank r (default 16)")->check(llmq::cli::kPositive);
  cmd->add_option("--alpha", o->adapter.alpha, "lora_alpha: the adapter's output is scaled by alpha/r (default 16)");
  cmd->add_flag("--rslora", o->adapter.rslora, "rank-stabilised scale alpha/sqrt(r)");
  cmd->add_option("--dropout", o->adapter.dropout, "dropout on the adapter's input while training (default 0)")
      ->check(CLI::Range(0.0, 0.999));
  cmd->add_option("--targets", *targets,
                  "comma-separated modules (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) or all-linear "
                  "(default)");
  cmd->add_option("--quantize-base", o->quantize_base,
                  "quantize a float base while loading it, one linear at a time: rtn4, rtn8, hqq2, hqq3, hqq4, hqq8 "
                  "(QLoRA / QDoRA), or a recipe as `llmq quantize --mix/--recipe` takes (rtn and hqq rules), e.g. "
                  "'self_attn=w4a16:g64:hqq,mlp=w2a16:g16:hqq:axis0' for a 4/2-bit QDoRA base");
  cmd->add_flag("--train-norms", o->adapter.train_norms, "train the RMSNorm weights too (saved as modules_to_save)");
  cmd->add_flag("--fsdp", o->fsdp,
                "under mpirun: shard the frozen base over the ranks (each holds ~1/N of it and receives a block "
                "while it runs); the adapters stay replicated");
  add_training_options(cmd, o);
  auto* warmup_opt = cmd->add_option("--warmup", o->warmup, "warm-up steps (default 100; a tenth of --steps when that is fewer)")->check(llmq::cli::kNonNegative);
  cmd->add_flag("--json", *json, "print a JSON summary at the end (progress lines still go to stderr)");
  cmd->callback([o, json, warmup_opt, adapter, targets] {
    o->adapter.dora = *adapter == "dora";
    o->adapter.targets = train::parse_targets(*targets);
    run_training(*o, *json, warmup_opt);
  });
}

void register_qat(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "qat", "quantization-aware training (LLM-QAT): a student copy of the model trains with fake-quantized weights, "
             "activations and KV cache to match the model's own token distributions");
  auto o = std::make_shared<train::TrainOptions>();
  auto json = std::make_shared<bool>(false);
  // LLM-QAT's recipe: lr 2e-5 (a fine-tune of a trained model), no weight decay, cosine decay.
  o->lr = 2e-5, o->adamw.weight_decay = 0.0, o->steps = 500, o->sample_tokens = 0, o->warmup = 0;
  // Checkpoints are model directories (also under --fsdp): the last one becomes RUN/quantized.
  o->checkpoint_format = "full";
  cmd->add_option("-m,--model", o->model, "the float model: teacher, and the student's starting point")->required();
  cmd->add_option("--scheme", o->qat, std::string("quantization trained for (weights w, activations a, KV cache kv bits; ") +
                                         train::kQatSchemes + ")")->required();
  cmd->add_option("--kd-weight", o->kd_weight,
                  "loss = w * KL(teacher || student) + (1 - w) * cross-entropy to the data (default 1: distillation "
                  "only, as LLM-QAT; 0: no teacher)")->check(CLI::Range(0.0, 1.0));
  add_training_options(cmd, o);
  auto* warmup_opt = cmd->add_option("--warmup", o->warmup, "warm-up steps (default 0)")->check(llmq::cli::kNonNegative);
  cmd->add_flag("--fsdp", o->fsdp, "under mpirun: shard the student's parameters, gradients and AdamW state (the "
                                  "teacher stays whole on every rank)");
  cmd->add_flag("--json", *json, "print a JSON summary at the end (progress lines still go to stderr)");
  cmd->footer("Checkpoints hold the float student (resumable); `llmq quantize -m RUN/checkpoint-N --method qat --scheme "
              "SCHEME` (what `llmq qat` runs at the end, into RUN/quantized) writes the integer model it trained for.");
  cmd->callback([o, json, warmup_opt] {
    // The integer model of the trained student, from its last checkpoint: RUN/quantized.
    auto finish = [o, json]() -> std::string {
      const train::FakeQuant f = train::qat_scheme_parse(o->qat);
      QuantizeOptions q;
      q.model = (std::filesystem::path(o->out) / fmt::format("checkpoint-{:06}", o->steps)).string();
      const std::string out = (std::filesystem::path(o->out) / "quantized").string();
      q.method = "qat";
      q.scheme = fmt::format("w{}a{}", f.w_bits, f.acts() ? f.a_bits : 16);
      q.kv_cache = f.kv() ? fmt::format("int{}", f.kv_bits) : "";
      q.keep = {"embed", "lm_head"};
      q.progress = !*json;
      OutputDir od(out, "quantize", true);
      q.out = od.path(), q.out_label = out;
      quantize_model(q);
      od.commit();
      return out;
    };
    run_training(*o, *json, warmup_opt, finish);
  });
}

}  // namespace llmq::cli
