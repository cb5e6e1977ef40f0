// Tensor storage: 64-byte aligned allocation (one AVX-512 line) and views.
#include "core/tensor.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/parallel.h"

namespace llmq {

constexpr size_t kAlign = 64;
// Buffers of at least this size (weights read from a checkpoint, the KV cache, training
// state) are aligned to 2 MiB and asked for transparent huge pages: under this host's
// hypervisor (PVM, shadow page tables) the first user-space touch of each 4 KiB page costs
// microseconds, which made the first prefill after loading a 2.5 GB model 4x slower than
// the next (2.7 s against 0.65 s; a few 2 MiB pages instead of 600,000 small ones).
constexpr size_t kHugeBytes = size_t(32) << 20, kHugeAlign = size_t(2) << 20;

Storage::~Storage() {
  if (owned) std::free(data);
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  auto s = std::make_shared<Storage>();
  const size_t align = bytes >= kHugeBytes ? kHugeAlign : kAlign;
  size_t rounded = (bytes + align - 1) / align * align;
  s->data = std::aligned_alloc(align, rounded ? rounded : align);
  if (!s->data) fail("out of memory allocating {} bytes", bytes);
  if (align == kHugeAlign) madvise(s->data, rounded, MADV_HUGEPAGE);  // advice only: failure is harmless
  s->bytes = bytes;
  s->device = device;
  s->owned = true;
  return s;
}

std::shared_ptr<Storage> Storage::borrow(void* data, size_t bytes, std::shared_ptr<void> owner) {
  auto s = std::make_shared<Storage>();
  s->data = data;
  s->bytes = bytes;
  s->keep_alive = std::move(owner);
  return s;
}

std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

Tensor Tensor::empty(DType dtype, Shape shape, Device device) {
  for (auto d : shape)
    if (d < 0) fail("negative dimension in shape {}", shape_str(shape));
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.device_ = device;
  t.storage_ = Storage::allocate(t.nbytes(), device);
  return t;
}

Tensor Tensor::zeros(DType dtype, Shape shape, Device device) {
  Tensor t = empty(dtype, std::move(shape), device);
  std::memset(t.host_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::view(std::shared_ptr<Storage> storage, size_t offset, DType dtype, Shape shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.device_ = storage->device;
  t.offset_ = offset;
  LLMQ_CHECK(offset + t.nbytes() <= storage->bytes);
  t.storage_ = std::move(storage);
  return t;
}

Tensor Tensor::rows(int64_t r0, int64_t r1) const {
  LLMQ_CHECK(ndim() >= 1 && 0 <= r0 && r0 <= r1 && r1 <= shape_[0]);
  int64_t inner = numel() / (shape_[0] ? shape_[0] : 1);
  LLMQ_CHECK((inner * dtype_bits(dtype_)) % 8 == 0);
  LLMQ_CHECK(!dtype_is_kquant(dtype_) || inner % 256 == 0);
  Tensor t = *this;
  t.shape_[0] = r1 - r0;
  t.offset_ += dtype_bytes(dtype_, r0 * inner);
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  LLMQ_CHECK(shape_numel(shape) == numel());
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

void* Tensor::host_data() const {
  LLMQ_CHECK(storage_ && device_ == Device::CPU);
  return static_cast<char*>(storage_->data) + offset_;
}

Tensor to_f32(const Tensor& t) {
  if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
    fail("to_f32: dtype {} is not a float type", dtype_name(t.dtype()));
  Tensor r = Tensor::empty(DType::F32, t.shape());
  float* o = r.host<float>();
  const int64_t n = t.numel();
  const DType dt = t.dtype();
  parallel_for_if(n > (1 << 16), n, 0, [&](int64_t i) {
    o[i] = dt == DType::F32 ? t.host<float>()[i]
           : dt == DType::BF16 ? bf16_to_f32(t.host<uint16_t>()[i])
                               : f16_to_f32(t.host<uint16_t>()[i]);
  });
  return r;
}

}  // namespace llmq
