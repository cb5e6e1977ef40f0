// The frozen base of adapter fine-tuning sharded over the ranks (`llmq finetune --fsdp`).
// Each parameter unit of the base (the embeddings, each block, the final norm with lm_head;
// LlamaTrain::unit_range) is owned by one rank, chosen so the ranks hold about equal bytes;
// a rank loads (and quantizes, with --quantize-base) only the units it owns. Right before a
// unit is used, its owner broadcasts it (the f32 part into the same place of every rank's
// `base`, the quantized linears as one buffer); after its forward or backward, the other
// ranks drop it again (pages returned to the OS). So a rank holds its ~1/N of the base plus
// the unit in use, never the whole base. The adapters stay replicated: they are small, and
// their gradients are all-reduced as in data-parallel training.
//
// A whole unit per owner (not 1/N of every unit, as Fsdp does for trained parameters) keeps
// a quantized linear's codes, scales and zero points together, so a gathered unit is used as
// its owner uses it; the bytes each rank receives per step are the same as an all-gather's
// (every unit but its own, twice).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "dist/comm.h"
#include "train/llama_train.h"

namespace llmq::train {

class BaseShards {
 public:
  // linear_bits: bits per weight of the base's block linears as held (32 for f32), for
  // balancing the owners (every block has the same shapes; the embeddings and lm_head are f32).
  BaseShards(LlamaTrain<float>& m, dist::Communicator& comm, double linear_bits);
  int owner(int unit) const { return owner_[unit]; }
  // For load_frozen_base: whether this rank loads a unit.
  std::function<bool(int)> keep() const {
    return [this](int u) { return owner_[u] == comm_.rank(); };
  }
  // After load_frozen_base: installs the gather/drop hooks on the model (every later forward, backward and
  // init_adapters is collective).
  void start();
  // Bytes of the base this rank holds between uses (its own units).
  double held_bytes() const { return held_; }

 private:
  void gather(int u);
  void drop(int u);
  LlamaTrain<float>& m_;
  dist::Communicator& comm_;
  struct Piece {
    int64_t offset, n;
    int linear;  // block linear index, or -1
  };
  std::vector<std::vector<Piece>> pieces_;  // per unit: its tensors' ranges of `base`
  std::vector<int> owner_;
  std::vector<bool> gathered_;
  std::vector<std::shared_ptr<Storage>> packed_;  // per unit: its quantized linears while gathered (another rank's)
  double held_ = 0;
};

// The quantized linears of one block as one byte buffer (codes, scales, zero points and the
// quantization's fields), and back as tensors viewing the buffer.
std::shared_ptr<Storage> pack_linears(const std::array<Tensor, kBlockLinears>& q);
void unpack_linears(const std::shared_ptr<Storage>& buf, std::array<Tensor, kBlockLinears>& q);

}  // namespace llmq::train
