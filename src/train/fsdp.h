// Fully sharded data parallel (ZeRO-3 style) state of one rank: each parameter unit of
// LlamaTrain (embeddings, each block, the head) is split into equal chunks over the ranks;
// this rank keeps its chunk of the parameters, gradients and AdamW moments. A unit's full
// parameters are all-gathered into the model's buffer right before its forward and again
// before its backward, and their pages are returned to the OS (MADV_DONTNEED) after use; a
// unit's gradients are reduce-scattered into the gradient chunks as soon as its backward is
// done, then dropped too. So a rank holds 1/N of the state plus about one unit at a time.
#pragma once
#include <cstdint>
#include <vector>

#include "dist/comm.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/llama_train.h"

namespace llmq::train {

class Fsdp {
 public:
  // ranges: the AdamW ranges of the whole parameter buffer (decay flags per tensor).
  Fsdp(LlamaTrain<float>& m, dist::Communicator& comm, const AdamWConfig& cfg,
       const std::vector<AdamW<float>::Range>& ranges);
  // Reads this rank's chunks of the parameters and, when given, of the AdamW moments (else
  // zero) from their source (a fresh initialisation, a model directory, a checkpoint of
  // either format written at any world size), then installs the hooks. The model's full
  // buffers are never written here: they stay untouched zero pages until a unit is gathered.
  void shard(const FlatReader& params, const FlatReader& m = {}, const FlatReader& v = {}, int64_t adam_step = 0);
  // Squared L2 norm of the whole gradient (summed over ranks).
  double grad_sq_norm();
  void scale_grads(float s);
  void zero_grads();
  void step(double lr) { opt_.update(param_.data(), grad_.data(), lr); }
  // Collective: the full parameters into the model's buffer and the full moments into
  // `full` (for a checkpoint); release() drops the parameters again.
  void gather_all(AdamW<float>* full);
  void release_all();
  int64_t shard_elements() const { return (int64_t)param_.size(); }
  // Overlap (off unless set; train --fsdp-overlap): when a unit is gathered, the gather of the unit used after it (in
  // forward, then backward order) is started on the communicator's thread, and a unit's
  // reduce-scatter runs there while the next unit's backward computes. The same collectives
  // on the same data in the same order: results and bytes per step are unchanged.
  void set_overlap(bool on) { overlap_ = on; }
  int64_t adam_step() const { return opt_.step; }
  std::vector<ShardUnit> units() const;
  // This rank's file of a sharded checkpoint (checkpoint.h) in the temporary directory.
  void write_shard(const std::string& tmp) const;

 private:
  struct Unit {
    int64_t begin, end, chunk, shard_off;  // model range, chunk length, offset in the shards
    bool gathered = false;
    bool in_flight = false;  // a prefetched gather started, not yet waited for
  };
  void prefetch_after(int u);
  void settle();  // waits for started work; in-flight gathers become gathered
  void gather(int u);
  void drop_params(int u);
  void reduce_grads(int u);
  void gather_into(const float* chunk_src, const Unit& u, float* dst);
  LlamaTrain<float>& m_;
  dist::Communicator& comm_;
  std::vector<Unit> units_;
  std::vector<float> param_, grad_, tmp_, out_;
  bool overlap_ = false;
  std::vector<int> order_;  // units in the order one forward and backward gather them
  size_t pos_ = 0;          // where in order_ the last gather was
  std::vector<float> pre_tmp_, red_tmp_, red_out_;  // buffers of the started gather / reduce-scatter
  AdamW<float> opt_;
};

}  // namespace llmq::train
