// Every parser of outside files sizes its allocations by what the file can hold: each test
// gives one parser a file whose count or size field lies and checks, in a child process with
// a small address-space budget, that the answer is an llmq::Error naming the file and field,
// not an allocation the budget refuses (std::bad_alloc) or a crash.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <new>

#include "core/error.h"
#include "core/file_util.h"
#include "data/shards.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "test_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/jinja.h"
#include "tokenizer/spm.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"

namespace llmq {
namespace {

// Address space a parser may add on top of the process's: 256 MiB. The inputs here are a few
// hundred bytes (or a sparse file), so anything honest stays far below; each lying field
// would, if believed, ask for 0.5-2 GB or more.
constexpr uint64_t kBudget = uint64_t(256) << 20;

uint64_t vm_size_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmSize:", 0) == 0) return std::stoull(line.substr(7)) * 1024;
  return 0;
}

// Runs fn in a forked child under the budget; the child reports how it ended. Returns the
// error message (or a description of what went wrong instead).
std::string error_within_budget(const std::function<void()>& fn) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return "pipe failed";
  const pid_t pid = fork();
  if (pid == 0) {
    close(pipefd[0]);
    std::string msg;
    const rlimit lim{vm_size_bytes() + kBudget, vm_size_bytes() + kBudget};
    setrlimit(RLIMIT_AS, &lim);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      fn();
      msg = "NO ERROR: the parser accepted the lying field";
    } catch (const Error& e) {
      msg = std::string("ERROR ") + e.what();
    } catch (const std::bad_alloc&) {
      msg = "BAD_ALLOC: the parser tried to allocate beyond the budget";
    } catch (const std::exception& e) {
      msg = std::string("OTHER EXCEPTION ") + e.what();
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    msg += fmt::format(" [{:.1f} ms]", ms);  // printed, never asserted (timings are noisy here)
    (void)!write(pipefd[1], msg.data(), msg.size());
    _exit(0);
  }
  close(pipefd[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(pipefd[0], buf, sizeof buf)) > 0;) out.append(buf, (size_t)n);
  close(pipefd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status)) return fmt::format("CRASH (signal {})", WTERMSIG(status));
  return out;
}

void expect_bounded_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  const std::string r = error_within_budget(fn);
  std::printf("    %s\n", r.c_str());
  ASSERT_EQ(r.rfind("ERROR ", 0), 0u) << r;
  for (const auto& n : needles) EXPECT_NE(r.find(n), std::string::npos) << "missing '" << n << "' in: " << r;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}
void put_str(std::string& s, const std::string& x) {
  put<uint64_t>(s, x.size());
  s += x;
}

// The input from issue 20: one tiktoken line with rank 55,555,555 (1.8 GB of strings when the
// rank table was sized by it), and a rank just under the old 2^24 cap.
TEST(ParserBounds, TiktokenRank) {
  expect_bounded_error([] { BpeTokenizer::from_tiktoken("t.model", "IQ== 55555555\n"); }, {"t.model:1", "rank 55555555"});
  expect_bounded_error([] { BpeTokenizer::from_tiktoken("t.model", "IQ== 16777215\n"); }, {"t.model:1", "rank 16777215"});
  // The same rank in a file with enough lines to make it plausible is not refused for size.
  EXPECT_EQ(error_within_budget([] { BpeTokenizer::from_tiktoken("t.model", "IQ== 1500\n"); }).find("BAD_ALLOC"),
            std::string::npos);
}

// tokenizer.json: a vocabulary id and an added token's id far beyond the entries.
TEST(ParserBounds, TokenizerJsonIds) {
  expect_bounded_error([] { BpeTokenizer::from_hf_json("t.json", R"({"model":{"type":"BPE","vocab":{"a":16000000},"merges":[]},
      "pre_tokenizer":{"type":"ByteLevel"}})"); }, {"t.json", "model.vocab", "16000000"});
  expect_bounded_error([] { BpeTokenizer::from_hf_json("t.json", R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[]},
      "pre_tokenizer":{"type":"ByteLevel"},"added_tokens":[{"id":16000000,"content":"<x>"}]})"); }, {"t.json", "added_tokens", "16000000"});
}

// tiktoken + tokenizer_config.json: added_tokens_decoder ids are bounded by the tokens there are.
TEST(ParserBounds, TokenizerConfigAddedTokens) {
  test::TempDir tmp("bounds_tc");
  std::string tt;
  for (int b = 0; b < 256; b++) {
    static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned v = (unsigned)b;  // base64 of one byte: two characters and "=="
    tt += fmt::format("{}{}== {}\n", k[v >> 2], k[(v & 3) << 4], b);
  }
  write_bytes(tmp / "tokenizer.model", tt);
  write_bytes(tmp / "tokenizer_config.json", R"({"added_tokens_decoder":{"15000000":{"content":"<|x|>","special":true}}})");
  const std::string dir = tmp.path.string();
  expect_bounded_error([dir] { tokenizer_load(dir); }, {"tokenizer.model", "<|x|>", "15000000"});
}

// SentencePiece model: a protobuf whose first field claims a 2 GB length.
TEST(ParserBounds, SentencePieceLength) {
  std::string proto = "\x0a\xff\xff\xff\xff\x07" + std::string(20, 'a');  // field 1, length 2^31-1
  expect_bounded_error([proto] { spm_load("s.model", proto); }, {"s.model"});
}

// A SentencePiece piece holding a NUL byte made libsentencepiece's trie builder throw through
// code that cannot pass it on (abort); found by tests/fuzz/campaign.sh tokenizer_files.
TEST(ParserBounds, SentencePieceNulPiece) {
  const std::string proto("\x0a\x0e\x0a\x05<unk>\x15\0\0\0\0\x18\x02\x0a\x0d\x0a\x04</s>\x15\0\0\0\0\x18\x03"
                          "\x0a\x0f\x0a\x06\0<\0\0?>\x15\0\0\0\0\x18\x0f", 50);
  expect_bounded_error([proto] { spm_load("s.model", proto); }, {"s.model", "piece 2 is empty or holds a NUL byte"});
}

// safetensors: a header length beyond the file, and one beyond the format's limit.
TEST(ParserBounds, SafetensorsHeaderLength) {
  auto parse = [](uint64_t n) {
    std::string b;
    put<uint64_t>(b, n);
    b += "{}";
    return [b] { safetensors_parse_header(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "w.safetensors"); };
  };
  expect_bounded_error(parse(uint64_t(90) << 20), {"w.safetensors", "header says"});
  expect_bounded_error(parse(uint64_t(1) << 40), {"w.safetensors", "100 MB"});
}

// GGUF: metadata and tensor counts, a string length and an array length that the file
// cannot hold.
TEST(ParserBounds, GgufCounts) {
  auto head = [](uint64_t nt, uint64_t nkv) {
    std::string b = "GGUF";
    put<uint32_t>(b, 3);
    put<uint64_t>(b, nt);
    put<uint64_t>(b, nkv);
    return b;
  };
  auto parse = [](std::string b) {
    b += std::string(64, '\0');
    return [b] { gguf_parse_bytes(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "m.gguf"); };
  };
  expect_bounded_error(parse(head(0, uint64_t(1) << 40)), {"m.gguf", "metadata entries"});
  expect_bounded_error(parse(head(uint64_t(1) << 40, 0)), {"m.gguf", "tensors cannot fit"});
  std::string s = head(0, 1);
  put<uint64_t>(s, uint64_t(1) << 33);  // key length 8 GB
  expect_bounded_error(parse(s), {"m.gguf", "runs past the end"});
  std::string a = head(0, 1);
  put_str(a, "tokenizer.ggml.tokens");
  put<uint32_t>(a, 9);  // array
  put<uint32_t>(a, 8);  // of strings
  put<uint64_t>(a, uint64_t(1) << 36);
  expect_bounded_error(parse(a), {"m.gguf", "tokenizer.ggml.tokens", "cannot fit"});
  std::string f = head(0, 1);
  put_str(f, "tokenizer.ggml.scores");
  put<uint32_t>(f, 9);
  put<uint32_t>(f, 6);  // of f32
  put<uint64_t>(f, uint64_t(1) << 34);
  expect_bounded_error(parse(f), {"m.gguf", "tokenizer.ggml.scores", "past the end"});
}

// GGUF tensors may not share bytes (issue 30): an offset pointed into another tensor.
TEST(ParserBounds, GgufOverlappingTensors) {
  auto file = [](uint64_t second_offset) {
    std::string b = "GGUF";
    put<uint32_t>(b, 3);
    put<uint64_t>(b, 2);  // tensors
    put<uint64_t>(b, 0);  // metadata
    for (int i = 0; i < 2; i++) {
      put_str(b, i ? "b" : "a");
      put<uint32_t>(b, 1);   // dims
      put<uint64_t>(b, 8);   // 8 f32 = 32 bytes
      put<uint32_t>(b, 0);   // f32
      put<uint64_t>(b, i ? second_offset : 0);
    }
    b.resize((b.size() + 31) / 32 * 32, '\0');
    return b + std::string(64, '\1');
  };
  const std::string ok = file(32);
  EXPECT_NO_THROW(gguf_parse_bytes(reinterpret_cast<const uint8_t*>(ok.data()), ok.size(), "m.gguf"));
  const std::string bad = file(0);
  expect_bounded_error([bad] { gguf_parse_bytes(reinterpret_cast<const uint8_t*>(bad.data()), bad.size(), "m.gguf"); },
                       {"m.gguf", "overlaps"});
}

// config.json sizes the model; numbers beyond any model (and a quantization group beyond any
// row) are refused before anything is sized by them.
TEST(ParserBounds, ConfigNumbers) {
  const std::string base = R"("hidden_size":64,"intermediate_size":128,"num_attention_heads":4,"num_hidden_layers":2,
      "rms_norm_eps":1e-5,"model_type":"llama")";
  auto cfg = [&](const std::string& extra) { return [s = "{" + base + "," + extra + "}"] { config_parse(s, "config.json"); }; };
  expect_bounded_error(cfg(R"("vocab_size":4000000000,"max_position_embeddings":64)"), {"config.json", "vocab_size"});
  expect_bounded_error(cfg(R"("vocab_size":100,"max_position_embeddings":4000000000)"), {"config.json", "max_position_embeddings"});
  expect_bounded_error(cfg(R"("vocab_size":100,"max_position_embeddings":64,"quantization_config":{"quant_method":"gptq",
      "bits":4,"group_size":4294967296,"sym":true})"), {"config.json", "group_size"});
}

// Shard manifest and index: counts larger than the shard files are refused before mapping.
TEST(ParserBounds, ShardManifestCounts) {
  test::TempDir tmp("bounds_shards");
  write_bytes(tmp / "train-0.bin", std::string(16, '\0'));
  write_bytes(tmp / "train-0.idx", std::string(8, '\0'));
  write_bytes(tmp / "manifest.json", R"({"format":"llmq-tokens-v1","dtype":"uint32","tokenizer":{"fingerprint":"x","vocab_size":10},
    "splits":{"train":{"tokens":1000000000,"documents":1,"shards":[{"file":"train-0.bin","index":"train-0.idx","tokens":1000000000,"documents":1}]},
              "val":{"tokens":0,"documents":0,"shards":[]}}})");
  const std::string dir = tmp.path.string();
  const std::string r = error_within_budget([dir] { token_dataset_open(dir); });
  std::printf("    %s\n", r.c_str());
  // The format name is whatever prepare writes; if this manifest is refused for its format
  // the test is wrong, not the parser.
  ASSERT_EQ(r.rfind("ERROR ", 0), 0u) << r;
  EXPECT_NE(r.find("train-0.bin"), std::string::npos) << r;
  EXPECT_NE(r.find("1000000000 tokens"), std::string::npos) << r;
}

// Training checkpoint: train_state.bin whose header length claims 900 MB of a (sparse) 1 GB file.
TEST(ParserBounds, CheckpointHeaderLength) {
  test::TempDir tmp("bounds_ckpt");
  {
    std::string b = "LLMQTRN1";
    put<uint64_t>(b, uint64_t(900) << 20);
    write_bytes(tmp / "train_state.bin", b);
    std::filesystem::resize_file(tmp / "train_state.bin", uint64_t(1) << 30);
  }
  const std::string dir = tmp.path.string();
  expect_bounded_error([dir] { train::open_checkpoint(dir, config_preset("tiny")); }, {"train_state.bin", "header length"});
  // sharded_state.json: a world size beyond any job.
  expect_bounded_error([] {
    train::parse_sharded_meta(R"({"format":"llmq-sharded-1","world_size":100000000,"n_params":10,"step":1,"cursor":0,
        "adam_step":1,"options":{},"units":[[0,10,1]]})", "sharded_state.json", 10);
  }, {"sharded_state.json", "world_size"});
}

// Chat templates: a loop bound and a string doubled until it passes any prompt's size.
TEST(ParserBounds, ChatTemplateBuilds) {
  const nlohmann::json ctx = {{"messages", nlohmann::json::array()}};
  expect_bounded_error([ctx] { jinja_render("{% for i in range(1000000000) %}x{% endfor %}", ctx, "chat_template"); },
                       {"chat_template", "range"});
  expect_bounded_error([ctx] {
    jinja_render("{% set s = 'ab' * 4000000 %}{% set s = s ~ s %}{% set s = s ~ s %}{% set s = s ~ s %}{{ s }}", ctx,
                 "chat_template");
  }, {"chat_template", "MiB"});
  expect_bounded_error([ctx] {
    jinja_render("{% set s = 'a' * 8000000 %}{{ s | replace('a', 'aaaa') }}", ctx, "chat_template");
  }, {"chat_template", "replace"});
}

}  // namespace
}  // namespace llmq
