// Chat templates (the Jinja subset against hand-derived outputs and the real Llama 3 template
// against the built-in format) and data preparation (shards decode back to the documents,
// the split is deterministic, bad JSONL and damaged shard directories fail clearly).
#include <fstream>

#include "core/error.h"
#include "core/file_util.h"
#include "data/prepare.h"
#include "data/shards.h"
#include "test_util.h"
#include "tokenizer/chat.h"
#include "tokenizer/jinja.h"
#include "tokenizer/tokenizer.h"

namespace llmq {
namespace {

using nlohmann::json;
const std::string kRoot = LLMQ_SOURCE_DIR;

TEST(Jinja, ExpressionsStatementsAndWhitespace) {
  json ctx = {{"xs", {1, 2, 3}}, {"name", "  Ada "}, {"d", {{"k", "v"}}}, {"flag", true}};
  EXPECT_EQ(jinja_render("{{ name | trim }}!", ctx), "Ada!");
  EXPECT_EQ(jinja_render("{% for x in xs %}{{ loop.index }}{{ x * 2 }}{% if not loop.last %},{% endif %}{% endfor %}", ctx),
            "12,24,36");
  EXPECT_EQ(jinja_render("{{ xs[1:] | length }} {{ xs[-1] }} {{ 'a' ~ 1 + 2 }}", ctx), "2 3 a3");
  EXPECT_EQ(jinja_render("{{ d.k }}{{ d['k'] }}{{ d.missing is defined }}{{ missing | default('z') }}", ctx), "vvFalsez");
  EXPECT_EQ(jinja_render("{% if 'k' in d and xs | length > 2 %}yes{% elif flag %}no{% else %}never{% endif %}", ctx), "yes");
  // Short-circuit: the right side is not evaluated (indexing an empty list would be undefined,
  // calling a method on it an error).
  EXPECT_EQ(jinja_render("{{ (xs | length == 0) and xs[5].strip() }}", ctx), "False");
  EXPECT_EQ(jinja_render("{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}", ctx), "6");
  // Loop scope: a plain set inside a loop does not leak out (Jinja semantics).
  EXPECT_EQ(jinja_render("{% set n = 0 %}{% for x in xs %}{% set n = x %}{% endfor %}{{ n }}", ctx), "0");
  EXPECT_EQ(jinja_render("{{ ['a','b'] | join(', ') }}|{{ 'Hi'.upper() }}|{{ ' x '.strip() }}|{{ 'abc'.startswith('ab') }}", ctx),
            "a, b|HI|x|True");
  EXPECT_EQ(jinja_render("{{ xs | reject('equalto', 2) | list | tojson }}", ctx), "[1,3]");
  // Whitespace: "-" strips, trim_blocks drops the newline after a block tag, lstrip_blocks
  // drops the indentation before one (Hugging Face renders chat templates that way).
  EXPECT_EQ(jinja_render("a  {{- 'b' -}}  c", ctx), "abc");
  EXPECT_EQ(jinja_render("{% if flag %}\nyes\n{% endif %}\nend", ctx), "yes\nend");
  EXPECT_EQ(jinja_render("x\n    {% if flag %}y{% endif %}", ctx), "x\ny");
  EXPECT_EQ(jinja_render("{# comment #}{{ 7 // 2 }} {{ 7 % 3 }} {{ -1 }}", ctx), "3 1 -1");
  // Python's floor division and modulo signs.
  EXPECT_EQ(jinja_render("{{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 9223372036854775807 - 1 }}", ctx), "-4 2 -2 9223372036854775806");
  for (const char* bad : {"{{ ", "{% if x %}", "{% for %}", "{{ 1 + }}", "{{ x | nosuchfilter }}", "{% while %}", "{{ 'a }}",
                          "{{ raise_exception('boom') }}", "{{ 1 / 0 }}", "{{ 9223372036854775807 + 1 }}",
                          "{{ 'a' * 99999999999 }}", "{{ range('x') }}", "{{ 'x'.startswith() }}", "{{ xs[1:99999999999999999999] }}"})
    EXPECT_THROW(jinja_render(bad, ctx, "t"), Error) << bad;
}

// The real Llama 3 chat template (tokenizer_config.json) and the built-in format agree.
TEST(Chat, Llama3TemplateEqualsBuiltIn) {
  const std::string tmpl = chat_template_find(kRoot + "/models/llama3-tokenizer");
  ASSERT_FALSE(tmpl.empty()) << "run scripts/fetch_data first";
  std::vector<ChatMessage> msgs = {{"system", "You are terse."}, {"user", "  Hi there!\n"}, {"assistant", "Hello."},
                                   {"user", "Count: 1 2 3"}};
  const std::string bos = "<|begin_of_text|>";
  // The template trims message content; the built-in format takes it as given.
  auto trimmed = msgs;
  trimmed[1].content = "Hi there!";
  EXPECT_EQ(chat_render(msgs, tmpl, bos), chat_render(trimmed, "", bos));
  EXPECT_EQ(chat_render({{"user", "x"}}, "", bos),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

// A Llama 3.1-style template (system message pulled out of the list, a date line, content
// trimmed, generation prompt on request), rendered as Hugging Face would.
TEST(Chat, Llama31StyleTemplate) {
  const std::string tmpl =
      "{{- bos_token }}\n"
      "{%- if messages[0]['role'] == 'system' %}\n"
      "    {%- set system_message = messages[0]['content']|trim %}\n"
      "    {%- set messages = messages[1:] %}\n"
      "{%- else %}\n"
      "    {%- set system_message = \"\" %}\n"
      "{%- endif %}\n"
      "{%- if not date_string is defined %}\n"
      "    {%- set date_string = \"26 Jul 2024\" %}\n"
      "{%- endif %}\n"
      "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
      "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
      "{{- system_message }}\n"
      "{{- \"<|eot_id|>\" }}\n"
      "{%- for message in messages %}\n"
      "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
      "{%- endfor %}\n"
      "{%- if add_generation_prompt %}\n"
      "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
      "{%- endif %}\n";
  std::string got = chat_render({{"system", " Be kind. "}, {"user", "Hi"}}, tmpl, "<BOS>");
  EXPECT_EQ(got,
            "<BOS><|start_header_id|>system<|end_header_id|>\n\nToday Date: 26 Jul 2024\n\nBe kind.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(Chat, MessagesFileErrors) {
  test::TempDir t("chat");
  write_file_atomic(t / "ok.json", R"([{"role": "user", "content": "hi"}])");
  EXPECT_EQ(chat_messages_load(t / "ok.json").size(), 1u);
  for (const char* bad : {"[", "{}", "[]", R"([{"role": "user"}])", R"([{"role": 1, "content": "x"}])"}) {
    write_file_atomic(t / "bad.json", bad);
    EXPECT_THROW(chat_messages_load(t / "bad.json"), Error) << bad;
  }
}

// Prepared shards hold exactly BOS + encode(doc) + EOS per document, in input order within
// each split; the split depends only on the seed; the manifest's counts add up.
TEST(DataPrepare, ShardsDecodeBackToDocuments) {
  test::TempDir t("prep");
  auto tok = tokenizer_load(kRoot + "/models/llama3-tokenizer");
  std::vector<std::string> docs;
  {
    std::ifstream in(kRoot + "/data/text/moby_dick.txt");
    std::string l;
    while (std::getline(in, l) && docs.size() < 400) docs.push_back(l);
  }
  {
    std::ofstream f(t / "in.txt");
    for (auto& d : docs) f << d << "\n\n";  // blank lines between: skipped in "lines" mode
  }
  PrepareOptions o;
  o.inputs = {t / "in.txt"};
  o.out_dir = t / "out";
  o.val_fraction = 0.2;
  o.seed = 5;
  o.shard_tokens = 3000;  // force several shards
  o.batch_bytes = 5000;   // and several parallel batches
  o.progress = false;
  PrepareStats s = data_prepare(*tok, o);
  EXPECT_EQ(s.documents, (int64_t)docs.size());
  TokenDataset d = token_dataset_open(o.out_dir);
  d.require_tokenizer(tok->fingerprint(), "tok");
  EXPECT_GT(d.train.shards.size(), 2u);
  EXPECT_GT(d.val.documents, 40);  // 20% of 400, loosely: a hash split
  EXPECT_LT(d.val.documents, 120);
  EXPECT_EQ(d.train.documents + d.val.documents, (int64_t)docs.size());
  // Read every document back (split by the index) and match it to the inputs in order.
  std::vector<std::string> back;
  for (const TokenSplit* sp : {&d.train, &d.val})
    for (const auto& sh : sp->shards)
      for (int64_t k = 0; k < sh.documents; k++) {
        uint64_t a = sh.doc_starts()[k], b = k + 1 < sh.documents ? sh.doc_starts()[k + 1] : (uint64_t)sh.tokens;
        std::vector<int32_t> ids(sh.ids() + a, sh.ids() + b);
        ASSERT_EQ(ids.front(), tok->bos_id);
        ASSERT_EQ(ids.back(), tok->eos_ids.front());
        back.push_back(tok->decode(std::vector<int32_t>(ids.begin() + 1, ids.end() - 1)));
      }
  std::vector<std::string> sorted_in = docs, sorted_back = back;
  std::sort(sorted_in.begin(), sorted_in.end());
  std::sort(sorted_back.begin(), sorted_back.end());
  EXPECT_EQ(sorted_in, sorted_back);
  // Same seed, same split; another seed, another split.
  o.out_dir = t / "out2";
  data_prepare(*tok, o);
  EXPECT_EQ(read_text_file(t / "out/manifest.json"), read_text_file(t / "out2/manifest.json"));
  o.out_dir = t / "out3";
  o.seed = 6;
  data_prepare(*tok, o);
  EXPECT_NE(read_text_file(t / "out/manifest.json"), read_text_file(t / "out3/manifest.json"));
  // A different tokenizer is refused by fingerprint.
  EXPECT_THROW(d.require_tokenizer("0000000000000000", "other"), Error);
}

TEST(DataPrepare, JsonlAndBadInput) {
  test::TempDir t("jsonl");
  auto tok = tokenizer_load(kRoot + "/models/llama3-tokenizer");
  PrepareOptions o;
  o.out_dir = t / "out";
  o.progress = false;
  o.val_fraction = 0;
  write_file_atomic(t / "ok.jsonl", "{\"text\": \"Hello world\"}\n\n{\"text\": \"\", \"x\": 1}\n{\"text\": \"Bye\"}\n");
  o.inputs = {t / "ok.jsonl"};
  PrepareStats s = data_prepare(*tok, o);
  EXPECT_EQ(s.documents, 2);
  EXPECT_EQ(s.empty_documents, 1);
  auto expect_error = [&](const std::string& contents, const std::string& needle) {
    write_file_atomic(t / "bad.jsonl", contents);
    o.inputs = {t / "bad.jsonl"};
    try {
      data_prepare(*tok, o);
      ADD_FAILURE() << "no error for " << contents;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("{\"text\": \"a\"}\nnot json\n", "bad.jsonl:2: not a JSON object");
  expect_error("{\"body\": \"a\"}\n", "bad.jsonl:1: the object has no string field \"text\"");
  expect_error("[1, 2]\n", "no string field");
  o.inputs = {t / "missing.txt"};
  EXPECT_THROW(data_prepare(*tok, o), Error);
  // An empty input gives an empty, valid dataset.
  write_file_atomic(t / "empty.txt", "");
  o.inputs = {t / "empty.txt"};
  o.out_dir = t / "empty_out";
  data_prepare(*tok, o);
  EXPECT_EQ(token_dataset_open(o.out_dir).train.tokens, 0);
}

// Chat data: the stored tokens decode to the rendered conversations, and exactly the assistant
// turns (their content and the template's <|eot_id|>) are unmasked targets; bad lines fail
// naming file and line.
TEST(DataPrepare, ChatLossMask) {
  test::TempDir t("chat");
  const std::string tdir = kRoot + "/models/llama3-tokenizer";
  auto tok = tokenizer_load(tdir);
  PrepareOptions o;
  o.out_dir = t / "out";
  o.progress = false;
  o.val_fraction = 0;
  o.format = "chat";
  o.chat_template = chat_template_find(tdir);
  ASSERT_FALSE(o.chat_template.empty());
  o.bos_text = "<|begin_of_text|>";
  const std::vector<ChatMessage> c1 = {{"system", "Be brief."}, {"user", "Hi!"}, {"assistant", "Hello."},
                                       {"user", "Sum 2+2?"}, {"assistant", "4, of course."}};
  const std::vector<ChatMessage> c2 = {{"user", "One more"}, {"assistant", "Sure: \u00e9t\u00e9"}};
  auto line = [](const std::vector<ChatMessage>& c) {
    json j = {{"messages", json::array()}};
    for (const auto& m : c) j["messages"].push_back({{"role", m.role}, {"content", m.content}});
    return j.dump() + "\n";
  };
  write_file_atomic(t / "c.jsonl", line(c1) + "\n" + line(c2));
  o.inputs = {t / "c.jsonl"};
  const PrepareStats st = data_prepare(*tok, o);
  EXPECT_EQ(st.documents, 2);
  const TokenDataset d = token_dataset_open(o.out_dir);
  EXPECT_TRUE(d.manifest.loss_mask);
  const auto& sh = d.train.shards.at(0);
  std::vector<int32_t> all, trained;
  std::string spans;  // the unmasked runs, each decoded on its own, joined by '|'
  for (int64_t i = 0; i < sh.tokens; i++) {
    const uint32_t v = sh.ids()[i];
    all.push_back((int32_t)(v & ~kLossMaskBit));
    if (!(v & kLossMaskBit)) trained.push_back((int32_t)v);
    const bool end = !(v & kLossMaskBit) && (i + 1 == sh.tokens || (sh.ids()[i + 1] & kLossMaskBit));
    if (end) spans += tok->decode(trained) + "|", trained.clear();
  }
  // This Llama 3 template ends every rendering with the assistant header, asked for or not;
  // the data stops where the conversation's last message does.
  auto rendered = [&](const std::vector<ChatMessage>& c) {
    std::string r = chat_render(c, o.chat_template, o.bos_text, false);
    const std::string gen = "<|start_header_id|>assistant<|end_header_id|>\n\n";
    EXPECT_EQ(r.substr(r.size() - gen.size()), gen);
    return r.substr(0, r.size() - gen.size());
  };
  EXPECT_EQ(tok->decode(all), rendered(c1) + rendered(c2));
  EXPECT_EQ(spans, "Hello.<|eot_id|>|4, of course.<|eot_id|>|Sure: \u00e9t\u00e9<|eot_id|>|");
  EXPECT_EQ(st.target_tokens, (int64_t)(tok->encode("Hello.<|eot_id|>", true).size() +
                                        tok->encode("4, of course.<|eot_id|>", true).size() +
                                        tok->encode("Sure: \u00e9t\u00e9<|eot_id|>", true).size()));
  auto expect_error = [&](const std::string& contents, const std::string& needle) {
    write_file_atomic(t / "bad.jsonl", contents);
    o.inputs = {t / "bad.jsonl"};
    o.out_dir = t / "bad_out";
    test::expect_error_containing([&] { data_prepare(*tok, o); }, contents, {needle.c_str()});
  };
  expect_error(line(c1) + "{\"text\": \"no messages\"}\n", "bad.jsonl:2: no \"messages\" list");
  expect_error("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n", "bad.jsonl:1: the conversation has no assistant");
  expect_error("{\"messages\": [{\"role\": \"user\"}]}\n", "bad.jsonl:1: message 1 needs a string");
  expect_error("not json\n", "bad.jsonl:1: not a JSON object");
}

TEST(DataPrepare, DamagedDirectoriesFailClearly) {
  test::TempDir t("damaged");
  auto tok = tokenizer_load(kRoot + "/models/llama3-tokenizer");
  write_file_atomic(t / "in.txt", "one line\nanother line\nthird\n");
  PrepareOptions o;
  o.inputs = {t / "in.txt"};
  o.out_dir = t / "d";
  o.progress = false;
  o.val_fraction = 0;
  data_prepare(*tok, o);
  auto expect_open_error = [&](const std::string& needle) {
    try {
      token_dataset_open(o.out_dir);
      ADD_FAILURE() << "no error, wanted " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const std::string manifest = read_text_file(t / "d/manifest.json"), bin = read_text_file(t / "d/train_000000.bin");
  write_file_atomic(t / "d/train_000000.bin", bin.substr(0, bin.size() - 4));
  expect_open_error("truncated or corrupt");
  std::filesystem::remove(t / "d/train_000000.bin");
  expect_open_error("shard missing");
  write_file_atomic(t / "d/train_000000.bin", bin);
  write_file_atomic(t / "d/manifest.json", manifest.substr(0, 40));
  expect_open_error("malformed JSON");
  json m = json::parse(manifest);
  m["splits"]["train"]["shards"][0]["file"] = "../../etc/passwd";
  write_file_atomic(t / "d/manifest.json", m.dump());
  expect_open_error("not a plain file name");
  m = json::parse(manifest);
  m["splits"]["train"]["tokens"] = 1;
  write_file_atomic(t / "d/manifest.json", m.dump());
  expect_open_error("do not add up");
  m = json::parse(manifest);
  m["format"] = {{"a", 1}};  // found by fuzz_text_formats: a non-string where a string belongs
  write_file_atomic(t / "d/manifest.json", m.dump());
  expect_open_error("not a token-shard manifest");
  m = json::parse(manifest);
  m["tokenizer"]["kind"] = 5;
  m["dtype"] = {1, 2};
  write_file_atomic(t / "d/manifest.json", m.dump());
  expect_open_error("dtype must be");
  std::filesystem::remove(t / "d/manifest.json");
  expect_open_error("no manifest.json");
}

}  // namespace
}  // namespace llmq
