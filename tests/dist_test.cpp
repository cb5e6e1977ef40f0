// The local communicator and `llmq plan`'s arithmetic: activation bytes equal what the
// trainer allocates, sharding divides the state, communication volumes follow the
// collectives' definitions. (Multi-rank behaviour: tests/dist/ddp_test.sh under mpirun.)
#include <cmath>
#include <gtest/gtest.h>

#include <algorithm>

#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "core/file_util.h"
#include "core/zero_pages.h"
#include "dist/comm.h"
#include "dist/plan.h"
#include "train/checkpoint.h"
#include "train/llama_train.h"

namespace llmq {
namespace {

TEST(Dist, LocalCommunicator) {
  auto c = dist::make_local_comm();
  EXPECT_EQ(c->size(), 1);
  std::vector<float> a = {1, 2, 3, 4}, b(4);
  c->all_reduce_sum(a.data(), 4);
  EXPECT_EQ(a, (std::vector<float>{1, 2, 3, 4}));
  c->reduce_scatter_sum(a.data(), b.data(), 4);
  EXPECT_EQ(b, a);
  c->all_gather(a.data(), b.data(), 4);
  EXPECT_EQ(b, a);
  c->check_same(42, "anything");  // one rank always agrees
  EXPECT_THROW(c->send(a.data(), 4, 1), Error);
  EXPECT_FALSE(dist::launched_by_mpirun());
  EXPECT_EQ(dist::world().size(), 1);
}

// A sharded checkpoint written by W ranks (each rank's chunks laid out as checkpoint.h says)
// reads back any range of the parameters and moments exactly, for W = 1..5 on a model whose
// units do not divide evenly; a truncated or missing shard, a unit layout for another world
// size, and a state of another model are refused with the file named.
TEST(Checkpoint, ShardedReadsAnyRangeAtAnyWorldSize) {
  ModelConfig c = config_preset("tiny");
  c.ffn_dim = 53, c.vocab_size = 251, c.n_layers = 3;  // odd sizes: units split unevenly
  const train::FlatLayout L(c);
  train::LlamaTrain<float> shape(c);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> full[3];
  for (auto& f : full) {
    f.resize((size_t)L.n);
    for (float& x : f) x = u(rng);
  }
  for (float& x : full[2]) x = std::fabs(x);  // second moments are not negative (checked at read)
  const std::string dir = (std::filesystem::temp_directory_path() / "llmq_shard_test").string();
  for (int W = 1; W <= 5; W++) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    std::vector<train::ShardUnit> units;
    for (int k = 0; k < shape.n_units(); k++) {
      const auto [b, e] = shape.unit_range(k);
      units.push_back({b, e, (e - b + W - 1) / W});
    }
    for (int r = 0; r < W; r++) {  // what rank r holds: its chunk of every unit, zero-padded
      std::vector<float> mine[3];
      for (int k = 0; k < 3; k++)
        for (const auto& x : units)
          for (int64_t i = x.begin + r * x.chunk; i < x.begin + (r + 1) * x.chunk; i++) mine[k].push_back(i < x.end ? full[k][i] : 0.f);
      train::write_shard(dir, r, W, mine[0].data(), mine[1].data(), mine[2].data(), (int64_t)mine[0].size());
    }
    train::CheckpointHead h{12, 345, 12, nlohmann::json{{"lr", 1e-3}}, 0};
    train::write_shard_meta(dir, c, units, W, h, "");
    const train::CheckpointSource s = train::open_checkpoint(dir, c);
    EXPECT_EQ(s.head.world_size, W);
    EXPECT_EQ(s.head.cursor, 345);
    for (int t = 0; t < 50; t++) {
      int64_t b = std::uniform_int_distribution<int64_t>(0, L.n - 1)(rng);
      int64_t e = std::min(L.n, b + std::uniform_int_distribution<int64_t>(1, 3000)(rng));
      if (t == 0) b = 0, e = L.n;
      std::vector<float> got((size_t)(e - b));
      const train::FlatReader* rd[3] = {&s.params, &s.m, &s.v};
      for (int k = 0; k < 3; k++) {
        (*rd[k])(b, e, got.data());
        ASSERT_TRUE(std::equal(got.begin(), got.end(), full[k].begin() + b)) << "W=" << W << " k=" << k << " [" << b << "," << e << ")";
      }
    }
  }
  // Bad input: the state of another model, a unit layout for another world size, a short shard, a missing one.
  ModelConfig other = c;
  other.ffn_dim = 56;
  EXPECT_THROW(train::open_checkpoint(dir, other), Error);
  const std::string meta = dir + "/sharded_state.json", good = read_text_file(meta);
  auto j = nlohmann::json::parse(good);
  j["world_size"] = 4;
  write_file_atomic(meta, j.dump());
  EXPECT_THROW(train::open_checkpoint(dir, c), Error);
  write_file_atomic(meta, good);
  std::filesystem::resize_file(dir + "/shard-00002-of-00005.bin", 100);
  try {
    train::open_checkpoint(dir, c);
    ADD_FAILURE() << "a truncated shard was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("shard-00002-of-00005.bin"), std::string::npos) << e.what();
  }
  std::filesystem::remove(dir + "/shard-00002-of-00005.bin");
  EXPECT_THROW(train::open_checkpoint(dir, c), Error);
  std::filesystem::remove_all(dir);
}

// Zero-page buffers read as zeros and cost no resident memory until written.
TEST(ZeroPages, UntouchedUntilWritten) {
  const uint64_t before = current_rss_bytes();
  ZeroPageVector<float> v((size_t)64 << 20);  // 256 MB
  EXPECT_LT(current_rss_bytes(), before + (32ull << 20));
  EXPECT_EQ(v[12345678], 0.f);
  for (size_t i = 0; i < v.size(); i += 1024) v[i] = 1.f;  // one store per 4 KiB page
  EXPECT_GT(current_rss_bytes(), before + (200ull << 20));
  ZeroPageVector<double> small(10);
  for (double x : small) EXPECT_EQ(x, 0.0);
}

// The plan's activation formula is the trainer's allocation, on shapes with GQA, untied and
// tied embeddings, with and without recomputation.
TEST(Plan, ActivationsAsTheTrainerAllocates) {
  for (const char* preset : {"tiny", "tiny-tied"})
    for (bool rc : {false, true}) {
      ModelConfig c = config_preset(preset);
      train::LlamaTrain<float> m(c);
      m.set_recompute(rc);
      m.fill(init_fill(c, 1));
      const int64_t B = 3, T = 17;
      std::vector<int32_t> tok(B * T), tgt(B * T);
      for (int64_t i = 0; i < B * T; i++) tok[i] = (int32_t)(i * 7 % c.vocab_size), tgt[i] = (int32_t)(i * 11 % c.vocab_size);
      m.forward(tok.data(), tgt.data(), B, T);
      EXPECT_EQ(dist::train_activation_bytes(c, B, T, rc), (double)m.activation_bytes()) << preset << " " << rc;
    }
}

TEST(Plan, ShardingAndCommunication) {
  const ModelConfig c = config_preset("llama3-8b");
  dist::PlanOptions o;
  const dist::Plan one = dist::make_plan(c, o);
  EXPECT_EQ(one.params, c.n_params());
  EXPECT_DOUBLE_EQ(one.weight_bytes, 4.0 * c.n_params());  // f32 weights
  EXPECT_DOUBLE_EQ(one.optim_bytes, 8.0 * c.n_params());   // AdamW m and v
  EXPECT_EQ(one.dp_comm_bytes, 0);
  // DDP over 4: full state on every rank; the all-reduce sends 2 (N-1)/N of the gradients.
  o.ranks = 4;
  const dist::Plan ddp = dist::make_plan(c, o);
  EXPECT_DOUBLE_EQ(ddp.weight_bytes, one.weight_bytes);
  EXPECT_DOUBLE_EQ(ddp.dp_comm_bytes, 2 * 0.75 * 4.0 * c.n_params());
  // FSDP over 4: a quarter of the state plus one gathered block (parameters and gradients);
  // all-gather forward + all-gather backward + reduce-scatter = 3 (N-1)/N of the model.
  o.fsdp = true;
  const dist::Plan fsdp = dist::make_plan(c, o);
  EXPECT_DOUBLE_EQ(fsdp.weight_bytes, one.weight_bytes / 4);
  EXPECT_DOUBLE_EQ(fsdp.optim_bytes, one.optim_bytes / 4);
  EXPECT_DOUBLE_EQ(fsdp.gathered_bytes, 2 * 4.0 * fsdp.block_params);
  // Two all-gathers (forward, backward) and a reduce-scatter of every parameter, but the
  // untied input embedding is gathered for its forward only (its backward reads no weights).
  const double embed = c.tie_embeddings ? 0 : (double)c.vocab_size * c.dim;
  EXPECT_DOUBLE_EQ(fsdp.dp_comm_bytes, 0.75 * 4.0 * (3 * c.n_params() - embed));
  EXPECT_DOUBLE_EQ(fsdp.activation_bytes, one.activation_bytes);
  // TP 2: the blocks' linears halve, embeddings stay; 4 all-reduces of (B*T, dim) per block.
  o.fsdp = false, o.ranks = 2, o.tp = 2;
  const dist::Plan tp = dist::make_plan(c, o);
  EXPECT_EQ(tp.dp, 1);
  EXPECT_LT(tp.weight_bytes, 0.6 * one.weight_bytes);
  EXPECT_GT(tp.weight_bytes, 0.5 * one.weight_bytes);
  EXPECT_DOUBLE_EQ(tp.tp_comm_bytes, 4.0 * c.n_layers * 2 * 0.5 * 2048 * c.dim * 4);
  // Bad layouts.
  o.tp = 3;
  EXPECT_THROW(dist::make_plan(c, o), Error);  // does not divide the ranks
  o.ranks = 6;
  EXPECT_THROW(dist::make_plan(c, o), Error);  // nor the 32 heads
  o.ranks = 1, o.tp = 1, o.quant = "hqq4";
  EXPECT_THROW(dist::make_plan(c, o), Error);  // a frozen base needs adapters
  o.lora_rank = 64;
  const dist::Plan ql = dist::make_plan(c, o);
  // The blocks' linears at 4 + 64/64 bits (f32 scale and scale x zero per 64, as held), the rest in f32 (as
  // llmq finetune holds the frozen base), the adapters (rank 64 on the 7 linears of each
  // block) in f32; one block dequantized to f32 for its products.
  const double linear = (double)c.n_layers * (fsdp.block_params - 2 * c.dim);
  const double lora = 64.0 * c.n_layers * ((c.dim + c.q_dim()) * 2 + 2 * (c.dim + c.kv_dim()) + 3 * (c.dim + c.ffn_dim));
  EXPECT_EQ(ql.trainable, (int64_t)lora);
  EXPECT_NEAR(ql.weight_bytes, linear * 5.0 / 8 + ((double)c.n_params() - linear) * 4 + 4 * lora, 1.0);
  EXPECT_NEAR(ql.gathered_bytes, 4 * linear / c.n_layers, 1.0);
  // Under --fsdp the base's units are owned whole (train/base_shard.h): the most loaded rank's
  // share, with the adapters and their state replicated; in use at once, a block and the
  // (tied) embeddings, or the largest unit, besides the dequantized block.
  o.quant = "hqq4", o.fsdp = true, o.ranks = 4;
  const dist::Plan qf = dist::make_plan(c, o);
  const std::vector<double> units = dist::base_unit_bytes(c, 5.0);
  const std::vector<int> owner = dist::assign_owners(units, 4);
  std::vector<double> held(4, 0.0);
  for (size_t u = 0; u < units.size(); u++) held[owner[u]] += units[u];
  double total = 0;
  for (double b : units) total += b;
  EXPECT_NEAR(total, linear * 5.0 / 8 + ((double)c.n_params() - linear) * 4, 1.0);  // the whole base, as above
  EXPECT_NEAR(qf.weight_bytes, *std::max_element(held.begin(), held.end()) + 4 * lora, 1.0);
  EXPECT_NEAR(qf.grad_bytes, ql.grad_bytes, 1e-6);
  const double in_use = c.tie_embeddings ? units[0] + units[1] : std::max({units[0], units[1], units.back()});
  EXPECT_NEAR(qf.gathered_bytes, in_use + 4 * linear / c.n_layers, 1.0);
  // Greedy by size: no rank holds more than the average plus the largest unit.
  EXPECT_LE(*std::max_element(held.begin(), held.end()), total / 4 + *std::max_element(units.begin(), units.end()));
  o.quant = "int9";
  EXPECT_THROW(dist::make_plan(c, o), Error);
}

TEST(Plan, OwnersBalanceLargestFirst) {
  // 10, 6, 5, 4, 3 over 2 ranks: 10 -> 0, 6 -> 1, 5 -> 1, 4 -> 0, 3 -> 1 (loads 14, 14).
  const std::vector<int> o = dist::assign_owners({3, 10, 5, 6, 4}, 2);
  EXPECT_EQ(o, (std::vector<int>{1, 0, 1, 1, 0}));
  EXPECT_EQ(dist::assign_owners({1, 1, 1}, 1), (std::vector<int>{0, 0, 0}));
  // More ranks than units: each unit its own rank, in size order.
  EXPECT_EQ(dist::assign_owners({2, 5}, 4), (std::vector<int>{1, 0}));
}

}  // namespace
}  // namespace llmq
