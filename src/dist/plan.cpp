#include "dist/plan.h"
#include "dist/stage_wire.h"

#include "quant/quantize_model.h"
#include "quant/recipe.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <queue>

#include "core/error.h"

namespace llmq::dist {

double train_activation_bytes(const ModelConfig& c, int64_t B, int64_t T, bool recompute, int64_t tp) {
  const double N = (double)B * T, C = (double)c.dim, QD = (double)c.q_dim() / tp, KD = (double)c.kv_dim() / tp,
               FF = (double)c.ffn_dim / tp, H = (double)c.n_heads / tp, V = (double)c.vocab_size;
  // Per block (LlamaTrain::Acts): ln1, rstd1, q, k, v, the attention rows' log-sum-exp
  // (B*H*T: the T x T probabilities are recomputed in backward), atty, x_mid, ln2, rstd2,
  // gate, up, hsw; plus each block's input x_in.
  const double block = N * C + N + N * QD + 2 * N * KD + B * H * T + N * QD + N * C + N * C + N + 3 * N * FF;
  const double per_layer = N * C + (recompute ? 0 : block);
  // Final residual, norm and rstd, one chunk of logits (the output projection and loss are
  // fused over chunks of rows: LlamaTrain::head_chunk_rows, 32 MB of f32 logits, at least 16
  // rows), and the backward scratch (dx, dln, dtmp, dq, dk, dv, datty, dgate, dup, dhsw).
  const double rows = std::min(N, (double)std::max<int64_t>(16, ((int64_t)32 << 20) / (4 * c.vocab_size)));
  const double head = N * C + N * C + N + N + rows * V;  // ... and each row's log-sum-exp
  const double scratch = 3 * N * C + 2 * N * QD + 2 * N * KD + 3 * N * FF;
  return 4.0 * ((double)c.n_layers * per_layer + (recompute ? block : 0) + head + scratch);
}

double stage_activation_bytes(const ModelConfig& c, int64_t B, int64_t T, bool recompute, int64_t l0, int64_t l1, int slots) {
  const double N = (double)B * T, C = (double)c.dim, QD = (double)c.q_dim(), KD = (double)c.kv_dim(), FF = (double)c.ffn_dim,
               H = (double)c.n_heads, V = (double)c.vocab_size;
  const bool last = l1 == c.n_layers;
  // As train_activation_bytes, per slot: each of the stage's blocks (its input, and without
  // recomputation what its backward reads), then the stage's output (the next block's input)
  // or, on the last stage, the final residual, norm, rstd and rows' log-sum-exp. Shared: the
  // recomputed block, the chunk of logits (last stage), the backward scratch.
  const double block = N * C + N + N * QD + 2 * N * KD + B * H * T + N * QD + N * C + N * C + N + 3 * N * FF;
  const double per_layer = N * C + (recompute ? 0 : block);
  const double rows = std::min(N, (double)std::max<int64_t>(16, ((int64_t)32 << 20) / (4 * c.vocab_size)));
  const double per_slot = (double)(l1 - l0) * per_layer + (last ? 2 * N * C + 2 * N : N * C);
  const double scratch = 3 * N * C + 2 * N * QD + 2 * N * KD + 3 * N * FF;
  return 4.0 * ((double)slots * per_slot + (recompute ? block : 0) + (last ? rows * V : 0) + scratch);
}

std::vector<int64_t> pipeline_split(const ModelConfig& c, int P, const std::string& split) {
  const int64_t L = c.n_layers;
  if (P < 1) fail("--pp {} must be at least 1", P);
  if (P > L) fail("--pp {}: the model has {} blocks, fewer than the stages (each stage runs at least one)", P, L);
  std::vector<int64_t> b(1, 0);
  if (!split.empty()) {
    size_t at = 0;
    while (at <= split.size()) {
      const size_t comma = std::min(split.find(',', at), split.size());
      const std::string item = split.substr(at, comma - at);
      char* end = nullptr;
      const long long n = std::strtoll(item.c_str(), &end, 10);
      if (item.empty() || *end || n < 1 || n > L)
        fail("--pp-split {}: '{}' is not a block count (a positive integer per stage, e.g. 10,11,11)", split, item);
      b.push_back(b.back() + n);
      at = comma + 1;
    }
    if ((int)b.size() - 1 != P) fail("--pp-split {} names {} stages, but --pp is {}", split, b.size() - 1, P);
    if (b.back() != L) fail("--pp-split {} covers {} blocks; the model has {}", split, b.back(), L);
    return b;
  }
  // Matmul FLOPs per token: a block's linears, and the head's V x C on the last stage (the
  // embedding lookup costs nothing comparable).
  const double blk = (double)c.dim * (2.0 * c.q_dim() + 2.0 * c.kv_dim() + 3.0 * c.ffn_dim);
  const double head = (double)c.dim * (double)c.vocab_size;
  // best[s][l]: the least possible largest stage cost with the first l blocks in s stages.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(P + 1, std::vector<double>(L + 1, inf));
  std::vector<std::vector<int64_t>> from(P + 1, std::vector<int64_t>(L + 1, 0));
  best[0][0] = 0;
  for (int s = 1; s <= P; s++)
    for (int64_t l = s; l <= L; l++)
      for (int64_t k = s - 1; k < l; k++) {
        const double cost = (double)(l - k) * blk + (s == P && l == L ? head : 0.0);
        const double v = std::max(best[s - 1][k], cost);
        if (v < best[s][l]) best[s][l] = v, from[s][l] = k;
      }
  std::vector<int64_t> r(P + 1, L);
  for (int s = P; s >= 1; s--) r[s - 1] = from[s][r[s]];
  return r;
}

std::vector<StagePlan> pipeline_plan(const ModelConfig& c, int P, int64_t M, const std::string& split, int64_t batch,
                                     int64_t T, bool recompute, const StageHead* fwd, const StageHead* bwd) {
  if (M < 1 || batch % M != 0) fail("plan: --micro-batches {} must divide --batch {}", M, batch);
  const std::vector<int64_t> b = pipeline_split(c, P, split);
  const double C = (double)c.dim, V = (double)c.vocab_size;
  const double block = C * c.q_dim() + 2 * C * c.kv_dim() + (double)c.q_dim() * C + 3 * C * (double)c.ffn_dim + 2 * C;
  const int64_t Bm = batch / M;
  // One micro-batch's message each way: head + payload in its codec.
  auto message = [&](const StageHead* h) {
    StageHead x = h ? *h : StageHead{};
    x.rows = (int32_t)(Bm * T), x.width = (int32_t)c.dim;
    if (x.codec == StageCodec::Tah && x.seq == 0) x.seq = (int32_t)T;
    stage_check_params(x);
    return (double)(kStageHeadBytes + stage_payload_max(x));
  };
  const double msg_fwd = message(fwd), msg_bwd = message(bwd);
  std::vector<StagePlan> r((size_t)P);
  for (int s = 0; s < P; s++) {
    StagePlan& st = r[(size_t)s];
    st.l0 = b[s], st.l1 = b[s + 1];
    const bool first = s == 0, last = s == P - 1;
    st.params = (double)(st.l1 - st.l0) * block + (first ? V * C : 0) + (last ? C + V * C : 0);
    st.state_bytes = 16 * st.params;
    // The pipeline's own buffers: the received micro-batch, and the messages it sent this step
    // (kept until the step's end): M each way on the stages that send that way.
    const double bufs = 4.0 * (double)Bm * T * C + (double)M * ((first ? 0 : msg_bwd) + (last ? 0 : msg_fwd));
    st.act_gpipe = stage_activation_bytes(c, Bm, T, recompute, st.l0, st.l1, (int)M) + bufs;
    st.act_1f1b = stage_activation_bytes(c, Bm, T, recompute, st.l0, st.l1, (int)std::min<int64_t>(P - s, M)) + bufs;
    if (!last) st.link_fwd = (double)M * msg_fwd, st.link_bwd = (double)M * msg_bwd;
  }
  return r;
}

namespace {
double quant_bits(const std::string& q, const ModelConfig& c) {  // bits per weight including scales and zeros
  if (q.empty()) return 32;
  if (recipe_is_arg(q)) return recipe_linear_bits(recipe_from_arg(q), c);  // per-module rules: their mean
  if (q == "int8") return 8 + 32.0 / 4096;   // per-channel f32 scale (negligible)
  // llmq finetune --quantize-base (quant/quant_base.h) holds codes one per nibble or byte
  // plus an f32 scale and an f32 scale x zero per group (its scales and zeros are not f16
  // values, so the kernels' f32 layout): rtn4 g128, rtn8 g64, hqq4/8 g64, hqq2/3 g32 (the
  // 2- and 3-bit codes run in the 4-bit layout).
  if (q == "int4") return 4 + 32.0 / 128;  // a quantized checkpoint: f16 scales and zeros
  if (q == "rtn4") return 4 + 64.0 / 128;
  if (q == "rtn8" || q == "hqq8") return 8 + 64.0 / 64;
  if (q == "hqq4") return 4 + 64.0 / 64;
  if (q == "hqq3" || q == "hqq2") return 4 + 64.0 / 32;
  if (q == "nf4") return 4 + 8.0 / 64 + 32.0 / (64 * 256);  // QLoRA's double quantization
  fail("plan: --quant {} is not known (int8, int4, rtn4, rtn8, hqq2, hqq3, hqq4, hqq8, nf4, or a recipe: rules with '=' "
       "or a .json file)", q);
}
}  // namespace

std::vector<int> assign_owners(const std::vector<double>& bytes, int ranks) {
  std::vector<int> order(bytes.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = (int)i;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return bytes[a] > bytes[b]; });
  // (load, rank), the least loaded first and the lowest rank among equals.
  std::priority_queue<std::pair<double, int>, std::vector<std::pair<double, int>>, std::greater<>> q;
  for (int r = 0; r < ranks; r++) q.push({0.0, r});
  std::vector<int> owner(bytes.size(), 0);
  for (int u : order) {
    auto [load, r] = q.top();
    q.pop();
    owner[u] = r;
    q.push({load + bytes[u], r});
  }
  return owner;
}

std::vector<double> base_unit_bytes(const ModelConfig& c, double linear_bits, int64_t tp) {
  const double C = (double)c.dim, V = (double)c.vocab_size;
  const double linear_per_block =
      C * c.q_dim() + 2 * C * c.kv_dim() + (double)c.q_dim() * C + 3 * C * (double)c.ffn_dim;
  std::vector<double> b((size_t)c.n_layers + 2, linear_per_block / (double)tp * linear_bits / 8 + 2 * C * 4);
  b[0] = V * C * 4;
  b.back() = C * 4 + (c.tie_embeddings ? 0 : V * C * 4);
  return b;
}

Plan make_plan(const ModelConfig& c, const PlanOptions& o) {
  if (o.ranks < 1 || o.tp < 1 || o.ranks % o.tp != 0)
    fail("plan: --tp {} must divide --ranks {}", o.tp, o.ranks);
  if (c.n_heads % o.tp != 0 || c.n_kv_heads % o.tp != 0 || c.ffn_dim % o.tp != 0)
    fail("plan: --tp {} must divide the heads ({}), KV heads ({}) and FFN width ({})", o.tp, c.n_heads, c.n_kv_heads,
         c.ffn_dim);
  if (o.lora_rank < 0 || o.seq_len < 1 || o.batch < 1) fail("plan: --lora-rank, --seq-len and --batch must be positive");
  if (!o.quant.empty() && o.lora_rank == 0)
    fail("plan: a quantized base is frozen; give --lora-rank R to plan adapter training on it (QLoRA)");
  Plan p;
  p.dp = o.ranks / o.tp;
  p.params = c.n_params();
  const double L = (double)c.n_layers, C = (double)c.dim;
  const double linear_per_block =
      C * c.q_dim() + 2 * C * c.kv_dim() + (double)c.q_dim() * C + 3 * C * (double)c.ffn_dim;
  p.block_params = (int64_t)(linear_per_block + 2 * C);
  const double outside = (double)p.params - L * (double)p.block_params;  // embeddings, final norm, lm_head
  const double dp = (double)p.dp, tp = (double)o.tp;
  // State per rank: TP splits the blocks' linears (norms and embeddings replicated, as
  // Megatron keeps them); FSDP then splits everything over the dp ranks.
  const double shard_params = L * (linear_per_block / tp + 2 * C) + outside;
  const double fs = o.fsdp ? dp : 1;
  if (o.lora_rank > 0) {
    const double r = (double)o.lora_rank;
    const double lora_per_block = r * ((C + c.q_dim()) + 2 * (C + c.kv_dim()) + (c.q_dim() + C) + 3 * (C + c.ffn_dim));
    const double mags = o.dora ? L * (C + c.q_dim() + 2 * (double)c.kv_dim() + C + 2 * (double)c.ffn_dim) : 0;
    const double trained = L * lora_per_block + mags;
    p.trainable = (int64_t)trained;
    const double base_bits = quant_bits(o.quant, c);
    // The frozen base as llmq finetune holds it: the linears at base_bits, everything else
    // (embeddings, norms, lm_head) in f32. Under --fsdp each unit is held by one rank
    // (train/base_shard.h): a rank holds the units assigned to it (the most loaded rank is
    // planned) and, while one runs, a unit of another rank; the adapters, their gradients and
    // AdamW moments are replicated.
    const std::vector<double> units = base_unit_bytes(c, base_bits, o.tp);
    double base = 0;
    for (double b : units) base += b;
    if (o.fsdp && dp > 1) {
      const std::vector<int> owner = assign_owners(units, (int)dp);
      std::vector<double> held((size_t)dp, 0.0);
      for (size_t u = 0; u < units.size(); u++) held[owner[u]] += units[u];
      base = *std::max_element(held.begin(), held.end());
      // In use at once: a block with (tied) the embeddings, which serve as lm_head, or the
      // largest single unit.
      const double block = units[1];
      p.gathered_bytes = c.tie_embeddings ? units[0] + block : std::max({units[0], block, units.back()});
    }
    p.weight_bytes = base + 4 * trained / tp;
    p.grad_bytes = 4 * trained / tp;
    p.optim_bytes = 8 * trained / tp;
    // A quantized base's block is dequantized to f32 for its products, one at a time.
    if (!o.quant.empty()) p.gathered_bytes += 4 * linear_per_block / tp;
  } else {
    p.trainable = p.params;
    p.weight_bytes = 4 * shard_params / fs;
    p.grad_bytes = 4 * shard_params / fs;
    p.optim_bytes = 8 * shard_params / fs;
    // One block's full parameters and gradients while it runs (FSDP frees them after).
    if (o.fsdp) p.gathered_bytes = 2 * 4 * (linear_per_block / tp + 2 * C);
  }
  p.activation_bytes = train_activation_bytes(c, o.batch, o.seq_len, o.recompute, o.tp);
  if (o.lora_rank > 0) {
    // Adapters keep A x (N, r) per adapted linear; DoRA also its output before the magnitude
    // scaling (N, out) for the magnitude's gradient, and backward scratch of the q/k/v outputs'
    // width scaled by the magnitudes; plus the forward's (N, out) low-rank term.
    const double N = (double)o.batch * o.seq_len, QD = (double)c.q_dim() / tp, KD = (double)c.kv_dim() / tp,
                 FF = (double)c.ffn_dim / tp, r = (double)o.lora_rank;
    const double outs = QD + 2 * KD + C + 2 * FF + C;
    const double per_layer = 7 * N * r + (o.dora ? N * outs : 0);
    const double scratch = N * FF + (o.dora ? N * (QD + 2 * KD) : 0);
    p.activation_bytes += 4 * ((o.recompute ? 1 : L) * per_layer + scratch);
  }
  p.kv_cache_bytes = 2.0 * L * ((double)c.kv_dim() / tp) * (double)o.seq_len * (double)o.batch * (double)o.kv_bytes;
  // Communication: gradients of the trainable parameters this rank holds (per tp shard).
  const double grad_total = 4 * (o.lora_rank > 0 ? (double)p.trainable / tp : shard_params);
  if (p.dp > 1) {
    if (o.fsdp && o.lora_rank > 0) {
      // Each unit's owner broadcasts it before its forward and its backward (not the input
      // embeddings' backward when untied): a rank sends its units' bytes to dp - 1 ranks; on
      // average (dp - 1)/dp of the gathered bytes, as an all-gather would. The adapters'
      // gradients are all-reduced.
      const std::vector<double> units = base_unit_bytes(c, quant_bits(o.quant, c), o.tp);
      double gathered = 0;
      for (size_t u = 0; u < units.size(); u++) gathered += units[u] * (u == 0 && !c.tie_embeddings ? 1 : 2);
      p.dp_comm_bytes = (dp - 1) / dp * gathered + 2 * (dp - 1) / dp * grad_total;
    } else if (o.fsdp) {
      const double weights_total = 4 * shard_params;
      // Every unit is gathered for its forward and again for its backward, except an untied
      // input embedding, whose backward (a scatter-add of dx rows) reads no weights.
      const double embed_once = c.tie_embeddings ? 0 : 4 * (double)c.vocab_size * C;
      p.dp_comm_bytes = (dp - 1) / dp * (2 * weights_total - embed_once + grad_total);  // all-gathers + reduce-scatter
    } else {
      p.dp_comm_bytes = 2 * (dp - 1) / dp * grad_total;  // all-reduce = reduce-scatter + all-gather
    }
  }
  if (o.tp > 1) p.tp_comm_bytes = 4 * L * 2 * (tp - 1) / tp * (double)o.batch * o.seq_len * C * 4;
  return p;
}

}  // namespace llmq::dist
