// Data-free data (infer/datagen.h): every sample is BOS, a first token, the model's greedy
// continuation to the prefix length, then sampled tokens; the prefix lengths cycle over the
// range and the first tokens spread over the vocabulary; the output does not depend on the
// batch size; a file cut mid-line resumes to the bytes of an uninterrupted run.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "core/error.h"
#include "core/file_util.h"
#include "infer/datagen.h"
#include "infer/generator.h"
#include "io/hf_dir.h"
#include "model_fill.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace llmq {
namespace {

struct Fixture {
  test::TempDir tmp{"datagen"};
  Model m;
  std::unique_ptr<Tokenizer> tok = tokenizer_load(std::string(LLMQ_SOURCE_DIR) + "/models/llama3-tokenizer");
  Fixture() { m = test::tiny_llama3_model(tmp / "m", 5); }
};

TEST(DataGen, GreedyPrefixThenSampled) {
  Fixture f;
  DataGenOptions o;
  o.samples = 9, o.seq_len = 20, o.batch = 4, o.greedy_lo = 3, o.greedy_hi = 5;
  const auto a = generate_samples(f.m, *f.tok, o, 0, 9);
  ASSERT_EQ(a.size(), 9u);
  std::set<int32_t> firsts;
  for (size_t s = 0; s < a.size(); s++) {
    const auto& t = a[s];
    ASSERT_GE(t.size(), 2u);
    EXPECT_EQ(t[0], f.tok->bos_id);
    // Samples 3k, 3k+1, 3k+2 share a first token with prefix lengths 3, 4, 5.
    EXPECT_EQ(t[1], a[s - s % 3][1]);
    firsts.insert(t[1]);
    const size_t j = 3 + s % 3;
    // The prefix is the model's greedy continuation of [BOS, first].
    GenerateOptions g;
    g.max_new_tokens = (int)j - 1;
    g.sampling = SamplingParams{0.f, 0, 1.f, 0.f, 1.f, 0, 0};
    const auto r = generate(f.m, {{t[0], t[1]}}, g);
    ASSERT_GE(t.size(), 1 + j);
    EXPECT_EQ(std::vector<int32_t>(t.begin() + 2, t.begin() + 1 + (int64_t)j), r[0].tokens) << "sample " << s;
    EXPECT_LE(t.size(), 20u);
  }
  EXPECT_EQ(firsts.size(), 3u);  // three first tokens, spread (distinct)
  // The sampled part differs between samples of one first token (their seeds differ) and the
  // whole does not depend on the batch.
  EXPECT_NE(a[0], a[1]);
  o.batch = 1;
  EXPECT_EQ(generate_samples(f.m, *f.tok, o, 4, 7), std::vector<std::vector<int32_t>>(a.begin() + 4, a.begin() + 7));
}

TEST(DataGen, ResumeAfterAPartialLineGivesTheSameFile) {
  Fixture f;
  DataGenOptions o;
  o.samples = 7, o.seq_len = 16, o.batch = 3;
  generate_data_file(f.m, *f.tok, o, f.tmp / "a.jsonl");
  o.samples = 4, o.batch = 2;
  generate_data_file(f.m, *f.tok, o, f.tmp / "b.jsonl");
  {
    std::ofstream app(f.tmp / "b.jsonl", std::ios::app);
    app << "{\"text\": \"cut by a kil";
  }
  o.samples = 7, o.batch = 5;
  const DataGenResult r = generate_data_file(f.m, *f.tok, o, f.tmp / "b.jsonl");
  EXPECT_EQ(r.kept, 4);
  EXPECT_EQ(r.written, 3);
  EXPECT_EQ(read_text_file(f.tmp / "a.jsonl"), read_text_file(f.tmp / "b.jsonl"));
  // A file that is not generated data is refused, not appended to.
  write_file_atomic(f.tmp / "c.jsonl", "{\"other\": 1}\n");
  EXPECT_THROW(generate_data_file(f.m, *f.tok, o, f.tmp / "c.jsonl"), Error);
  EXPECT_THROW(parse_greedy_prefix("5-3"), Error);
  EXPECT_THROW(parse_greedy_prefix("x"), Error);
  EXPECT_EQ(parse_greedy_prefix("4"), std::make_pair(4, 4));
}

}  // namespace
}  // namespace llmq
