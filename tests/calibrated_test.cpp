// Calibrated quantization: calibration data, the 3-bit GPTQ packing, AWQ/SmoothQuant against
// a PyTorch version of the authors' code (tests/oracle/awq_ref.py), the block pipeline on a
// tiny model (GPTQ beats RTN, HQQ checkpoints load as HQQ computed them), bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/file_util.h"
#include "data/prepare.h"
#include "data/shards.h"
#include "eval/perplexity.h"
#include "io/hf_dir.h"
#include "ops/ops.h"
#include "quant/awq.h"
#include "quant/calibration.h"
#include "quant/gptq_format.h"
#include "quant/hqq.h"
#include "quant/quant.h"
#include "quant/quantize_model.h"
#include "quant/recipe.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace llmq {
namespace {

const std::string kRoot = LLMQ_SOURCE_DIR;
const std::string kTok = kRoot + "/models/llama3-tokenizer";

using test::run_output;

void write_f32(const std::string& path, const std::vector<float>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), (std::streamsize)(v.size() * 4));
}

// Text from the fetched corpora: the first `bytes` of the World English Bible.
std::string corpus(size_t bytes, size_t skip = 0) {
  const std::string t = read_text_file(kRoot + "/data/text/web.txt");
  return t.substr(skip, bytes);
}

// AutoGPTQ's 3-bit pack loop (qlinear_cuda_old.pack), as its code places the bits: 10
// values, the low 2 bits of the 11th at 30-31 and its top bit in the next word's bit 0, ...
std::vector<uint32_t> autogptq_pack3(const std::vector<uint32_t>& v) {  // 32 values -> 3 words
  std::vector<uint32_t> w(3, 0);
  size_t i = 0;
  for (size_t j = i; j < i + 10; j++) w[0] |= v[j] << (3 * (j - i));
  i += 10;
  w[0] |= v[i] << 30;
  w[1] |= (v[i] >> 2) & 1;
  i += 1;
  for (size_t j = i; j < i + 10; j++) w[1] |= v[j] << (3 * (j - i) + 1);
  i += 10;
  w[1] |= v[i] << 31;
  w[2] |= (v[i] >> 1) & 3;
  i += 1;
  for (size_t j = i; j < i + 10; j++) w[2] |= v[j] << (3 * (j - i) + 2);
  return w;
}

TEST(GptqFormat, ThreeBitsAsAutoGptqPacks) {
  std::mt19937_64 rng(11);
  const int64_t M = 5, K = 64;
  std::vector<uint8_t> codes(M * K), back(M * K);
  for (auto& c : codes) c = (uint8_t)(rng() % 8);
  const auto qw = gptq_pack_qweight(codes.data(), M, K, 3);
  ASSERT_EQ((int64_t)qw.size(), K * 3 / 32 * M);
  for (int64_t m = 0; m < M; m++)
    for (int64_t b = 0; b < K / 32; b++) {
      std::vector<uint32_t> v(32);
      for (int j = 0; j < 32; j++) v[j] = codes[m * K + b * 32 + j];
      const auto w = autogptq_pack3(v);
      for (int r = 0; r < 3; r++) EXPECT_EQ((uint32_t)qw[(b * 3 + r) * M + m], w[r]) << m << " " << b << " " << r;
    }
  gptq_unpack_qweight(qw.data(), M, K, 3, back.data());
  EXPECT_EQ(codes, back);
  std::vector<float> zero(64 * 2), zb(64 * 2);
  for (auto& z : zero) z = (float)(1 + rng() % 7);
  gptq_unpack_qzeros(gptq_pack_qzeros(zero.data(), 64, 2, 3, true).data(), 64, 2, 3, true, zb.data());
  EXPECT_EQ(zero, zb);
  EXPECT_FALSE(gptq_packable(48, 3));  // 3 bits need whole groups of 32 values
  EXPECT_TRUE(gptq_packable(48, 2));
}

// AWQ's scale search over an MLP and its clipping search, and SmoothQuant's factors, against
// the reference code on the same data. Inputs have a few large channels (the outliers AWQ
// and SmoothQuant exist for), so the search does not just pick ratio 0.
TEST(Awq, MatchesReference) {
  test::TempDir tmp("awq");
  const int64_t n = 1100, K = 128, F = 192;
  for (auto [bits, group, sym] : {std::tuple{4, 32, false}, std::tuple{3, 64, true}}) {
    auto x = test::randn(n * K, 1);
    for (int64_t r = 0; r < n; r++)
      for (int64_t k : {3, 50, 97}) x[r * K + k] *= 12.f;
    const auto wg = test::randn(F * K, 2, 0.1f), wu = test::randn(F * K, 3, 0.1f), wd = test::randn(K * F, 4, 0.1f);
    write_f32(tmp / "x", x), write_f32(tmp / "wg", wg), write_f32(tmp / "wu", wu), write_f32(tmp / "wd", wd);
    const double alpha = 0.8;
    auto j = nlohmann::json::parse(run_output(fmt::format("/usr/bin/python3 {}/tests/oracle/awq_ref.py {} {} {} {} {} {} {} {}",
                                                   kRoot, tmp.path.string(), n, K, F, bits, group, sym ? 1 : 0, alpha)));
    // llmq: the same search, the MLP computed in double (the reference's f32 products differ
    // by ~1e-6 relative, far below the loss differences between grid points here).
    auto mlp = [&](const std::vector<float>& g, const std::vector<float>& u, std::vector<double>& out) {
      out.assign(n * K, 0.0);
      std::vector<double> h(F);
      for (int64_t r = 0; r < n; r++) {
        for (int64_t f = 0; f < F; f++) {
          double a = 0, b = 0;
          for (int64_t k = 0; k < K; k++) a += (double)x[r * K + k] * g[f * K + k], b += (double)x[r * K + k] * u[f * K + k];
          h[f] = a / (1 + std::exp(-a)) * b;
        }
        for (int64_t k = 0; k < K; k++) {
          double s = 0;
          for (int64_t f = 0; f < F; f++) s += h[f] * wd[k * F + f];
          out[r * K + k] = s;
        }
      }
    };
    std::vector<double> org, cur;
    mlp(wg, wu, org);
    std::vector<float> x_mean(K, 0.f);
    for (int64_t k = 0; k < K; k++) {
      double s = 0;
      for (int64_t r = 0; r < n; r++) s += std::fabs(x[r * K + k]);
      x_mean[k] = (float)(s / n);
    }
    auto res = awq_search_scale(x_mean, 20, [&](const std::vector<float>& s) {
      std::vector<float> g(F * K), u(F * K);
      awq_scaled_fake_quant(wg.data(), F, K, s.data(), bits, group, sym, true, g.data());
      awq_scaled_fake_quant(wu.data(), F, K, s.data(), bits, group, sym, true, u.data());
      mlp(g, u, cur);
      double e = 0;
      for (size_t i = 0; i < cur.size(); i++) e += (cur[i] - org[i]) * (cur[i] - org[i]);
      return e / (double)cur.size();
    });
    EXPECT_EQ(res.best, j["best"].get<int>()) << bits;
    EXPECT_GT(res.best, 0) << "outlier channels should call for scaling";
    const auto ref_scales = j["scales"].get<std::vector<float>>();
    for (int64_t k = 0; k < K; k++) EXPECT_NEAR(res.scales[k], ref_scales[k], 2e-6 * std::fabs(ref_scales[k])) << k;
    const auto ref_losses = j["losses"].get<std::vector<double>>();
    for (int i = 0; i < 20; i++) EXPECT_NEAR(res.losses[i], ref_losses[i], 1e-3 * ref_losses[i]) << i;
    // Clipping of down_proj on its inputs h.
    std::vector<float> h(n * F);
    for (int64_t r = 0; r < n; r++)
      for (int64_t f = 0; f < F; f++) {
        float a = 0, b = 0;
        for (int64_t k = 0; k < K; k++) a += x[r * K + k] * wg[f * K + k], b += x[r * K + k] * wu[f * K + k];
        h[r * F + f] = a / (1 + std::exp(-a)) * b;
      }
    const auto mv = awq_search_clip(wd.data(), K, F, h.data(), n, bits, group, sym, true);
    const auto ref_clip = j["clip"].get<std::vector<float>>();
    ASSERT_EQ(mv.size(), ref_clip.size());
    // Equal but where two shrink steps' errors tie to f32 rounding (sums in another order):
    // at most 2% of (row, group) pairs, and those within one step (5% of the range).
    int64_t same = 0, shrunk = 0;
    for (size_t i = 0; i < mv.size(); i++) {
      same += std::fabs(mv[i] - ref_clip[i]) <= 1e-6f * ref_clip[i];
      EXPECT_NEAR(mv[i], ref_clip[i], 0.051 * ref_clip[i]) << i;
    }
    for (int64_t r = 0; r < K; r++)
      for (int64_t g = 0; g < F / group; g++) {
        float a = 0;
        for (int64_t i = 0; i < group; i++) a = std::max(a, std::fabs(wd[r * F + g * group + i]));
        shrunk += mv[r * (F / group) + g] < a;
      }
    EXPECT_GE(same, (int64_t)(0.98 * mv.size())) << bits;
    EXPECT_GT(shrunk, (int64_t)(mv.size() / 10)) << "the search should clip somewhere";
    // SmoothQuant's factors for (gate, up).
    std::vector<float> amax(K, 0.f);
    for (int64_t r = 0; r < n; r++)
      for (int64_t k = 0; k < K; k++) amax[k] = std::max(amax[k], std::fabs(x[r * K + k]));
    const auto s = smoothquant_scales(amax, {{wg.data(), F}, {wu.data(), F}}, alpha);
    const auto ref_s = j["smooth"].get<std::vector<float>>();
    for (int64_t k = 0; k < K; k++) EXPECT_NEAR(s[k], ref_s[k], 2e-6 * ref_s[k]) << k;
  }
}

TEST(Calibration, TextJsonlAndShards) {
  test::TempDir tmp("calib");
  const std::string text = corpus(40000);
  { std::ofstream(tmp / "c.txt") << text; }
  CalibOptions o;
  o.source = tmp / "c.txt";
  o.samples = 6, o.seq_len = 100, o.tokenizer = kTok;
  const CalibData a = calib_load(o, "", 128256), b = calib_load(o, "", 128256);
  ASSERT_EQ(a.seqs.size(), 6u);
  EXPECT_EQ(a.seqs, b.seqs);  // reproducible
  o.seed = 1;
  EXPECT_NE(calib_load(o, "", 128256).seqs, a.seqs);  // another seed, other windows
  // Every window is a run of the tokenized text.
  auto tok = tokenizer_load(kTok);
  std::vector<int32_t> all = {tok->bos_id};
  for (int32_t t : tok->encode(text, false)) all.push_back(t);
  EXPECT_EQ(a.source_tokens, (int64_t)all.size());
  for (const auto& w : a.seqs) EXPECT_NE(std::search(all.begin(), all.end(), w.begin(), w.end()), all.end());
  // JSONL: documents from "text", each starting with BOS.
  {
    std::ofstream f(tmp / "c.jsonl");
    for (int d = 0; d < 20; d++) f << nlohmann::json{{"text", corpus(2000, 2000 * d)}}.dump() << "\n";
  }
  o.source = tmp / "c.jsonl";
  const CalibData jl = calib_load(o, "", 128256);
  EXPECT_EQ(jl.kind, "jsonl");
  EXPECT_EQ(jl.seqs.size(), 6u);
  { std::ofstream(tmp / "bad.jsonl") << "{\"text\": \"ok\"}\n{\"txt\": 1}\n"; }
  o.source = tmp / "bad.jsonl";
  try {
    calib_load(o, "", 128256);
    ADD_FAILURE() << "a line without text must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
  }
  // Token shards: the train split, windows inside one shard.
  PrepareOptions po;
  po.inputs = {tmp / "c.txt"};
  po.out_dir = tmp / "shards";
  po.shard_tokens = 3000;
  po.progress = false;
  data_prepare(*tok, po);
  o.source = tmp / "shards";
  const CalibData sh = calib_load(o, "", 128256);
  EXPECT_EQ(sh.kind, "shards");
  TokenDataset ds = token_dataset_open(tmp / "shards");
  for (const auto& w : sh.seqs) {
    bool found = false;
    for (const auto& s : ds.train.shards)
      found = found || std::search(s.ids(), s.ids() + s.tokens, w.begin(), w.end(),
                                   [](uint32_t a, int32_t b) { return (int32_t)a == b; }) != s.ids() + s.tokens;
    EXPECT_TRUE(found);
  }
  EXPECT_THROW(calib_load(o, "", 1000), Error);  // ids outside a smaller vocabulary
  // Too few tokens for one window; missing source; nothing given.
  o.source = tmp / "c.txt";
  o.seq_len = 1000000;
  EXPECT_THROW(calib_load(o, "", 128256), Error);
  o.source = tmp / "missing.txt";
  EXPECT_THROW(calib_load(o, "", 128256), Error);
  o.source = "";
  EXPECT_THROW(calib_load(o, "", 128256), Error);
}

// A tiny model with the Llama 3 vocabulary, so text calibration works.
struct PipelineFixture : ::testing::Test {
  test::TempDir tmp{"calpipe"};
  ModelConfig cfg;
  std::string src;
  std::vector<int32_t> eval_tokens;
  void SetUp() override {
    cfg = config_preset("tiny");
    cfg.vocab_size = 128256;
    src = tmp / "src";
    model_save(src, cfg, init_fill(cfg, 21), SaveOptions{});
    { std::ofstream(tmp / "calib.txt") << corpus(60000); }
    auto tok = tokenizer_load(kTok);
    eval_tokens = tok->encode(corpus(8000, 200000), false);  // text the calibration never saw
  }
  QuantizeOptions opts(const std::string& method, const std::string& scheme, int64_t group) {
    QuantizeOptions o;
    o.model = src;
    o.out = tmp / (method + scheme + std::to_string(group));
    o.method = method, o.scheme = scheme, o.group = group;
    o.keep = {"embed", "lm_head"};
    o.progress = false;
    o.calib.source = tmp / "calib.txt";
    o.calib.tokenizer = kTok;
    o.calib.samples = 16, o.calib.seq_len = 128;
    return o;
  }
  CompareResult compare(const std::string& dir) {
    return eval_compare(model_load(src), model_load(dir), eval_tokens, 128);
  }
};

// GPTQ's whole point: on held-out text, a smaller divergence from the float model than
// round-to-nearest at the same setting (3-bit, where the difference is large; measured
// 1.9e-6 vs 2.5e-6 on this random model, whose logits are nearly flat, hence the small KLs).
TEST_F(PipelineFixture, GptqBeatsRtnAndLoads) {
  QuantizeOptions g = opts("gptq", "w3a16", 32), r = opts("rtn", "w3a16", 32);
  const QuantizeResult res = quantize_model(g);
  EXPECT_EQ(res.calib_tokens, 16 * 128);
  quantize_model(r);
  Model q = model_load(g.out);
  EXPECT_EQ(q.config.quant.bits, 3);
  EXPECT_EQ(q.config.quant.algorithm, "gptq");
  const CompareResult cg = compare(g.out), cr = compare(r.out);
  EXPECT_LT(cg.kld_mean, 0.9 * cr.kld_mean) << "gptq " << cg.kld_mean << " rtn " << cr.kld_mean;
  EXPECT_GT(cr.kld_mean, 0.0);
  // The same data and seed give the same checkpoint.
  g.out = tmp / "gptq_again";
  quantize_model(g);
  EXPECT_EQ(read_text_file(g.out + "/model.safetensors"), read_text_file(tmp / "gptqw3a1632/model.safetensors"));
}

// AWQ and SmoothQuant fold scales into the RMSNorms (written in f32) and still model the
// same function: their divergence from the float model is that of quantization alone, no
// more than round-to-nearest's at the same setting (a folding mistake, e.g. a norm divided
// without the columns multiplied, changes the function and is far above it).
TEST_F(PipelineFixture, AwqAndSmoothQuantFoldScales) {
  for (auto [method, scheme, group] : {std::tuple{"awq", "w4a16", 32}, std::tuple{"smoothquant", "w8a8", -1}}) {
    QuantizeOptions o = opts(method, scheme, group);
    const QuantizeResult res = quantize_model(o);
    Model q = model_load(o.out), f = model_load(src);
    EXPECT_EQ(q.config.quant.algorithm, method);
    double changed = 0;
    for (int64_t i = 0; i < cfg.dim; i++)
      changed += std::fabs(q.weights.layers[0].attn_norm.host<float>()[i] - f.weights.layers[0].attn_norm.host<float>()[i]);
    EXPECT_GT(changed, 1e-3) << method << ": the scales must be folded into input_layernorm";
    const CompareResult c = compare(o.out);
    QuantizeOptions r = opts("rtn", scheme, group);
    quantize_model(r);
    const CompareResult cr = compare(r.out);
    EXPECT_LT(c.kld_mean, 1.2 * cr.kld_mean) << method;
    if (std::string(method) == "awq") {
      EXPECT_EQ(res.messages.size(), (size_t)cfg.n_layers);
    }
  }
}

// Recipes with a calibrated method (issue 28): GPTQ on the attention at 4 bits, HQQ on the
// MLP at 3 bits, block 0's down_proj in float. Every linear loads with its rule's bits and
// method, GPTQ feeds HQQ's codes forward as its own (the model stays within round-to-
// nearest's divergence at the same mix), and the float linear is the source's. AWQ with a
// linear left in float writes that linear folded: the fold divides input_layernorm by the
// scales q/k/v's columns are multiplied by, so an unscaled float q_proj would change the
// function; kept, the model is no further from the float one than with q/down quantized.
TEST_F(PipelineFixture, RecipeMixesCalibratedAndPlainMethods) {
  QuantizeOptions g = opts("gptq", "w4a16", 32);
  g.keep = {"embed"};
  g.recipe = recipe_parse_mix("layers.0&down=float,mlp=w3a16:g32:hqq");
  quantize_model(g);
  QuantizeOptions r = opts("rtn", "w4a16", 32);
  r.keep = {"embed"};
  r.recipe = recipe_parse_mix("layers.0&down=float,mlp=w3a16:g32:hqq");
  r.calib.source = "";  // no rule calibrates
  quantize_model(r);
  Model q = model_load(g.out), f = model_load(src);
  EXPECT_EQ(q.config.quant.algorithm, "gptq");
  for (int64_t l = 0; l < cfg.n_layers; l++) {
    const auto& Ly = q.weights.layers[l];
    ASSERT_NE(Ly.wq.quant(), nullptr);
    EXPECT_EQ(Ly.wq.quant()->code_bits, 4);
    EXPECT_EQ(q.config.quant.of("model.layers." + std::to_string(l) + ".self_attn.q_proj.weight").algorithm, "gptq");
    EXPECT_EQ(Ly.w_up.quant()->code_bits, 3);
    EXPECT_EQ(q.config.quant.of("model.layers." + std::to_string(l) + ".mlp.up_proj.weight").algorithm, "hqq");
    EXPECT_EQ(Ly.w_down.quant() == nullptr, l == 0) << l;
  }
  EXPECT_EQ(q.weights.lm_head.quant(), nullptr) << "lm_head stays in float unless a rule names it";
  const Tensor d0 = to_f32(q.weights.layers[0].w_down), s0 = to_f32(f.weights.layers[0].w_down);
  for (int64_t i = 0; i < d0.numel(); i++) {  // the source's values (an f32 source is written as f16)
    const float a = d0.host<float>()[i], b = s0.host<float>()[i];
    ASSERT_TRUE(a == b || a == f16_to_f32(f32_to_f16(b))) << i << ": " << a << " vs " << b;
  }
  const CompareResult cg = compare(g.out), cr = compare(r.out);
  EXPECT_GT(cg.kld_mean, 0.0);
  EXPECT_LT(cg.kld_mean, 1.2 * cr.kld_mean) << "gptq+hqq " << cg.kld_mean << " rtn+hqq " << cr.kld_mean;

  // AWQ with per-module bits: MLP at 3 bits, the rest at 4; each linear searched and written at
  // its own bits, no further from the float model than round-to-nearest at the same mix.
  QuantizeOptions am = opts("awq", "w4a16", 32), rm = opts("rtn", "w4a16", 32);
  am.out += "-mix", rm.out += "-mix";
  am.recipe = rm.recipe = recipe_parse_mix("mlp=w3a16:g32");
  rm.calib.source = "";
  quantize_model(am);
  quantize_model(rm);
  Model amq = model_load(am.out);
  EXPECT_EQ(amq.weights.layers[1].w_gate.quant()->code_bits, 3);
  EXPECT_EQ(amq.weights.layers[1].wv.quant()->code_bits, 4);
  EXPECT_EQ(amq.config.quant.of("model.layers.1.mlp.gate_proj.weight").algorithm, "awq");
  const CompareResult cam = compare(am.out), crm = compare(rm.out);
  EXPECT_LT(cam.kld_mean, 1.2 * crm.kld_mean) << "awq mix " << cam.kld_mean << " rtn mix " << crm.kld_mean;

  QuantizeOptions a = opts("awq", "w4a16", 32), k = opts("awq", "w4a16", 32);
  k.out += "-keepdown";
  k.keep = {"embed", "lm_head", "q_proj", "down_proj"};  // q: scaled by the input_layernorm fold
  quantize_model(a);
  quantize_model(k);
  Model kq = model_load(k.out);
  EXPECT_EQ(kq.weights.layers[1].w_down.quant(), nullptr);
  EXPECT_EQ(kq.weights.layers[1].wq.quant(), nullptr);
  // The kept q_proj is the source's with its input columns multiplied by the scales the
  // input_layernorm was divided by (s = source norm / written norm), to the written dtype's
  // rounding (bf16: relative 2^-8; 1e-2 allows both roundings); the scales are far from 1.
  for (int64_t l = 0; l < cfg.n_layers; l++) {
    const Tensor qs = to_f32(f.weights.layers[l].wq), qk = to_f32(kq.weights.layers[l].wq);
    const float* ns = f.weights.layers[l].attn_norm.host<float>();
    const float* nk = kq.weights.layers[l].attn_norm.host<float>();
    double worst = 0, spread = 0;
    for (int64_t r = 0; r < qs.dim(0); r++)
      for (int64_t j = 0; j < cfg.dim; j++) {
        const double sc = (double)ns[j] / (double)nk[j], want = qs.host<float>()[r * cfg.dim + j] * sc;
        spread = std::max(spread, std::fabs(sc - 1.0));
        worst = std::max(worst, std::fabs(qk.host<float>()[r * cfg.dim + j] - want) / (std::fabs(want) + 1e-6));
      }
    EXPECT_GT(spread, 0.05) << "block " << l << ": AWQ should have scaled q/k/v's inputs";
    EXPECT_LT(worst, 1e-2) << "block " << l << ": the kept q_proj is not the folded one";
  }
  const CompareResult ca = compare(a.out), ck = compare(k.out);
  EXPECT_LT(ck.kld_mean, ca.kld_mean) << "awq, q/down_proj kept " << ck.kld_mean << " vs quantized " << ca.kld_mean;
}

// SmoothQuant's reason to exist: channels whose activations are far larger than the rest
// (as large LLMs grow them) make per-tensor int8 activations coarse. Here the same function
// is written with outliers: 3 channels of both RMSNorm gains x 40 and the q/k/v, gate/up
// input columns / 40 (exactly equivalent in exact arithmetic). Per-tensor W8A8 round-to-
// nearest then loses far more than SmoothQuant, which migrates the outliers into the weights
// (measured mean KL 2.9e-6 vs 2.6e-7; the test asks for a factor 2).
TEST_F(PipelineFixture, SmoothQuantTamesOutlierChannels) {
  const float f = 40.f;
  const TensorFill base = init_fill(cfg, 21);
  auto outlier = [&](int64_t k) { return k == 5 || k == 17 || k == 40; };
  model_save(tmp / "outliers", cfg,
             [&](const HfTensorSpec& spec, DType dt, uint8_t* dst, uint64_t off, uint64_t n) {
               base(spec, dt, dst, off, n);
               const bool norm = spec.name.ends_with("layernorm.weight");
               const bool lin = spec.name.find("q_proj") != std::string::npos ||
                                spec.name.find("k_proj") != std::string::npos ||
                                spec.name.find("v_proj") != std::string::npos ||
                                spec.name.find("gate_proj") != std::string::npos ||
                                spec.name.find("up_proj") != std::string::npos;
               if (!norm && !lin) return;
               ASSERT_EQ(dt, DType::BF16);
               for (uint64_t i = 0; i + 1 < n; i += 2) {
                 const int64_t e = (int64_t)((off + i) / 2), k = e % cfg.dim;
                 if (!outlier(k)) continue;
                 uint16_t h;
                 std::memcpy(&h, dst + i, 2);
                 h = f32_to_bf16(norm ? bf16_to_f32(h) * f : bf16_to_f32(h) / f);
                 std::memcpy(dst + i, &h, 2);
               }
             },
             SaveOptions{});
  QuantizeOptions r = opts("rtn", "w8a8", -1), s = opts("smoothquant", "w8a8", -1);
  for (QuantizeOptions* o : {&r, &s}) o->model = tmp / "outliers", o->act_scale = "tensor";
  quantize_model(r);
  quantize_model(s);
  Model q = model_load(s.out);
  EXPECT_TRUE(q.config.quant.act_per_tensor);
  const Model base_m = model_load(tmp / "outliers");
  const CompareResult cr = eval_compare(base_m, model_load(r.out), eval_tokens, 128),
                      cs = eval_compare(base_m, model_load(s.out), eval_tokens, 128);
  EXPECT_LT(cs.kld_mean, 0.5 * cr.kld_mean) << "smoothquant " << cs.kld_mean << " rtn " << cr.kld_mean;
}

// An HQQ checkpoint loads as the weights hqq_quantize chose, up to the f16 rounding of its
// scale and zero: |err| <= scale * 2^-11 * (|code - zero| + 1.001 |zero|) + f32 rounding.
TEST_F(PipelineFixture, HqqCheckpointLoadsAsComputed) {
  QuantizeOptions o = opts("hqq", "w4a16", -1);  // HQQ's default group: 64
  quantize_model(o);
  Model q = model_load(o.out), f = model_load(src);
  EXPECT_TRUE(q.config.quant.float_zeros);
  EXPECT_EQ(q.config.quant.group, 64);
  const Tensor& W = f.weights.layers[1].w_down;
  const Tensor w32 = to_f32(W);
  const int64_t M = W.dim(0), K = W.dim(1);
  HqqOptions ho;
  ho.bits = 4, ho.group = 64;
  const HqqResult r = hqq_quantize(w32.host<float>(), M, K, ho);
  // The loaded weights against the solver's, relative to the f16 rounding bound of the
  // stored scale and zero (group_of(m, k): the group of weight (m, k)).
  auto worst_vs_solver = [&](const Tensor& loaded, const HqqResult& r, const HqqOptions& ho, auto group_of) {
    const auto ref = hqq_dequantize(r, M, K, ho);
    std::vector<float> got((size_t)(M * K));
    dequantize_tensor_rows(loaded, 0, M, got.data());
    double worst = 0;
    for (int64_t m = 0; m < M; m++)
      for (int64_t k = 0; k < K; k++) {
        const int64_t g = group_of(m, k);
        const double s = r.scale[g], z = r.zero[g], c = r.codes[m * K + k];
        const double bound = s * std::ldexp(1.0, -11) * (std::fabs(c - z) + 1.001 * std::fabs(z)) + 1e-6 * s * 16;
        worst = std::max(worst, std::fabs(got[m * K + k] - ref[m * K + k]) / bound);
      }
    return worst;
  };
  EXPECT_LE(worst_vs_solver(q.weights.layers[1].w_down, r, ho, [&](int64_t m, int64_t k) { return m * (K / 64) + k / 64; }),
            1.0);
  // HQQ beats min-max RTN at the same group, as its paper claims, on this model's weights.
  QuantizeOptions rt = opts("rtn", "w4a16", 64);
  quantize_model(rt);
  EXPECT_LT(compare(o.out).kld_mean, compare(rt.out).kld_mean);
  // Axis 0 (groups along the outputs; 32 divides every row count here): the checkpoint loads
  // as the solver chose, group j = (m mod M/32)*K + k, within the same f16 bound.
  QuantizeOptions a0 = opts("hqq", "w4a16", 32);
  a0.hqq_axis = 0;
  quantize_model(a0);
  Model q0 = model_load(a0.out);
  EXPECT_EQ(q0.config.quant.hqq_axis, 0);
  ho.group = 32, ho.axis = 0;
  const HqqResult r0 = hqq_quantize(w32.host<float>(), M, K, ho);
  EXPECT_LE(worst_vs_solver(q0.weights.layers[1].w_down, r0, ho, [&](int64_t m, int64_t k) { return (m % (M / 32)) * K + k; }),
            1.0);
  // and runs: close to the float model (KL of the same order as axis 1's at group 32).
  QuantizeOptions a1 = opts("hqq", "w4a16", 32);
  quantize_model(a1);
  EXPECT_LT(compare(a0.out).kld_mean, 2 * compare(a1.out).kld_mean);
}

// FP8 with static activation scales: each linear's input_scale is amax/448 of its input over
// the calibration windows. Layer 0's q/k/v input is rmsnorm(embedding) * attn_norm, computed
// here in double from the windows alone; the model then runs with those scales.
TEST_F(PipelineFixture, Fp8StaticScalesFromCalibration) {
  QuantizeOptions o = opts("rtn", "fp8", -1);
  o.act_scale = "static";
  quantize_model(o);
  Model q = model_load(o.out), f = model_load(src);
  ASSERT_TRUE(q.config.quant.act_static);
  const CalibData d = calib_load(o.calib, "", cfg.vocab_size);
  const Tensor e = to_f32(f.weights.embed);
  double amax = 0;
  for (const auto& w : d.seqs)
    for (int32_t t : w) {
      const float* x = e.host<float>() + (int64_t)t * cfg.dim;
      double ss = 0;
      for (int64_t i = 0; i < cfg.dim; i++) ss += (double)x[i] * x[i];
      const double r = 1.0 / std::sqrt(ss / cfg.dim + cfg.norm_eps);
      for (int64_t i = 0; i < cfg.dim; i++)
        amax = std::max(amax, std::fabs(x[i] * r * f.weights.layers[0].attn_norm.host<float>()[i]));
    }
  // f32 norm vs double: a few ulps of the amax.
  for (const Tensor* W : {&q.weights.layers[0].wq, &q.weights.layers[0].wk, &q.weights.layers[0].wv})
    EXPECT_NEAR(W->quant()->act_scale, amax / 448, 1e-5 * amax / 448);
  for (const auto& L : q.weights.layers)
    for (const Tensor* W : {&L.wo, &L.w_gate, &L.w_up, &L.w_down}) EXPECT_GT(W->quant()->act_scale, 0.f);
  // The calibrated scales serve as well as dynamic per-tensor ones on held-out text
  // (measured KL 4.6e-7 vs 4.8e-7; a scale not applied or wrong by far shows as much more).
  QuantizeOptions dyn = opts("rtn", "fp8", -1);
  dyn.act_scale = "tensor";
  dyn.out = tmp / "fp8_dynamic";
  quantize_model(dyn);
  const double ks = compare(o.out).kld_mean, kd = compare(dyn.out).kld_mean;
  EXPECT_LT(ks, 1.5 * kd);
  // Beyond the calibrated range, activations saturate at +-448 scale (as E4M3 casts do).
  std::vector<float> xe, sx;
  const float x[4] = {1000.f, -1000.f, 1.f, 0.3f};
  quantize_acts_fp8(x, 1, 4, false, xe, sx, 1.f);
  EXPECT_EQ(xe, (std::vector<float>{448.f, -448.f, 1.f, e4m3_round(0.3f)}));
  EXPECT_EQ(sx[0], 1.f);
}

// Per layer and KV head, the max |x| a whole-sequence forward pass puts in an F32 cache:
// {k ranges, v ranges} (keys after rope), the reference for calibrated KV-cache scales.
std::pair<std::vector<std::vector<float>>, std::vector<std::vector<float>>> cache_ranges(const Model& m,
                                                                                         const CalibData& d) {
  const ModelConfig& c = m.config;
  std::vector<std::vector<float>> k(c.n_layers, std::vector<float>(c.n_kv_heads)), v = k;
  for (const auto& w : d.seqs) {
    KVCache cache = KVCache::create(c, 1, (int64_t)w.size());
    Scratch s;
    Batch b;
    for (size_t i = 0; i < w.size(); i++) b.add(w[i], 0, (int32_t)i, i + 1 == w.size());
    llama_forward(m, cache, b, s);
    for (int64_t l = 0; l < c.n_layers; l++)
      for (int64_t i = 0; i < cache.k[l].numel(); i++) {
        const size_t h = (size_t)(i / ((int64_t)w.size() * c.head_dim));  // (1, H, T, hd)
        k[l][h] = std::max(k[l][h], std::fabs(cache.k[l].host<float>()[i]));
        v[l][h] = std::max(v[l][h], std::fabs(cache.v[l].host<float>()[i]));
      }
  }
  return {k, v};
}

// Calibrated KV-cache scales: per layer and KV head the range of the keys (after rope) and
// values the calibration windows produce, in the model the method feeds forward; the cache
// then stores every row with that static scale, saturating beyond it.
TEST_F(PipelineFixture, KvCacheScalesFromCalibration) {
  QuantizeOptions o = opts("rtn", "w8a16", -1);
  o.kv_cache = "fp8";
  quantize_model(o);
  Model q = model_load(o.out);
  ASSERT_EQ(q.config.quant.kv_cache, "fp8");
  const CalibData d = calib_load(o.calib, "", cfg.vocab_size);
  // rtn: the float model's ranges. The same f32 operations on other row blockings (sgemm
  // order, ~hd*eps) and the scale's round trip amax/448*448 (2 ulp): 2e-5 relative.
  Model f32 = model_load(src);  // in f32, as the pipeline computes (bf16 kernels round activations)
  for (auto& L : f32.weights.layers)
    for (Tensor* t : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) *t = to_f32(*t);
  const auto [fk, fv] = cache_ranges(f32, d);
  for (int64_t l = 0; l < cfg.n_layers; l++)
    for (int64_t h = 0; h < cfg.n_kv_heads; h++) {
      EXPECT_NEAR(q.weights.layers[l].k_amax[h], fk[l][h], 2e-5 * fk[l][h]) << l << " " << h;
      EXPECT_NEAR(q.weights.layers[l].v_amax[h], fv[l][h], 2e-5 * fv[l][h]) << l << " " << h;
    }
  // GPTQ: the quantized model's ranges (its blocks feed the next). Against a forward pass of
  // the checkpoint, whose scales are f16 where the pipeline's were f32 (2^-11 relative per
  // weight) and whose int4 kernels take int8 activation blocks (2^-8): measured <= 2.4e-3,
  // bound 1e-2. The float model's ranges differ from them by the 4-bit error (~5% here).
  QuantizeOptions g = opts("gptq", "w4a16", 32);
  g.kv_cache = "int8";
  quantize_model(g);
  Model gq = model_load(g.out);
  const auto [gk, gv] = cache_ranges(gq, d);
  double moved = 0;
  for (int64_t l = 0; l < cfg.n_layers; l++)
    for (int64_t h = 0; h < cfg.n_kv_heads; h++) {
      EXPECT_NEAR(gq.weights.layers[l].k_amax[h], gk[l][h], 1e-2 * gk[l][h]) << l << " " << h;
      EXPECT_NEAR(gq.weights.layers[l].v_amax[h], gv[l][h], 1e-2 * gv[l][h]) << l << " " << h;
      moved = std::max(moved, (double)std::fabs(gk[l][h] - fk[l][h]) / fk[l][h]);
    }
  EXPECT_GT(moved, 0.02);
  // The cache uses the static scales: every stored row's scale is its head's range / 127.
  {
    const Model& m = gq;
    KVCache cache = KVCache::create(cfg, 1, 64, KvType::I8);
    Scratch s;
    Batch b;
    for (int32_t i = 0; i < 64; i++) b.add(eval_tokens[i], 0, i, i == 63);
    llama_forward(m, cache, b, s);
    for (int64_t l = 0; l < cfg.n_layers; l++)
      for (int64_t i = 0; i < cache.k_scale[l].numel(); i++) {
        ASSERT_EQ(cache.k_scale[l].host<float>()[i], m.weights.layers[l].k_amax[i / 64] / 127.f);
        ASSERT_EQ(cache.v_scale[l].host<float>()[i], m.weights.layers[l].v_amax[i / 64] / 127.f);
      }
  }
  // Static int8 scales on held-out text: close to the f32 cache (KL within 4x that of dynamic
  // per-row scales, which fit each row; measured ~2.6x on the trained small model).
  const Model base = model_load(src);
  const double k_static = eval_compare(base, gq, eval_tokens, 128, {}, KvType::I8).kld_mean;
  Model dyn = model_load(g.out);
  for (auto& L : dyn.weights.layers) L.k_amax.clear(), L.v_amax.clear();
  const double k_dyn = eval_compare(base, dyn, eval_tokens, 128, {}, KvType::I8).kld_mean;
  const double k_f32 = eval_compare(base, dyn, eval_tokens, 128, {}, KvType::F32).kld_mean;
  EXPECT_LT(k_static - k_f32, 4 * (k_dyn - k_f32) + 1e-9) << k_static << " " << k_dyn << " " << k_f32;
  // Saturation beyond the calibrated range: int8 clamps at +-127, fp8 at +-448 scale.
  for (DType dt : {DType::I8, DType::U8}) {
    Tensor kc = Tensor::zeros(dt, {1, 1, 1, 4}), vc = Tensor::zeros(dt, {1, 1, 1, 4});
    Tensor ks = Tensor::zeros(DType::F32, {1, 1, 1}), vs = Tensor::zeros(DType::F32, {1, 1, 1});
    Tensor x = Tensor::empty(DType::F32, {1, 4});
    const float xv[4] = {10.f, -10.f, 0.5f, 0.f}, range = 1.f;
    std::memcpy(x.host<float>(), xv, sizeof xv);
    op_kv_store(kc, vc, x, x, {0}, {0}, ks, vs, &range, &range);
    if (dt == DType::I8) {
      EXPECT_EQ(ks.host<float>()[0], 1.f / 127.f);
      EXPECT_EQ(kc.host<int8_t>()[0], 127);
      EXPECT_EQ(kc.host<int8_t>()[1], -127);
      EXPECT_EQ(kc.host<int8_t>()[2], 64);  // 63.5 rounds to even
    } else {
      EXPECT_EQ(e4m3_to_f32(kc.host<uint8_t>()[0]), 448.f);
      EXPECT_EQ(e4m3_to_f32(kc.host<uint8_t>()[1]), -448.f);
      EXPECT_EQ(e4m3_to_f32(kc.host<uint8_t>()[2]), 224.f);
    }
  }
}

TEST_F(PipelineFixture, BadInput) {
  auto expect_error = [](QuantizeOptions o, const std::string& part) {
    try {
      quantize_model(o);
      ADD_FAILURE() << "expected an error mentioning " << part;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  QuantizeOptions o = opts("gptq", "w4a16", 32);
  o.calib.source = "";
  expect_error(o, "--calib");
  // Windows longer than the tiny model's context of 256 are clamped to it (with a note), as a
  // user of the reference tools' default 2048 on a small model expects.
  o = opts("gptq", "w4a16", 32);
  o.calib.seq_len = 512;
  EXPECT_NO_THROW(quantize_model(o));
  expect_error(opts("smoothquant", "w4a16", 32), "w8a8");
  QuantizeOptions h = opts("hqq", "w4a16", 32);
  h.sym = true;
  expect_error(h, "hqq");
  expect_error(opts("gptq", "fp8", -1), "fp8");
  expect_error(opts("sparsegpt", "w4a16", 32), "unknown method");
  QuantizeOptions s = opts("rtn", "fp8", -1);
  s.act_scale = "static";
  s.calib.source = "";
  expect_error(s, "--calib");
  QuantizeOptions ax = opts("hqq", "w4a16", 64);
  ax.hqq_axis = 0;
  expect_error(ax, "does not divide the 32 output channels");  // k_proj has 32 rows
  ax = opts("rtn", "w4a16", 32);
  ax.hqq_axis = 0;
  expect_error(ax, "only hqq takes an axis");
  QuantizeOptions kv = opts("rtn", "w8a16", -1);
  kv.kv_cache = "int2";
  expect_error(kv, "int8 or fp8");
  kv.kv_cache = "int8";
  kv.calib.source = "";
  expect_error(kv, "--kv-cache int8");
  // A checkpoint whose config promises KV scales: a missing or non-positive scale is named.
  kv = opts("rtn", "w8a16", -1);
  kv.kv_cache = "int8";
  quantize_model(kv);
  EXPECT_EQ(model_load(kv.out).weights.layers[1].v_amax.size(), (size_t)cfg.n_kv_heads);
  const std::string st = kv.out + "/model.safetensors";
  std::string bytes = read_text_file(st);
  const std::string key = "model.layers.1.self_attn.v_scale";
  const size_t at = bytes.find(key);
  ASSERT_NE(at, std::string::npos);
  bytes[at + key.size() - 5] = 'X';  // renamed: v_scale missing
  write_file_atomic(st, bytes);
  try {
    model_load(kv.out);
    ADD_FAILURE() << "a missing v_scale loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.self_attn.v_scale"), std::string::npos) << e.what();
  }
  // NaN in a norm weight: the activations go NaN and the pipeline says so.
  const TensorFill base = init_fill(cfg, 21);
  model_save(tmp / "nan", cfg,
             [&](const HfTensorSpec& spec, DType dt, uint8_t* dst, uint64_t off, uint64_t n) {
               base(spec, dt, dst, off, n);
               if (spec.name == "model.layers.0.input_layernorm.weight")
                 for (uint64_t i = 0; i + 1 < n; i += 2) dst[i] = 0xC0, dst[i + 1] = 0x7F;  // bf16 NaN
             },
             SaveOptions{});
  for (const char* m : {"gptq", "awq", "smoothquant"}) {
    o = opts(m, std::string(m) == "smoothquant" ? "w8a8" : "w4a16", std::string(m) == "smoothquant" ? -1 : 32);
    o.model = tmp / "nan";
    expect_error(o, "NaN");
  }
}

}  // namespace
}  // namespace llmq
