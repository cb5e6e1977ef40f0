// The sequential layer-wise pipeline of the calibrated methods (GPTQ, AWQ, SmoothQuant).
// Calibration tokens are embedded once; then block by block, with only that block's weights
// converted to f32 from the memory-mapped source, the activations (samples*seq_len, dim)
// are run through it and each method chooses codes:
//   GPTQ:        true-sequential: q/k/v from the block input, then o from the attention output
//                computed with the quantized q/k/v, then gate/up, then down; the block's output,
//                computed with all its quantized weights, is the next block's input (as the
//                GPTQ and AutoGPTQ reference scripts do);
//   AWQ:         input statistics and module outputs of the float block; scale search for
//                (input_layernorm -> q,k,v | self_attn), (v -> o | o_proj) when shapes allow
//                (not with GQA), (post_attention_layernorm -> gate,up | mlp), (up -> down |
//                down_proj); scales folded, then clipping search on every linear but q and k,
//                then round-to-nearest; the float block's output feeds the next block;
//   SmoothQuant: per-channel max |x| of the float block's inputs to q/k/v and gate/up, factors
//                folded into the two RMSNorms, then int8 per-channel round-to-nearest;
//   amax:        (FP8 static scales) max |x| of every linear's input in the float model.
// With kv_ranges, the KV-cache ranges come from the attention pass of the model the method
// feeds forward (GPTQ: with the block's quantized q/k/v; the others: the float block).
// Peak memory: the block's f32 weights, the activations (twice) and one Hessian.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/llama.h"
#include "quant/calibration.h"
#include "quant/gptq.h"

namespace llmq {

// "model.layers.L." (the HF name prefix of block l's tensors)
inline std::string block_prefix(int64_t l) { return "model.layers." + std::to_string(l) + "."; }

// One quantized linear as a checkpoint stores it: weight[m, k] = scale[m, g] * (code - zero[m, g]),
// g = g_idx[k] (or k / group when g_idx is empty).
struct LinearCodes {
  std::vector<uint8_t> codes;      // M x K, input-column order
  std::vector<float> scale, zero;  // M x ng
  std::vector<int32_t> g_idx;      // K, or empty
};
// The f32 weights the codes stand for (M x K).
std::vector<float> linear_codes_dequantize(const LinearCodes& q, int64_t M, int64_t K, int64_t group);

struct CalibratedOptions {
  std::string method;          // gptq | awq | smoothquant | amax (FP8 static: input maxima only)
  int bits = 4;
  int64_t group = 128;         // 0: one group per row
  bool sym = false;
  double damp = 0.01;          // gptq
  bool act_order = false;      // gptq
  bool static_groups = false;  // gptq
  int awq_grid = 20;           // awq
  double alpha = 0.8;          // smoothquant
  bool kv_ranges = false;      // also the per-head KV-cache ranges (CalibratedBlock::k_amax, v_amax)
  // Per-linear settings (recipes, --keep): how linear NAME (HF tensor name) is quantized. A
  // linear whose method is not `method` gets its codes and the weights they stand for from
  // `other` (round-to-nearest, HQQ), and the block feeds those forward as GPTQ feeds its own;
  // method "" leaves it in float (with AWQ/SmoothQuant its folded float weights are returned
  // in CalibratedBlock::floats). Unset: every linear takes bits/group/sym and `method`.
  struct Linear {
    std::string method;
    int bits = 4;
    int64_t group = 0;
    bool sym = false;
  };
  std::function<Linear(const std::string& name)> linear;
  std::function<std::pair<LinearCodes, std::vector<float>>(const std::string& name, const Tensor& W)> other;
};

struct CalibratedBlock {
  std::map<std::string, LinearCodes> linears;        // by HF tensor name (".weight")
  std::map<std::string, std::vector<float>> floats;  // RMSNorm weights changed by scale folding
  std::map<std::string, float> input_amax;           // amax: max |x| of each linear's input
  std::vector<float> k_amax, v_amax;                 // kv_ranges: per KV head max |k| (after rope), max |v|
  std::vector<std::string> messages;                 // e.g. GPTQ's damping raised
  double output_rms = 0;                             // RMS of the block's output activations
};

class CalibratedQuantizer {
 public:
  // src: the float model (mapped). Fails if the windows are longer than the model's context.
  CalibratedQuantizer(const Model& src, const CalibData& data, const CalibratedOptions& o);
  // Block l; call with l = 0, 1, ... in order.
  CalibratedBlock run_block(int64_t l);
  // The lm_head's codes after the last block: GPTQ on the final RMSNorm's outputs; the other
  // methods round to nearest.
  LinearCodes lm_head();
  // amax: max |x| of the lm_head's input (the final RMSNorm's output), after the last block.
  float lm_head_input_amax();
  int64_t tokens() const { return N_; }

 private:
  struct BlockW {
    Tensor an, fn, q, k, v, o, g, u, d;  // f32 copies; norms (dim), linears (M, K)
  };
  using ChunkFn = std::function<void(int64_t r0, int64_t r1, const Tensor& t)>;
  // The attention of block weights w on the normed inputs xb, chunk by chunk; with kv_out, the
  // per-head max |k| (after rope) and max |v| of the pass are written to it.
  void attn_pass(const BlockW& w, const Tensor& xb, const ChunkFn& f, CalibratedBlock* kv_out = nullptr);
  void mlp_pass(const BlockW& w, const Tensor& xb, const ChunkFn& f);
  // f over all's rows (N x ...) in the chunks of whole sequences the passes use.
  void row_chunks(const Tensor& all, const ChunkFn& f) const;
  // out = rows r0..r1 of in @ W^T, in scratch valid until the next call.
  void out_pass(const Tensor& in, const Tensor& W, int64_t r0, int64_t r1, Tensor& out);
  void gptq_block(int64_t l, BlockW& w, CalibratedBlock& out);
  void awq_block(int64_t l, BlockW& w, CalibratedBlock& out);
  void smoothquant_block(int64_t l, BlockW& w, CalibratedBlock& out);
  void amax_block(int64_t l, const BlockW& w, CalibratedBlock& out);
  // The float block on the activations (X_ becomes its output); per-channel max |x| of the
  // inputs of q/k/v, o, gate/up and down (and out's KV ranges with kv_ranges). Fails on NaN/Inf.
  std::array<std::vector<float>, 4> float_amax(int64_t l, const BlockW& w, CalibratedBlock& out);
  LinearCodes rtn(const Tensor& W, const CalibratedOptions::Linear& q) const;
  CalibratedOptions::Linear linear_of(const std::string& name) const;
  // AWQ / SmoothQuant: the folded norms and round-to-nearest codes of the scaled linears.
  void emit_scaled_rtn(int64_t l, const BlockW& w, CalibratedBlock& out) const;
  GptqOptions gptq_options() const;

  const Model& m_;
  CalibratedOptions o_;
  int64_t S_ = 0, L_ = 0, N_ = 0, chunk_seqs_ = 1, next_ = 0;
  Tensor X_, XB_, cos_, sin_;  // X_, XB_: (N, dim); rope tables (chunk rows, head_dim/2)
  struct {
    Tensor q, k, v, att, kc, vc, g, u, out;
  } sc_;  // one chunk's activations, reused
};

}  // namespace llmq
