#include "serve/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <unordered_map>

#include "core/error.h"
#include "core/rng.h"

namespace llmq::serve {

using Clock = std::chrono::steady_clock;

const char* finish_name(Finish f) {
  switch (f) {
    case Finish::Stop: return "stop";
    case Finish::Length: return "length";
    case Finish::Abort: return "abort";
    case Finish::Timeout: return "timeout";
  }
  return "?";
}

void Histogram::add(double v) {
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) i++;
  counts[i]++;
  sum += v;
  n++;
}

struct Engine::Seq {
  SeqRequest r;
  std::vector<int32_t> tokens;  // prompt + generated; the last one is not in the cache yet
  int64_t n_prompt = 0, n_cached = 0, generated = 0, cached_hit = 0;
  int64_t prompt_lp_next = 1;  // first prompt position whose logprob is still to be reported
  std::vector<int32_t> blocks;
  std::vector<uint64_t> hashes;  // chain hash of each full block, in order
  std::unordered_map<int32_t, int32_t> out_counts;
  int slot = -1;
  Sampler sampler;
  Clock::time_point arrival, last_token;
  bool got_first = false, done = false;
  std::vector<float> buf;
  Seq(SeqRequest&& q) : r(std::move(q)), sampler(r.sampling) {}
  int64_t remaining() const { return (int64_t)tokens.size() - n_cached; }
};

namespace {
// The chain's start: blocks computed under different adapters hold different keys and values.
uint64_t chain_seed(int adapter) { return adapter ? splitmix64(0x61646170746572ull + (uint64_t)adapter) : 0; }
// Hash of all tokens up to the end of a block, chained from the previous block's. Never 0.
uint64_t chain_hash(uint64_t prev, const int32_t* t, int64_t n) {
  uint64_t h = prev ^ 0x6c6c6d7170726566ull;
  for (int64_t i = 0; i < n; i++) h = splitmix64(h ^ (uint64_t)(uint32_t)t[i]);
  return h ? h : 1;
}

// log-softmax of a row (double sums), the chosen token's and the k best alternatives'.
void logprobs_of(const float* x, int64_t V, int32_t token, int k, TokenLogprob& lp) {
  const float mx = *std::max_element(x, x + V);
  double s = 0;
  for (int64_t i = 0; i < V; i++) s += std::exp((double)x[i] - mx);
  const double lse = mx + std::log(s);
  lp.token = token;
  lp.logprob = (float)((double)x[token] - lse);
  lp.top.clear();
  if (k <= 0) return;
  std::vector<int32_t> idx((size_t)V);
  for (int64_t i = 0; i < V; i++) idx[(size_t)i] = (int32_t)i;
  const int kk = (int)std::min<int64_t>(k, V);
  std::partial_sort(idx.begin(), idx.begin() + kk, idx.end(),
                    [&](int32_t a, int32_t b) { return x[a] != x[b] ? x[a] > x[b] : a < b; });
  for (int i = 0; i < kk; i++) lp.top.push_back({idx[(size_t)i], (float)((double)x[idx[(size_t)i]] - lse)});
}

double secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
}  // namespace

Engine::Engine(const Model& m, const EngineOptions& o) : m_(m), o_(o) {
  const ModelConfig& c = m.config;
  ctx_ = o.ctx > 0 ? o.ctx : c.max_seq_len;
  if (ctx_ > c.max_seq_len) fail("--ctx {} exceeds the model's context of {} tokens", ctx_, c.max_seq_len);
  if (o.parallel < 1) fail("--parallel must be at least 1");
  if (o.block_size < 1) fail("--block-size must be at least 1");
  if (o.batch_tokens < o.parallel) fail("--batch-tokens {} is less than --parallel {}", o.batch_tokens, o.parallel);
  const int64_t per_seq = (ctx_ + o.block_size - 1) / o.block_size;
  const int64_t nb = o.n_blocks > 0 ? o.n_blocks : per_seq * o.parallel;
  if (nb < per_seq)
    fail("{} KV blocks of {} positions cannot hold one sequence of --ctx {} ({} blocks)", nb, o.block_size, ctx_, per_seq);
  o_.n_blocks = nb;
  cache_ = KVCache::create_paged(c, nb, o.block_size, o.kv_type);
  ref_.assign((size_t)nb, 0);
  block_hash_.assign((size_t)nb, 0);
  in_evictable_.assign((size_t)nb, 0);
  for (int64_t b = nb - 1; b >= 0; b--) free_blocks_.push_back((int32_t)b);
  tables_.resize((size_t)o.parallel);
  for (int i = o.parallel - 1; i >= 0; i--) free_slots_.push_back(i);
  stats_.blocks_total = nb;
}

Engine::~Engine() { stop(); }

bool Engine::submit(std::vector<SeqRequest> seqs) {
  for (auto& q : seqs) {
    if (q.prompt.empty()) fail("empty prompt");
    if ((int64_t)q.prompt.size() >= ctx_ + 1) fail("prompt of {} tokens does not fit the context of {}", q.prompt.size(), ctx_);
    for (int32_t t : q.prompt)
      if (t < 0 || t >= m_.config.vocab_size) fail("token id {} is outside the vocabulary (0..{})", t, m_.config.vocab_size - 1);
    const size_t served = m_.weights.layers.empty() ? 0 : m_.weights.layers[0].served.size();
    if (q.adapter < 0 || (size_t)q.adapter > served) fail("adapter {} is not loaded ({} served)", q.adapter, served);
  }
  std::lock_guard lk(mu_);
  if (queued_ + seqs.size() > (size_t)o_.max_queue) return false;
  const auto now = Clock::now();
  for (auto& q : seqs) {
    auto s = std::make_unique<Seq>(std::move(q));
    s->tokens = s->r.prompt;
    s->n_prompt = (int64_t)s->tokens.size();
    s->arrival = now;
    incoming_.push_back(std::move(s));
  }
  queued_ += seqs.size();
  cv_.notify_all();
  return true;
}

void Engine::start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { loop(); });
}

void Engine::stop() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

void Engine::loop() {
  bool busy = false;
  for (;;) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stop_ || busy || !incoming_.empty(); });
      if (stop_) break;
    }
    try {
      busy = step();
    } catch (const std::exception& e) {  // a failed forward ends what was running, not the server
      fmt::print(stderr, "serve: step failed: {}\n", e.what());
      for (auto& s : running_) finish(*s, Finish::Abort);
      running_.clear();
      busy = !waiting_.empty();
    }
  }
  // Stopping: every sequence still known ends (its caller is waiting for on_done).
  std::vector<std::unique_ptr<Seq>> all;
  {
    std::lock_guard lk(mu_);
    for (auto& s : incoming_) all.push_back(std::move(s));
    incoming_.clear();
  }
  for (auto& s : running_) all.push_back(std::move(s));
  for (auto& s : waiting_) all.push_back(std::move(s));
  running_.clear(), waiting_.clear();
  for (auto& s : all)
    if (!s->done) finish(*s, Finish::Abort);
}

bool Engine::alloc_block(Seq& s) {
  int32_t b = -1;
  if (!free_blocks_.empty()) {
    b = free_blocks_.back();
    free_blocks_.pop_back();
  } else {
    while (!evictable_.empty() && b < 0) {  // the oldest unreferenced cached block
      const int32_t e = evictable_.front();
      evictable_.pop_front();
      in_evictable_[(size_t)e] = 0;
      if (ref_[(size_t)e] != 0 || block_hash_[(size_t)e] == 0) continue;  // stale entry
      auto it = prefix_.find(block_hash_[(size_t)e]);
      if (it != prefix_.end() && it->second == e) prefix_.erase(it);
      block_hash_[(size_t)e] = 0;
      b = e;
    }
    if (b < 0) return false;
  }
  ref_[(size_t)b] = 1;
  held_++;
  s.blocks.push_back(b);
  tables_[(size_t)s.slot].push_back(b);
  return true;
}

void Engine::release(Seq& s) {
  for (int32_t b : s.blocks) {
    if (--ref_[(size_t)b] > 0) continue;
    held_--;
    if (block_hash_[(size_t)b] == 0) free_blocks_.push_back(b);
    else if (!in_evictable_[(size_t)b]) evictable_.push_back(b), in_evictable_[(size_t)b] = 1;
  }
  s.blocks.clear();
  s.hashes.clear();
  s.n_cached = 0;
  if (s.slot >= 0) {
    tables_[(size_t)s.slot].clear();
    free_slots_.push_back(s.slot);
    s.slot = -1;
  }
}

void Engine::preempt(Seq& s) {
  release(s);  // recomputed from its tokens when admitted again; the sampler keeps its state
  std::lock_guard lk(mu_);
  stats_.preemptions++;
}

void Engine::finish(Seq& s, Finish why) {
  if (s.done) return;
  s.done = true;
  release(s);
  const double e2e = secs(Clock::now() - s.arrival);
  {
    std::lock_guard lk(mu_);
    if (why == Finish::Abort || why == Finish::Timeout) stats_.requests_aborted++;
    else stats_.requests_finished++, stats_.e2e.add(e2e);
  }
  if (s.r.on_done) s.r.on_done({why, s.n_prompt, s.generated, s.cached_hit});
}

// A sequence entering the cache takes the longest run of its full blocks already cached
// (never its last token: that row must be computed for its logits).
void Engine::admit_prefix(Seq& s) {
  if (!o_.prefix_cache || s.n_cached != 0) return;
  const int64_t bs = o_.block_size;
  uint64_t h = chain_seed(s.r.adapter);
  for (int64_t i = 0; (i + 1) * bs <= (int64_t)s.tokens.size() - 1; i++) {
    h = chain_hash(h, s.tokens.data() + i * bs, bs);
    auto it = prefix_.find(h);
    if (it == prefix_.end()) break;
    const int32_t b = it->second;
    held_ += ref_[(size_t)b]++ == 0;
    s.blocks.push_back(b);
    tables_[(size_t)s.slot].push_back(b);
    s.hashes.push_back(h);
    s.n_cached += bs;
  }
  if (s.cached_hit == 0) s.cached_hit = s.n_cached;  // the first admission's hit is what the usage reports
}

void Engine::sample(Seq& s, float* row) {
  const int64_t V = m_.config.vocab_size;
  TokenLogprob lp;
  const bool want_lp = s.r.top_logprobs >= 0;
  std::vector<float>& x = s.buf;
  x.assign(row, row + V);
  if (s.r.presence_penalty != 0 || s.r.frequency_penalty != 0)
    for (const auto& [t, n] : s.out_counts) x[(size_t)t] -= s.r.presence_penalty + s.r.frequency_penalty * (float)n;
  const int32_t t = s.sampler.sample({x.data(), (size_t)V}, s.tokens);
  if (want_lp) logprobs_of(row, V, t, s.r.top_logprobs, lp);
  const auto now = Clock::now();
  {
    std::lock_guard lk(mu_);
    if (!s.got_first) stats_.ttft.add(secs(now - s.arrival));
    else stats_.itl.add(secs(now - s.last_token));
  }
  s.got_first = true;
  s.last_token = now;
  if (std::find(s.r.eos_ids.begin(), s.r.eos_ids.end(), t) != s.r.eos_ids.end()) return finish(s, Finish::Stop);
  s.tokens.push_back(t);
  s.generated++;
  s.out_counts[t]++;
  {
    std::lock_guard lk(mu_);
    stats_.generation_tokens++;
  }
  const bool stop = s.r.on_token && s.r.on_token(t, want_lp ? &lp : nullptr);
  if (stop) return finish(s, Finish::Stop);
  // The next feed would be at position tokens.size() - 1: past the context, the sequence ends.
  if (s.generated >= s.r.max_tokens || (int64_t)s.tokens.size() > ctx_) return finish(s, Finish::Length);
}

void Engine::after_forward(Seq& s, int64_t rows, const float* logits, int64_t n_logits) {
  const int64_t V = m_.config.vocab_size, first = s.n_cached, bs = o_.block_size;
  s.n_cached += rows;
  // Blocks that became full are remembered by the hash of every token up to their end.
  while (o_.prefix_cache && (int64_t)(s.hashes.size() + 1) * bs <= s.n_cached) {
    const int64_t i = (int64_t)s.hashes.size();
    const uint64_t h = chain_hash(i ? s.hashes.back() : chain_seed(s.r.adapter), s.tokens.data() + i * bs, bs);
    s.hashes.push_back(h);
    const int32_t b = s.blocks[(size_t)i];
    if (block_hash_[(size_t)b] == 0 && !prefix_.count(h)) prefix_[h] = b, block_hash_[(size_t)b] = h;
  }
  // Logit rows come in position order: prompt logprobs first, then (maybe) the last row.
  int64_t li = 0;
  for (int64_t p = first; p < first + rows && li < n_logits; p++) {
    const bool last = p == (int64_t)s.tokens.size() - 1;
    const bool prompt_lp = s.r.prompt_logprobs && p + 1 < s.n_prompt;
    if (!last && !prompt_lp) continue;
    const float* row = logits + li * V;
    li++;
    if (prompt_lp && p + 1 >= s.prompt_lp_next) {
      TokenLogprob lp;
      logprobs_of(row, V, s.tokens[(size_t)(p + 1)], std::max(0, s.r.top_logprobs), lp);
      if (s.r.on_prompt_logprob) s.r.on_prompt_logprob(p + 1, lp);
      s.prompt_lp_next = p + 2;
    }
    if (last) sample(s, const_cast<float*>(row));
  }
}

bool Engine::step() {
  {
    std::lock_guard lk(mu_);
    for (auto& s : incoming_) waiting_.push_back(std::move(s));
    incoming_.clear();
  }
  // Cancelled and timed-out sequences end first (their blocks come back for this step).
  const auto now = Clock::now();
  auto ended = [&](Seq& s) {
    if (s.r.cancel && s.r.cancel->load()) finish(s, Finish::Abort);
    else if (s.r.timeout_s > 0 && secs(now - s.arrival) > s.r.timeout_s) finish(s, Finish::Timeout);
    return s.done;
  };
  std::erase_if(running_, [&](auto& s) { return ended(*s); });
  std::erase_if(waiting_, [&](auto& s) { return ended(*s); });
  if (running_.empty() && waiting_.empty()) {
    publish(0, false);
    return false;
  }
  const int64_t bs = o_.block_size;
  auto needs_block = [&](const Seq& s, int64_t upto) { return (int64_t)s.blocks.size() * bs < upto; };
  // Decode rows need room for their next position: the newest sequence gives its blocks up
  // when there is none (preempted; recomputed later).
  for (size_t i = 0; i < running_.size(); i++) {
    Seq& s = *running_[i];
    if (s.remaining() != 1) continue;
    bool self = false;
    while (needs_block(s, s.n_cached + 1) && !alloc_block(s)) {
      Seq& victim = *running_.back();
      self = &victim == &s;
      preempt(victim);
      waiting_.push_front(std::move(running_.back()));
      running_.pop_back();
      if (self) break;
    }
    if (self) break;
  }
  Batch b;
  const bool adapters = !m_.weights.layers.empty() && !m_.weights.layers[0].served.empty();
  struct Part {
    Seq* s;
    int64_t rows, logit0, n_logits;
  };
  std::vector<Part> parts;
  int64_t budget = o_.batch_tokens;
  auto add_rows = [&](Seq& s, int64_t rows) {
    Part p{&s, rows, (int64_t)b.logit_rows.size(), 0};
    for (int64_t j = 0; j < rows; j++) {
      const int64_t pos = s.n_cached + j;
      const bool logits = pos == (int64_t)s.tokens.size() - 1 ||
                          (s.r.prompt_logprobs && pos + 1 < s.n_prompt && pos + 1 >= s.prompt_lp_next);
      b.add(s.tokens[(size_t)pos], s.slot, (int32_t)pos, logits);
      if (adapters) b.adapter.push_back(s.r.adapter);
      p.n_logits += logits;
    }
    parts.push_back(p);
    budget -= rows;
  };
  for (auto& sp : running_)
    if (sp->remaining() == 1 && budget > 0) add_rows(*sp, 1);
  // Prompt chunks: running sequences still in prefill, then newly admitted ones.
  auto chunk = [&](Seq& s) -> int64_t {
    const int64_t want = std::min(s.remaining(), budget);
    while (needs_block(s, s.n_cached + want) && alloc_block(s)) {}
    const int64_t rows = std::min(want, (int64_t)s.blocks.size() * bs - s.n_cached);
    if (rows > 0) add_rows(s, rows);
    return rows;
  };
  for (auto& sp : running_)
    if (sp->remaining() > 1 && budget > 0) chunk(*sp);
  while (budget > 0 && !waiting_.empty() && !free_slots_.empty()) {
    Seq& s = *waiting_.front();
    s.slot = free_slots_.back();
    free_slots_.pop_back();
    admit_prefix(s);
    const int64_t hit = s.n_cached;
    if (chunk(s) == 0) {  // no room: it waits (with nothing held)
      release(s);
      break;
    }
    const double q = secs(Clock::now() - s.arrival);
    {
      std::lock_guard lk(mu_);
      if (!s.got_first) stats_.queue.add(q);
      stats_.prefix_hit_tokens += (uint64_t)hit;
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  if (b.size() == 0) {
    // Every running sequence is stuck in prefill without blocks: the newest gives way.
    if (!running_.empty()) {
      preempt(*running_.back());
      waiting_.push_front(std::move(running_.back()));
      running_.pop_back();
    }
    return true;
  }
  b.pages = {bs, &tables_};
  const Tensor& logits = llama_forward(m_, cache_, b, scratch_);
  uint64_t prompt_rows = 0;
  for (const Part& p : parts) {
    if (p.s->n_cached < p.s->n_prompt) prompt_rows += (uint64_t)std::min(p.rows, p.s->n_prompt - p.s->n_cached);
    after_forward(*p.s, p.rows, p.n_logits ? logits.host<float>() + p.logit0 * m_.config.vocab_size : nullptr, p.n_logits);
  }
  std::erase_if(running_, [](auto& s) { return s->done; });
  publish(prompt_rows, true);
  return true;
}

// The gauges after a step. Every block is free, held (ref > 0) or cached unreferenced.
void Engine::publish(uint64_t prompt_rows, bool forward) {
  std::lock_guard lk(mu_);
  stats_.prompt_tokens += prompt_rows;
  stats_.steps += forward;
  queued_ = incoming_.size() + waiting_.size();
  stats_.running = (int64_t)running_.size();
  stats_.waiting = (int64_t)queued_;
  stats_.blocks_used = held_;
  stats_.blocks_cached = o_.n_blocks - (int64_t)free_blocks_.size() - held_;
}

EngineStats Engine::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

}  // namespace llmq::serve
