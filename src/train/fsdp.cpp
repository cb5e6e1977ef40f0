#include "train/fsdp.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/zero_pages.h"
#include "train/train_ops.h"

namespace llmq::train {

namespace {
// The AdamW ranges of the shard: each tensor's part inside this rank's chunks, padding as
// no-decay ranges (its gradients stay zero, so its parameters do too).
void add_shard_ranges(const std::vector<AdamW<float>::Range>& full, int64_t begin, int64_t end, int64_t shard_off,
                      int64_t chunk, std::vector<AdamW<float>::Range>& out) {
  int64_t at = shard_off;
  for (const auto& r : full) {
    const int64_t b = std::max(begin, r.offset), e = std::min(end, r.offset + r.n);
    if (b >= e) continue;
    out.push_back({at, e - b, r.decay});
    at += e - b;
  }
  if (at < shard_off + chunk) out.push_back({at, shard_off + chunk - at, false});
}
}  // namespace

Fsdp::Fsdp(LlamaTrain<float>& m, dist::Communicator& comm, const AdamWConfig& cfg,
           const std::vector<AdamW<float>::Range>& ranges)
    : m_(m), comm_(comm), opt_(cfg, {{0, 0, false}}, 0) {
  const int64_t W = comm.size(), R = comm.rank();
  int64_t off = 0;
  std::vector<AdamW<float>::Range> sr;
  for (int u = 0; u < m.n_units(); u++) {
    const auto [b, e] = m.unit_range(u);
    const int64_t chunk = (e - b + W - 1) / W;
    units_.push_back({b, e, chunk, off});
    add_shard_ranges(ranges, std::min(e, b + R * chunk), std::min(e, b + (R + 1) * chunk), off, chunk, sr);
    off += chunk;
  }
  param_.assign((size_t)off, 0.f);
  grad_.assign((size_t)off, 0.f);
  opt_ = AdamW<float>(cfg, sr, off);
  // LlamaTrain's gather calls: forward 0, 1..L, head; backward head, (0 when tied), L..1.
  const int L = m.config.n_layers, head = L + 1;
  for (int u = 0; u <= head; u++) order_.push_back(u);
  order_.push_back(head);
  if (m.p.lm_head == m.p.embed) order_.push_back(0);
  for (int u = L; u >= 1; u--) order_.push_back(u);
}

void Fsdp::settle() {
  comm_.wait();
  for (auto& u : units_)
    if (u.in_flight) u.in_flight = false, u.gathered = true;
}

void Fsdp::prefetch_after(int u) {
  // The next gather after this one (not across the end of a step: the optimizer changes the
  // parameters between steps, so nothing is fetched ahead of it).
  size_t i = pos_;
  for (size_t k = 0; k < order_.size(); k++, i = (i + 1) % order_.size())
    if (order_[i] == u) break;
  pos_ = i;
  if (i + 1 >= order_.size()) return;
  Unit& n = units_[order_[i + 1]];
  if (order_[i + 1] == u || n.gathered || n.in_flight) return;
  for (const auto& x : units_)
    if (x.in_flight) return;  // one prefetch at a time (pre_tmp_ is its buffer)
  n.in_flight = true;
  pre_tmp_.resize((size_t)(n.chunk * comm_.size()));
  comm_.start([this, &n] {
    comm_.all_gather(param_.data() + n.shard_off, pre_tmp_.data(), (size_t)n.chunk);
    std::copy(pre_tmp_.begin(), pre_tmp_.begin() + (n.end - n.begin), m_.params.data() + n.begin);
  });
}

void Fsdp::shard(const FlatReader& params, const FlatReader& m, const FlatReader& v, int64_t adam_step) {
  const int64_t R = comm_.rank();
  for (auto& u : units_) {
    const int64_t b = std::min(u.end, u.begin + R * u.chunk), e = std::min(u.end, u.begin + (R + 1) * u.chunk);
    params(b, e, param_.data() + u.shard_off);
    if (m) m(b, e, opt_.m.data() + u.shard_off);
    if (v) v(b, e, opt_.v.data() + u.shard_off);
  }
  opt_.step = adam_step;
  zero_and_release(m_.params.data(), (int64_t)m_.params.size());
  zero_and_release(m_.grads.data(), (int64_t)m_.grads.size());
  for (auto& u : units_) u.gathered = false;
  m_.hooks.gather = [this](int u) { gather(u); };
  m_.hooks.done_forward = [this](int u) { drop_params(u); };
  m_.hooks.done_backward = [this](int u) {
    reduce_grads(u);
    drop_params(u);
  };
}

std::vector<ShardUnit> Fsdp::units() const {
  std::vector<ShardUnit> r;
  for (const auto& u : units_) r.push_back({u.begin, u.end, u.chunk});
  return r;
}

void Fsdp::write_shard(const std::string& tmp) const {
  train::write_shard(tmp, comm_.rank(), comm_.size(), param_.data(), opt_.m.data(), opt_.v.data(), (int64_t)param_.size());
}

void Fsdp::gather_into(const float* src, const Unit& u, float* dst) {
  tmp_.resize((size_t)(u.chunk * comm_.size()));
  comm_.all_gather(src + u.shard_off, tmp_.data(), (size_t)u.chunk);
  std::copy(tmp_.begin(), tmp_.begin() + (u.end - u.begin), dst + u.begin);
}

void Fsdp::gather(int i) {
  Unit& u = units_[i];
  if (u.in_flight) settle();
  if (!u.gathered) {
    gather_into(param_.data(), u, m_.params.data());
    u.gathered = true;
  }
  if (overlap_ && comm_.size() > 1) prefetch_after(i);
}

void Fsdp::drop_params(int i) {
  Unit& u = units_[i];
  if (u.in_flight) settle();
  if (!u.gathered) return;
  zero_and_release(m_.params.data() + u.begin, u.end - u.begin);
  u.gathered = false;
}

void Fsdp::reduce_grads(int i) {
  const Unit& u = units_[i];
  if (overlap_ && comm_.size() > 1) {
    // One reduce-scatter in flight at a time (its buffers are reused): the previous one (and
    // the prefetched gather queued with it) is finished first, then this one is started and
    // runs while the next unit's backward computes.
    settle();
    red_tmp_.assign((size_t)(u.chunk * comm_.size()), 0.f);
    std::copy(m_.grads.begin() + u.begin, m_.grads.begin() + u.end, red_tmp_.begin());
    zero_and_release(m_.grads.data() + u.begin, u.end - u.begin);
    red_out_.resize((size_t)u.chunk);
    const int64_t off = u.shard_off, n = u.chunk;
    comm_.start([this, off, n] {
      comm_.reduce_scatter_sum(red_tmp_.data(), red_out_.data(), red_tmp_.size());
      for (int64_t k = 0; k < n; k++) grad_[off + k] += red_out_[k];
    });
    return;
  }
  tmp_.assign((size_t)(u.chunk * comm_.size()), 0.f);
  std::copy(m_.grads.begin() + u.begin, m_.grads.begin() + u.end, tmp_.begin());
  out_.resize((size_t)u.chunk);
  comm_.reduce_scatter_sum(tmp_.data(), out_.data(), tmp_.size());
  for (int64_t k = 0; k < u.chunk; k++) grad_[u.shard_off + k] += out_[k];
  zero_and_release(m_.grads.data() + u.begin, u.end - u.begin);
}

double Fsdp::grad_sq_norm() {
  settle();  // the last reduce-scatters
  float f = (float)sum_squares(grad_.data(), (int64_t)grad_.size());
  comm_.all_reduce_sum(&f, 1);
  return f;
}

void Fsdp::scale_grads(float s) {
  scale_in_place(grad_.data(), (int64_t)grad_.size(), s);
}

void Fsdp::zero_grads() {
  settle();
  std::fill(grad_.begin(), grad_.end(), 0.f);
  pos_ = 0;  // a new step starts at the embeddings
}

void Fsdp::gather_all(AdamW<float>* full) {
  for (int i = 0; i < (int)units_.size(); i++) {
    gather(i);
    if (full) {
      gather_into(opt_.m.data(), units_[i], full->m.data());
      gather_into(opt_.v.data(), units_[i], full->v.data());
      full->step = opt_.step;
    }
  }
}

void Fsdp::release_all() {
  for (int i = 0; i < (int)units_.size(); i++) drop_params(i);
}

}  // namespace llmq::train
