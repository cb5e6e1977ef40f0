// Pipeline schedules (GPipe, 1F1B) over a stage's blocks, the split of blocks into stages,
// and the Chrome trace of what each stage did.
#include "train/pipeline.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/dtype.h"
#include "core/file_util.h"

namespace llmq::train {

TraceEvents::Span::~Span() {
  if (!t || t->count >= 200000) return;  // a bounded trace
  using us = std::chrono::microseconds;
  const auto now = std::chrono::steady_clock::now();
  const long long ts = std::chrono::duration_cast<us>(start - t->t0).count(), dur = std::chrono::duration_cast<us>(now - start).count();
  if (!t->json.empty()) t->json += ",\n";
  t->json += fmt::format(R"({{"name":"{}","ph":"X","pid":0,"tid":{},"ts":{},"dur":{}}})", name, t->tid, ts, dur);
  t->count++;
}

void trace_write(TraceEvents& t, dist::Communicator& comm, const std::string& path) {
  const int R = comm.rank(), W = comm.size();
  if (R != 0) {
    comm.send(t.json.data(), t.json.size(), 0, 77);
    return;
  }
  std::string out = "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n";
  std::vector<char> buf;
  for (int r = 0; r < W; r++) {
    std::string ev = t.json;
    if (r > 0) {
      comm.recv_any(buf, (size_t)1 << 30, r, 77);
      ev.assign(buf.begin(), buf.end());
    }
    out += fmt::format(R"({{"name":"thread_name","ph":"M","pid":0,"tid":{},"args":{{"name":"rank {}"}}}},)", r, r) + "\n";
    if (!ev.empty()) out += ev + ",\n";
  }
  out += R"({"name":"process_name","ph":"M","pid":0,"args":{"name":"llmq train"}})";
  out += "\n]}\n";
  write_file_atomic(path, out);
}

ActivationCache::ActivationCache(int64_t windows, int64_t T, int64_t C, int bits) : W_(windows), T_(T), C_(C), bits_(bits) {
  if (bits != 16 && bits != 2 && bits != 4 && bits != 8) fail("--delta-cache-bits {}: give 2, 4 or 8", bits);
  per_ = bits == 16 ? (size_t)(T * C * 2) : (size_t)(2 * C + (T * C * bits + 7) / 8);
  data_.resize((size_t)W_ * per_);  // zero pages until written
  seen_.assign((size_t)W_, 0);
}

void ActivationCache::read(int64_t id, float* out) const {
  if (id < 0 || id >= W_) fail("delta cache: window {} outside the data's {} windows", id, W_);
  const uint8_t* p = data_.data() + (size_t)id * per_;
  if (!seen_[(size_t)id]) return (void)std::fill(out, out + T_ * C_, 0.f);
  if (bits_ == 16) {
    for (int64_t i = 0; i < T_ * C_; i++) out[i] = f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
  } else {
    dist::fixpoint_decode(p, per_, T_, C_, bits_, out);
  }
}

void ActivationCache::write(int64_t id, const float* x) {
  if (id < 0 || id >= W_) fail("delta cache: window {} outside the data's {} windows", id, W_);
  uint8_t* p = data_.data() + (size_t)id * per_;
  if (bits_ == 16) {
    for (int64_t i = 0; i < T_ * C_; i++) {
      const uint16_t h = f32_to_f16(x[i]);
      p[2 * i] = (uint8_t)(h & 0xff), p[2 * i + 1] = (uint8_t)(h >> 8);
    }
  } else {
    std::vector<uint8_t> code;
    dist::fixpoint_encode(x, T_, C_, bits_, code);  // one scale per channel over the window's rows
    LLMQ_CHECK(code.size() == per_);
    std::copy(code.begin(), code.end(), p);
  }
  seen_[(size_t)id] = 1;
}

int64_t ActivationCache::seen() const { return std::count(seen_.begin(), seen_.end(), (uint8_t)1); }

uint64_t ActivationCache::checksum() const {
  uint64_t h = 0;
  for (int64_t i = 0; i < W_; i++)
    if (seen_[(size_t)i]) h = h * 0x100000001b3ull ^ (dist::checksum64(data_.data() + (size_t)i * per_, per_) + (uint64_t)i);
  return h;
}

void ActivationCache::save(const std::string& path) const {
  AtomicFile f(path);
  const uint64_t head[6] = {0x314341435050514cull /* "LQPPCAC1" */, (uint64_t)W_, (uint64_t)T_, (uint64_t)C_,
                            (uint64_t)bits_, (uint64_t)seen()};
  f.write(head, sizeof head);
  for (int64_t i = 0; i < W_; i++)
    if (seen_[(size_t)i]) {
      const uint64_t id = (uint64_t)i;
      f.write(&id, 8);
      f.write(data_.data() + (size_t)i * per_, per_);
    }
  f.commit();
}

void ActivationCache::load(const std::string& path) {
  auto m = map_file(path);
  uint64_t head[6];
  if (m->size < sizeof head) fail("{}: not a pipeline activation cache (too short)", path);
  std::memcpy(head, m->data, sizeof head);
  if (head[0] != 0x314341435050514cull) fail("{}: not a pipeline activation cache (magic)", path);
  if (head[1] != (uint64_t)W_ || head[2] != (uint64_t)T_ || head[3] != (uint64_t)C_ || head[4] != (uint64_t)bits_)
    fail("{}: a cache of {} windows of ({}, {}) at {} bits; this run's is {} of ({}, {}) at {}", path, head[1], head[2],
         head[3], head[4], W_, T_, C_, bits_);
  if (head[5] > (uint64_t)W_ || m->size != sizeof head + head[5] * (8 + per_))
    fail("{}: {} bytes for {} cached windows (expected {}): a truncated or corrupt cache", path, m->size, head[5],
         sizeof head + head[5] * (8 + per_));
  std::fill(seen_.begin(), seen_.end(), 0);
  const uint8_t* p = m->data + sizeof head;
  for (uint64_t k = 0; k < head[5]; k++, p += 8 + per_) {
    uint64_t id;
    std::memcpy(&id, p, 8);
    if (id >= (uint64_t)W_ || seen_[id]) fail("{}: window {} out of range or twice: a corrupt cache", path, id);
    std::memcpy(data_.data() + id * per_, p + 8, per_);
    seen_[id] = 1;
  }
}

void Pipeline::cached(const ActivationCache& c, const int64_t* ids, int64_t Bm, int64_t T) {
  const int64_t C = m_.config.dim;
  last_.resize((size_t)(Bm * T * C));
  for (int64_t b = 0; b < Bm; b++) c.read(ids[b], last_.data() + b * T * C);
}

void Pipeline::store(ActivationCache& c, const int64_t* ids, int64_t Bm, int64_t T, const float* x) {
  const int64_t C = m_.config.dim;
  for (int64_t b = 0; b < Bm; b++) c.write(ids[b], x + b * T * C);
}

void Pipeline::load_caches(const std::string& dir, int world_rank, int64_t T) {
  const int64_t C = m_.config.dim;
  const int bits = o_.compress_fwd == "delta" ? 16 : o_.cache_bits;
  if (!m_.last_stage()) {
    com_ = std::make_unique<ActivationCache>(o_.cache_windows, T, C, bits);
    com_->load(fmt::format("{}/pp_cache-rank{:05}-sent.bin", dir, world_rank));
  }
  if (!m_.first_stage()) {
    dec_ = std::make_unique<ActivationCache>(o_.cache_windows, T, C, bits);
    dec_->load(fmt::format("{}/pp_cache-rank{:05}-received.bin", dir, world_rank));
  }
}

namespace {
// The targets (>= 0) of each of M micro-batches of N rows, and their sum.
std::vector<int64_t> targets_per_micro(const int32_t* targets, int M, int64_t N, int64_t* total) {
  std::vector<int64_t> nv((size_t)M, 0);
  *total = 0;
  for (int mb = 0; mb < M; mb++) {
    for (int64_t i = 0; i < N; i++) nv[mb] += targets[mb * N + i] >= 0;
    *total += nv[mb];
  }
  return nv;
}
}  // namespace

void pipeline_check_compression(const PipelineOptions& o, int64_t width) {
  if (o.compress_fwd != "none" && o.compress_fwd != "fixpoint" && o.compress_fwd != "tah" && o.compress_fwd != "delta" &&
      o.compress_fwd != "delta-lowbits")
    fail("--pp-compress-fwd {}: give none, fixpoint, tah, delta or delta-lowbits", o.compress_fwd);
  if (o.cache_bits != 2 && o.cache_bits != 4 && o.cache_bits != 8) fail("--delta-cache-bits {}: give 2, 4 or 8", o.cache_bits);
  if (o.compress_bwd != "none" && o.compress_bwd != "fixpoint")
    fail("--pp-compress-bwd {}: give none or fixpoint", o.compress_bwd);
  for (auto [v, what] : {std::pair<int, const char*>{o.fwd_bits, "--fwd-bits"}, {o.bwd_bits, "--bwd-bits"},
                         {o.hi_bits, "--hi-bits"}, {o.lo_bits, "--lo-bits"}})
    if (v < 1 || v > 8) fail("{} {} must be within 1-8", what, v);
  if (o.tile < 2 || o.tile > 4096 || (o.tile & (o.tile - 1))) fail("--tile {} must be a power of two within 2-4096", o.tile);
  if (o.compress_fwd == "tah" && width % o.tile)
    fail("--tile {} does not divide the model's width {} (TAH-Quant tiles each row)", o.tile, width);
  if (!(o.hi_ratio >= 0 && o.hi_ratio <= 1)) fail("--hi-ratio {} must be within [0, 1]", o.hi_ratio);
  if (o.warmup_steps < 0) fail("--pp-compress-warmup {} must not be negative", o.warmup_steps);
}

dist::StageHead Pipeline::head(dist::StageDirection d, int from, int micro, int64_t step, int64_t rows, int64_t seq) const {
  dist::StageHead h;
  h.direction = d, h.from_stage = from, h.micro = micro, h.step = step;
  h.rows = (int32_t)rows, h.width = (int32_t)m_.config.dim;
  const bool warm = d != dist::StageDirection::Eval && step < o_.warmup_steps;  // the first steps go uncompressed
  const std::string& name = d == dist::StageDirection::Backward ? o_.compress_bwd
                            : d == dist::StageDirection::Eval && !o_.compress_eval ? std::string("none")
                                                                                   : o_.compress_fwd;
  if (warm || name == "none") return h;
  if (name == "fixpoint" || (name.rfind("delta", 0) == 0 && d == dist::StageDirection::Eval)) {
    // (Validation has no cache of its windows: a delta codec's evaluation sends a fixpoint code.)
    h.codec = dist::StageCodec::Fixpoint;
    h.bits = (uint8_t)(d == dist::StageDirection::Backward ? o_.bwd_bits : o_.fwd_bits);
  } else if (name == "delta" || name == "delta-lowbits") {
    h.codec = name == "delta" ? dist::StageCodec::Delta : dist::StageCodec::DeltaLowbits;
    h.bits = (uint8_t)o_.fwd_bits;
  } else {  // tah
    h.codec = dist::StageCodec::Tah;
    h.bits = (uint8_t)o_.hi_bits, h.lo_bits = (uint8_t)o_.lo_bits, h.tile = (uint16_t)o_.tile;
    h.seq = (int32_t)seq, h.lo_rows = (int32_t)dist::tah_lo_rows(seq, o_.hi_ratio);
  }
  return h;
}

Pipeline::Pipeline(LlamaTrain<float>& m, dist::Communicator& link, const PipelineOptions& o, const std::vector<int64_t>& bounds)
    : m_(m), link_(link), o_(o), stage_(link.rank()), P_(link.size()) {
  LLMQ_CHECK((int)bounds.size() == P_ + 1);
  if (o_.schedule != "gpipe" && o_.schedule != "1f1b") fail("--pp-schedule {}: give gpipe or 1f1b", o_.schedule);
  M_ = o_.micro_batches > 0 ? o_.micro_batches : P_;
  pipeline_check_compression(o_, m_.config.dim);
  m_.set_stage(bounds[stage_], bounds[stage_ + 1]);
}

void Pipeline::send(dist::StageHead h, const float* x, int peer) {
  std::vector<char> msg;
  {
    auto sp = trace.span(fmt::format("encode {} m{}", h.direction == dist::StageDirection::Backward ? "grad" : "act", h.micro));
    dist::stage_encode(h, x, msg);
  }
  // Fault injection for the tests (tests/dist/pp_test.sh): LLMQ_PP_FAULT=checksum|length:STAGE:MICRO
  // corrupts that stage's first message for that micro-batch after its checksum was taken.
  if (const char* f = std::getenv("LLMQ_PP_FAULT")) {
    char kind[16] = {};
    int fs = -1, fm = -1;
    if (std::sscanf(f, "%15[a-z]:%d:%d", kind, &fs, &fm) == 3 && fs == stage_ && fm == h.micro && msg.size() > dist::kStageHeadBytes + 8) {
      if (std::string(kind) == "checksum") msg.back() ^= 0x10;
      if (std::string(kind) == "length") msg.resize(msg.size() - 4);
    }
  }
  (h.direction == dist::StageDirection::Backward ? bytes_bwd : h.direction == dist::StageDirection::Eval ? bytes_eval : bytes_fwd) += msg.size();
  sends_.push_back(std::move(msg));
  auto sp = trace.span("isend");
  link_.isend(sends_.back().data(), sends_.back().size(), peer, (int)h.direction + 1);
}

void Pipeline::receive(const dist::StageHead& want, float* x, int peer) {
  {
    auto sp = trace.span(fmt::format("recv {} m{}", want.direction == dist::StageDirection::Backward ? "grad" : "act", want.micro));
    const size_t most = dist::kStageHeadBytes + dist::stage_payload_max(want) + 4096;
    try {
      link_.recv_any(recv_, most, peer, (int)want.direction + 1);
    } catch (const Error& e) {
      fail("pipeline stage {}: step {} micro-batch {}: {}", stage_, want.step, want.micro, e.what());
    }
  }
  auto sp = trace.span(fmt::format("decode m{}", want.micro));
  try {
    dist::stage_decode(recv_, want, x);
  } catch (const Error& e) {
    fail("pipeline stage {}: step {} micro-batch {}: the {} from stage {}: {}; stopping the job", stage_, want.step,
         want.micro, dist::stage_direction_name(want.direction), want.from_stage, e.what());
  }
}

double Pipeline::train_step(int64_t step, const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T, double grad_scale,
                            const int64_t* ids) {
  const int M = M_;
  if (B % M != 0) fail("--micro-batches {} does not divide the {} windows of a step on each rank", M, B);
  const int64_t Bm = B / M, N = Bm * T, C = m_.config.dim;
  const bool first = m_.first_stage(), last = m_.last_stage();
  // Each micro-batch's share of the step's target tokens (every stage reads the targets).
  int64_t total = 0;
  const std::vector<int64_t> nv = targets_per_micro(targets, M, N, &total);
  // The schedule as a list of (forward?, micro-batch).
  std::vector<std::pair<bool, int>> acts;
  int slots = M;
  if (o_.schedule == "gpipe") {
    for (int mb = 0; mb < M; mb++) acts.push_back({true, mb});
    for (int mb = 0; mb < M; mb++) acts.push_back({false, mb});
  } else {
    const int warm = std::min(P_ - stage_ - 1, M);
    slots = std::min(warm + 1, M);
    int f = 0, b = 0;
    for (; f < warm; f++) acts.push_back({true, f});
    while (b < M) {
      if (f < M) acts.push_back({true, f++});
      acts.push_back({false, b++});
    }
  }
  if (m_.slots() != slots) m_.set_slots(slots);
  x_.resize((size_t)(N * C));
  if (delta()) {
    LLMQ_CHECK(ids != nullptr && o_.cache_windows > 0);
    const int bits = o_.compress_fwd == "delta" ? 16 : o_.cache_bits;
    if (!last && !com_) com_ = std::make_unique<ActivationCache>(o_.cache_windows, T, C, bits);
    if (!first && !dec_) dec_ = std::make_unique<ActivationCache>(o_.cache_windows, T, C, bits);
  }
  double loss = 0;
  for (const auto& [fwd, mb] : acts) {
    m_.use_slot(mb % slots);
    if (fwd) {
      const float* x = nullptr;
      if (!first) {
        const dist::StageHead h = head(dist::StageDirection::Forward, stage_ - 1, mb, step, N, T);
        receive(h, x_.data(), stage_ - 1);
        x = x_.data();
        if (delta()) {  // AQ-SGD: the activation is the cached one plus the decoded difference
          auto sp = trace.span(fmt::format("delta cache m{}", mb));
          if (h.codec != dist::StageCodec::None) {
            cached(*dec_, ids + mb * Bm, Bm, T);
            for (int64_t i = 0; i < N * C; i++) x_[i] = last_[i] + x_[i];
          }
          store(*dec_, ids + mb * Bm, Bm, T, x_.data());
        }
      }
      double l;
      {
        auto sp = trace.span(fmt::format("forward m{}", mb));
        l = m_.forward_stage(first ? tokens + mb * N : nullptr, x, targets + mb * N, Bm, T);
      }
      if (last) loss += nv[mb] > 0 ? l * (double)nv[mb] / (double)total : 0.0;
      else if (!delta()) send(head(dist::StageDirection::Forward, stage_, mb, step, N, T), m_.stage_output(), stage_ + 1);
      else {
        // AQ-SGD: send a code of the difference from what both ends cached for these windows,
        // then advance the cache by the decoded difference, as the receiver will.
        const dist::StageHead h = head(dist::StageDirection::Forward, stage_, mb, step, N, T);
        const float* out = m_.stage_output();
        if (h.codec == dist::StageCodec::None) {  // warm-up: the activations themselves
          send(h, out, stage_ + 1);
          store(*com_, ids + mb * Bm, Bm, T, out);
        } else {
          cached(*com_, ids + mb * Bm, Bm, T);
          dhat_.resize((size_t)(N * C));
          for (int64_t i = 0; i < N * C; i++) dhat_[i] = out[i] - last_[i];
          send(h, dhat_.data(), stage_ + 1);
          auto sp = trace.span(fmt::format("delta cache m{}", mb));
          const std::vector<char>& msg = sends_.back();
          dist::fixpoint_decode(reinterpret_cast<const uint8_t*>(msg.data()) + dist::kStageHeadBytes,
                                msg.size() - dist::kStageHeadBytes, N, C, h.bits, dhat_.data());
          for (int64_t i = 0; i < N * C; i++) dhat_[i] = last_[i] + dhat_[i];
          store(*com_, ids + mb * Bm, Bm, T, dhat_.data());
        }
      }
    } else {
      const float* dy = nullptr;
      if (!last) {
        receive(head(dist::StageDirection::Backward, stage_ + 1, mb, step, N, T), x_.data(), stage_ + 1);
        dy = x_.data();
      }
      const double scale = total > 0 ? grad_scale * (double)nv[mb] / (double)total : 0.0;
      {
        auto sp = trace.span(fmt::format("backward m{}", mb));
        m_.backward_stage(dy, scale);
      }
      if (!first) {
        // The last stage skips a micro-batch without targets (no gradient): zeros go back.
        const float* g = m_.stage_input_grad();
        if (last && nv[mb] == 0) zeros_.assign((size_t)(N * C), 0.f), g = zeros_.data();
        send(head(dist::StageDirection::Backward, stage_, mb, step, N, T), g, stage_ - 1);
      }
    }
  }
  {
    auto sp = trace.span("wait sends");
    link_.wait_sends();
  }
  sends_.clear();
  return loss;
}

double Pipeline::eval_batch(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T) {
  const int M = B % M_ == 0 ? M_ : 1;
  const int64_t Bm = B / M, N = Bm * T, C = m_.config.dim;
  const bool first = m_.first_stage(), last = m_.last_stage();
  if (m_.slots() < 1) m_.set_slots(1);
  m_.use_slot(0);
  x_.resize((size_t)(N * C));
  int64_t total = 0;
  const std::vector<int64_t> nv = targets_per_micro(targets, M, N, &total);
  const int64_t seq = eval_seq_++;
  double loss = 0;
  for (int mb = 0; mb < M; mb++) {
    if (!first) receive(head(dist::StageDirection::Eval, stage_ - 1, mb, seq, N, T), x_.data(), stage_ - 1);
    const double l = m_.forward_stage(first ? tokens + mb * N : nullptr, first ? nullptr : x_.data(), targets + mb * N, Bm, T);
    if (last) loss += nv[mb] > 0 ? l * (double)nv[mb] / (double)total : 0.0;
    else send(head(dist::StageDirection::Eval, stage_, mb, seq, N, T), m_.stage_output(), stage_ + 1);
  }
  link_.wait_sends();
  sends_.clear();
  return loss;
}

}  // namespace llmq::train
