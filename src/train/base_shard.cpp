#include "train/base_shard.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/zero_pages.h"
#include "dist/plan.h"
#include "kernels/cpu/kernels.h"
#include "quant/quant.h"

namespace llmq::train {

namespace {
// Every field of QuantInfo is written below; a new one must be too (this fails to compile
// until the size is updated here, after adding it to pack_linears and unpack_linears).
static_assert(sizeof(QuantInfo) == 200, "QuantInfo changed: serialize the new field in base_shard.cpp");

constexpr size_t kDataAlign = 64;
constexpr int64_t kPanel = kQPanel;  // rows per panel of the integer layouts

int64_t padded_rows(const Tensor& t) {
  LLMQ_CHECK(t.ndim() == 2);
  return t.quant() && !t.quant()->fp8 ? (t.dim(0) + kPanel - 1) / kPanel * kPanel : t.dim(0);
}

// Writes into dst, or with dst null only counts (the first of two passes: the exact size).
struct Out {
  uint8_t* dst = nullptr;
  size_t n = 0;
  void bytes(const void* p, size_t k) {
    if (dst && k) std::memcpy(dst + n, p, k);
    n += k;
  }
  template <class T>
  void pod(const T& v) {
    bytes(&v, sizeof(T));
  }
  template <class T>
  void vec(const std::vector<T>& v) {
    pod((uint64_t)v.size());
    bytes(v.data(), v.size() * sizeof(T));
  }
  void align(size_t a) {
    const size_t to = (n + a - 1) / a * a;
    if (dst) std::memset(dst + n, 0, to - n);
    n = to;
  }
};

struct In {
  const uint8_t* p;
  size_t n, at = 0;
  const uint8_t* take(size_t k) {
    // A buffer this process family wrote itself; a short one is a bug, not bad input.
    LLMQ_CHECK(k <= n - at);
    const uint8_t* r = p + at;
    at += k;
    return r;
  }
  template <class T>
  T pod() {
    T v;
    std::memcpy(&v, take(sizeof(T)), sizeof(T));
    return v;
  }
  template <class T>
  std::vector<T> vec() {
    const uint64_t k = pod<uint64_t>();
    LLMQ_CHECK(k <= (n - at) / sizeof(T));
    std::vector<T> v((size_t)k);
    if (k) std::memcpy(v.data(), take((size_t)k * sizeof(T)), (size_t)k * sizeof(T));
    return v;
  }
};
}  // namespace

namespace {
void write_linears(const std::array<Tensor, kBlockLinears>& q, Out& o) {
  for (const Tensor& t : q) {
    o.pod((uint8_t)t.defined());
    if (!t.defined()) continue;
    o.pod((uint8_t)t.dtype());
    o.vec(t.shape());
    const QuantInfo* qi = t.quant();
    o.pod((uint8_t)(qi != nullptr));
    if (qi) {
      o.pod(qi->bits), o.pod(qi->code_bits), o.pod(qi->group);
      o.pod((uint8_t)qi->sym), o.pod((uint8_t)qi->act_per_token), o.pod((uint8_t)qi->fp8);
      o.pod((uint8_t)qi->weight_per_tensor), o.pod((uint8_t)qi->act_per_tensor);
      o.pod(qi->act_scale), o.pod(qi->zero_all), o.pod(qi->axis0_classes);
      o.pod(qi->act_eps), o.pod((uint8_t)qi->act_float);
      o.vec(qi->sz16), o.vec(qi->scale), o.vec(qi->zs), o.vec(qi->perm), o.vec(qi->axis0_scale), o.vec(qi->axis0_sz);
    }
    // Integer codes are stored in whole panels of 16 rows (the last one padded), viewed as M rows.
    const int64_t rows = padded_rows(t);
    const uint64_t nb = dtype_bytes(t.dtype(), rows * t.dim(1));
    o.pod(nb);
    o.align(kDataAlign);  // the codes start aligned
    o.bytes(t.host_data(), nb);
  }
}
}  // namespace

std::shared_ptr<Storage> pack_linears(const std::array<Tensor, kBlockLinears>& q) {
  Out count;
  write_linears(q, count);
  auto st = Storage::allocate(count.n);
  Out w{static_cast<uint8_t*>(st->data), 0};
  write_linears(q, w);
  LLMQ_CHECK(w.n == count.n);
  return st;
}

void unpack_linears(const std::shared_ptr<Storage>& buf, std::array<Tensor, kBlockLinears>& q) {
  In in{static_cast<const uint8_t*>(buf->data), buf->bytes};
  for (Tensor& t : q) {
    t = Tensor{};
    if (!in.pod<uint8_t>()) continue;
    const DType dt = (DType)in.pod<uint8_t>();
    const Shape shape = in.vec<int64_t>();
    std::shared_ptr<QuantInfo> qi;
    if (in.pod<uint8_t>()) {
      qi = std::make_shared<QuantInfo>();
      qi->bits = in.pod<int>(), qi->code_bits = in.pod<int>(), qi->group = in.pod<int64_t>();
      qi->sym = in.pod<uint8_t>(), qi->act_per_token = in.pod<uint8_t>(), qi->fp8 = in.pod<uint8_t>();
      qi->weight_per_tensor = in.pod<uint8_t>(), qi->act_per_tensor = in.pod<uint8_t>();
      qi->act_scale = in.pod<float>(), qi->zero_all = in.pod<float>(), qi->axis0_classes = in.pod<int64_t>();
      qi->act_eps = in.pod<float>(), qi->act_float = in.pod<uint8_t>();
      qi->sz16 = in.vec<uint16_t>(), qi->scale = in.vec<float>(), qi->zs = in.vec<float>();
      qi->perm = in.vec<int32_t>(), qi->axis0_scale = in.vec<float>(), qi->axis0_sz = in.vec<float>();
    }
    const uint64_t nb = in.pod<uint64_t>();
    in.at = (in.at + kDataAlign - 1) / kDataAlign * kDataAlign;
    const size_t off = in.at;
    in.take((size_t)nb);
    LLMQ_CHECK(shape.size() == 2);
    const bool panels = qi && !qi->fp8;
    const int64_t rows = panels ? (shape[0] + kPanel - 1) / kPanel * kPanel : shape[0];
    LLMQ_CHECK(dtype_bytes(dt, rows * shape[1]) == nb);
    t = Tensor::view(buf, off, dt, {rows, shape[1]}).rows(0, shape[0]);
    if (qi) t.set_quant(std::move(qi));
  }
}

BaseShards::BaseShards(LlamaTrain<float>& m, dist::Communicator& comm, double linear_bits) : m_(m), comm_(comm) {
  LLMQ_CHECK(m.has_adapters());
  const ModelConfig& c = m.config;
  const int U = m.n_units(), W = comm.size();
  const std::vector<double> bytes = dist::base_unit_bytes(c, linear_bits);
  owner_ = dist::assign_owners(bytes, W);
  for (int u = 0; u < U; u++)
    if (owner_[u] == comm.rank()) held_ += bytes[u];
  gathered_.assign((size_t)U, false);
  // Each unit's tensors in `base`, and which block linear each is (-1: a norm, embeddings, head).
  pieces_.assign((size_t)U, {});
  for (size_t i = 0; i < m.base_specs.size(); i++) {
    const auto& s = m.base_specs[i];
    int l = -1, linear = -1;
    if (std::sscanf(s.name.c_str(), "model.layers.%d.", &l) == 1)
      for (int t = 0; t < kBlockLinears; t++)
        if (s.name == fmt::format("model.layers.{}.{}.weight", l, kLinearModules[t])) linear = t;
    pieces_[unit_of_tensor(s.name, c.n_layers)].push_back({m.base_offsets[i], shape_numel(s.shape), linear});
  }
  packed_.assign((size_t)U, nullptr);
}

void BaseShards::start() {
  if (comm_.size() == 1) return;  // everything is this rank's: nothing to gather
  m_.hooks.gather = [this](int u) { gather(u); };
  m_.hooks.done_forward = [this](int u) { drop(u); };
  m_.hooks.done_backward = [this](int u) { drop(u); };
}

void BaseShards::gather(int u) {
  // gathered_ is the same on every rank (all run the same hook calls), so every rank either
  // skips or joins the same broadcasts.
  if (gathered_[u]) return;
  const int root = owner_[u];
  const bool mine = root == comm_.rank();
  const bool quant_block = u >= 1 && u <= m_.config.n_layers && !m_.qbase.empty();
  // A quantized block: first the packed linears' size and which linears are quantized (the
  // others, kept in float by the checkpoint, travel in f32 with the norms).
  // The owner packs its block for the broadcast only (its own tensors stay as they are:
  // a packed copy kept beside them would hold the scales twice).
  uint64_t head[2] = {0, 0};
  if (quant_block) {
    if (mine) {
      packed_[u] = pack_linears(m_.qbase[u - 1]);
      head[0] = packed_[u]->bytes;
      for (int t = 0; t < kBlockLinears; t++) head[1] |= (uint64_t)m_.qbase[u - 1][t].defined() << t;
    }
    comm_.broadcast(head, sizeof head, root);
  }
  // The unit's f32 tensors into their place in `base` (not a quantized linear's slot, which
  // stays untouched zero pages on every rank).
  for (const Piece& p : pieces_[u])
    if (!(quant_block && p.linear >= 0 && (head[1] >> p.linear & 1)))
      comm_.broadcast(m_.base.data() + p.offset, (size_t)p.n * sizeof(float), root);
  if (quant_block && head[0] > 0) {
    if (!mine) packed_[u] = Storage::allocate((size_t)head[0]);
    comm_.broadcast(packed_[u]->data, (size_t)head[0], root);
    if (!mine) unpack_linears(packed_[u], m_.qbase[u - 1]);
  }
  if (mine) packed_[u].reset();
  gathered_[u] = true;
}

void BaseShards::drop(int u) {
  if (!gathered_[u]) return;
  gathered_[u] = false;
  if (owner_[u] == comm_.rank()) return;  // its own units stay
  const auto [b, e] = m_.base_unit_range(u);
  zero_and_release(m_.base.data() + b, e - b);
  if (u >= 1 && u <= m_.config.n_layers && !m_.qbase.empty()) {
    for (Tensor& t : m_.qbase[u - 1]) t = Tensor{};
    packed_[u].reset();
  }
}

}  // namespace llmq::train
