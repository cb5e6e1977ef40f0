// Training loop, data windows, checkpoints and exact resume.
#include "train/trainer.h"

#include <signal.h>
#include <malloc.h>
#include <unistd.h>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/output_dir.h"
#include "core/file_util.h"
#include "core/progress.h"
#include "data/shards.h"
#include "dist/comm.h"
#include "io/hf_dir.h"
#include "infer/generator.h"
#include "ops/ops.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/finetune.h"
#include "quant/quant_base.h"
#include "quant/recipe.h"
#include "dist/plan.h"
#include "train/base_shard.h"
#include "train/fsdp.h"
#include "train/llama_train.h"
#include "train/pipeline.h"

namespace llmq::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

double lr_at(const TrainOptions& o, int64_t step) {
  if (step < o.warmup) return o.lr * (double)(step + 1) / (double)o.warmup;
  const double span = (double)std::max<int64_t>(1, o.steps - o.warmup);
  const double t = std::min(1.0, (double)(step - o.warmup) / span);
  const double floor = o.lr * o.min_lr_ratio;
  const double k = o.decay == "linear" ? 1.0 - t : 0.5 * (1.0 + std::cos(M_PI * t));
  return floor + (o.lr - floor) * k;
}

void split_window(const uint32_t* w, int64_t T, int32_t* tokens, int32_t* targets) {
  for (int64_t t = 0; t < T; t++) {
    tokens[t] = (int32_t)(w[t] & ~kLossMaskBit);
    targets[t] = w[t + 1] & kLossMaskBit ? -1 : (int32_t)w[t + 1];
  }
}

namespace {

// A split's shards as one token stream; windows of T+1 tokens give T inputs and targets.
struct TokenStream {
  const TokenSplit* split = nullptr;
  std::vector<int64_t> starts;  // global position of each shard
  int64_t total = 0;
  int64_t vocab = 0;
  std::string dir;
  void init(const TokenSplit& s, int64_t v, const std::string& d) {
    split = &s, vocab = v, dir = d;
    for (const auto& sh : s.shards) starts.push_back(total), total += sh.tokens;
    // Every id is checked once here (one pass over the mapped shards, ~1 GB/s), so a bad id
    // stops the run at the start, not hours in when its window is drawn (and again at every resume).
    for (const auto& sh : s.shards) {
      const uint32_t* ids = sh.ids();
      uint32_t mx = 0;
      int64_t at = 0;
      for (int64_t i = 0; i < sh.tokens; i++)
        if ((ids[i] & ~kLossMaskBit) > mx) mx = ids[i] & ~kLossMaskBit, at = i;
      if ((int64_t)mx >= vocab)
        fail("{}: token id {} at position {} of a shard is outside the model's vocabulary ({}); prepare the data with the "
             "model's tokenizer", d, mx, at, vocab);
    }
  }
  void read(int64_t pos, int64_t n, int32_t* out) const {
    size_t k = std::upper_bound(starts.begin(), starts.end(), pos) - starts.begin() - 1;
    for (int64_t i = 0; i < n; i++, pos++) {
      while (pos >= starts[k] + split->shards[k].tokens) k++;
      const uint32_t raw = split->shards[k].ids()[pos - starts[k]], id = raw & ~kLossMaskBit;
      if ((int64_t)id >= vocab)
        fail("{}: token id {} in the data is outside the model's vocabulary ({}); prepare the data with the model's tokenizer",
             dir, id, vocab);
      out[i] = (int32_t)raw;  // with the mask bit: to_window() splits it
    }
  }
  static void to_window(const std::vector<int32_t>& w, int64_t T, int32_t* tokens, int32_t* targets) {
    split_window(reinterpret_cast<const uint32_t*>(w.data()), T, tokens, targets);
  }
  // B windows of T+1 tokens. The stream is cut into W = (total-1)/T windows, visited in a
  // fresh seeded permutation each epoch (so a run does not see the corpora in file order);
  // *cursor counts windows taken, which is all the state a resume needs.
  // ids (B, optional): each window's index in the stream (the pipeline's delta caches' key).
  void batch(int64_t* cursor, int64_t B, int64_t T, int32_t* tokens, int32_t* targets, uint64_t seed, int64_t* ids = nullptr) {
    const int64_t W = (total - 1) / T;
    std::vector<int32_t> w(T + 1);
    for (int64_t b = 0; b < B; b++, (*cursor)++) {
      const int64_t epoch = *cursor / W, i = *cursor % W;
      if (epoch != perm_epoch || (int64_t)perm.size() != W) shuffle(W, epoch, seed);
      if (ids) ids[b] = perm[i];
      read(perm[i] * T, T + 1, w.data());
      to_window(w, T, tokens + b * T, targets + b * T);
    }
  }
  // Validation: the first B windows in order, no shuffling.
  void batch_in_order(int64_t* cursor, int64_t B, int64_t T, int32_t* tokens, int32_t* targets) const {
    std::vector<int32_t> w(T + 1);
    for (int64_t b = 0; b < B; b++) {
      if (*cursor + T + 1 > total) *cursor = 0;
      read(*cursor, T + 1, w.data());
      to_window(w, T, tokens + b * T, targets + b * T);
      *cursor += T;
    }
  }

 private:
  std::vector<int64_t> perm;
  int64_t perm_epoch = -1;
  void shuffle(int64_t W, int64_t epoch, uint64_t seed) {
    perm.resize(W);
    for (int64_t i = 0; i < W; i++) perm[i] = i;
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + (uint64_t)epoch + 1;
    for (int64_t i = W - 1; i > 0; i--) {  // Fisher-Yates with splitmix64
      x += 0x9e3779b97f4a7c15ull;
      uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      std::swap(perm[i], perm[(int64_t)(z % (uint64_t)(i + 1))]);
    }
    perm_epoch = epoch;
  }
};

// What must match between a run and its resumption for the result to be the same.
json resume_key(const TrainOptions& o) {
  json k = {{"batch", o.batch}, {"seq_len", o.seq_len}, {"grad_accum", o.grad_accum}, {"steps", o.steps},
          {"lr", o.lr},       {"min_lr_ratio", o.min_lr_ratio}, {"warmup", o.warmup}, {"decay", o.decay},
          {"clip", o.clip},   {"weight_decay", o.adamw.weight_decay}, {"beta1", o.adamw.beta1}, {"seed", o.seed},
          {"beta2", o.adamw.beta2}, {"eps", o.adamw.eps}, {"precision", o.precision.empty() ? "f32" : o.precision}};
  if (o.deterministic) k["threads"] = ops_threads();
  if (!o.qat.empty()) {
    k["qat"] = o.qat;
    k["kd_weight"] = o.kd_weight;
    k["teacher"] = o.model;
  }
  if (o.finetune) {
    k["adapter"] = o.adapter.options();
    k["base"] = o.model;
    k["quantize_base"] = o.quantize_base;
  }
  return k;
}

// What a checkpoint's pipeline delta caches belong to: a resume reads them only on the same.
json pipeline_cache_key(const TrainOptions& o, const std::vector<int64_t>& bounds, int dp) {
  return {{"format", "llmq-pp-caches-1"}, {"pp", o.pp}, {"dp", dp}, {"bounds", bounds}, {"codec", o.pp_compress_fwd},
          {"cache_bits", o.pp_compress_fwd == "delta" ? 16 : o.delta_cache_bits}, {"seq_len", o.seq_len}};
}

// A sample from the checkpoint just written, through the inference engine, so what is
// printed is what `llmq generate` on that checkpoint gives.
void sample(const TrainOptions& o, int64_t step) {
  const std::string dir = (fs::path(o.out) / fmt::format("checkpoint-{:06}", step)).string();
  Model mm = model_load(dir);
  auto tok = tokenizer_load(dir);
  if (tok->bos_id < 0) return;
  GenerateOptions g;
  g.max_new_tokens = (int)o.sample_tokens;
  g.sampling.temperature = 0.8f;
  g.sampling.top_p = 0.95f;
  g.sampling.seed = 1;
  g.eos_ids = tok->eos_ids;
  auto r = generate(mm, {{tok->bos_id}}, g);
  std::string text = tok->decode(r[0].tokens, true);
  for (auto& c : text)
    if (c == '\n') c = ' ';
  fmt::print(stderr, "step {:>6} | sample: {}\n", step, text);
}

// Keeps metrics.jsonl lines up to `step` (those after it belong to a run that is redone).
void trim_metrics(const std::string& path, int64_t step) {
  if (!fs::is_regular_file(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  int64_t torn = 0;
  while (std::getline(in, line)) {
    auto j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) {
      torn++;  // a row cut by a kill or a full disk
      continue;
    }
    if (j["step"].get<int64_t>() <= step) kept += line + "\n";
  }
  if (torn) fmt::print(stderr, "note: {}: dropped {} unreadable (torn) line{}\n", path, torn, torn == 1 ? "" : "s");
  write_file_atomic(path, kept);
}
}  // namespace

namespace {
// Ctrl-C (SIGINT) or SIGTERM during training: the run finishes its step, saves a checkpoint
// and stops, as a user of a training script expects; a second signal aborts at once.
std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal.exchange(sig) != 0) {
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return;
  }
  static const char msg[] = "\nllmq: stopping after this step, with a checkpoint (signal again to abort without one)\n";
  [[maybe_unused]] ssize_t r = ::write(2, msg, sizeof msg - 1);
}
// Installs the handler for the run and restores the previous ones after it.
struct StopSignals {
  struct sigaction old_int{}, old_term{};
  StopSignals() {
    g_stop_signal = 0;
    struct sigaction sa{};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
  }
};

// Temporary files that killed writers left in a run directory (`latest.tmp.PID`,
// `metrics.jsonl.tmp.PID`, checkpoint temporaries): garbage once this run holds the lock.
void remove_run_leftovers(const std::string& out) {
  if (!fs::is_directory(out)) return;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string n = e.path().filename().string();
    const size_t t = n.rfind(".tmp.");
    const bool tmp_file = t != std::string::npos && t + 5 < n.size() && n.find_first_not_of("0123456789", t + 5) == std::string::npos;
    if (tmp_file || n.rfind(".tmp-checkpoint-", 0) == 0) fs::remove_all(e.path());
  }
}
}  // namespace

TrainResult train_run(const TrainOptions& options) {
  TrainOptions o = options;  // a resume that extends the run adopts its warm-up
  if (o.out.empty()) fail("train: give --out DIR");
  if (o.steps <= 0 || o.batch <= 0 || o.seq_len <= 0 || o.grad_accum <= 0) fail("train: steps, batch, seq-len and grad-accum must be positive");
  if (o.decay != "cosine" && o.decay != "linear") fail("train: --decay must be cosine or linear");
  if (o.checkpoint_format != "auto" && o.checkpoint_format != "full" && o.checkpoint_format != "sharded")
    fail("train: --checkpoint-format must be auto, full or sharded");
  if (o.checkpoint_format == "sharded" && !o.fsdp)
    fail("train: --checkpoint-format sharded needs --fsdp (without it every rank holds the whole state and rank 0 writes it)");
  int sources = !o.model.empty() + !o.preset.empty() + !o.config.empty();
  if (o.finetune && o.model.empty()) fail("finetune: give the base model with -m DIR");
  if (sources != 1) fail("train: give exactly one of --model DIR, --preset NAME, --config FILE");
  if (o.finetune) {
    o.adapter.check();
    o.adapter.base = o.model;
    if (!o.quantize_base.empty() && recipe_is_arg(o.quantize_base)) {  // the recipe, checked before any work
      recipe_from_arg(o.quantize_base);
      if (o.fsdp) fail("finetune: --fsdp with a --quantize-base recipe is not supported yet (quantize the base with "
                       "`llmq quantize --recipe`, or give one scheme such as hqq4)");
    } else if (!o.quantize_base.empty()) {
      base_quant_parse(o.quantize_base);  // the name, checked before any work
    }
  } else if (!o.quantize_base.empty()) {
    fail("train: --quantize-base is for llmq finetune (a frozen base); full training updates every weight in f32");
  }
  if (o.pp < 1) fail("train: --pp {} must be at least 1", o.pp);
  if (o.pp > 1) {
    if (o.finetune) fail("finetune: --pp is not supported yet (adapter fine-tuning runs data parallel, with --fsdp to shard the base)");
    if (!o.qat.empty()) fail("qat: --pp is not supported yet (quantization-aware training runs data parallel or --fsdp)");
    if (o.fsdp) fail("train: --pp with --fsdp is not supported yet: pipeline stages with plain data parallel beside them only");
    if (o.pp_schedule != "gpipe" && o.pp_schedule != "1f1b") fail("train: --pp-schedule {}: give gpipe or 1f1b", o.pp_schedule);
  } else if (!o.pp_split.empty() || o.micro_batches > 0 || o.pp_compress_fwd != "none" || o.pp_compress_bwd != "none") {
    fail("train: --pp-split, --micro-batches and --pp-compress-* are for pipeline stages; give --pp N (N > 1) too");
  }
  FakeQuant fq;
  if (!o.qat.empty()) {
    if (o.model.empty()) fail("qat: give the teacher model with -m DIR (the student starts as a copy of it)");
    if (o.finetune) fail("qat: adapters and quantization-aware training do not combine");
    if (!(o.kd_weight >= 0 && o.kd_weight <= 1)) fail("qat: --kd-weight {} must be within [0, 1]", o.kd_weight);
    fq = qat_scheme_parse(o.qat);
  }
  ModelConfig cfg = !o.model.empty() ? config_load((fs::path(o.model) / "config.json").string())
                    : !o.preset.empty() ? config_preset(o.preset)
                                        : config_load(o.config);
  TokenDataset data = token_dataset_open(o.data);
  // The tokenizer that goes into checkpoints: the model's, else the one the data names.
  std::string tok_src = !o.model.empty() ? tokenizer_find(o.model) : "";
  if (tok_src.empty() && fs::is_regular_file(data.manifest.tokenizer_source)) tok_src = data.manifest.tokenizer_source;
  std::unique_ptr<Tokenizer> tok = tok_src.empty() ? nullptr : tokenizer_load(tok_src);
  if (tok) data.require_tokenizer(tok->fingerprint(), tok_src);
  // A new model (--preset/--config) takes its vocabulary, BOS and EOS from the data's
  // tokenizer, as `llmq init --tokenizer` does: a preset's 8,192 ids over a 4,000-piece
  // tokenizer would train ids no text has and sample ids nothing can decode.
  if (o.model.empty() && data.manifest.vocab_size != cfg.vocab_size) {
    fmt::print(stderr, "vocabulary: {} ids from the data's tokenizer ({}), not the {}'s {}\n", data.manifest.vocab_size,
               data.manifest.tokenizer_source, o.preset.empty() ? "config" : "preset", cfg.vocab_size);
    cfg.vocab_size = data.manifest.vocab_size;
    cfg.bos_token_ids.clear();
    cfg.eos_token_ids.clear();
    if (tok) {
      if (tok->bos_id >= 0) cfg.bos_token_ids.push_back(tok->bos_id);
      for (auto e : tok->eos_ids) cfg.eos_token_ids.push_back(e);
    } else {
      if (data.manifest.bos_id >= 0) cfg.bos_token_ids.push_back(data.manifest.bos_id);
      if (data.manifest.eos_id >= 0) cfg.eos_token_ids.push_back(data.manifest.eos_id);
    }
  }
  if (data.manifest.vocab_size > cfg.vocab_size)
    fail("{}: the data's tokenizer has {} ids but the model's vocabulary is {}", o.data, data.manifest.vocab_size, cfg.vocab_size);
  if (o.seq_len > cfg.max_seq_len) fail("train: --seq-len {} exceeds the model's context of {} tokens", o.seq_len, cfg.max_seq_len);
  TokenStream train_s, val_s;
  train_s.init(data.train, cfg.vocab_size, o.data);
  val_s.init(data.val, cfg.vocab_size, o.data);
  if (train_s.total < o.seq_len + 1) fail("{}: {} training tokens, fewer than one window of --seq-len {} + 1", o.data, train_s.total, o.seq_len);

  // Data parallel over the job's ranks: each takes B/W of every micro-batch's windows, the
  // gradients (scaled by 1/W) are summed over ranks, so every rank applies the same update
  // as one process with the whole batch would.
  dist::Communicator& comm = dist::world();
  const int R = comm.rank(), W = comm.size();
  const bool lead = R == 0;
  // Pipeline stages: the ranks form a mesh of P stages (outer) x W/P replicas (inner); rank r
  // is stage r / (W/P) of replica r % (W/P). `link` joins a replica's stages, `dp` a stage's replicas.
  const int P = o.pp;
  if (W % P != 0) fail("train: --pp {} does not divide the job's {} ranks (start a multiple of {} with mpirun -np)", P, W, P);
  const int Wdp = W / P, stage = R / Wdp, R_dp = R % Wdp;
  const std::vector<int64_t> bounds = P > 1 ? pipeline_split(cfg, P, o.pp_split) : std::vector<int64_t>{0, cfg.n_layers};
  // The run directory is rank 0's: locked for the whole run (a second train, or a resume beside
  // a running one, is refused naming the holder), and a new run never starts over an earlier
  // one's checkpoints (their steps would sort among the new ones and --keep prune the wrong ones).
  std::unique_ptr<DirLock> lock;
  if (lead) {
    lock = std::make_unique<DirLock>(o.out, "train");
    // An earlier run is one with a checkpoint; a run killed before its first one left only
    // metrics and temporaries, which a fresh start replaces.
    bool earlier = false;
    if (!o.resume && fs::is_directory(o.out))
      for (const auto& e : fs::directory_iterator(o.out)) {
        const std::string n = e.path().filename().string();
        earlier = earlier || n == "latest" || n.rfind("checkpoint-", 0) == 0;
      }
    if (earlier && !o.overwrite)
      fail("{}: holds an earlier run; give --resume to continue it, --overwrite to delete it and start again, or "
           "another --out", o.out);
    if (!o.resume && fs::is_directory(o.out) && (earlier || o.overwrite))
      for (const auto& e : fs::directory_iterator(o.out)) fs::remove_all(e.path());
  }
  // After the lock: beside a running train the message is about that run, not its checkpoints.
  if (o.resume && !has_checkpoint(o.out)) fail("{}: nothing to resume (no checkpoint); run without --resume", o.out);
  if (o.batch % Wdp != 0)
    fail("train: --batch {} does not split over {} {} (give a multiple of {})", o.batch, Wdp, P > 1 ? "data-parallel replicas" : "ranks", Wdp);
  if (P > 1 && (o.batch / Wdp) % (o.micro_batches > 0 ? o.micro_batches : P) != 0)
    fail("train: --micro-batches {} does not divide the {} windows each pipeline takes per step (--batch {} over {} "
         "replica{})", o.micro_batches > 0 ? o.micro_batches : P, o.batch / Wdp, o.batch, Wdp, Wdp == 1 ? "" : "s");
  // (The pipeline's shape too: ranks that disagree on it would wait for messages never sent.)
  comm.check_same(std::hash<std::string>{}(resume_key(o).dump() + config_to_hf_json(cfg).dump() + o.data + o.out +
                                           fmt::format("|pp {} {} {} {} {} {} {} {} {} {} {} {} {} {}", o.pp, o.pp_schedule,
                                                       o.micro_batches, o.pp_split, o.pp_compress_fwd, o.pp_compress_bwd,
                                                       o.fwd_bits, o.bwd_bits, o.tile, o.hi_bits, o.lo_bits, o.hi_ratio,
                                                       o.pp_warmup_epochs, o.pp_compress_eval)),
                  "the training options, model config and paths");
  std::unique_ptr<dist::Communicator> link, dp;  // after the check: every rank splits, or none
  if (P > 1) link = comm.split(R_dp, stage), dp = comm.split(stage, R_dp);
  if (o.finetune)
    fmt::print(stderr, "rank {} of {} ({}, host {}), mesh dp={} tp=1, frozen base {}, {} threads\n", R, W, comm.backend(),
               comm.host(), W, o.fsdp && W > 1 ? fmt::format("sharded over {} ranks", W) : "replicated", ops_threads());
  else if (P > 1)
    fmt::print(stderr, "rank {} of {} ({}, host {}), mesh pp={} dp={} fsdp=1 tp=1, stage {} ({}{}{}), {} threads\n",
               R, W, comm.backend(), comm.host(), P, Wdp, stage,
               bounds[stage + 1] - bounds[stage] == 1 ? fmt::format("block {}", bounds[stage])
                                                      : fmt::format("blocks {}-{}", bounds[stage], bounds[stage + 1] - 1),
               stage == 0 ? ", embeddings" : "", stage == P - 1 ? ", head" : "", ops_threads());
  else
    fmt::print(stderr, "rank {} of {} ({}, host {}), mesh dp={} fsdp={} tp=1, {} threads\n", R, W, comm.backend(),
               comm.host(), o.fsdp ? 1 : W, o.fsdp ? W : 1, ops_threads());
  const bool teach = !o.qat.empty() && o.kd_weight > 0;
  if (!o.finetune) {
    // Weights, gradients and the two AdamW moments are f32: 16 bytes a parameter (FSDP: the
    // moments and gradients sharded, the weights whole; QAT's teacher: 4 more, whole).
    // Refused before allocating, with the figures, instead of a raw allocator message for a
    // config far beyond the machine.
    const double n = (double)cfg.n_params() / P, need = n * ((o.fsdp ? 4.0 + 12.0 / W : 16.0) + (teach ? 4.0 : 0.0));
    const double have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (need > have)
      fail("train: the model has {:.3g} parameters; its f32 weights, gradients and AdamW moments need {} per rank, "
           "more than this machine's {} of memory (see `llmq plan`)", n, format_bytes(need), format_bytes(have));
  }
  if (o.finetune) {
    // The same check from `llmq plan`'s count of this job (base as held, adapters and their
    // state, the block in f32, activations): a job beyond the machine is refused before the
    // base is read, with the figures.
    dist::PlanOptions po;
    po.ranks = W, po.fsdp = o.fsdp, po.seq_len = o.seq_len, po.batch = o.batch / W, po.recompute = o.recompute;
    po.lora_rank = o.adapter.rank, po.dora = o.adapter.dora;
    po.quant = !o.quantize_base.empty() ? o.quantize_base
               : cfg.quant.enabled && !cfg.quant.fp8 ? (cfg.quant.bits == 8 ? "int8" : "int4") : "";
    const double need = dist::make_plan(cfg, po).total_bytes();
    const double have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (need > have)
      fail("finetune: the job needs about {} per rank (`llmq plan` with the same options: the frozen base as held, "
           "adapters and their state, activations), more than this machine's {}: use --recompute, a smaller "
           "--batch or --seq-len, a quantized base, or more ranks with --fsdp", format_bytes(need), format_bytes(have));
  }
  std::unique_ptr<LlamaTrain<float>> model =
      o.finetune ? std::make_unique<LlamaTrain<float>>(cfg, o.adapter) : std::make_unique<LlamaTrain<float>>(cfg);
  LlamaTrain<float>& m = *model;
  m.set_recompute(o.recompute);
  m.set_fake_quant(fq);
  // QAT's teacher: the model the student started as, forward only (its final hidden states per
  // micro-batch; logits chunk by chunk inside the student's loss). Recomputation keeps only its
  // blocks' inputs, which is all a forward-only pass needs.
  std::unique_ptr<LlamaTrain<float>> teacher;
  if (teach) {
    teacher = std::make_unique<LlamaTrain<float>>(cfg);
    teacher->set_recompute(true);
    model_dir_reader(o.model, cfg)(0, teacher->n_params(), teacher->params.data());
  }
  std::unique_ptr<Pipeline> pipe;
  if (P > 1) {
    PipelineOptions po;
    po.stages = P, po.schedule = o.pp_schedule, po.micro_batches = o.micro_batches, po.split = o.pp_split, po.trace = o.profile_trace;
    po.compress_fwd = o.pp_compress_fwd, po.compress_bwd = o.pp_compress_bwd, po.fwd_bits = o.fwd_bits, po.bwd_bits = o.bwd_bits;
    po.tile = o.tile, po.hi_bits = o.hi_bits, po.lo_bits = o.lo_bits, po.hi_ratio = o.hi_ratio, po.compress_eval = o.pp_compress_eval;
    po.cache_bits = o.delta_cache_bits, po.cache_windows = (train_s.total - 1) / o.seq_len;
    // Warm-up epochs in steps: an epoch is every window of the training data once.
    const double windows = (double)((train_s.total - 1) / o.seq_len);
    po.warmup_steps = (int64_t)std::ceil(o.pp_warmup_epochs * windows / (double)(o.batch * o.grad_accum) - 1e-9);
    pipe = std::make_unique<Pipeline>(m, *link, po, bounds);
  }
  std::vector<AdamW<float>::Range> ranges;
  for (size_t i = 0; i < m.specs.size(); i++) {
    const std::string& nm = m.specs[i].name;
    bool emb = nm == "model.embed_tokens.weight" || nm == "lm_head.weight";
    ranges.push_back({m.offsets[i], shape_numel(m.specs[i].shape), !m.specs[i].is_norm && (o.decay_embeddings || !emb),
                      !m.has_unit(unit_of_tensor(nm, cfg.n_layers))});
  }
  // The parameter units this rank holds (all but with pipeline stages), as ranges.
  std::vector<std::pair<int64_t, int64_t>> held;
  for (int u = 0; u < m.n_units(); u++)
    if (m.has_unit(u) && m.unit_range(u).second > m.unit_range(u).first) held.push_back(m.unit_range(u));
  // Fully sharded: the full AdamW moments are never allocated (they exist only while a
  // full-format checkpoint is gathered).
  // (Fine-tuning under --fsdp shards only the frozen base: its adapters' state is whole.)
  const bool full_fsdp = o.fsdp && !o.finetune;
  AdamW<float> opt(o.adamw, full_fsdp ? std::vector<AdamW<float>::Range>{{0, 0, false}} : ranges, full_fsdp ? 0 : m.n_params());
  if (lead) {
    fs::create_directories(o.out);
    remove_run_leftovers(o.out);
  }
  comm.barrier();
  const std::string metrics = (fs::path(o.out) / "metrics.jsonl").string();
  // Where the parameters and moments come from: read by ranges, so a sharded rank reads
  // only its chunks (of a checkpoint written in either format, at any world size).
  FlatReader src_params, src_m, src_v;
  int64_t adam_step = 0, start_step = 0, cursor = 0;
  uint64_t base_bytes = 0;
  // Fine-tuning under --fsdp: each rank loads and holds only its units of the frozen base
  // (train/base_shard.h); the adapters are replicated.
  std::unique_ptr<BaseShards> base_shards;
  if (o.finetune) {
    if (o.fsdp) base_shards = std::make_unique<BaseShards>(m, comm, base_linear_bits(cfg, o.quantize_base));
    base_bytes = load_frozen_base(m, o.model, o.quantize_base, o.progress && lead,
                                  base_shards ? base_shards->keep() : std::function<bool(int)>{});
    if (base_shards) base_shards->start();
    // Quantizing while loading leaves the allocator's heap holding the freed f32 linears and
    // the quantizer's work buffers (pieces under the mmap threshold): given back to the OS
    // here, they would otherwise count in every rank's resident memory for the whole run.
    malloc_trim(0);
  }
  std::string resume_dir;
  if (o.resume) {
    const std::string dir = latest_checkpoint(o.out);
    resume_dir = dir;
    if (o.finetune) {  // another adapter shape would first show as a state of another size
      const json was = adapter_config_load(dir).options(), now = o.adapter.options();
      if (was != now)
        fail("{}: the run was started with other options: adapter {} (now {}); resume with the same ones", dir, was.dump(),
             now.dump());
    }
    if (!o.qat.empty()) {  // the student is the teacher's copy: a teacher of another shape is another run
      const ModelConfig was = config_load((fs::path(dir) / "config.json").string());
      if (config_to_hf_json(was).dump() != config_to_hf_json(cfg).dump())
      {
        auto shape = [](const ModelConfig& c) {
          return fmt::format("{} layers, dim {}, {}/{} heads, ffn {}, vocabulary {}, {} embeddings", c.n_layers, c.dim,
                             c.n_heads, c.n_kv_heads, c.ffn_dim, c.vocab_size, c.tie_embeddings ? "tied" : "untied");
        };
        fail("{}: the run's student ({}) is not the shape of the teacher -m {} ({}): resume with the teacher the run "
             "started from", dir, shape(was), o.model, shape(cfg));
      }
    }
    CheckpointSource cs = o.finetune ? open_adapter_checkpoint(dir, cfg, o.adapter) : open_checkpoint(dir, cfg);
    json opts = cs.head.options;
    // A deterministic run resumes on the thread count it started with (the order of the
    // floating-point reductions depends on it).
    if (o.deterministic && opts.contains("threads") && opts["threads"].is_number_integer() &&
        opts["threads"].get<int>() != ops_threads()) {
      const int t = opts["threads"].get<int>();
      if (t < 1 || t > 4096) fail("{}: corrupt thread count {}", dir, t);
      fmt::print(stderr, "deterministic run: using the {} threads it started with (not {})\n", t, ops_threads());
      ops_set_threads(t);
    }
    // The state must agree with its run: a step within the run's steps and the checkpoint's
    // name, and the data cursor every step advances by batch x grad-accum windows.
    {
      const auto num = [&](const char* k) { return opts.contains(k) && opts[k].is_number_integer() ? opts[k].get<int64_t>() : -1; };
      const int64_t run_steps = num("steps"), batch = num("batch"), accum = num("grad_accum");
      if (cs.head.step < 1 || (run_steps > 0 && cs.head.step > run_steps) ||
          fs::path(dir).filename().string() != fmt::format("checkpoint-{:06}", cs.head.step))
        fail("{}: train_state.bin says step {}, which is not this checkpoint's step (of a {}-step run): a corrupt state",
             dir, cs.head.step, run_steps);
      if (batch > 0 && accum > 0 && cs.head.cursor != cs.head.step * batch * accum)
        fail("{}: train_state.bin's data cursor {} is not step {} x batch {} x grad-accum {}: a corrupt state", dir,
             cs.head.cursor, cs.head.step, batch, accum);
    }
    // Raising --steps extends the run: the decay is recomputed over the new total from here on;
    // the warm-up stays the run's (it may have been derived from the old --steps).
    if (opts.contains("steps") && opts["steps"].is_number_integer() && opts["steps"].get<int64_t>() != o.steps) {
      if (o.steps < cs.head.step)
        fail("{}: --steps {} is below the checkpoint's step {}; give at least that", dir, o.steps, cs.head.step);
      if (opts.contains("warmup") && opts["warmup"].is_number_integer()) o.warmup = opts["warmup"].get<int64_t>();
      if (lead)
        fmt::print(stderr, "extending the run from {} to {} steps: the learning-rate decay is recomputed over {} steps "
                   "from step {} on (warm-up stays {})\n", opts["steps"].get<int64_t>(), o.steps, o.steps, cs.head.step, o.warmup);
      opts["steps"] = o.steps;
    }
    // The products' precision is the run's: a resume keeps it unless told otherwise (and then
    // is refused below, as any other changed option is). Checkpoints from before the option
    // were f32.
    if (!opts.contains("precision")) opts["precision"] = "f32";
    if (!opts["precision"].is_string()) fail("{}: corrupt precision {}", dir, opts["precision"].dump());
    if (o.precision.empty()) o.precision = opts["precision"].get<std::string>();
    const json now = resume_key(o);
    if (opts != now) {
      std::string diff;  // only the keys that differ
      for (const auto& [k, v] : now.items())
        if (!opts.contains(k) || opts[k] != v)
          diff += fmt::format("{}{} {} (now {})", diff.empty() ? "" : ", ", k, opts.contains(k) ? opts[k].dump() : "unset", v.dump());
      for (const auto& [k, v] : opts.items())
        if (!now.contains(k)) diff += fmt::format("{}{} {} (now unset)", diff.empty() ? "" : ", ", k, v.dump());
      fail("{}: the run was started with other options: {}; resume with the same ones", dir, diff);
    }
    // `latest` names the checkpoint resumed from (it lagged when a run stopped between
    // publishing a checkpoint and updating it; a run that has nothing left to train fixes it).
    const std::string latest = (fs::path(o.out) / "latest").string(), want = fs::path(dir).filename().string() + "\n";
    if (lead && (!fs::is_regular_file(latest) || read_text_file(latest) != want)) write_file_atomic(latest, want);
    src_params = cs.params, src_m = cs.m, src_v = cs.v;
    adam_step = cs.head.adam_step, start_step = cs.head.step, cursor = cs.head.cursor;
    if (lead) trim_metrics(metrics, start_step);
    if (lead)
      fmt::print(stderr, "resuming at step {} of {} from {}{}\n", start_step, o.steps, dir,
                 cs.head.world_size ? fmt::format(" (sharded over {} ranks)", cs.head.world_size) : "");
  } else if (o.finetune) {
    m.init_adapters(o.seed);  // the same on every rank (deterministic in the seed)
    src_params = [&m](int64_t b, int64_t e, float* dst) { std::copy(m.params.begin() + b, m.params.begin() + e, dst); };
    if (lead) write_file_atomic(metrics, "");
  } else {
    src_params = !o.model.empty() ? model_dir_reader(o.model, cfg) : init_reader(cfg, o.seed);
    if (lead) write_file_atomic(metrics, "");
  }
  if (o.precision.empty()) o.precision = "f32";
  m.set_precision(precision_parse(o.precision));
  if (teacher) teacher->set_precision(precision_parse(o.precision));
  std::unique_ptr<Fsdp> fsdp;
  auto free_moments = [&] { ZeroPageVector<float>().swap(opt.m), ZeroPageVector<float>().swap(opt.v); };
  if (full_fsdp) {
    fsdp = std::make_unique<Fsdp>(m, comm, o.adamw, ranges);
    fsdp->set_overlap(o.fsdp_overlap);
    fsdp->shard(src_params, src_m, src_v, adam_step);
  } else {
    for (const auto& [b, e] : held) {  // a pipeline stage reads only its own units
      src_params(b, e, m.params.data() + b);
      if (src_m) src_m(b, e, opt.m.data() + b), src_v(b, e, opt.v.data() + b);
    }
    opt.step = adam_step;
  }
  src_params = src_m = src_v = nullptr;  // closes the source files
  if (pipe && pipe->delta() && !resume_dir.empty()) {
    // The delta caches continue where the checkpoint left them, on the same pipeline; another
    // pipeline (stages, split, replicas, codec) starts them empty, as a first epoch would.
    const std::string key = resume_dir + "/pp_caches.json";
    const bool same = fs::is_regular_file(key) &&
                      json::parse(read_text_file(key), nullptr, false) == pipeline_cache_key(o, bounds, Wdp);
    if (same) pipe->load_caches(resume_dir, R, o.seq_len);
    else if (lead)
      fmt::print(stderr, "note: {} holds no delta caches of this pipeline; they start empty\n", resume_dir);
  }
  const bool sharded_ckpt = fsdp && o.checkpoint_format != "full";
  std::ofstream log;
  if (lead) {
    log.open(metrics, std::ios::app);
    if (!log) fail("{}: cannot open for appending", metrics);
  }
  const int64_t B = o.batch, T = o.seq_len, N = B * T, Bl = B / Wdp;  // Bl: this rank's (replica's) windows
  std::vector<int32_t> tokens(N), targets(N);
  std::vector<int64_t> window_ids(B);
  const int32_t *my_tokens = tokens.data() + R_dp * Bl * T, *my_targets = targets.data() + R_dp * Bl * T;
  // With pipeline stages a loss exists on the last stage only: each replica's last stage
  // gives its share (1/Wdp) to the sums over ranks, the other stages 0.
  const double loss_share = P > 1 && stage != P - 1 ? 0.0 : 1.0;
  // Sums a scalar over ranks (the loss of each rank's share).
  auto rank_sum = [&](double v) {
    float f = (float)v;
    if (W == 1) return v;
    comm.all_reduce_sum(&f, 1);
    return (double)f;
  };
  auto evaluate = [&]() -> double {
    if (val_s.total < T + 1) return -1;
    struct Eval {  // adapter dropout off while evaluating
      LlamaTrain<float>& m;
      explicit Eval(LlamaTrain<float>& x) : m(x) { m.set_training(false); }
      ~Eval() { m.set_training(true); }
    } eval_mode(m);
    m.set_distill(nullptr, nullptr, 1);  // validation: the student's cross-entropy
    int64_t cur = 0;
    double sum = 0;
    int64_t n = 0;
    for (int64_t k = 0; k < o.eval_batches && (k + 1) * B * T + 1 <= val_s.total; k++, n++) {
      val_s.batch_in_order(&cur, B, T, tokens.data(), targets.data());
      if (pipe) sum += rank_sum(loss_share * pipe->eval_batch(my_tokens, my_targets, Bl, T) / Wdp);
      else sum += rank_sum(m.forward(my_tokens, my_targets, Bl, T) / W);
    }
    if (n == 0) {  // fewer tokens than a batch: one window
      val_s.batch_in_order(&cur, 1, T, tokens.data(), targets.data());
      if (pipe) sum = rank_sum(loss_share * pipe->eval_batch(tokens.data(), targets.data(), 1, T) / Wdp);
      else sum = m.forward(tokens.data(), targets.data(), 1, T);
      n = 1;
    }
    return sum / (double)n;
  };
  TrainResult res;
  res.precision = o.precision;
  res.start_step = res.steps = start_step;
  if (val_s.total < T + 1)
    res.val_note = val_s.total == 0 ? "the data has no validation split; see data prepare --val-fraction"
                                    : "the validation split is shorter than one window of --seq-len";
  else if (o.eval_every <= 0)
    res.val_note = "no evaluation ran";
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  auto t_log = t_start;
  int64_t tokens_since = 0;
  // Data parallel: gradients are summed over ranks in buckets of at most 25 MB (PyTorch DDP's
  // default). Overlapped: each unit's buckets are started on the communication thread as soon
  // as the last micro-batch's backward has finished that unit (head first, embeddings last),
  // while backward goes on; the optimizer step waits for them. The sums are the same.
  const size_t bucket = (size_t)25 << 18;
  auto reduce_range = [&](int64_t b, int64_t e, bool async) {
    for (int64_t off = b; off < e; off += (int64_t)bucket) {
      const size_t n = std::min<size_t>(bucket, (size_t)(e - off));
      if (async) comm.all_reduce_sum_start(m.grads.data() + off, n);
      else comm.all_reduce_sum(m.grads.data() + off, n);
    }
  };
  // (Not with a sharded base: its broadcasts run on this thread, collectives must not overlap.)
  const bool overlap = W > 1 && !o.fsdp && o.overlap_comm && !pipe;
  bool last_micro = false;
  if (overlap)
    m.hooks.done_backward = [&](int u) {
      if (!last_micro) return;
      const auto [b, e] = m.unit_range(u);
      reduce_range(b, e, true);
    };
  // Pipeline stages: each stage's replicas sum their units' gradients; with tied embeddings the
  // first and last stages both hold the embedding matrix (input and head) and add each other's
  // gradient of it, so both apply the same update.
  const bool tied = m.p.lm_head == m.p.embed;
  auto pipeline_grads = [&] {
    auto sp = pipe->trace.span("gradient sync");
    if (Wdp > 1)
      for (const auto& [b, e] : held)
        for (int64_t off = b; off < e; off += (int64_t)bucket)
          dp->all_reduce_sum(m.grads.data() + off, std::min<size_t>(bucket, (size_t)(e - off)));
    if (tied && (stage == 0 || stage == P - 1)) {
      const auto [b, e] = m.unit_range(0);
      const int peer = stage == 0 ? P - 1 : 0;
      std::vector<float> theirs((size_t)(e - b));
      link->isend(m.grads.data() + b, (size_t)(e - b) * 4, peer, 9);
      link->recv(theirs.data(), theirs.size() * 4, peer, 9);
      link->wait_sends();
      add_into(m.grads.data() + b, theirs.data(), e - b);  // a + b == b + a: both stages hold the same sum
    }
  };
  // The squared gradient norm over the whole model: each unit counted once (replica 0 of each
  // stage; the tied embedding on the first stage only).
  auto pipeline_sq_norm = [&] {
    double ss = 0;
    if (R_dp == 0)
      for (int u = 0; u < m.n_units(); u++)
        if (m.has_unit(u) && !(u == 0 && stage != 0)) {
          const auto [b, e] = m.unit_range(u);
          ss += sum_squares(m.grads.data() + b, e - b);
        }
    float f = (float)ss;
    comm.all_reduce_sum(&f, 1);
    return (double)f;
  };
  if (pipe && !o.profile_trace.empty()) {
    comm.barrier();  // one time origin for every rank's trace
    pipe->trace.on = true, pipe->trace.tid = R, pipe->trace.t0 = std::chrono::steady_clock::now();
  }
  StopSignals signals;
  for (int64_t step = start_step; step < o.steps; step++) {
    if (fsdp) fsdp->zero_grads();
    else m.zero_grad();
    double loss = 0, kl = 0, ce = 0;
    for (int64_t k = 0; k < o.grad_accum; k++) {
      train_s.batch(&cursor, B, T, tokens.data(), targets.data(), o.seed, window_ids.data());
      if (pipe) {
        loss += loss_share *
                pipe->train_step(step * o.grad_accum + k, my_tokens, my_targets, Bl, T, 1.0 / (double)(o.grad_accum * Wdp),
                                 window_ids.data() + R_dp * Bl) /
                (double)(o.grad_accum * Wdp);
        continue;
      }
      m.dropout_key = (uint64_t)(step * o.grad_accum + k) * 0x9e3779b97f4a7c15ull + o.seed + (uint64_t)R;
      if (teacher) {
        teacher->forward_hidden(my_tokens, Bl, T);
        m.set_distill(teacher->final_hidden().data(), teacher->p.lm_head, o.kd_weight);
      }
      loss += m.forward(my_tokens, my_targets, Bl, T) / (double)(o.grad_accum * W);
      kl += std::max(0.0, m.last_kl()) / (double)(o.grad_accum * W), ce += std::max(0.0, m.last_ce()) / (double)(o.grad_accum * W);
      last_micro = k == o.grad_accum - 1;
      m.backward(1.0 / (double)(o.grad_accum * W));
    }
    if (pipe) pipeline_grads();
    else if (overlap) comm.wait();
    else if (W > 1 && !fsdp) reduce_range(0, m.n_params(), false);
    loss = rank_sum(loss);
    if (!o.qat.empty()) kl = teacher ? rank_sum(kl) : -1, ce = rank_sum(ce);
    double ss = 0;
    if (fsdp) ss = fsdp->grad_sq_norm();  // FSDP: already reduce-scattered, block by block
    else if (pipe) ss = pipeline_sq_norm();
    else ss = sum_squares(m.grads.data(), m.n_params());
    const double gnorm = std::sqrt(ss);
    if (!std::isfinite(loss) || !std::isfinite(gnorm))
      fail("train: the loss became {} at step {}; stopping (the last good checkpoint is in {})", loss, step + 1, o.out);
    if (o.clip > 0 && gnorm > o.clip) {
      const float s = (float)(o.clip / gnorm);
      if (fsdp) fsdp->scale_grads(s);
      else if (pipe)
        for (const auto& [b, e] : held) scale_in_place(m.grads.data() + b, e - b, s);
      else scale_in_place(m.grads.data(), m.n_params(), s);
    }
    const double lr = lr_at(o, step);
    if (fsdp) fsdp->step(lr);
    else opt.update(m.params.data(), m.grads.data(), lr);
    tokens_since += N * o.grad_accum;
    res.last_loss = loss;
    const int64_t done = step + 1;
    json row = {{"step", done}, {"loss", loss}, {"lr", lr}, {"grad_norm", gnorm}};
    if (!o.qat.empty()) {  // the two terms of the distillation loss
      if (teacher) row["kl"] = kl;
      row["ce"] = ce;
      res.last_kl = teacher ? kl : -1, res.last_ce = ce;
    }
    if (done % o.log_every == 0 || done == o.steps) {
      const auto now = clock::now();
      const double dt = std::chrono::duration<double>(now - t_log).count();
      const double tps = tokens_since / std::max(dt, 1e-9);
      const double elapsed = std::chrono::duration<double>(now - t_start).count();
      res.tokens_per_s = tps;
      row["tokens_per_s"] = tps;
      row["elapsed_s"] = elapsed;
      if (o.progress && lead)
        fmt::print(stderr, "step {:>6}/{} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {:.0f} tok/s | ETA {}\n", done, o.steps,
                   loss, lr, gnorm, tps, format_duration((double)(o.steps - done) * N * o.grad_accum / std::max(tps, 1e-9)));
      t_log = now;
      tokens_since = 0;
    }
    // Time spent evaluating, checkpointing and sampling is not training: it is left out of
    // the next interval's tokens/s (by moving that interval's start past it).
    const auto t_pause = clock::now();
    if ((o.eval_every > 0 && done % o.eval_every == 0) || done == o.steps) {
      res.last_val_loss = evaluate();
      if (res.last_val_loss >= 0) {
        row["val_loss"] = res.last_val_loss;
        if (o.progress && lead) fmt::print(stderr, "step {:>6}/{} | val loss {:.4f} | val ppl {:.2f}\n", done, o.steps, res.last_val_loss, std::exp(res.last_val_loss));
      }
    }
    if (lead) {
      log << row.dump() << "\n";
      log.flush();
      // A failed append (a full disk) stops the run loudly instead of losing rows silently.
      if (!log)
        fail("{}: writing the metrics failed at step {} (disk full?); the last checkpoint is in {}: free space and "
             "resume with --resume", metrics, done, o.out);
    }
    // A signal on any rank stops every rank after the same step (one more tiny all-reduce).
    const int my_sig = g_stop_signal.load();
    float sig = (float)my_sig;
    if (W > 1) comm.all_reduce_sum(&sig, 1);
    res.stop_signal = my_sig ? my_sig : sig > 0 ? SIGTERM : 0;
    const bool stop = (o.stop_after > 0 && done >= o.stop_after) || sig != 0;
    if ((o.save_every > 0 && done % o.save_every == 0) || done == o.steps || stop) {
      const CheckpointHead head{done, cursor, fsdp ? fsdp->adam_step() : opt.step, resume_key(o), 0};
      if (sharded_ckpt) {  // every rank writes its own shard; nothing is gathered
        if (lead) checkpoint_begin(o.out, done);
        comm.barrier();
        const std::string tmp = checkpoint_tmp_dir(o.out, done);
        fsdp->write_shard(tmp);
        if (lead) write_shard_meta(tmp, cfg, fsdp->units(), W, head, tok_src);
        comm.barrier();  // all shards committed
        if (lead) checkpoint_publish(o.out, done, o.keep);
      } else {
        if (fsdp) {  // every rank takes part in gathering the full state for rank 0 to write
          opt.m.assign(m.params.size(), 0.f), opt.v.assign(m.params.size(), 0.f);
          fsdp->gather_all(&opt);
        }
        // Pipeline stages: replica 0 of every later stage sends its units (weights and moments)
        // to rank 0, which writes one plain model directory (a run resumes at any --pp).
        std::vector<std::pair<int64_t, int64_t>> received;
        if (pipe) {
          auto stage_units = [&](int s) {  // the units stage s sends (the tied embedding comes from stage 0)
            std::vector<std::pair<int64_t, int64_t>> r;
            for (int u = 0; u < m.n_units(); u++) {
              const bool has = u == 0 ? s == 0 : u == m.n_units() - 1 ? s == P - 1 : u - 1 >= bounds[s] && u - 1 < bounds[s + 1];
              if (has && m.unit_range(u).second > m.unit_range(u).first) r.push_back(m.unit_range(u));
            }
            return r;
          };
          if (R_dp == 0 && stage > 0)
            for (const auto& [b, e] : stage_units(stage))
              for (float* buf : {m.params.data(), opt.m.data(), opt.v.data()}) comm.send(buf + b, (size_t)(e - b) * 4, 0, 11);
          if (lead)
            for (int s = 1; s < P; s++)
              for (const auto& [b, e] : stage_units(s)) {
                for (float* buf : {m.params.data(), opt.m.data(), opt.v.data()}) comm.recv(buf + b, (size_t)(e - b) * 4, s * Wdp, 11);
                received.push_back({b, e});
              }
        }
        // Pipeline delta caches: every stage rank writes its own into the checkpoint, with a
        // note of the pipeline they belong to (a resume on the same pipeline reads them back).
        const bool caches = pipe && pipe->delta();
        if (caches) {
          if (lead) checkpoint_begin(o.out, done);
          comm.barrier();
          const std::string d = checkpoint_tmp_dir(o.out, done);
          if (auto* c = pipe->sent_cache()) c->save(fmt::format("{}/pp_cache-rank{:05}-sent.bin", d, R));
          if (auto* c = pipe->received_cache()) c->save(fmt::format("{}/pp_cache-rank{:05}-received.bin", d, R));
          if (lead) write_file_atomic(d + "/pp_caches.json", pipeline_cache_key(o, bounds, Wdp).dump() + "\n");
          comm.barrier();
        }
        if (lead) {
          const std::string tmp = caches ? checkpoint_tmp_dir(o.out, done) : checkpoint_begin(o.out, done);
          if (o.finetune) write_adapter_checkpoint(tmp, m, opt.m.data(), opt.v.data(), head, tok_src);
          else write_full_checkpoint(tmp, cfg, m.params.data(), opt.m.data(), opt.v.data(), head, tok_src);
          checkpoint_publish(o.out, done, o.keep);
        }
        for (const auto& [b, e] : received)  // the other stages' units leave rank 0's memory again
          for (float* buf : {m.params.data(), opt.m.data(), opt.v.data()}) zero_and_release(buf + b, e - b);
        if (fsdp) fsdp->release_all(), free_moments();
      }
      // A sample through the inference engine (a sharded checkpoint is no model directory).
      // (Not for QAT: a checkpoint holds the float student, not the quantized model that runs.)
      if (lead && o.sample_tokens > 0 && !tok_src.empty() && o.progress && !sharded_ckpt && !res.stop_signal && !o.finetune &&
          o.qat.empty())
        sample(o, done);
    }
    t_log += clock::now() - t_pause;
    res.steps = done;
    if (stop) break;
  }
  if (pipe && !o.profile_trace.empty()) {
    trace_write(pipe->trace, comm, o.profile_trace);
    if (lead) fmt::print(stderr, "profile trace: {} (chrome://tracing or ui.perfetto.dev)\n", o.profile_trace);
  }
  if (pipe) {  // each rank's stage, memory and stage traffic, to rank 0
    uint64_t mine[5] = {(uint64_t)stage, (uint64_t)peak_rss_bytes(), pipe->bytes_fwd, pipe->bytes_bwd, pipe->bytes_eval};
    if (!lead) comm.send(mine, sizeof mine, 0, 12);
    else
      for (int r = 0; r < W; r++) {
        uint64_t v[5];
        if (r == 0) std::copy(mine, mine + 5, v);
        else comm.recv(v, sizeof v, r, 12);
        res.ranks.push_back({(int)v[0], v[1], v[2], v[3], v[4]});
      }
  }
  res.rank = R, res.world = W, res.bytes_sent = comm.bytes_sent + (link ? link->bytes_sent : 0) + (dp ? dp->bytes_sent : 0);
  res.trained_params = m.n_params(), res.base_bytes = base_bytes;
  res.rss_end_bytes = current_rss_bytes();
  return res;
}

}  // namespace llmq::train
