// Pipeline-parallel training: the model's blocks split into P stages, one per process of a
// pipeline group (the embeddings with the first stage, the final norm and head with the
// last), each step's batch cut into M micro-batches that flow forward through the stages as
// activations and back as gradients (dist/stage_wire.h messages). Two schedules:
//  - gpipe: every micro-batch's forward, then every backward (M micro-batches' activations
//    held on every stage);
//  - 1f1b: stage s runs min(P-s-1, M) forwards ahead, then alternates one forward and one
//    backward (at most P-s micro-batches held), the same updates with less memory.
// Each micro-batch's loss is weighted by its share of the batch's target tokens, so a step
// gives the same update as one process with the whole batch (up to the order of the sums).
#pragma once
#include <chrono>
#include <memory>
#include <cstdint>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "dist/plan.h"
#include "core/zero_pages.h"
#include "dist/stage_wire.h"
#include "model/config.h"
#include "train/llama_train.h"

namespace llmq::train {

struct PipelineOptions {
  int stages = 1;
  std::string schedule = "1f1b";  // gpipe | 1f1b
  int micro_batches = 0;          // per step and data-parallel rank (0: as many as stages)
  std::string split;              // "10,11,11": blocks per stage ("": balanced by cost)
  std::string trace;              // --profile-trace FILE.json ("": none)
  // Stage-boundary compression (dist/stage_wire.h): forward activations none|fixpoint|tah,
  // backward gradients none|fixpoint; TAH-Quant's parameters; steps sent uncompressed first;
  // whether validation's activations are compressed as training's are.
  std::string compress_fwd = "none", compress_bwd = "none";  // forward also delta | delta-lowbits
  int fwd_bits = 4, bwd_bits = 6, tile = 64, hi_bits = 4, lo_bits = 3;
  int cache_bits = 4;            // delta-lowbits: bits of the cached activations (2, 4 or 8)
  int64_t cache_windows = 0;     // delta: the training data's windows (the cache's keys)
  double hi_ratio = 0.8;
  int64_t warmup_steps = 0;
  bool compress_eval = true;
};
// Checks the compression options (names, bits, tile against the model width, ...).
void pipeline_check_compression(const PipelineOptions& o, int64_t width);

using dist::pipeline_split;  // dist/plan.h

// A Chrome trace (chrome://tracing, Perfetto): complete events ("ph": "X") per rank.
struct TraceEvents {
  bool on = false;
  int tid = 0;  // this rank
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  std::string json;  // the events so far, comma-separated
  int64_t count = 0;
  struct Span {
    TraceEvents* t;
    std::string name;
    std::chrono::steady_clock::time_point start;
    ~Span();
  };
  Span span(std::string name) { return Span{on ? this : nullptr, std::move(name), std::chrono::steady_clock::now()}; }
};
// Rank 0 writes every rank's events into one trace file (atomically); every rank of `comm` calls it.
void trace_write(TraceEvents& t, dist::Communicator& comm, const std::string& path);

// AQ-SGD's activation cache, one end of a link: per training window (sample), the (T, C)
// activations both ends last agreed on, as fp16 (delta) or as a fixpoint code with one fp16
// scale per channel over the window's rows (delta-lowbits, 2/4/8 bits). Storage is untouched
// zero pages until a window is first written, so memory grows with the windows visited.
class ActivationCache {
 public:
  ActivationCache(int64_t windows, int64_t T, int64_t C, int bits);  // bits 16: fp16
  void read(int64_t id, float* out) const;  // (T, C); a window never written reads zeros
  void write(int64_t id, const float* x);
  int64_t seen() const;
  // The windows written so far, in a file of their own (docs/formats.md, "Pipeline activation
  // caches"); load checks the shape and refuses another one.
  void save(const std::string& path) const;
  void load(const std::string& path);
  uint64_t checksum() const;  // of every window written (equal on both ends of a link)

 private:
  int64_t W_, T_, C_;
  int bits_;
  size_t per_;  // bytes per window
  ZeroPageVector<uint8_t> data_;
  std::vector<uint8_t> seen_;
};

class Pipeline {
 public:
  // link: the pipeline group (rank = stage), stage: this process's.
  Pipeline(LlamaTrain<float>& m, dist::Communicator& link, const PipelineOptions& o, const std::vector<int64_t>& bounds);
  int stage() const { return stage_; }
  int stages() const { return P_; }
  // One step's forward and backward over this rank's B windows of T tokens (tokens and
  // targets (B, T)): gradients accumulate into the model's (scaled by grad_scale); returns
  // the batch's mean loss on the last stage, 0 on the others.
  // ids (B): each window's index in the training data, the delta caches' key (may be null
  // without a delta codec).
  double train_step(int64_t step, const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T, double grad_scale,
                    const int64_t* ids = nullptr);
  // The delta caches this stage holds (what it sent forward, what it received), for checkpoints.
  ActivationCache* sent_cache() { return com_.get(); }
  ActivationCache* received_cache() { return dec_.get(); }
  bool delta() const { return o_.compress_fwd == "delta" || o_.compress_fwd == "delta-lowbits"; }
  // Reads this world rank's caches from a checkpoint directory (pp_cache-rankRRRRR-*.bin).
  void load_caches(const std::string& dir, int world_rank, int64_t T);
  // Forward only (validation): the batch's mean loss on the last stage, 0 elsewhere.
  double eval_batch(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T);
  TraceEvents trace;
  uint64_t bytes_fwd = 0, bytes_bwd = 0, bytes_eval = 0;  // messages this stage sent (heads included)

 private:
  LlamaTrain<float>& m_;
  dist::Communicator& link_;
  PipelineOptions o_;
  int stage_ = 0, P_ = 1, M_ = 1;
  std::vector<std::vector<char>> sends_;  // messages in flight until wait_sends
  std::vector<char> recv_;
  std::vector<float> x_, zeros_;
  int64_t eval_seq_ = 0;
  std::unique_ptr<ActivationCache> com_, dec_;
  std::vector<float> last_, dhat_;
  std::vector<uint8_t> pay_;
  // Delta: the cached activations of a micro-batch's windows (rows) into last_.
  void cached(const ActivationCache& c, const int64_t* ids, int64_t Bm, int64_t T);
  void store(ActivationCache& c, const int64_t* ids, int64_t Bm, int64_t T, const float* x);
  // The head of a message of this step's micro-batch (codec chosen by direction, step, warm-up).
  dist::StageHead head(dist::StageDirection d, int from, int micro, int64_t step, int64_t rows, int64_t seq) const;
  void send(dist::StageHead h, const float* x, int peer);
  void receive(const dist::StageHead& want, float* x, int peer);
};

}  // namespace llmq::train
