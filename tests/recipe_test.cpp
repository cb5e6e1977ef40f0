// Mixed-precision recipes (issue 28): the rule grammar, per-module quantization written in the
// GPTQ layout (GPTQModel's "dynamic") and in compressed-tensors (several config_groups), read
// back tensor by tensor, and the per-module parts of configs other tools write.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "core/file_util.h"
#include "eval/perplexity.h"
#include "io/hf_dir.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "quant/quant.h"
#include "quant/quantize_model.h"
#include "quant/recipe.h"
#include "test_util.h"

namespace llmq {
namespace {

constexpr const char* kPython = "/usr/bin/python3";  // Debian's, which has python3-torch

std::string L(int64_t l, const char* proj) { return "model.layers." + std::to_string(l) + "." + proj + ".weight"; }

TEST(Recipe, SelectorsMatchWhatTheySay) {
  const QuantRecipe rc = recipe_parse_mix(
      "first:2|last:1=w8a16, layers.3-4&mlp=float, down=w2a16:g32, self_attn&layers.5=w3a16:sym, re:.*\\.2\\.mlp\\.up=w4a16:g64:hqq, "
      "lm_head=w8a16, default=w4a16:g128:gptq");
  ASSERT_EQ(rc.rules.size(), 6u);
  ASSERT_TRUE(rc.has_default);
  EXPECT_EQ(rc.defaults.method, "gptq");
  EXPECT_EQ(rc.defaults.group, 128);
  const int64_t n = 8;  // blocks 0..7: first:2 is 0-1, last:1 is 7
  EXPECT_EQ(recipe_match(rc, L(0, "self_attn.q_proj"), n), 0);
  EXPECT_EQ(recipe_match(rc, L(1, "mlp.down_proj"), n), 0);
  EXPECT_EQ(recipe_match(rc, L(7, "mlp.up_proj"), n), 0);
  EXPECT_EQ(recipe_match(rc, L(3, "mlp.gate_proj"), n), 1);
  EXPECT_EQ(recipe_match(rc, L(4, "mlp.down_proj"), n), 1);  // first match wins over "down"
  EXPECT_EQ(recipe_match(rc, L(3, "self_attn.o_proj"), n), -1);
  EXPECT_EQ(recipe_match(rc, L(6, "mlp.down_proj"), n), 2);
  EXPECT_EQ(recipe_match(rc, L(5, "self_attn.k_proj"), n), 3);
  EXPECT_EQ(recipe_match(rc, L(5, "mlp.up_proj"), n), -1);
  EXPECT_EQ(recipe_match(rc, L(2, "mlp.up_proj"), n), 4);
  EXPECT_EQ(recipe_match(rc, L(2, "mlp.gate_proj"), n), -1);
  EXPECT_EQ(recipe_match(rc, "lm_head.weight", n), 5);  // block selectors never match lm_head
  EXPECT_EQ(rc.rules[1].scheme, "float");
  EXPECT_EQ(rc.rules[3].sym, 1);
  EXPECT_EQ(rc.rules[4].method, "hqq");
  const QuantRecipe opt = recipe_parse_mix("down=g32:sym,default=w4a16:g128:hqq");  // options only: the default's scheme
  EXPECT_EQ(opt.rules[0].scheme, "");
  EXPECT_EQ(opt.rules[0].group, 32);
  EXPECT_EQ(opt.rules[0].sym, 1);

  const QuantRecipe j = recipe_parse_json(R"({"default": "w4a16:g128", "rules": [
      {"match": "mlp", "quant": "w2a16:g16:hqq:axis0"},
      {"match": "first:1|last:1", "scheme": "w8a16"},
      ["o", "w4a16:g64:asym"]]})", "r.json");
  ASSERT_EQ(j.rules.size(), 3u);
  EXPECT_EQ(j.rules[0].axis, 0);
  EXPECT_EQ(j.rules[0].group, 16);
  EXPECT_EQ(j.rules[1].scheme, "w8a16");
  EXPECT_EQ(j.rules[2].sym, 0);
  EXPECT_EQ(recipe_match(j, L(0, "mlp.up_proj"), 4), 0);
  EXPECT_EQ(recipe_match(j, L(3, "self_attn.q_proj"), 4), 1);
}

TEST(Recipe, BadRulesFailNamingTheRule) {
  auto msg = [](auto f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(msg([] { recipe_parse_mix("mlp=w8a8"); }).find("apply to a whole model"), std::string::npos);
  EXPECT_NE(msg([] { recipe_parse_mix("mlp=w4a16:g64:fast"); }).find("unknown option 'fast'"), std::string::npos);
  EXPECT_NE(msg([] { recipe_parse_mix("mlp"); }).find("SELECTOR=QUANT"), std::string::npos);
  EXPECT_NE(msg([] { recipe_parse_mix("mlp=w4a16:smoothquant"); }).find("whole model"), std::string::npos);
  EXPECT_NE(msg([] { recipe_match(recipe_parse_mix("layers.4-2=w8a16"), L(0, "mlp.up_proj"), 8); }).find("layers.4-2"),
            std::string::npos);
  EXPECT_NE(msg([] { recipe_parse_json("{\"rules\": [{\"match\": \"mlp\", \"bits\": 2}]}", "r.json"); }).find("unknown key \"bits\""),
            std::string::npos);
  EXPECT_NE(msg([] { recipe_parse_json("{\"rules\": [{\"quant\": \"w2a16\"}]}", "r.json"); }).find("needs \"match\""),
            std::string::npos);
  EXPECT_NE(msg([] { recipe_parse_json("{\"rules\": [", "r.json"); }).find("r.json: malformed JSON"), std::string::npos);
  EXPECT_NE(msg([] { recipe_match(recipe_parse_mix("re:(=w8a16"), L(0, "mlp.up_proj"), 8); }).find("regular expression"),
            std::string::npos);
}

struct RecipeFixture : ::testing::Test {
  test::TempDir tmp{"recipe"};
  std::string src;
  ModelConfig cfg;
  void SetUp() override {
    // The small preset's widths (dim 384 = 3 x 128, ffn 1024), 4 blocks: g128 divides the
    // attention's inputs, g16 HQQ axis 0 the MLP's outputs.
    cfg = config_preset("small");
    cfg.n_layers = 4;
    src = tmp / "src";
    SaveOptions so;
    so.dtype = DType::BF16;
    model_save(src, cfg, init_fill(cfg, 5), so);
  }
  QuantizeOptions opts(const std::string& mix, const std::string& out, const std::string& format = "gptq") {
    QuantizeOptions o;
    o.model = src;
    o.out = tmp / out;
    o.recipe = recipe_parse_mix(mix);
    o.format = format;
    o.progress = false;
    return o;
  }
  // The bits, group and HQQ axis a loaded linear runs with.
  static std::tuple<int, int64_t, bool> runtime(const Tensor& t) {
    const QuantInfo* q = t.quant();
    if (!q) return {16, 0, false};
    if (q->axis0_classes > 0) return {q->code_bits, t.dim(0) / q->axis0_classes, true};
    return {q->code_bits, q->group, false};
  }
};

// The issue's recipe: attention 4-bit g128, MLP 2-bit g16 HQQ (axis 0, groups of 16 output
// channels), the first and last blocks at 8 bits, lm_head in float. Every tensor in the file
// has the shape its rule's bits imply (read back from the safetensors, not from llmq's
// loader), the loader gives every linear those bits, and the model runs close to the float one.
TEST_F(RecipeFixture, GptqLayoutHasEachRulesBits) {
  QuantizeOptions o = opts("first:1|last:1=w8a16,self_attn=w4a16:g128,mlp=w2a16:g16:hqq:axis0", "mix");
  quantize_model(o);
  const auto j = nlohmann::json::parse(read_text_file(o.out + "/config.json"));
  EXPECT_EQ(j["quantization_config"]["quant_method"], "gptq");
  EXPECT_EQ(j["quantization_config"]["bits"], 4);
  EXPECT_EQ(j["quantization_config"]["lm_head"], false);
  SafetensorsFile f(o.out + "/model.safetensors");
  const int64_t D = cfg.dim, F = cfg.ffn_dim, KV = cfg.kv_dim();
  for (int64_t l = 0; l < cfg.n_layers; l++) {
    const bool edge = l == 0 || l == cfg.n_layers - 1;
    for (auto [proj, M, K] : {std::tuple{"self_attn.q_proj", D, D}, {"self_attn.k_proj", KV, D}, {"self_attn.o_proj", D, D},
                              {"mlp.gate_proj", F, D}, {"mlp.down_proj", D, F}}) {
      const std::string base = L(l, proj).substr(0, L(l, proj).size() - 6);
      const bool mlp = std::string(proj).rfind("mlp", 0) == 0;
      const int bits = edge ? 8 : mlp ? 2 : 4;
      const auto* qw = f.find(base + "qweight");
      ASSERT_NE(qw, nullptr) << base;
      EXPECT_EQ(qw->shape, (Shape{K * bits / 32, M})) << base;
      if (edge) {
        EXPECT_EQ(f.find(base + "scales")->shape, (Shape{1, M})) << base;  // w8a16: per channel
      } else if (mlp) {
        EXPECT_EQ(f.find(base + "scales")->shape, (Shape{M / 16, K})) << base;  // HQQ axis 0, g16
        EXPECT_NE(f.find(base + "zeros"), nullptr) << base;
      } else {
        EXPECT_EQ(f.find(base + "scales")->shape, (Shape{K / 128, M})) << base;
        EXPECT_NE(f.find(base + "qzeros"), nullptr) << base;
      }
    }
  }
  EXPECT_NE(f.find("lm_head.weight"), nullptr);
  Model q = model_load(o.out);
  for (int64_t l = 0; l < cfg.n_layers; l++) {
    const bool edge = l == 0 || l == cfg.n_layers - 1;
    const auto& Ly = q.weights.layers[l];
    EXPECT_EQ(runtime(Ly.wq), (std::tuple<int, int64_t, bool>{edge ? 8 : 4, edge ? D : 128, false})) << l;
    EXPECT_EQ(runtime(Ly.w_down), (std::tuple<int, int64_t, bool>{edge ? 8 : 2, edge ? F : 16, !edge})) << l;
  }
  EXPECT_EQ(q.weights.lm_head.quant(), nullptr);
  std::vector<int32_t> toks(256);
  for (size_t i = 0; i < toks.size(); i++) toks[i] = (int32_t)((i * 7919) % cfg.vocab_size);
  const CompareResult r = eval_compare(model_load(src), q, toks, 128);
  EXPECT_GT(r.kld_mean, 0.0);
  EXPECT_LT(r.kld_mean, 0.1) << "a 4/2/8-bit mix of a random model stays near the float model";
}

// A mix both layouts can state (integer zero points, groups along the inputs: attention 4-bit
// g128, MLP 2-bit g32, the first and last blocks 8-bit, one linear left in float): the
// compressed-tensors and GPTQ-layout files load back identically, and an independent reader
// of compressed-tensors' config_groups (tests/oracle/checkpoint_formats.py ct-read, after
// compressed-tensors' own matching and unpacking) gets the same weights.
TEST_F(RecipeFixture, CompressedTensorsAndGptqLoadIdentically) {
  const std::string mix = "layers.1&o=float,first:1|last:1=w8a16,self_attn=w4a16:g128,mlp=w2a16:g32";
  QuantizeOptions g = opts(mix, "g"), c = opts(mix, "ct", "compressed-tensors");
  quantize_model(g);
  quantize_model(c);
  const auto j = nlohmann::json::parse(read_text_file(c.out + "/config.json"));
  EXPECT_EQ(j["quantization_config"]["format"], "pack-quantized");
  EXPECT_EQ(j["quantization_config"]["config_groups"].size(), 3u);
  const std::string deq = c.out + "-deq";
  ASSERT_EQ(std::system((std::string(kPython) + " " + LLMQ_SOURCE_DIR + "/tests/oracle/checkpoint_formats.py ct-read " +
                         c.out + " " + deq).c_str()), 0);
  Model a = model_load(c.out), b = model_load(g.out), d = model_load(deq);
  for (int64_t l = 0; l < cfg.n_layers; l++) {
    const auto la = a.weights.layers[l].linears(), lb = b.weights.layers[l].linears(), ld = d.weights.layers[l].linears();
    for (size_t k = 0; k < la.size(); k++) {
      ASSERT_EQ(runtime(*la[k]), runtime(*lb[k])) << l << " " << k;
      if (l == 1 && k == 3) {
        EXPECT_EQ(la[k]->quant(), nullptr) << "layers.1 o_proj is left in float";
        continue;
      }
      std::vector<float> wa((size_t)la[k]->numel()), wb(wa.size());
      dequantize_tensor_rows(*la[k], 0, la[k]->dim(0), wa.data());
      dequantize_tensor_rows(*lb[k], 0, lb[k]->dim(0), wb.data());
      int64_t bad_b = -1, bad_d = -1;
      for (size_t i = 0; i < wa.size(); i++) {
        if (bad_b < 0 && wa[i] != wb[i]) bad_b = (int64_t)i;
        if (bad_d < 0 && wa[i] != ld[k]->host<float>()[i]) bad_d = (int64_t)i;
      }
      EXPECT_EQ(bad_b, -1) << "layer " << l << " linear " << k << ": compressed-tensors vs GPTQ layout";
      EXPECT_EQ(bad_d, -1) << "layer " << l << " linear " << k << ": llmq vs the script's reading";
    }
  }
  EXPECT_EQ(std::get<0>(runtime(a.weights.layers[2].w_up)), 2);
  EXPECT_EQ(std::get<0>(runtime(a.weights.layers[3].wq)), 8);
}

// Per-module parts written by other tools. GPTQModel's "dynamic": patterns from the start of
// the module name, the first in the FILE's order deciding (the JSON object is read in order:
// the two overlapping patterns below give block 1's MLP 8 bits only because "8-bit" comes
// first); "-:" leaves a module in float. compressed-tensors: an exact name beats a "re:"
// pattern, which beats "Linear", whatever the group order; "ignore" beats all.
TEST(RecipeConfigs, OtherToolsPerModuleParts) {
  const std::string head = R"("hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 3,
      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "model_type": "llama",)";
  const ModelConfig g = config_parse("{" + head + R"( "quantization_config": {"quant_method": "gptq", "bits": 4,
      "group_size": 128, "sym": true, "lm_head": false, "dynamic": {
        "+:.*\\.1\\.mlp\\..*": {"bits": 8, "group_size": -1},
        ".*\\.mlp\\..*": {"bits": 2, "group_size": 64, "sym": false},
        "-:model\\.layers\\.2\\.self_attn\\.o": {}}}})", "cfg.json");
  EXPECT_EQ(g.quant.of(L(1, "mlp.up_proj")).bits, 8);
  EXPECT_EQ(g.quant.of(L(1, "mlp.up_proj")).group, 0);
  EXPECT_EQ(g.quant.of(L(0, "mlp.up_proj")).bits, 2);
  EXPECT_EQ(g.quant.of(L(0, "mlp.up_proj")).group, 64);
  EXPECT_FALSE(g.quant.of(L(0, "mlp.up_proj")).sym);
  EXPECT_EQ(g.quant.of(L(0, "self_attn.q_proj")).bits, 4);
  EXPECT_FALSE(g.quant.quantizes(L(2, "self_attn.o_proj")));
  EXPECT_TRUE(g.quant.quantizes(L(1, "self_attn.o_proj")));
  EXPECT_FALSE(g.quant.quantizes("lm_head.weight"));
  // The same overrides in the other order: the 2-bit rule now takes block 1's MLP too.
  const ModelConfig g2 = config_parse("{" + head + R"( "quantization_config": {"quant_method": "gptq", "bits": 4,
      "group_size": 128, "dynamic": {".*\\.mlp\\..*": {"bits": 2, "group_size": 64},
        "+:.*\\.1\\.mlp\\..*": {"bits": 8, "group_size": -1}}}})", "cfg.json");
  EXPECT_EQ(g2.quant.of(L(1, "mlp.up_proj")).bits, 2);

  const ModelConfig c = config_parse("{" + head + R"( "quantization_config": {"quant_method": "compressed-tensors",
      "format": "pack-quantized", "ignore": ["lm_head", "re:.*layers\\.0\\.mlp\\.down"],
      "config_groups": {
        "group_0": {"targets": ["model.layers.1.mlp.up_proj"], "weights": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel"}},
        "group_1": {"targets": ["re:.*mlp.*"], "weights": {"num_bits": 2, "type": "int", "symmetric": false, "strategy": "group", "group_size": 32}},
        "group_2": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group", "group_size": 128}}}}})",
                                     "cfg.json");
  EXPECT_EQ(c.quant.bits, 4);  // the base is the group targeting Linear
  EXPECT_EQ(c.quant.of(L(1, "mlp.up_proj")).bits, 8);
  EXPECT_EQ(c.quant.of(L(1, "mlp.gate_proj")).bits, 2);
  EXPECT_EQ(c.quant.of(L(1, "mlp.gate_proj")).group, 32);
  EXPECT_EQ(c.quant.of(L(2, "self_attn.v_proj")).bits, 4);
  EXPECT_FALSE(c.quant.quantizes(L(0, "mlp.down_proj")));
  EXPECT_TRUE(c.quant.quantizes(L(1, "mlp.down_proj")));
  EXPECT_FALSE(c.quant.quantizes("lm_head.weight"));
  // What llmq writes for these reads back as the same per-module quantization.
  const ModelConfig back = config_parse(config_to_hf_json(c).dump(), "back.json");
  for (const std::string& name : quant_linear_names(c)) {
    EXPECT_EQ(back.quant.quantizes(name), c.quant.quantizes(name)) << name;
    if (c.quant.quantizes(name)) EXPECT_TRUE(quant_same_linear(back.quant.of(name), c.quant.of(name))) << name;
  }
  const ModelConfig gback = config_parse(config_to_hf_json(g).dump(), "back.json");
  for (const std::string& name : quant_linear_names(g)) {
    EXPECT_EQ(gback.quant.quantizes(name), g.quant.quantizes(name)) << name;
    if (g.quant.quantizes(name)) EXPECT_TRUE(quant_same_linear(gback.quant.of(name), g.quant.of(name))) << name;
  }
}

// The in-memory uses (finetune --quantize-base RULES, plan --quant RULES): each linear gets its
// rule's runtime tensor, which holds exactly what a checkpoint written by the same rule holds
// (fake_quantize_linear, the writer's codes dequantized), or stays float; the planned bits
// are the per-weight mean of codes (2- and 3-bit in nibbles) plus two f32 words per group.
TEST(RecipeInMemory, BaseQuantizationAndPlanBits) {
  ModelConfig c = config_preset("small");
  c.n_layers = 2;
  const QuantRecipe rc = recipe_parse_mix("layers.1&down=float,mlp=w2a16:g16:hqq:axis0,default=w4a16:g128");
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 0.02f);
  for (const auto& [name, want_bits, M, K] : {std::tuple{std::string("model.layers.0.mlp.up_proj.weight"), 2, 1024, 384},
                                              {"model.layers.0.self_attn.q_proj.weight", 4, 384, 384},
                                              {"model.layers.1.mlp.down_proj.weight", 0, 384, 1024}}) {
    Tensor W = Tensor::empty(DType::F32, {M, K});
    for (int64_t i = 0; i < W.numel(); i++) W.host<float>()[i] = nd(rng);
    const Tensor t = recipe_quantize_linear(rc, W.host<float>(), W.dim(0), W.dim(1), name, c.n_layers);
    if (want_bits == 0) {
      EXPECT_FALSE(t.defined()) << name;
      continue;
    }
    ASSERT_TRUE(t.defined()) << name;
    EXPECT_EQ(t.quant()->code_bits, want_bits) << name;
    std::vector<float> got((size_t)W.numel());
    dequantize_tensor_rows(t, 0, W.dim(0), got.data());
    const std::vector<float> ref = fake_quantize_linear(W, name.find("mlp") != std::string::npos ? "w2a16:g16:hqq:axis0" : "w4a16:g128", name);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < got.size(); i++) worst = std::max(worst, (double)std::fabs(got[i] - ref[i])), scale = std::max(scale, (double)std::fabs(ref[i]));
    // Same codes; the runtime folds HQQ axis-0 scales as s and s*z (f32), so values agree to
    // f32 rounding of scale*code - scale*zero: a few ulps of the largest weight.
    EXPECT_LE(worst, 4e-6 * scale) << name;
  }
  // Planned bits by hand: per block, attention 4 * 384^2 + 2 * 384*128 weights at 4 + 64/128,
  // MLP 3 * 384*1024 at 4 + 64/16 (block 1's down at 32, float).
  const double att = 2.0 * 384 * 384 + 2.0 * 384 * 128, mlp = 384.0 * 1024;
  const double want = (2 * att * 4.5 + 3 * mlp * 8.0 + 2 * mlp * 8.0 + mlp * 32.0) / (2 * att + 6 * mlp);
  EXPECT_NEAR(recipe_linear_bits(rc, c), want, 1e-9);
}

// Bad input: one clear error naming the rule and the tensor; a rule that decides nothing is a
// warning, not an error.
TEST_F(RecipeFixture, BadInputNamesRuleAndTensor) {
  auto msg = [&](const std::string& mix, const std::string& format = "gptq") {
    try {
      quantize_model(opts(mix, "bad", format));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  std::string m = msg("mlp=w4a16:g96");  // 96 divides 384 (gate/up) but not 1024 (down)
  EXPECT_NE(m.find("group size 96 does not divide"), std::string::npos) << m;
  EXPECT_NE(m.find("mlp.down_proj"), std::string::npos) << m;
  EXPECT_NE(m.find("rule 'mlp=w4a16:g96'"), std::string::npos) << m;
  m = msg("down=w2a16:g16");
  EXPECT_NE(m.find("add hqq:axis0"), std::string::npos) << m;
  EXPECT_NE(m.find("down_proj"), std::string::npos) << m;
  m = msg("mlp=w4a16:hqq:sym");
  EXPECT_NE(m.find("hqq with symmetric codes"), std::string::npos) << m;
  m = msg("mlp=w4a16:g64:axis0");
  EXPECT_NE(m.find("axis 0"), std::string::npos) << m;
  m = msg("mlp=w2a16:g64:hqq", "compressed-tensors");
  EXPECT_NE(m.find("integer zero points"), std::string::npos) << m;
  m = msg("mlp=w3a16", "compressed-tensors");
  EXPECT_NE(m.find("3-bit codes do not pack"), std::string::npos) << m;
  m = msg("mlp=w4a16:gptq,self_attn=w4a16:awq");
  EXPECT_NE(m.find("both gptq and awq"), std::string::npos) << m;
  QuantizeOptions o = opts("layers.9=w8a16,mlp=w8a16", "warn");
  testing::internal::CaptureStderr();
  quantize_model(o);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("rule 'layers.9=w8a16' (--mix) matches no linear"), std::string::npos) << err;
}

}  // namespace
}  // namespace llmq
