// safetensors, config and model-directory parsing: round trips and every kind of bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/file_util.h"
#include "io/hf_dir.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace llmq {
namespace {

using nlohmann::json;

std::string make_file(const std::string& header, size_t data_bytes, size_t pad = 0) {
  std::string h = header + std::string(pad, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; i++) out[i] = (char)((uint64_t)h.size() >> (8 * i));
  return out + h + std::string(data_bytes, '\x01');
}

void expect_error(const std::string& bytes, const std::string& needle) {
  try {
    safetensors_parse_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "f.safetensors");
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("f.safetensors"), std::string::npos) << "error must name the file";
  }
}

TEST(Safetensors, RejectsBadHeaders) {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  EXPECT_NO_THROW(safetensors_parse_header((const uint8_t*)make_file(ok, 16).data(), 8 + ok.size() + 16, "x"));
  expect_error("abc", "truncated");
  expect_error(make_file(ok, 16).substr(0, 20), "truncated");
  expect_error(make_file(ok, 8), "past the data section");
  expect_error(make_file(ok, 20), "trailing");
  expect_error(make_file("{not json", 0), "not valid JSON");
  expect_error(make_file("[1,2]", 0), "JSON object");
  expect_error(make_file(R"({"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4), "unsupported dtype");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,4]}})", 4), "needs 12 bytes");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "non-negative");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4), "reversed");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4), "[begin, end]");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[1099511627777,1099511627777],"data_offsets":[0,4]}})", 4), "too large");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})", 6), "overlaps");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "hole");
  expect_error(make_file(R"({"__metadata__":{"k":1}})", 0), "__metadata__");
  std::string huge(8, '\0');
  huge[5] = 0x10;  // header length 2^44
  expect_error(huge, "100 MB");
}

TEST(Safetensors, RoundTripAndAlignment) {
  test::TempDir tmp("st");
  auto v = test::randn(1000, 3);
  Tensor t = Tensor::empty(DType::F32, {10, 100});
  std::memcpy(t.host_data(), v.data(), 4000);
  Tensor h = Tensor::empty(DType::BF16, {3});
  SafetensorsWriter w;
  w.add("w", t);
  w.add("odd", h);
  w.set_metadata("format", "pt");
  w.write(tmp / "a.safetensors");
  for (LoadMode mode : {LoadMode::Map, LoadMode::Read}) {
    SafetensorsFile f(tmp / "a.safetensors", mode);
    EXPECT_EQ(f.header().data_start % 8, 0u);  // data section 8-byte aligned
    EXPECT_EQ(f.header().metadata.at("format"), "pt");
    Tensor r = f.tensor(*f.find("w"));
    EXPECT_EQ(r.shape(), (Shape{10, 100}));
    EXPECT_EQ(std::memcmp(r.host_data(), v.data(), 4000), 0);
    EXPECT_EQ(f.find("missing"), nullptr);
  }
  // The file is also what Python's json + struct parse (the oracle's reader) accepts: the
  // reference-logit tests load every model through it.
}

TEST(Config, PresetsMatchMetaNumbers) {
  EXPECT_EQ(config_preset("llama3-8b").n_params(), 8030261248);
  EXPECT_EQ(config_preset("llama3-8b").ffn_dim, 14336);
  EXPECT_EQ(config_preset("llama3-70b").ffn_dim, 28672);
  EXPECT_EQ(config_preset("llama3-405b").ffn_dim, 53248);
  EXPECT_EQ(config_preset("llama3.2-1b").ffn_dim, 8192);
  EXPECT_EQ(config_preset("llama3.2-1b").n_params(), 1235814400);  // HF's published count
  EXPECT_EQ(config_preset("llama3-70b").n_params(), 70553706496);
  EXPECT_THROW(config_preset("llama9"), Error);
}

TEST(Config, MetaParamsJson) {
  // Meta's params.json for Llama 3.1 8B.
  auto c = config_parse(R"({"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32,
      "n_kv_heads": 8, "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 500000.0,
      "use_scaled_rope": true, "vocab_size": 128256})", "params.json");
  EXPECT_EQ(c.ffn_dim, 14336);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_TRUE(c.rope_scaling.enabled);
  EXPECT_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.n_params(), 8030261248);
  EXPECT_EQ(meta_ffn_dim(2048, 256, 1.5), 8192);
}

TEST(Config, HfJsonRoundTripAndErrors) {
  ModelConfig c = config_preset("llama3.2-1b");
  ModelConfig d = config_parse(config_to_hf_json(c).dump(), "config.json");
  EXPECT_EQ(d.n_params(), c.n_params());
  EXPECT_EQ(d.rope_scaling.factor, 32.0);
  EXPECT_EQ(d.eos_token_ids, c.eos_token_ids);
  EXPECT_TRUE(d.tie_embeddings);
  auto bad = [](const std::string& text, const std::string& needle) {
    try {
      config_parse(text, "cfg.json");
      ADD_FAILURE() << "expected error: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos);
    }
  };
  json j = config_to_hf_json(c);
  bad("{", "malformed JSON");
  bad("[]", "JSON object");
  bad("{}", "neither");
  auto with = [&](const char* k, json v) { json x = j; x[k] = v; return x.dump(); };
  bad(with("num_attention_heads", 7), "multiple of num_key_value_heads");
  bad(with("hidden_size", "big"), "must be an integer");
  bad(with("hidden_size", -5), "hidden_size");
  bad(with("vocab_size", 0), "vocab_size");
  bad(with("rope_scaling", json{{"rope_type", "yarn"}}), "yarn");
  bad(with("model_type", "gpt2"), "not supported");
  bad(with("eos_token_id", 999999), "eos_token_id");
  json m = j;
  m.erase("hidden_size");
  m["dim"] = nullptr;
  bad(m.dump(), "dim");
}

class ModelDir : public ::testing::Test {
 protected:
  test::TempDir tmp{"dir"};
  ModelConfig c = config_preset("tiny");
  std::string dir = tmp / "m";
  void SetUp() override { model_save(dir, c, init_fill(c, 1), SaveOptions{DType::BF16}); }
  void expect_load_error(const std::string& needle) {
    try {
      model_load(dir);
      ADD_FAILURE() << "expected error: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
  void rewrite_config(const std::function<void(json&)>& f) {
    json j = json::parse(read_text_file(dir + "/config.json"));
    f(j);
    write_file_atomic(dir + "/config.json", j.dump());
  }
};

TEST_F(ModelDir, ShardedEqualsSingle) {
  SaveOptions so{DType::BF16};
  so.max_shard_bytes = 100000;  // forces several shards
  model_save(tmp / "s", c, init_fill(c, 1), so);
  EXPECT_TRUE(std::filesystem::exists(tmp / "s/model.safetensors.index.json"));
  EXPECT_FALSE(std::filesystem::exists(tmp / "s/model.safetensors"));
  Model a = model_load(dir), b = model_load(tmp / "s");
  EXPECT_EQ(std::memcmp(a.weights.layers[1].w_down.host_data(), b.weights.layers[1].w_down.host_data(),
                        a.weights.layers[1].w_down.nbytes()), 0);
  // Re-saving unsharded over it removes the stale shards and index.
  model_save(tmp / "s", a, SaveOptions{DType::BF16});
  EXPECT_FALSE(std::filesystem::exists(tmp / "s/model.safetensors.index.json"));
  Model r = model_load(tmp / "s");
  EXPECT_EQ(std::memcmp(a.weights.embed.host_data(), r.weights.embed.host_data(), a.weights.embed.nbytes()), 0);
}

TEST_F(ModelDir, InitIsDeterministic) {
  model_save(tmp / "b", c, init_fill(c, 1), SaveOptions{DType::BF16});
  EXPECT_EQ(read_text_file(dir + "/model.safetensors"), read_text_file(tmp / "b/model.safetensors"));
  model_save(tmp / "c", c, init_fill(c, 2), SaveOptions{DType::BF16});
  EXPECT_NE(read_text_file(dir + "/model.safetensors"), read_text_file(tmp / "c/model.safetensors"));
}

TEST_F(ModelDir, ShapeMismatch) {
  rewrite_config([](json& j) { j["intermediate_size"] = 100; });
  expect_load_error("mlp.gate_proj.weight' has shape");
}

TEST_F(ModelDir, MissingTensor) {
  rewrite_config([](json& j) { j["num_hidden_layers"] = 3; });
  expect_load_error("missing tensor 'model.layers.2.");
}

TEST_F(ModelDir, TiedButFileHasNoLmHead) {
  rewrite_config([](json& j) { j["tie_word_embeddings"] = false; });
  SaveOptions so{DType::BF16};
  ModelConfig t = c;
  t.tie_embeddings = true;
  model_save(tmp / "t", t, init_fill(t, 1), so);
  std::filesystem::copy_file(dir + "/config.json", tmp / "t/config.json", std::filesystem::copy_options::overwrite_existing);
  dir = tmp / "t";
  expect_load_error("missing tensor 'lm_head.weight'");
}

TEST_F(ModelDir, TruncatedWeights) {
  std::string p = dir + "/model.safetensors";
  std::filesystem::resize_file(p, std::filesystem::file_size(p) - 10);
  expect_load_error("truncated");
}

TEST_F(ModelDir, MissingFilesAndBadIndex) {
  std::filesystem::remove(dir + "/model.safetensors");
  expect_load_error("no model.safetensors");
  write_file_atomic(dir + "/model.safetensors.index.json", R"({"weight_map": {"x": "../../etc/passwd"}})");
  expect_load_error("must name a file in the directory");
  write_file_atomic(dir + "/model.safetensors.index.json", "{]");
  expect_load_error("malformed index");
  std::filesystem::remove(dir + "/config.json");
  expect_load_error("missing config.json");
}

}  // namespace
}  // namespace llmq
