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

#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "core/dtype.h"
#include "core/error.h"
#include "dist/plan.h"
#include "dist/stage_wire.h"
#include "io/hf_dir.h"
#include "train/llama_train.h"
#include "train/pipeline.h"

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
  refused(std::vector<char>(msg.begin(), msg.begin() + 10), h, "shorter than the 72-byte head");
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
  // AQ-SGD's worked example: one channel [0.5, -1, 0.25, 1] at 4 bits, scale 1.0 (fp16 0x3c00),
  // codes 12 0 10 15 packed most significant bit first (0xC0 0xAF); the largest positive value
  // clips to 7/8 of the scale.
  std::ifstream g(std::string(LLMQ_SOURCE_DIR) + "/tests/fuzz/corpus/stage_message/seed-fixpoint", std::ios::binary);
  const std::vector<char> fx((std::istreambuf_iterator<char>(g)), std::istreambuf_iterator<char>());
  dist::StageHead want{dist::StageDirection::Forward, dist::StageCodec::Fixpoint, 0, 0, 3, 4, 1};
  want.bits = 4;
  std::vector<float> z(4);
  dist::stage_decode(fx, want, z.data());
  EXPECT_EQ(z, (std::vector<float>{0.5f, -1.f, 0.25f, 0.875f}));
  const std::vector<float> src = {0.5f, -1.f, 0.25f, 1.f};
  dist::stage_encode(want, src.data(), again);
  EXPECT_EQ(again, fx);
  // TAH, two rows [1 2 3 4] and [-1 -2 -3 -4] in one tile of 4 each (no outlier: 4 < 2 x 3), all
  // at 4 bits: zero points 1 and -4, scale fp16(0.2), codes 0 5 10 15 and 15 10 5 0, then two
  // zero bits of row map and two of tile map.
  std::ifstream t(std::string(LLMQ_SOURCE_DIR) + "/tests/fuzz/corpus/stage_message/seed-tah", std::ios::binary);
  const std::vector<char> th((std::istreambuf_iterator<char>(t)), std::istreambuf_iterator<char>());
  dist::StageHead tw{dist::StageDirection::Forward, dist::StageCodec::Tah, 1, 0, 5, 2, 4, 2, 0, 4, 3, 4};
  std::vector<float> v(8);
  dist::stage_decode(th, tw, v.data());
  const std::vector<float> rows = {1, 2, 3, 4, -1, -2, -3, -4};
  for (int i = 0; i < 8; i++) EXPECT_NEAR(v[i], rows[i], 2e-3) << i;  // fp16(0.2) = 0.19995
  dist::stage_encode(tw, rows.data(), again);
  EXPECT_EQ(again, th);
}

// Activation-like rows: scales over three decades, a few large channels (the outliers TAH
// rotates), some sparse rows (low entropy), and exact zeros.
std::vector<float> activations(int64_t rows, int64_t width, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<float> x((size_t)(rows * width));
  for (int64_t r = 0; r < rows; r++) {
    const float scale = std::pow(10.f, 3 * u(g) - 2);
    const bool sparse = u(g) < 0.2f;
    for (int64_t c = 0; c < width; c++) {
      float v = nd(g) * scale;
      if (c % 37 == 5) v *= 20;          // outlier channels
      if (sparse && u(g) < 0.9f) v = 0;  // mostly zero rows
      x[r * width + c] = v;
    }
  }
  return x;
}

// Runs tests/oracle/stage_codecs.py on x; returns its decoded values (and tah's maps).
std::vector<double> oracle(const std::string& args, const std::vector<float>& x, int64_t rows, int64_t width,
                           std::vector<uint8_t>* maps = nullptr, size_t map_bytes = 0) {
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("llmq-codec-{}", ::getpid());
  std::filesystem::create_directories(dir);
  const std::string in = (dir / "in.bin").string(), out = (dir / "out.bin").string();
  {
    std::ofstream f(in, std::ios::binary);
    f.write(reinterpret_cast<const char*>(&rows), 8), f.write(reinterpret_cast<const char*>(&width), 8);
    f.write(reinterpret_cast<const char*>(x.data()), (std::streamsize)(x.size() * 4));
  }
  const std::string kind = args.substr(0, args.find(' ')), rest = args.substr(args.find(' ') + 1);
  const std::string cmd = fmt::format("/usr/bin/python3 {}/tests/oracle/stage_codecs.py {} {} {} {}", LLMQ_SOURCE_DIR,
                                      kind, in, out, rest);
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream f(out, std::ios::binary);
  std::vector<double> y(x.size());
  f.read(reinterpret_cast<char*>(y.data()), (std::streamsize)(y.size() * 8));
  if (maps) maps->resize(map_bytes), f.read(reinterpret_cast<char*>(maps->data()), (std::streamsize)map_bytes);
  std::filesystem::remove_all(dir);
  return y;
}

TEST(StageCodecs, FixpointAgainstReferenceAndWithinHalfAStep) {
  const int64_t rows = 96, width = 80;  // odd-ish shapes: codes straddle bytes
  const auto x = activations(rows, width, 3);
  for (int bits : {2, 4, 6, 8}) {
    std::vector<uint8_t> pay;
    dist::fixpoint_encode(x.data(), rows, width, bits, pay);
    EXPECT_EQ(pay.size(), (size_t)(2 * width + (rows * width * bits + 7) / 8));  // fp16 scale per channel + codes
    std::vector<float> y(x.size());
    dist::fixpoint_decode(pay.data(), pay.size(), rows, width, bits, y.data());
    const auto ref = oracle(fmt::format("fixpoint {}", bits), x, rows, width);
    int64_t differ = 0;
    for (int64_t c = 0; c < width; c++) {
      float s = 0;
      for (int64_t r = 0; r < rows; r++) s = std::max(s, std::fabs(x[r * width + c]));
      const double sh = f16_to_f32(f32_to_f16(s)), step = sh / std::ldexp(1.0, bits - 1);
      for (int64_t r = 0; r < rows; r++) {
        const double v = x[r * width + c], e = std::fabs(y[r * width + c] - v);
        // Half a step, with the fp16 rounding of the scale (relative 2^-11 of the value) and
        // the reference's clip of the top code: values above (1 - 2^-bits) s lose up to a step.
        const double bound = (v > sh * (1 - std::ldexp(1.0, -bits)) ? step : step / 2) * (1 + 1e-6) + std::fabs(v) * std::ldexp(1.0, -10);
        ASSERT_LE(e, bound) << "bits " << bits << " row " << r << " col " << c;
        // The reference in float64: equal, except a code that rounds the other way at a tie
        // between f32 and float64 arithmetic (then one step apart).
        const double d = std::fabs(y[r * width + c] - ref[r * width + c]);
        if (d > 1e-6 * step) {
          differ++;
          ASSERT_LE(d, step * (1 + 1e-6)) << "bits " << bits;
        }
      }
    }
    EXPECT_LE(differ, rows * width / 1000) << "bits " << bits << ": codes that differ from the float64 reference";
  }
}

TEST(StageCodecs, TahAgainstReferenceWithinHalfAStepAndItsBits) {
  const int64_t seq = 48, B = 2, rows = B * seq, width = 128;
  const auto x = activations(rows, width, 9);
  for (auto [hi, lo, tile, ratio] : {std::tuple<int, int, int, double>{4, 3, 64, 0.8}, {4, 2, 32, 0.5}, {8, 4, 16, 1.0}}) {
    const int64_t lo_rows = dist::tah_lo_rows(seq, ratio);
    std::vector<uint8_t> pay;
    dist::tah_encode(x.data(), rows, width, seq, lo_rows, hi, lo, tile, pay);
    std::vector<float> y(x.size());
    dist::tah_decode(pay.data(), pay.size(), rows, width, seq, lo_rows, hi, lo, tile, y.data());
    const int64_t tiles = rows * width / tile;
    std::vector<uint8_t> maps;
    const auto ref = oracle(fmt::format("tah {} {} {} {} {}", seq, hi, lo, tile, ratio), x, rows, width, &maps, rows + tiles);
    // The same rows chosen low and the same tiles rotated as the reference (maps in coded order).
    std::vector<uint8_t> low(maps.begin(), maps.begin() + rows);
    int64_t flagged = 0, low_n = 0;
    for (int64_t i = 0; i < tiles; i++) flagged += maps[rows + i];
    for (auto v : low) low_n += v;
    EXPECT_EQ(low_n, B * lo_rows);
    // Bits on the wire: codes, fp16 zero and scale per tile, a bit per row and per tile, the
    // pivot of each rotated tile.
    const int64_t lo_vals = B * lo_rows * width, pb = (int64_t)std::log2(tile);
    const int64_t bits = lo_vals * lo + (rows * width - lo_vals) * hi + 32 * tiles + rows + tiles + pb * flagged;
    EXPECT_EQ((int64_t)pay.size(), (bits + 7) / 8) << hi << "/" << lo << " tile " << tile;
    // Coded order: each sequence's low rows by position, then its high rows; tiles follow it.
    std::vector<int64_t> coded_tile((size_t)tiles);
    for (int64_t bq = 0, k = 0; bq < B; bq++)
      for (int pass = 1; pass >= 0; pass--)
        for (int64_t t = 0; t < seq; t++)
          if (low[bq * seq + t] == pass) {
            for (int64_t j = 0; j < width / tile; j++) coded_tile[(bq * seq + t) * (width / tile) + j] = k * (width / tile) + j;
            k++;
          }
    int64_t differ = 0;
    double worst = 0;  // error / bound
    for (int64_t r = 0; r < rows; r++)
      for (int64_t j = 0; j < width / tile; j++) {
        const float* xt = x.data() + r * width + j * tile;
        const float* yt = y.data() + r * width + j * tile;
        const int b = low[r] ? lo : hi;
        const double levels = (1 << b) - 1;
        float mn = xt[0], mx = xt[0];
        double l1 = 0, e2 = 0, d2 = 0, n2 = 0, emax = 0;
        for (int i = 0; i < tile; i++) {
          mn = std::min(mn, xt[i]), mx = std::max(mx, xt[i]), l1 += std::fabs(xt[i]);
          e2 += std::pow(yt[i] - xt[i], 2), emax = std::max(emax, (double)std::fabs(yt[i] - xt[i]));
          d2 += std::pow(yt[i] - ref[r * width + j * tile + i], 2), n2 += (double)xt[i] * xt[i];
        }
        double err, bound;
        if (maps[rows + coded_tile[r * (width / tile) + j]]) {
          // Rotated: every coefficient of the orthonormal rotation is within +-|x|_1/sqrt(tile),
          // so the step is at most 2|x|_1/sqrt(tile)/levels and the L2 error at most sqrt(tile)
          // half-steps; fp16's zero and scale add 2^-11 of the coefficients' size each.
          const double range = 2 * l1 / std::sqrt((double)tile);
          err = std::sqrt(e2), bound = std::sqrt((double)tile) * (range / levels / 2 + 2 * range * std::ldexp(1.0, -11));
        } else {
          // Per value: half a step of (max - min) / levels, fp16's rounding of the zero point
          // (min) and of the scale (times the code).
          const double range = (double)mx - mn;
          err = emax, bound = range / levels / 2 + (range + std::fabs(mn)) * std::ldexp(1.0, -11);
        }
        ASSERT_LE(err, bound * (1 + 1e-5) + 1e-30) << "row " << r << " tile " << j;
        worst = std::max(worst, err / (bound + 1e-30));
        if (std::sqrt(d2) > 1e-5 * (std::sqrt(n2) + 1e-30)) differ++;
      }
    fmt::print("tah {}/{} tile {}: {} of {} tiles rotated, {} differ from the reference, worst error {:.2f} of its bound\n", hi,
               lo, tile, flagged, tiles, differ, worst);
    EXPECT_LE(differ, tiles / 100) << "tiles that differ from the float64 reference (" << hi << "/" << lo << ", tile " << tile << ")";
  }
}

TEST(StageCodecs, DeltaCacheKeepsWindowsAndRefusesOtherFiles) {
  // AQ-SGD's cache: fp16 (delta) exact to fp16 rounding; 4-bit (delta-lowbits) within half a
  // step of its per-channel scale over the window's rows; unseen windows read zeros; the file
  // round-trips and another shape or a truncated file is refused.
  const int64_t W = 10, T = 6, C = 16;
  const auto x = activations(T, C, 5);
  for (int bits : {16, 4}) {
    train::ActivationCache c(W, T, C, bits);
    std::vector<float> y((size_t)(T * C));
    c.read(7, y.data());
    for (float v : y) ASSERT_EQ(v, 0.f);
    c.write(7, x.data());
    c.read(7, y.data());
    for (int64_t col = 0; col < C; col++) {
      float s = 0;
      for (int64_t r = 0; r < T; r++) s = std::max(s, std::fabs(x[r * C + col]));
      for (int64_t r = 0; r < T; r++) {
        const double v = x[r * C + col], e = std::fabs(y[r * C + col] - v);
        if (bits == 16) ASSERT_LE(e, std::fabs(v) * std::ldexp(1.0, -11) + 1e-7);  // fp16's rounding
        else ASSERT_LE(e, s / 8.0 * (1 + 1e-3) + std::fabs(v) * std::ldexp(1.0, -10));  // a step at the top code
      }
    }
    EXPECT_EQ(c.seen(), 1);
    const auto dir = std::filesystem::temp_directory_path() / fmt::format("llmq-cache-{}", ::getpid());
    std::filesystem::create_directories(dir);
    const std::string f = (dir / "c.bin").string();
    c.save(f);
    train::ActivationCache d(W, T, C, bits);
    d.load(f);
    EXPECT_EQ(d.checksum(), c.checksum());
    std::vector<float> z((size_t)(T * C));
    d.read(7, z.data());
    EXPECT_EQ(z, y);
    train::ActivationCache other(W, T + 1, C, bits);
    EXPECT_THROW(other.load(f), Error);
    std::filesystem::resize_file(f, std::filesystem::file_size(f) - 1);
    EXPECT_THROW(d.load(f), Error);
    EXPECT_THROW(c.write(W, x.data()), Error);
    std::filesystem::remove_all(dir);
  }
}

}  // namespace
}  // namespace llmq
