// The serving engine: continuous batching over a paged KV cache.
//
// One scheduler loop (one thread) owns the model, the cache and every sequence. Each step
// builds one forward from the decode row of every running sequence plus chunks of waiting
// prompts (chunked prefill: a long prompt never stalls the others), samples the rows whose
// logits are due and hands each token to its sequence's callback. The cache is paged:
// fixed-size blocks, a block table per sequence, blocks freed when it ends. Full blocks are
// remembered by a hash of every token up to their end (prefix caching), so a request that
// shares a prefix (a system prompt) with an earlier one reuses its blocks; freed ones stay
// reusable until their memory is needed. When blocks run out, waiting prompts wait and the
// newest running sequence is preempted (its blocks freed, recomputed later from its tokens,
// its sampler state kept), so no sequence ever overwrites another's cache.
//
// A sequence's output does not depend on what else is in the batch when every row's
// arithmetic is the same whatever the rows around it (quantized weights, f32 caches): see
// docs/serving.md for where it holds and where it does not.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "infer/sampler.h"
#include "model/llama.h"

namespace llmq::serve {

// The log-probability of a chosen token and the most likely alternatives (raw model
// log-softmax, before penalties and temperature, as vLLM reports them by default).
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};

enum class Finish { Stop, Length, Abort, Timeout };
const char* finish_name(Finish f);  // "stop", "length", "abort", "timeout"

struct SeqResult {
  Finish reason = Finish::Length;
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
};

// One sequence to generate (a request with n choices submits n of them).
struct SeqRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  float presence_penalty = 0, frequency_penalty = 0;  // OpenAI's, over the generated tokens
  int64_t max_tokens = 16;                           // also stops at the context's end
  std::vector<int32_t> eos_ids;                      // stop when sampled (not emitted)
  int top_logprobs = -1;                             // -1: none; else 0..20 alternatives
  bool prompt_logprobs = false;                      // logprob of each prompt token (echo)
  // Engine thread: each prompt token's logprob (from the second on) when prompt_logprobs.
  std::function<void(int64_t pos, const TokenLogprob&)> on_prompt_logprob;
  // Engine thread: each generated token (lp when top_logprobs >= 0); true ends the sequence
  // there with Finish::Stop (a stop string).
  std::function<bool(int32_t token, const TokenLogprob* lp)> on_token;
  // Engine thread, exactly once: the sequence has ended (also when cancelled or refused).
  std::function<void(const SeqResult&)> on_done;
  int adapter = 0;  // 0: the base model; k: the layers' served[k - 1] (llmq serve --adapter)
  std::shared_ptr<std::atomic<bool>> cancel;  // set from any thread: ends it at the next step
  double timeout_s = 0;                       // from submission; 0: none
};

struct EngineOptions {
  int parallel = 4;            // sequences decoding at once
  int64_t ctx = 0;             // longest sequence (prompt + generated); 0: the model's context
  int64_t block_size = 16;     // positions per KV block
  int64_t n_blocks = 0;        // 0: parallel * ctx / block_size (every slot can fill its context)
  int64_t batch_tokens = 256;  // rows per forward (decode rows first, then prompt chunks)
  KvType kv_type = KvType::F32;
  bool prefix_cache = true;
  int max_queue = 64;          // waiting sequences beyond which submit() refuses
};

// Prometheus-style histogram (cumulative buckets in seconds).
struct Histogram {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // bounds.size() + 1 (the last: +Inf)
  double sum = 0;
  uint64_t n = 0;
  explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
  void add(double v);
};

struct EngineStats {
  int64_t running = 0, waiting = 0, blocks_used = 0, blocks_total = 0, blocks_cached = 0;
  uint64_t prompt_tokens = 0, generation_tokens = 0, prefix_hit_tokens = 0, preemptions = 0, steps = 0;
  uint64_t requests_finished = 0, requests_aborted = 0;
  Histogram ttft{{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  Histogram itl{{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5}};
  Histogram queue{{0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  Histogram e2e{{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}};
};

class Engine {
 public:
  Engine(const Model& m, const EngineOptions& o);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues the sequences of one request together; false (nothing queued) when the queue
  // holds max_queue sequences already. Fails on a prompt that cannot fit (the caller checks).
  bool submit(std::vector<SeqRequest> seqs);
  // Runs the scheduler loop on its own thread until stop().
  void start();
  void stop();
  // One scheduler step on the calling thread (tests; without start()): false when idle.
  bool step();
  EngineStats stats() const;
  const EngineOptions& options() const { return o_; }
  int64_t context() const { return ctx_; }

 private:
  struct Seq;
  bool alloc_block(Seq& s);
  void release(Seq& s);
  void preempt(Seq& s);
  void finish(Seq& s, Finish why);
  void admit_prefix(Seq& s);
  void after_forward(Seq& s, int64_t rows, const float* logits, int64_t n_logits);
  void sample(Seq& s, float* logits);
  void loop();
  void publish(uint64_t prompt_rows, bool forward);  // stats_ after a step

  const Model& m_;
  EngineOptions o_;
  int64_t ctx_ = 0;
  KVCache cache_;
  Scratch scratch_;
  std::vector<std::vector<int32_t>> tables_;  // per slot
  std::vector<int> free_slots_;
  // Blocks: reference counts, free list, and the prefix cache (hash of all tokens up to a
  // full block's end -> block; unreferenced cached blocks are evicted oldest first).
  std::vector<int32_t> ref_;
  int64_t held_ = 0;  // blocks with ref_ > 0
  std::vector<uint64_t> block_hash_;  // 0: none
  std::vector<int32_t> free_blocks_;
  std::deque<int32_t> evictable_;     // may hold stale entries (checked on use)
  std::vector<char> in_evictable_;    // a block is queued there at most once (bounded deque)
  std::unordered_map<uint64_t, int32_t> prefix_;

  std::vector<std::unique_ptr<Seq>> running_;
  std::deque<std::unique_ptr<Seq>> waiting_;

  mutable std::mutex mu_;  // incoming_, stats_, stop_
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Seq>> incoming_;
  size_t queued_ = 0;  // incoming + waiting, for admission
  EngineStats stats_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace llmq::serve
