// Quantization-aware training as LLM-QAT defines it (Liu et al. 2023, facebookresearch/LLM-QAT,
// models/utils_quant.py): symmetric MinMax fake quantizers with their straight-through
// gradients, the schemes `llmq qat` trains, and the distillation loss of a student's logits
// to a teacher's (utils/kd_trainer.py). Templated on the float type: float in training,
// double for the float64 checks against the PyTorch transcription (tests/oracle/qat_ref.py).
#pragma once
#include <cstdint>
#include <string>

namespace llmq::train {

// Bits of a fake quantizer; 32 or more: off.
//   w_bits: every block linear's weight, per output channel (row);
//   a_bits: every block linear's input, per token (row) (LLM-QAT quantizes activations only at
//           3 bits and more);
//   kv_bits: K (after RoPE, as the cache holds it) and V, per token and KV head.
struct FakeQuant {
  int w_bits = 32, a_bits = 32, kv_bits = 32;
  bool weights() const { return w_bits < 32; }
  bool acts() const { return a_bits < 32; }
  bool kv() const { return kv_bits < 32; }
  bool any() const { return weights() || acts() || kv(); }
};

// "w4a8kv4" -> {4, 8, 4}; "16" means off (w4a16kv16: weights only). The schemes `llmq qat`
// offers are those whose trained model the integer kernels run (kQatSchemes); fails naming
// them otherwise.
FakeQuant qat_scheme_parse(const std::string& name);
extern const char* const kQatSchemes;  // "w4a8kv4|w4a8kv8|..." for help and errors
std::string qat_scheme_name(const FakeQuant& f);

// LLM-QAT's SymQuantizer over rows of K values (the last dimension): per row
//   s = (2^(bits-1) - 1) / (max|x| + 1e-6),  out = round(x s) / (s + 1e-6)
// (round half to even, as torch.round). out may equal x.
template <class T> void fq_sym_rows(const T* x, int64_t rows, int64_t K, int bits, T* out);
// The weight quantizer of LLM-QAT's QuantizeLinear: SymQuantizer per row for bits >= 3; for
// 2 bits its own branch, per row: a = 2 mean|w|, out = a (round(clamp(w/a, -0.99, 0.99) 2 -
// 0.5) + 0.5) / 2 (levels +-a/4, +-3a/4).
template <class T> void fq_weight_rows(const T* w, int64_t rows, int64_t K, int bits, T* out);
// The integer model of fq_weight_rows<float> (what `llmq quantize --method qat` writes): per
// row a code per weight, a scale and a zero point with scale * (code - zero) the fake-quantized
// weight (to an ulp: q / (s + 1e-6) there, q * (1 / (s + 1e-6)) here). bits >= 3: code =
// round(w s) + 2^(bits-1), zero 2^(bits-1), scale 1 / (s + 1e-6); 2: LLM-QAT's four levels
// +-a/4, +-3a/4 as the odd codes 1, 3, 5, 7 of a 3-bit grid (zero 4, scale a/4). Returns the bits
// the codes take (3 for 2).
int qat_weight_codes(const float* w, int64_t rows, int64_t K, int bits, uint8_t* codes, float* scale, float* zero);
// The straight-through gradient of a SymQuantizer (clip_val [-2, 2] in LLM-QAT: the forward
// clips nothing, the backward zeroes the gradient where the input is >= 2 or <= -2):
// grad[i] = 0 where x[i] >= 2 or x[i] <= -2, unchanged elsewhere. The 2-bit weight branch
// passes the gradient straight through (no call).
template <class T> void fq_ste_clip(T* grad, const T* x, int64_t n);
// Whether the weight quantizer of `bits` clips its gradient (SymQuantizer: bits >= 3).
inline bool fq_weight_clips(int bits) { return bits >= 3; }

// Distillation over one chunk of rows: student logits s and teacher logits t (rows, V), their
// log-sum-exps lse_s, lse_t (rows) from cross_entropy_forward. Returns the summed
//   KL(p_t || p_s) = sum_v p_t[v] (t[v] - lse_t - s[v] + lse_s)
// over the rows, which is LLM-QAT's F.kl_div(log_softmax(s), softmax(t), "batchmean") times
// its batch size (llmq divides by the token count, not the sequence count).
template <class T> double kd_forward(const T* s, const T* lse_s, const T* t, const T* lse_t, int64_t rows, int64_t V);
// The loss w_kd * KL / n_kd + w_ce * CE / n_ce: d/ds in place of s,
//   ds = softmax(s) (w_kd/n_kd + [target >= 0] w_ce/n_ce) - w_kd/n_kd softmax(t) - w_ce/n_ce onehot(target)
// times `scale`; targets < 0 take no cross-entropy term (n_ce 0: none at all).
template <class T>
void kd_backward(T* s, const T* lse_s, const T* t, const T* lse_t, const int32_t* targets, int64_t rows, int64_t V,
                 double w_kd, double n_kd, double w_ce, double n_ce, double scale);

}  // namespace llmq::train
