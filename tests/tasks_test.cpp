// Zero-shot task scoring (eval/tasks.h): the batched multiple-choice log-likelihoods equal
// each choice scored alone through eval's own per-row NLL; the harness's context /
// continuation split; greedy exact match; task files' errors; the task builder's items are
// what the source text says.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"
#include "eval/perplexity.h"
#include "eval/tasks.h"
#include "io/hf_dir.h"
#include "model_fill.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace llmq {
namespace {

using json = nlohmann::json;

std::unique_ptr<Tokenizer> llama3_tokenizer() {
  return tokenizer_load(std::string(LLMQ_SOURCE_DIR) + "/models/llama3-tokenizer");
}

TEST(Tasks, ContextContinuationSplitAsTheHarness) {
  auto tok = llama3_tokenizer();
  // The context's trailing space moves to the continuation: "The cat" + " sat" either way.
  const auto [c1, k1] = encode_pair(*tok, "The cat ", "sat");
  const auto [c2, k2] = encode_pair(*tok, "The cat", " sat");
  EXPECT_EQ(c1, c2);
  EXPECT_EQ(k1, k2);
  EXPECT_EQ(c1.front(), tok->bos_id);
  // Whole = context + continuation, token for token.
  std::vector<int32_t> whole = c2;
  whole.insert(whole.end(), k2.begin(), k2.end());
  auto ref = tok->encode("The cat sat", false);
  ref.insert(ref.begin(), tok->bos_id);
  EXPECT_EQ(whole, ref);
  EXPECT_EQ(tok->decode(k2, true), " sat");
}

// A random model (Llama 3 vocabulary so the real tokenizer fits), saved and loaded as a user's.
struct TinyModel {
  test::TempDir tmp{"tasks"};
  Model m;
  TinyModel() { m = test::tiny_llama3_model(tmp / "m", 21); }
};

// Sum of log p(continuation | context) with the continuation scored alone, one sequence per
// forward: the reference for the batched scoring.
double loglik_alone(const Model& m, const std::vector<int32_t>& ctx, const std::vector<int32_t>& cont) {
  KVCache cache = KVCache::create(m.config, 1, m.config.max_seq_len);
  Scratch s;
  Batch b;
  std::vector<int32_t> seq = ctx;
  seq.insert(seq.end(), cont.begin(), cont.end());
  for (size_t t = 0; t < seq.size(); t++) b.add(seq[t], 0, (int32_t)t, true);
  const Tensor& lg = llama_forward(m, cache, b, s);
  double ll = 0;
  for (size_t j = 0; j < cont.size(); j++)
    ll -= nll_of(lg.host<float>() + (ctx.size() - 1 + j) * m.config.vocab_size, m.config.vocab_size, cont[j]);
  return ll;
}

TEST(Tasks, MultipleChoiceMatchesEachChoiceAlone) {
  TinyModel tm;
  auto tok = llama3_tokenizer();
  // Choices of different token counts and characters, so acc and acc_norm can disagree.
  std::vector<TaskItem> items;
  const std::vector<std::vector<std::string>> sets = {
      {" sat on the mat.", " ran", " flew over the moon and far away", " is"},
      {" blue", " green sky", " a colour we do not name here"},
      {" one", " two", " three four five six"}};
  const std::vector<std::string> ctxs = {"The cat", "The sky is ", "Count: "};
  for (size_t i = 0; i < sets.size(); i++)
    for (int64_t a = 0; a < (int64_t)sets[i].size(); a++) items.push_back({"mc", ctxs[i], sets[i], a, ""});
  const auto scores = eval_tasks(tm.m, *tok, items);
  ASSERT_EQ(scores.size(), 1u);
  // The reference: per item, each choice alone; argmax of ll and of ll / characters.
  double acc = 0, acc_norm = 0;
  for (const auto& it : items) {
    int64_t best = 0, best_n = 0;
    double bl = -1e300, bn = -1e300;
    for (size_t k = 0; k < it.choices.size(); k++) {
      const auto [ctx, cont] = encode_pair(*tok, it.context, it.choices[k]);
      const double ll = loglik_alone(tm.m, ctx, cont);
      const double n = ll / (double)it.choices[k].size();  // ASCII: characters = bytes
      if (ll > bl) bl = ll, best = (int64_t)k;
      if (n > bn) bn = n, best_n = (int64_t)k;
    }
    acc += best == it.answer, acc_norm += best_n == it.answer;
  }
  EXPECT_EQ(scores[0].n, (int64_t)items.size());
  EXPECT_DOUBLE_EQ(scores[0].acc, acc / (double)items.size());
  EXPECT_DOUBLE_EQ(scores[0].acc_norm, acc_norm / (double)items.size());
  // Every answer index of each set appears once: the scores are a fraction of the sets that
  // pick each index, so exactly 3 of 10 items are right whatever the model prefers.
  EXPECT_DOUBLE_EQ(scores[0].acc, 3.0 / 10.0);
}

TEST(Tasks, GenerationIsTheGreedyContinuation) {
  TinyModel tm;
  auto tok = llama3_tokenizer();
  // The model's own greedy 3 tokens after a prompt make a right answer; anything else a wrong one.
  const std::string prompt = "Once upon a time";
  auto [ctx, none] = encode_pair(*tok, prompt, " x");
  KVCache cache = KVCache::create(tm.m.config, 1, 64);
  Scratch s;
  std::vector<int32_t> seq = ctx, out;
  for (int g = 0; g < 3; g++) {
    Batch b;
    for (size_t t = 0; t < seq.size(); t++) b.add(seq[t], 0, (int32_t)t, t + 1 == seq.size());
    const Tensor& lg = llama_forward(tm.m, cache, b, s);
    const float* row = lg.host<float>();
    const int32_t next = (int32_t)(std::max_element(row, row + tm.m.config.vocab_size) - row);
    out.push_back(next), seq.push_back(next);
  }
  const std::string greedy = tok->decode(out, false);
  // Only when the greedy text re-encodes to the same 3 tokens is it a well-posed answer.
  if (encode_pair(*tok, prompt, greedy).second.size() != 3) GTEST_SKIP() << "greedy text re-tokenizes differently";
  std::vector<TaskItem> items = {{"gen", prompt, {}, -1, greedy}, {"gen", prompt, {}, -1, greedy + "zz"}};
  const auto sc = eval_tasks(tm.m, *tok, items);
  EXPECT_DOUBLE_EQ(sc[0].exact_match, 0.5);
}

TEST(Tasks, BadTaskFilesFailClearly) {
  test::TempDir tmp("tasks_bad");
  auto expect = [&](const std::string& content, const std::string& needle) {
    write_file_atomic(tmp / "t.jsonl", content);
    try {
      load_tasks(tmp / "t.jsonl");
      ADD_FAILURE() << "accepted: " << content;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect("{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"answer\": 2}\n", "t.jsonl:1: answer 2 is out of range for 2 choices");
  expect("\n{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"answer\": -1}\n", "t.jsonl:2: answer -1");
  expect("{\"context\": \"a\", \"choices\": [\"b\"], \"answer\": 0}\n", "at least two");
  expect("{\"choices\": [\"b\", \"c\"], \"answer\": 0}\n", "needs a \"context\"");
  expect("{\"prompt\": \"a\"}\n", "\"answer\" must be the expected text");
  expect("not json\n", "t.jsonl:1: not a JSON object");
  expect("\n\n", "no tasks");
  // lm-evaluation-harness samples: an answer index beyond the choices, a target naming none.
  expect(R"({"doc_id": 0, "target": 2, "arguments": {"gen_args_0": {"arg_0": "a", "arg_1": " b"}, "gen_args_1": {"arg_0": "a", "arg_1": " c"}}})" "\n",
         "t.jsonl:1: answer 2 is out of range for 2 choices");
  expect(R"({"doc_id": 0, "target": "d", "arguments": [["a", " b"], ["a", " c"]]})" "\n", "names no choice");
  expect(R"({"doc_id": 0, "target": 0, "arguments": [["a", " b"], ["x", " c"]]})" "\n", "share one context");
  expect(R"({"doc_id": 0, "target": 0, "arguments": {"gen_args_0": {"arg_0": "a"}}})" "\n", "arg_0 and arg_1");
}

// lm-evaluation-harness's exported samples (--log_samples) load as the same items as the
// native format: 0.4's gen_args objects and the older [context, continuation] pairs, the
// target as an index or as the choice's text, generate_until requests as generation items, the
// task named from the file (samples_TASK_DATE.jsonl).
TEST(Tasks, HarnessSamplesLoad) {
  const std::string text =
      R"({"doc_id": 0, "doc": {}, "target": 1, "arguments": {"gen_args_0": {"arg_0": "The sky is", "arg_1": " green"}, "gen_args_1": {"arg_0": "The sky is", "arg_1": " blue"}}, "resps": [], "filtered_resps": []})" "\n"
      R"({"doc_id": 1, "target": " blue", "arguments": [["Grass is", " red"], ["Grass is", " blue"], ["Grass is", " green"]]})" "\n"
      R"({"doc_id": 2, "target": " Paris", "arguments": {"gen_args_0": {"arg_0": "The capital of France is", "arg_1": {"until": ["\n"]}}}})" "\n";
  const auto items = parse_tasks(text, "out/samples_mytask_2024-06-19T16-40-21.372063.jsonl");
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[0].task, "mytask");
  EXPECT_EQ(items[0].context, "The sky is");
  EXPECT_EQ(items[0].choices, (std::vector<std::string>{" green", " blue"}));
  EXPECT_EQ(items[0].answer, 1);
  EXPECT_EQ(items[1].choices.size(), 3u);
  EXPECT_EQ(items[1].answer, 1);
  EXPECT_TRUE(items[2].generate());
  EXPECT_EQ(items[2].context, "The capital of France is");
  EXPECT_EQ(items[2].target, " Paris");
}

TEST(Tasks, BuilderItemsComeFromTheText) {
  // Three documents of distinct sentences; the cloze's right choice is the sentence after the
  // passage in its document, the others come from other documents; final-word prompts plus
  // their answer are passages of the text.
  std::string text;
  for (int d = 0; d < 3; d++) {
    for (int s = 0; s < 6; s++) text += "Document " + std::to_string(d) + " says thing number " + std::to_string(s) + " today. ";
    text += "\n\n";
  }
  MakeTasksOptions o;
  o.n = 6, o.passage_words = 12, o.seed = 3;
  const auto a = make_tasks({text}, o), b = make_tasks({text}, o);
  EXPECT_EQ(a, b);  // deterministic in the seed
  ASSERT_EQ(a.size(), 6u);
  for (const auto& line : a) {
    const json j = json::parse(line);
    const std::string ctx = j["context"], right = j["choices"][j["answer"].get<int>()];
    EXPECT_NE(text.find(ctx + right), std::string::npos) << line;
    const std::string doc = ctx.substr(0, ctx.find(" says"));
    for (size_t k = 0; k < j["choices"].size(); k++)
      if ((int)k != j["answer"].get<int>()) {
        EXPECT_EQ(j["choices"][k].get<std::string>().find(doc + " "), std::string::npos) << line;
      }
  }
  o.kind = "final-word";
  for (const auto& line : make_tasks({text}, o)) {
    const json j = json::parse(line);
    EXPECT_NE(text.find(j["prompt"].get<std::string>() + j["answer"].get<std::string>()), std::string::npos) << line;
  }
  o.n = 1000;
  EXPECT_THROW(make_tasks({text}, o), Error);  // too few passages for 1000 items
}

}  // namespace
}  // namespace llmq
