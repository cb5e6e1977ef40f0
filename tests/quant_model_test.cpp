// Quantized model directories: GPTQ packing, `quantize_model` output checked by an
// independent numpy/torch dequantizer (tests/oracle/gptq_ref.py), loading, evaluation.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "core/file_util.h"
#include "eval/perplexity.h"
#include "io/hf_dir.h"
#include "io/safetensors.h"
#include "ops/ops.h"
#include "model/config.h"
#include "quant/gptq_format.h"
#include "quant/quant.h"
#include "quant/quantize_model.h"
#include "test_util.h"

namespace llmq {
namespace {

constexpr const char* kPython = "/usr/bin/python3";  // Debian's, which has python3-torch

using test::run_output;

// Known bits: symmetric 4-bit zero points (8) are stored as 7 in every nibble in v1 files
// (0x77777777), and codes pack lowest-first along the input dimension.
TEST(GptqFormat, KnownPacking) {
  std::vector<float> zero(8 * 2, 8.f);
  auto qz = gptq_pack_qzeros(zero.data(), 8, 2, 4, true);
  ASSERT_EQ(qz.size(), 2u);
  EXPECT_EQ((uint32_t)qz[0], 0x77777777u);
  std::vector<uint8_t> codes(1 * 8);
  for (int k = 0; k < 8; k++) codes[k] = (uint8_t)k;
  auto qw = gptq_pack_qweight(codes.data(), 1, 8, 4);
  EXPECT_EQ((uint32_t)qw[0], 0x76543210u);
}

TEST(GptqFormat, RoundTrips) {
  std::mt19937_64 rng(3);
  for (int bits : {2, 4, 8}) {
    const int64_t M = 32, K = 128, ng = 4;
    std::vector<uint8_t> codes(M * K), back(M * K);
    for (auto& c : codes) c = (uint8_t)(rng() % (1u << bits));
    std::vector<float> zero(M * ng), zb(M * ng);
    for (auto& z : zero) z = (float)(1 + rng() % ((1u << bits) - 1));
    gptq_unpack_qweight(gptq_pack_qweight(codes.data(), M, K, bits).data(), M, K, bits, back.data());
    EXPECT_EQ(codes, back) << bits;
    gptq_unpack_qzeros(gptq_pack_qzeros(zero.data(), M, ng, bits, true).data(), M, ng, bits, true, zb.data());
    EXPECT_EQ(zero, zb) << bits;
  }
}

struct QuantFixture : ::testing::Test {
  test::TempDir tmp{"quantmodel"};
  std::string src;
  ModelConfig cfg;
  void SetUp() override {
    cfg = config_preset("tiny");
    src = tmp / "src";
    SaveOptions so;
    so.dtype = DType::BF16;
    model_save(src, cfg, init_fill(cfg, 9), so);
  }
  std::string quantize(const std::string& scheme, int64_t group, bool sym, std::vector<std::string> keep = {"embed"},
                       const std::string& weight_scale = "", const std::string& act_scale = "") {
    QuantizeOptions o;
    o.model = src;
    o.out = tmp / (scheme + "_" + std::to_string(group) + (sym ? "s" : "a") + weight_scale + act_scale);
    o.scheme = scheme;
    o.weight_scale = weight_scale;
    o.act_scale = act_scale;
    o.group = group;
    o.sym = sym;
    o.keep = keep;
    o.progress = false;
    quantize_model(o);
    return o.out;
  }
};

// The written checkpoint, dequantized by the independent oracle, is within half a step of
// the source weights everywhere (worst ratio <= 1, with 1e-3 for f16/f32 rounding).
TEST_F(QuantFixture, OracleDequantizesWithinHalfAStep) {
  for (auto [scheme, group, sym] : {std::tuple{"w4a16", 32, false}, std::tuple{"w4a16", 64, true},
                                    std::tuple{"w8a16", -1, true}}) {
    const std::string dir = quantize(scheme, group, sym);
    auto j = nlohmann::json::parse(run_output(std::string(kPython) + " " + LLMQ_SOURCE_DIR + "/tests/oracle/gptq_ref.py " +
                                       dir + " " + src));
    EXPECT_EQ(j["linears"].get<int>(), cfg.n_layers * 7 + 1) << scheme;  // + lm_head
    EXPECT_LE(j["worst"].get<double>(), 1.0 + 1e-3) << scheme;
    EXPECT_GT(j["worst"].get<double>(), 0.5) << "the check must see real rounding error";
  }
}

// Loading gives back the same dequantized weights the oracle sees, and a model compared
// with itself has ratio 1, KL 0 and full top-1 agreement.
TEST_F(QuantFixture, LoadsAndCompares) {
  const std::string dir = quantize("w4a16", 64, false);
  Model q = model_load(dir);
  ASSERT_TRUE(q.config.quant.enabled);
  ASSERT_NE(q.weights.layers[0].wq.quant(), nullptr);
  EXPECT_EQ(q.weights.embed.quant(), nullptr);
  Model m = model_load(src);
  std::vector<int32_t> toks(300);
  for (size_t i = 0; i < toks.size(); i++) toks[i] = (int32_t)((i * 7919) % cfg.vocab_size);
  auto same = eval_compare(m, m, toks, 64);
  EXPECT_EQ(same.kld_mean, 0.0);
  EXPECT_EQ(same.top1_agreement, 1.0);
  EXPECT_EQ(same.ppl_ratio, 1.0);
  auto r = eval_compare(m, q, toks, 64);
  EXPECT_GT(r.kld_mean, 0.0);
  EXPECT_LT(r.kld_mean, 0.05) << "4-bit g64 of a random tiny model should stay close";
  EXPECT_GT(r.top1_agreement, 0.5);
  // Kept linears stay float and load as such.
  const std::string kept = quantize("w8a16", -1, true, {"embed", "lm_head", "down_proj"});
  Model k = model_load(kept);
  EXPECT_EQ(k.weights.layers[1].w_down.quant(), nullptr);
  EXPECT_NE(k.weights.layers[1].w_up.quant(), nullptr);
  EXPECT_EQ(k.weights.lm_head.quant(), nullptr);
}

// Checkpoints other tools write (issue 27), each made by an independent script after the
// format's documentation and reference packing (tests/oracle/checkpoint_formats.py): AWQ's
// GEMM layout (interleaved int32 packing along the outputs, zero points as they are, f16
// scales) and compressed-tensors pack-quantized W4A16 (asymmetric and symmetric: codes + 8
// packed along the inputs, zero points along the outputs, bf16 scales) and int-quantized
// W8A8 (int8 weights, per-channel bf16 scales, int8 activations per token). Each loads with
// every linear equal to the script's dequantized weights, value for value (the script's
// -0.0 for a code rounded from a small negative weight equals llmq's +0.0) (scale * (code - zero):
// a 16-bit scale has at most 11 significant bits and code - zero at most 9, so llmq's
// scale*code - scale*zero is that same exact f32 value). With the products run in float on
// those weights (act_float), llmq's model equals the dequantized one up to f32 summation
// order (both sgemm over identical f32 weights, blocked differently: logit differences
// ~1e-6 relative, so KLD < 1e-8 and perplexity within 1e-5). As loaded (int8 activation
// blocks on the integer kernel) it stays as close as 4/8-bit quantization does.
struct FormatCase {
  const char* format;
  int64_t group;
  bool sym, act_per_token;
};
class CheckpointFormats : public QuantFixture, public ::testing::WithParamInterface<FormatCase> {};
TEST_P(CheckpointFormats, LoadsExactly) {
  const FormatCase& fc = GetParam();
  const std::string f32dir = tmp / "f32", out = tmp / fc.format, deq = tmp / (std::string(fc.format) + "-deq");
  SaveOptions so;
  so.dtype = DType::F32;
  model_save(f32dir, cfg, init_fill(cfg, 9), so);
  ASSERT_EQ(std::system((std::string(kPython) + " " + LLMQ_SOURCE_DIR + "/tests/oracle/checkpoint_formats.py " + fc.format +
                         " " + f32dir + " " + out + " " + deq + " " + std::to_string(fc.group)).c_str()), 0);
  Model a = model_load(out), d = model_load(deq);
  ASSERT_TRUE(a.config.quant.enabled);
  EXPECT_EQ(a.config.quant.sym, fc.sym);
  EXPECT_EQ(a.config.quant.act_per_token, fc.act_per_token);
  EXPECT_EQ(a.weights.lm_head.quant(), nullptr);
  for (size_t l = 0; l < a.weights.layers.size(); l++) {
    const auto la = a.weights.layers[l].linears(), ld = d.weights.layers[l].linears();
    for (size_t j = 0; j < la.size(); j++) {
      const Tensor& W = *la[j];
      ASSERT_NE(W.quant(), nullptr) << "layer " << l << " linear " << j;
      std::vector<float> got((size_t)W.numel());
      dequantize_tensor_rows(W, 0, W.dim(0), got.data());
      int64_t bad = -1;
      for (size_t i = 0; i < got.size() && bad < 0; i++)
        if (got[i] != ld[j]->host<float>()[i]) bad = (int64_t)i;
      EXPECT_EQ(bad, -1) << "layer " << l << " linear " << j << ": llmq " << got[(size_t)std::max<int64_t>(bad, 0)]
                         << " vs " << ld[j]->host<float>()[std::max<int64_t>(bad, 0)];
    }
  }
  std::vector<int32_t> toks(300);
  for (size_t i = 0; i < toks.size(); i++) toks[i] = (int32_t)((i * 7919) % cfg.vocab_size);
  const auto q = eval_compare(d, a, toks, 64);
  EXPECT_LT(q.kld_mean, 0.05);
  EXPECT_GT(q.top1_agreement, 0.5);
  for (auto& L : a.weights.layers)
    for (Tensor* W : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) {
      auto info = std::make_shared<QuantInfo>(*W->quant());
      info->act_float = true;
      info->act_per_token = false;
      W->set_quant(info);
    }
  const auto f = eval_compare(d, a, toks, 64);
  EXPECT_LT(f.kld_mean, 1e-8);
  EXPECT_NEAR(f.ppl_ratio, 1.0, 1e-5);
  EXPECT_EQ(f.top1_agreement, 1.0);
}
INSTANTIATE_TEST_SUITE_P(Formats, CheckpointFormats,
                         ::testing::Values(FormatCase{"awq", 32, false, false}, FormatCase{"ct-w4a16", 32, false, false},
                                           FormatCase{"ct-w4a16-sym", 64, true, false}, FormatCase{"ct-w8a8", 0, true, true}),
                         [](const auto& info) {
                           std::string s = info.param.format;
                           for (char& ch : s) ch = ch == '-' ? '_' : ch;
                           return s;
                         });

// llmq writes compressed-tensors (issue 27, `quantize --format compressed-tensors`):
// pack-quantized w4a16 (asymmetric g32, symmetric g64) and int-quantized w8a8. The
// independent script reads each file back with compressed-tensors' own unpacking
// (checkpoint_formats.py ct-read) and its dequantized weights equal llmq's loaded ones,
// value for value (the products are exact, as above); and the same codes written in the
// GPTQ layout load to the same weights (one quantizer, two layouts).
TEST_F(QuantFixture, WritesCompressedTensors) {
  for (auto [scheme, group, sym] : {std::tuple{"w4a16", 32, false}, std::tuple{"w4a16", 64, true}, std::tuple{"w8a8", -1, true}}) {
    QuantizeOptions o;
    o.model = src;
    o.out = tmp / fmt::format("ct-{}-{}", scheme, group);
    o.scheme = scheme;
    o.group = group;
    o.sym = sym;
    o.format = "compressed-tensors";
    o.progress = false;
    quantize_model(o);
    const std::string gptq = quantize(scheme, group, sym);
    const std::string deq = o.out + "-deq";
    ASSERT_EQ(std::system((std::string(kPython) + " " + LLMQ_SOURCE_DIR + "/tests/oracle/checkpoint_formats.py ct-read " +
                           o.out + " " + deq).c_str()), 0) << scheme;
    const auto j = nlohmann::json::parse(read_text_file(o.out + "/config.json"));
    EXPECT_EQ(j["quantization_config"]["quant_method"], "compressed-tensors");
    EXPECT_EQ(j["quantization_config"]["format"], std::string(scheme) == "w8a8" ? "int-quantized" : "pack-quantized");
    Model a = model_load(o.out), g = model_load(gptq), d = model_load(deq);
    EXPECT_EQ(a.config.quant.scheme, scheme);
    for (size_t l = 0; l < a.weights.layers.size(); l++) {
      const auto la = a.weights.layers[l].linears(), lg = g.weights.layers[l].linears(), ld = d.weights.layers[l].linears();
      for (size_t k = 0; k < la.size(); k++) {
        std::vector<float> wa((size_t)la[k]->numel()), wg(wa.size());
        dequantize_tensor_rows(*la[k], 0, la[k]->dim(0), wa.data());
        dequantize_tensor_rows(*lg[k], 0, lg[k]->dim(0), wg.data());
        int64_t bad_g = -1, bad_d = -1;
        for (size_t i = 0; i < wa.size(); i++) {
          if (bad_g < 0 && wa[i] != wg[i]) bad_g = (int64_t)i;
          if (bad_d < 0 && wa[i] != ld[k]->host<float>()[i]) bad_d = (int64_t)i;
        }
        EXPECT_EQ(bad_g, -1) << scheme << " layer " << l << " linear " << k << ": compressed-tensors vs GPTQ layout";
        EXPECT_EQ(bad_d, -1) << scheme << " layer " << l << " linear " << k << ": llmq vs the script's reading";
      }
    }
  }
}

// FP8 (compressed-tensors): the independent oracle decodes the E4M3 bits and finds every
// weight at a nearest code (within half the local grid step, 1e-3 for f32 rounding of
// w/scale) and the scales at amax/448; the model loads and stays close to the source.
TEST_F(QuantFixture, Fp8OracleAndCompare) {
  Model m = model_load(src);
  std::vector<int32_t> toks(300);
  for (size_t i = 0; i < toks.size(); i++) toks[i] = (int32_t)((i * 7919) % cfg.vocab_size);
  for (auto [ws, as] : {std::pair{"", ""}, std::pair{"tensor", "tensor"}, std::pair{"channel", "tensor"}}) {
    const std::string dir = quantize("fp8", -1, true, {"embed"}, ws, as);
    auto j = nlohmann::json::parse(run_output(std::string(kPython) + " " + LLMQ_SOURCE_DIR + "/tests/oracle/fp8_ref.py " +
                                       dir + " " + src));
    EXPECT_EQ(j["linears"].get<int>(), cfg.n_layers * 7 + 1) << ws;
    EXPECT_LE(j["worst"].get<double>(), 1.0 + 1e-3) << ws;
    EXPECT_GT(j["worst"].get<double>(), 0.5) << "the check must see real rounding error";
    EXPECT_LE(j["scale_err"].get<double>(), 1e-6) << ws;
    Model q = model_load(dir);
    ASSERT_TRUE(q.config.quant.fp8);
    ASSERT_NE(q.weights.layers[0].wq.quant(), nullptr);
    EXPECT_EQ(q.weights.layers[0].wq.quant()->weight_per_tensor, std::string(ws) == "tensor");
    EXPECT_EQ(q.weights.layers[0].wq.quant()->act_per_token, std::string(as) != "tensor");
    auto r = eval_compare(m, q, toks, 64);
    EXPECT_GT(r.kld_mean, 0.0);
    EXPECT_LT(r.kld_mean, 0.02) << "E4M3 of a random tiny model should stay close";
    EXPECT_GT(r.top1_agreement, 0.7);
  }
}

// An act-order (desc_act) checkpoint: every linear's input columns in a random order, the
// groups taken over that order and named by g_idx, as AutoGPTQ writes them. Built here from
// the source weights; the independent oracle (AutoGPTQ-style g_idx dequantization) confirms
// the file, and llmq loads it: the same dequantized weights in input-column order, and
// products within the int8-activation bound of the f32 product with those weights (the
// activation blocks of 32 run over the permuted columns, so the bound is taken there).
TEST_F(QuantFixture, ActOrderCheckpointLoads) {
  const std::string dir = quantize("w4a16", 32, false);
  const std::string ao = tmp / "actorder";
  std::filesystem::create_directories(ao);
  Model srcm = model_load(src);
  const auto named = hf_named_tensors(srcm);
  SafetensorsFile in(dir + "/model.safetensors", LoadMode::Read);
  SafetensorsWriter w;
  std::map<std::string, std::vector<float>> deq;  // expected dequantized weights per linear
  std::mt19937_64 rng(17);
  const int64_t G = 32;
  for (const auto& e : in.header().tensors) {
    if (!e.name.ends_with(".qweight") && !e.name.ends_with(".qzeros") && !e.name.ends_with(".scales") &&
        !e.name.ends_with(".g_idx")) {
      w.add(e.name, in.tensor(e));
      continue;
    }
    if (!e.name.ends_with(".qweight")) continue;
    const std::string base = e.name.substr(0, e.name.size() - 7);
    const Tensor& sw = named.at(base + "weight");
    const int64_t M = sw.dim(0), K = sw.dim(1), ng = K / G;
    std::vector<float> Wf(M * K), Wp(M * K);
    for (int64_t i = 0; i < M * K; i++) Wf[i] = bf16_to_f32(sw.host<uint16_t>()[i]);
    std::vector<int64_t> perm(K);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int64_t m = 0; m < M; m++)
      for (int64_t j = 0; j < K; j++) Wp[m * K + j] = Wf[m * K + perm[j]];
    std::vector<uint8_t> cp(M * K), codes(M * K);
    std::vector<float> sc(M * ng), z(M * ng);
    quantize_rows_rtn(Wp.data(), M, K, 4, G, false, cp.data(), sc.data(), z.data());
    Tensor gidx = Tensor::empty(DType::I32, {K});
    std::vector<float> d(M * K);
    for (int64_t j = 0; j < K; j++) {
      gidx.host<int32_t>()[perm[j]] = (int32_t)(j / G);
      for (int64_t m = 0; m < M; m++) {
        codes[m * K + perm[j]] = cp[m * K + j];
        d[m * K + perm[j]] = sc[m * ng + j / G] * ((float)cp[m * K + j] - z[m * ng + j / G]);
      }
    }
    deq[base + "weight"] = d;
    auto qw = gptq_pack_qweight(codes.data(), M, K, 4);
    auto qz = gptq_pack_qzeros(z.data(), M, ng, 4, true);
    Tensor tqw = Tensor::empty(DType::I32, {K / 8, M}), tqz = Tensor::empty(DType::I32, {ng, M / 8}),
           tsc = Tensor::empty(DType::F16, {ng, M});
    std::memcpy(tqw.host_data(), qw.data(), qw.size() * 4);
    std::memcpy(tqz.host_data(), qz.data(), qz.size() * 4);
    for (int64_t g = 0; g < ng; g++)
      for (int64_t m = 0; m < M; m++) tsc.host<uint16_t>()[g * M + m] = f32_to_f16(sc[m * ng + g]);
    w.add(base + "qweight", tqw);
    w.add(base + "qzeros", tqz);
    w.add(base + "scales", tsc);
    w.add(base + "g_idx", gidx);
  }
  w.write(ao + "/model.safetensors");
  auto cj = nlohmann::json::parse(read_text_file(dir + "/config.json"));
  cj["quantization_config"]["desc_act"] = true;
  write_file_atomic(ao + "/config.json", cj.dump(2));
  auto j = nlohmann::json::parse(run_output(std::string(kPython) + " " + LLMQ_SOURCE_DIR + "/tests/oracle/gptq_ref.py " + ao +
                                     " " + src));
  EXPECT_EQ(j["linears"].get<int>(), cfg.n_layers * 7 + 1);
  EXPECT_LE(j["worst"].get<double>(), 1.0 + 1e-3);
  EXPECT_GT(j["worst"].get<double>(), 0.5);

  Model q = model_load(ao);
  const Tensor& wq = q.weights.layers[1].wq;
  ASSERT_NE(wq.quant(), nullptr);
  ASSERT_EQ(wq.quant()->perm.size(), (size_t)wq.dim(1));
  const int64_t M = wq.dim(0), K = wq.dim(1);
  const auto& d = deq.at("model.layers.1.self_attn.q_proj.weight");
  std::vector<float> back(M * K);
  dequantize_tensor_rows(wq, 0, M, back.data());
  for (int64_t i = 0; i < M * K; i++) ASSERT_NEAR(back[i], d[i], 4 * test::kU * std::fabs(d[i]) + 1e-7) << i;
  for (int64_t n : {1, 5, 40}) {
    auto xv = test::randn(n * K, 60 + n, 1.f);
    Tensor x = Tensor::empty(DType::F32, {n, K}), y = Tensor::empty(DType::F32, {n, M});
    std::memcpy(x.host<float>(), xv.data(), xv.size() * 4);
    op_matmul(y, x, wq);
    std::vector<float> xp(n * K);  // x in the stored column order, as the product quantizes it
    for (int64_t i = 0; i < n; i++)
      for (int64_t c = 0; c < K; c++) xp[i * K + c] = xv[i * K + wq.quant()->perm[c]];
    QActs a;
    quantize_acts(xp.data(), n, K, G, false, a);
    for (int64_t i = 0; i < n; i++)
      for (int64_t m = 0; m < M; m++) {
        double ref = 0, act = 0, wx = 0;
        for (int64_t c = 0; c < K; c++) {
          const int64_t k = wq.quant()->perm[c];
          ref += (double)d[m * K + k] * xv[i * K + k];
          wx += std::fabs((double)d[m * K + k] * xv[i * K + k]);
          act += std::fabs((double)d[m * K + k]) * a.bscale[i * (K / 32) + c / 32] * 0.5;
        }
        ASSERT_NEAR(y.host<float>()[i * M + m], ref, act * (1 + 1e-5) + 2.0 * K * test::kU * (wx + act) + 1e-6)
            << "n " << n << " row " << m;
      }
  }
  // g_idx with a group of the wrong size is refused.
  auto cj2 = nlohmann::json::parse(read_text_file(ao + "/config.json"));
  SafetensorsFile in2(ao + "/model.safetensors", LoadMode::Read);
  SafetensorsWriter w2;
  for (const auto& e : in2.header().tensors) {
    Tensor t = in2.tensor(e);
    if (e.name == "model.layers.0.mlp.down_proj.g_idx") {
      Tensor c = Tensor::empty(DType::I32, t.shape());
      std::memcpy(c.host_data(), t.host_data(), t.nbytes());
      c.host<int32_t>()[0] = (c.host<int32_t>()[0] + 1) % (int32_t)(t.dim(0) / G);
      w2.add(e.name, c);
    } else {
      w2.add(e.name, t);
    }
  }
  const std::string bad = tmp / "actorder_bad";
  std::filesystem::create_directories(bad);
  w2.write(bad + "/model.safetensors");
  write_file_atomic(bad + "/config.json", cj2.dump(2));
  EXPECT_THROW(model_load(bad), Error);
}

TEST_F(QuantFixture, BadInput) {
  EXPECT_THROW(quantize("w5a16", -1, true), Error);
  EXPECT_THROW(quantize("w4a16", -1, true, {"embed"}, "tensor"), Error);  // fp8 options on an int scheme
  EXPECT_THROW(quantize("fp8", -1, true, {"embed"}, "row"), Error);
  EXPECT_THROW(quantize("fp8", -1, true, {"embed"}, "", "block"), Error);
  EXPECT_THROW(quantize("fp8", 128, true), Error);  // no groups in fp8
  {
    // FP8 configs llmq refuses, each with a message naming the field: an unknown weight
    // strategy, static activation scales per token (a static scale is per tensor), static
    // per-tensor scales whose input_scale tensors are missing.
    const std::string f = quantize("fp8", -1, true);
    const auto cj = nlohmann::json::parse(read_text_file(f + "/config.json"));
    auto refused = [&](const char* part, const char* key, const nlohmann::json& value, const char* needle) {
      auto bad = cj;
      bad["quantization_config"]["config_groups"]["group_0"][part][key] = value;
      write_file_atomic(f + "/config.json", bad.dump());
      try {
        model_load(f);
        ADD_FAILURE() << part << "." << key << " = " << value.dump() << " must be refused";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      }
    };
    refused("weights", "strategy", "block", "weights.strategy \"block\"");
    refused("input_activations", "dynamic", false, "per token");
    auto bad = cj;
    bad["quantization_config"]["config_groups"]["group_0"]["input_activations"]["dynamic"] = false;
    bad["quantization_config"]["config_groups"]["group_0"]["input_activations"]["strategy"] = "tensor";
    write_file_atomic(f + "/config.json", bad.dump());
    try {
      model_load(f);
      ADD_FAILURE() << "static scales without input_scale tensors must be refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("input_scale"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(quantize("w4a16", 96, true), Error);  // not a multiple of 32
  const std::string dir = quantize("w4a16", 64, true);
  QuantizeOptions o;
  o.model = dir;
  o.out = tmp / "again";
  o.progress = false;
  try {
    quantize_model(o);
    FAIL() << "quantizing a quantized model must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already quantized"), std::string::npos) << e.what();
  }
  // A corrupt quantization_config.
  auto cj = nlohmann::json::parse(read_text_file(dir + "/config.json"));
  cj["quantization_config"]["bits"] = 5;
  write_file_atomic(dir + "/config.json", cj.dump());
  EXPECT_THROW(model_load(dir), Error);
}

}  // namespace
}  // namespace llmq

namespace llmq {
namespace {

// E4M3: every finite code converts back to itself; any float goes to the nearest code
// (ties to even), saturating at 448, found here by brute force in double.
TEST(Fp8, E4m3RoundsToNearest) {
  for (int c = 0; c < 256; c++) {
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(e4m3_to_f32((uint8_t)c)));
      continue;
    }
    EXPECT_EQ(f32_to_e4m3(e4m3_to_f32((uint8_t)c)), c == 0x80 ? 0x80 : c) << c;
  }
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.f, -9));
  EXPECT_EQ(f32_to_e4m3(1e6f), 0x7e);
  EXPECT_EQ(f32_to_e4m3(-1e6f), 0xfe);
  std::mt19937_64 rng(5);
  for (int i = 0; i < 20000; i++) {
    const float x = std::ldexp((float)(rng() % 100000) / 100000.f, (int)(rng() % 20) - 11) * ((rng() & 1) ? -1.f : 1.f);
    const uint8_t c = f32_to_e4m3(x);
    double best = 1e30;
    for (int k = 0; k < 0x7f; k++) best = std::min(best, std::fabs(std::fabs((double)x) - e4m3_to_f32((uint8_t)k)));
    ASSERT_EQ(std::fabs(std::fabs((double)x) - std::fabs((double)e4m3_to_f32(c))), best) << x;
  }
}

// Quantized KV caches on a real forward pass: logits stay close to the f32 cache's, and
// perplexity within 0.5% (the bound for int8) on a tiny model.
TEST_F(QuantFixture, QuantizedKvCache) {
  Model m = model_load(src);
  std::vector<int32_t> toks(400);
  for (size_t i = 0; i < toks.size(); i++) toks[i] = (int32_t)((i * 7919 + 3) % cfg.vocab_size);
  const double base = eval_perplexity(m, toks, 128).ppl;
  for (KvType t : {KvType::BF16, KvType::I8, KvType::FP8}) {
    const double p = eval_perplexity(m, toks, 128, nullptr, t).ppl;
    EXPECT_NEAR(p / base, 1.0, t == KvType::FP8 ? 0.02 : 0.005) << kv_type_name(t);
    EXPECT_NE(p, base) << kv_type_name(t) << ": the cache type must change something";
  }
  EXPECT_THROW(kv_type_parse("int2"), Error);
}

}  // namespace
}  // namespace llmq
