// Tensor: dtype, shape and device over shared storage (aligned heap memory or a mapped file).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace llmq {

// CPU only today; a CUDA device plugs in here. Code outside kernels/ops must not touch
// Tensor::host_data() of a parameter, so the model runs unchanged on another device.
enum class Device : uint8_t { CPU };

// A block of memory on one device. Either owned (freed on destruction) or borrowed from a
// keep-alive object, e.g. a memory-mapped file shared by all the weights that live in it.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  std::shared_ptr<void> keep_alive;  // owner of borrowed memory; empty when owned
  bool owned = false;
  ~Storage();
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device = Device::CPU);
  static std::shared_ptr<Storage> borrow(void* data, size_t bytes, std::shared_ptr<void> owner);
};

using Shape = std::vector<int64_t>;
struct QuantInfo;
std::string shape_str(const Shape& s);  // "(4096, 14336)"
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(DType dtype, Shape shape, Device device = Device::CPU);
  static Tensor zeros(DType dtype, Shape shape, Device device = Device::CPU);
  // View of storage bytes [offset, offset + nbytes) as dtype/shape.
  static Tensor view(std::shared_ptr<Storage> storage, size_t offset, DType dtype, Shape shape);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return (int)shape_.size(); }
  int64_t dim(int i) const { return shape_[i < 0 ? i + ndim() : i]; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return dtype_bytes(dtype_, numel()); }

  // Rows [r0, r1) of the leading dimension, sharing storage.
  Tensor rows(int64_t r0, int64_t r1) const;
  // Same bytes, new shape with equal element count.
  Tensor reshape(Shape shape) const;

  // Integer-quantized weights (dtype U8 for 8-bit codes, Q4 for packed 4-bit codes, in the
  // layout of kernels/cpu/kernels.h's QMatView): scales and zero points; null otherwise.
  const QuantInfo* quant() const { return quant_.get(); }
  void set_quant(std::shared_ptr<const QuantInfo> q) { quant_ = std::move(q); }

  // Raw host memory: for kernels, the ops layer and file I/O only.
  void* host_data() const;
  template <class T>
  T* host() const { return static_cast<T*>(host_data()); }

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  Shape shape_;
  std::shared_ptr<const QuantInfo> quant_;
};

// The quantization of an (M, K) weight tensor.
// Integer codes (dtype U8 or Q4): weight = scale * code - zs, one scale and zs (= scale *
// zero point) per `group` weights of a row, stored per 16-row panel as the kernels read
// them (QMatView: scale[(p*(K/group) + g)*16 + r] for row 16p+r; the padding rows of the
// last panel have scale and zs 0).
// FP8 (dtype F8E4M3, fp8 true): row-major E4M3 bytes, weight = scale[m] * e4m3(byte), one
// scale per row (the same in every row for a per-tensor scale); zs empty.
struct QuantInfo {
  int bits = 8;           // 8 or 4 (2 and 3-bit codes are held in the 4-bit layout)
  int code_bits = 8;      // the bits of the scheme the codes came from (<= bits)
  int64_t group = 0;      // weights per scale (K: one per row)
  bool sym = true;
  bool act_per_token = false;  // activations quantized per token (w8a8, fp8 per token); else per 32 (int) or per tensor (fp8)
  bool fp8 = false;
  bool weight_per_tensor = false;  // fp8: one scale for the whole tensor
  bool act_per_tensor = false;  // w8a8: one dynamic activation scale per call (SmoothQuant's per-tensor setting)
  float act_scale = 0;  // fp8 static: the calibrated per-tensor activation scale (input_scale); 0: dynamic
  // Per-token int8 activations with LLM-QAT's quantizer (QAT models, config.h QuantConfig::act_eps):
  // s = 127 / (amax + act_eps), q = round(x s), scale 1 / (s + act_eps). 0: amax / 127.
  float act_eps = 0;
  // QAT weight-only models (w4a16kv16 ...): the activations stay f32 as they were trained, the
  // weight rows dequantized a panel at a time for sgemm (not the int8 blocks of 32 the integer
  // kernels take).
  bool act_float = false;
  // Integer: the QMatView layouts (kernels.h), sz16 when every scale and zero point is an
  // f16 value (f16 scales, then f16 zero points, per panel and group), else scale and zs in
  // f32 (ceil(M/16), K/group, 16). fp8: scale (M).
  std::vector<uint16_t> sz16;
  std::vector<float> scale, zs;
  // >= 0: every zero point equals zero_all and sz16 holds the scales only (QMatView szs 16).
  float zero_all = -1.f;
  int64_t sz16_per_group() const { return zero_all >= 0.f ? 16 : 32; }  // halves per (panel, group)
  // Act-order (desc_act) checkpoints: the columns are stored grouped, storage column j
  // holding input column perm[j]; the activations are gathered the same way before the
  // product. Empty: identity.
  std::vector<int32_t> perm;
  // HQQ axis 0 (groups along the output channels): weight[r, c] = s[j] * (code[r, c] - z[j]),
  // j = (r mod P)*K + c with P = axis0_classes = M/group. The codes are held in the integer
  // layout with unit scales, rows stored by class (storage row (r mod P)*group + r/P);
  // axis0_scale and axis0_sz (P, K) hold s and s*z, folded into the activations. 0: not axis 0.
  int64_t axis0_classes = 0;
  std::vector<float> axis0_scale, axis0_sz;
};

// A new f32 tensor with the values of an f32, bf16 or f16 tensor (fails for other dtypes).
Tensor to_f32(const Tensor& t);

}  // namespace llmq
