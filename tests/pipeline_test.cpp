// Pipeline stages in one process: a model cut into stages (LlamaTrain::set_stage) and chained
// by hand gives the whole model's loss and gradients (bitwise for one micro-batch: the same
// operations in the same order), micro-batches held in slots give them within the order of
// the sums; the plan's per-stage activations are the trainer's allocation; the block split;
// stage messages (dist/stage_wire.h): round trip, every refusal, and a message written by an
// independent transcription of the format (Python, tests/fuzz/corpus/stage_message) decodes.
// (Across processes: tests/dist/pp_test.sh under mpirun.)
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/plan.h"
#include "dist/stage_wire.h"
#include "io/hf_dir.h"
#include "train/llama_train.h"

namespace llmq {
namespace {

using train::LlamaTrain;

struct Batch {
  std::vector<int32_t> tok, tgt;
};
Batch make_batch(const ModelConfig& c, int64_t B, int64_t T, uint32_t seed) {
  std::mt19937 g(seed);
  Batch b;
  for (int64_t i = 0; i < B * T; i++) {
    b.tok.push_back((int32_t)(g() % c.vocab_size));
    b.tgt.push_back(g() % 5 == 0 ? -1 : (int32_t)(g() % c.vocab_size));  // some ignored targets
  }
  return b;
}

// The gradients of the units stage m holds (the others must be untouched zeros).
void expect_stage_grads(const LlamaTrain<float>& full, const LlamaTrain<float>& st, bool bitwise, const std::string& what) {
  for (int u = 0; u < full.n_units(); u++) {
    const auto [b, e] = full.unit_range(u);
    for (int64_t i = b; i < e; i++) {
      if (!st.has_unit(u)) {
        ASSERT_EQ(st.grads[i], 0.f) << what << " unit " << u << " is another stage's";
        continue;
      }
      if (bitwise) ASSERT_EQ(st.grads[i], full.grads[i]) << what << " unit " << u << " element " << i - b;
      else ASSERT_NEAR(st.grads[i], full.grads[i], 1e-5 * (std::fabs(full.grads[i]) + 1e-3)) << what << " unit " << u;
    }
  }
}

TEST(Pipeline, StagesChainedEqualTheWholeModel) {
  for (const char* preset : {"tiny", "tiny-tied"})
    for (bool rc : {false, true}) {
      const ModelConfig c = config_preset(preset);
      const int64_t B = 2, T = 9, N = B * T;
      const Batch bt = make_batch(c, B, T, 7);
      LlamaTrain<float> full(c);
      full.fill(init_fill(c, 3));
      full.set_recompute(rc);
      full.zero_grad();
      const double loss = full.forward(bt.tok.data(), bt.tgt.data(), B, T);
      full.backward(0.5);
      // Stage 0 runs block 0 (and the embeddings), stage 1 block 1 and the head.
      LlamaTrain<float> s0(c), s1(c);
      s0.set_stage(0, 1), s1.set_stage(1, 2);
      for (auto* s : {&s0, &s1}) s->fill(init_fill(c, 3)), s->set_recompute(rc), s->zero_grad();
      EXPECT_EQ(s0.forward_stage(bt.tok.data(), nullptr, bt.tgt.data(), B, T), 0.0);
      const std::vector<float> x(s0.stage_output(), s0.stage_output() + N * c.dim);
      EXPECT_EQ(s1.forward_stage(nullptr, x.data(), bt.tgt.data(), B, T), loss) << preset;
      s1.backward_stage(nullptr, 0.5);
      const std::vector<float> dx(s1.stage_input_grad(), s1.stage_input_grad() + N * c.dim);
      s0.backward_stage(dx.data(), 0.5);
      const std::string what = std::string(preset) + (rc ? " recompute" : "");
      if (c.tie_embeddings) {
        // The embedding matrix is held by both ends: the head's gradient on the last stage, the
        // lookup's on the first; their sum is the whole model's (a repeated token's rows are
        // added in another order: within a few ulps).
        const auto [b, e] = full.unit_range(0);
        for (int64_t i = b; i < e; i++)
          ASSERT_NEAR(s1.grads[i] + s0.grads[i], full.grads[i], 1e-6 * (std::fabs(full.grads[i]) + 1e-6)) << what;
        for (auto* m : {&full, &s0, &s1}) std::fill(m->grads.begin() + b, m->grads.begin() + e, 0.f);
      }
      expect_stage_grads(full, s0, true, what + " stage 0");
      expect_stage_grads(full, s1, true, what + " stage 1");
    }
}

TEST(Pipeline, MicroBatchesInSlotsEqualTheWholeBatch) {
  // Two micro-batches in flight (1F1B's slots), each weighted by its share of the targets, give
  // the whole batch's gradient up to the order of the sums (f32: relative 1e-5 is ~100 ulps of
  // sums of ~20 terms).
  const ModelConfig c = config_preset("tiny");
  const int64_t B = 4, T = 7, Bm = 2, N = Bm * T;
  const Batch bt = make_batch(c, B, T, 11);
  LlamaTrain<float> full(c);
  full.fill(init_fill(c, 5));
  full.zero_grad();
  full.forward(bt.tok.data(), bt.tgt.data(), B, T);
  full.backward(1.0);
  LlamaTrain<float> s0(c), s1(c);
  s0.set_stage(0, 1), s1.set_stage(1, 2);
  for (auto* s : {&s0, &s1}) s->fill(init_fill(c, 5)), s->zero_grad(), s->set_slots(2);
  int64_t nv[2] = {0, 0};
  for (int mb = 0; mb < 2; mb++)
    for (int64_t i = 0; i < N; i++) nv[mb] += bt.tgt[mb * N + i] >= 0;
  std::vector<float> x[2];
  for (int mb = 0; mb < 2; mb++) {  // both forwards first, then the backwards in order
    s0.use_slot(mb), s1.use_slot(mb);
    s0.forward_stage(bt.tok.data() + mb * N, nullptr, nullptr, Bm, T);
    x[mb].assign(s0.stage_output(), s0.stage_output() + N * c.dim);
    s1.forward_stage(nullptr, x[mb].data(), bt.tgt.data() + mb * N, Bm, T);
  }
  for (int mb = 0; mb < 2; mb++) {
    s0.use_slot(mb), s1.use_slot(mb);
    s1.backward_stage(nullptr, (double)nv[mb] / (double)(nv[0] + nv[1]));
    const std::vector<float> dx(s1.stage_input_grad(), s1.stage_input_grad() + N * c.dim);
    s0.backward_stage(dx.data());
  }
  expect_stage_grads(full, s0, false, "stage 0");
  expect_stage_grads(full, s1, false, "stage 1");
}

TEST(Pipeline, PlanActivationsAsTheStageAllocates) {
  for (const char* preset : {"tiny", "tiny-tied"})
    for (bool rc : {false, true})
      for (int slots : {1, 3})
        for (auto [l0, l1] : {std::pair<int64_t, int64_t>{0, 1}, {1, 2}}) {
          const ModelConfig c = config_preset(preset);
          LlamaTrain<float> m(c);
          m.set_stage(l0, l1);
          m.set_recompute(rc);
          m.set_slots(slots);
          m.fill(init_fill(c, 1));
          const int64_t B = 3, T = 17;
          const Batch bt = make_batch(c, B, T, 3);
          std::vector<float> x((size_t)(B * T * c.dim), 0.01f);
          m.forward_stage(l0 == 0 ? bt.tok.data() : nullptr, l0 == 0 ? nullptr : x.data(), bt.tgt.data(), B, T);
          EXPECT_EQ(dist::stage_activation_bytes(c, B, T, rc, l0, l1, slots), (double)m.activation_bytes())
              << preset << " rc " << rc << " slots " << slots << " blocks " << l0 << "-" << l1;
        }
}

TEST(Pipeline, SplitBalancesCostAndChecksCounts) {
  const ModelConfig c = config_preset("llama3.2-1b");  // 16 blocks; the 128k head weighs ~4.3 blocks
  EXPECT_EQ(dist::pipeline_split(c, 4, ""), (std::vector<int64_t>{0, 5, 10, 15, 16}));
  EXPECT_EQ(dist::pipeline_split(c, 1, ""), (std::vector<int64_t>{0, 16}));
  EXPECT_EQ(dist::pipeline_split(c, 2, "10,6"), (std::vector<int64_t>{0, 10, 16}));
  for (const char* bad : {"10,5", "10,6,0", "a,16", "16", "8,,8", "8,8,"}) EXPECT_THROW(dist::pipeline_split(c, 2, bad), Error) << bad;
  EXPECT_THROW(dist::pipeline_split(c, 17, ""), Error);
}

TEST(StageWire, RoundTripAndRefusals) {
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  const int64_t rows = 13, width = 7;
  std::vector<float> x(rows * width), y(rows * width);
  for (auto& v : x) v = nd(g);
  dist::StageHead h{dist::StageDirection::Backward, dist::StageCodec::None, 3, 5, 42, rows, width};
  std::vector<char> msg;
  dist::stage_encode(h, x.data(), msg);
  ASSERT_EQ(msg.size(), dist::kStageHeadBytes + rows * width * 4);
  dist::stage_decode(msg, h, y.data());
  EXPECT_EQ(x, y);
  auto refused = [&](std::vector<char> m, dist::StageHead want, const std::string& needle) {
    try {
      dist::stage_decode(m, want, y.data());
      ADD_FAILURE() << "accepted; expected: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  for (size_t i : {dist::kStageHeadBytes, msg.size() / 2, msg.size() - 1}) {  // a flipped payload bit anywhere
    std::vector<char> m = msg;
    m[i] ^= 1;
    refused(m, h, "payload checksum");
  }
  for (size_t i : {8, 20, 40}) {  // a flipped head bit
    std::vector<char> m = msg;
    m[i] ^= 4;
    refused(m, h, "head's checksum");
  }
  refused(std::vector<char>(msg.begin(), msg.end() - 4), h, "expected 364");
  refused(std::vector<char>(msg.begin(), msg.begin() + 10), h, "shorter than the 64-byte head");
  auto want = h;
  want.micro = 6;
  refused(msg, want, "micro-batch 5, expected step 42 micro-batch 6");
  want = h, want.from_stage = 2;
  refused(msg, want, "from stage 3, expected stage 2");
  want = h, want.direction = dist::StageDirection::Forward;
  refused(msg, want, "gradients where activations were expected");
  want = h, want.rows = 12;
  refused(msg, want, "of shape (13, 7), expected (12, 7)");
}

TEST(StageWire, IndependentTranscriptionDecodes) {
  // Written by tests/fuzz/corpus's generator (Python: struct.pack of the documented layout and
  // a transcription of checksum64).
  std::ifstream f(std::string(LLMQ_SOURCE_DIR) + "/tests/fuzz/corpus/stage_message/seed-forward", std::ios::binary);
  const std::vector<char> msg((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(msg.empty());
  std::vector<float> y(6);
  dist::stage_decode(msg, {dist::StageDirection::Forward, dist::StageCodec::None, 0, 1, 7, 2, 3}, y.data());
  EXPECT_EQ(y, (std::vector<float>{0.5f, -1.f, 2.f, 3.25f, 0.f, 1e-3f}));
  std::vector<char> again;
  dist::stage_encode({dist::StageDirection::Forward, dist::StageCodec::None, 0, 1, 7, 2, 3}, y.data(), again);
  EXPECT_EQ(again, msg);
}

}  // namespace
}  // namespace llmq
