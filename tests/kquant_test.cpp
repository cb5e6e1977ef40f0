// GGUF k-quants (issue 27, first part): llmq's reference dequantizers of Q2_K..Q6_K against
// llama.cpp's own gguf-py (numpy, tests/oracle/kquant_ref.py) on random blocks: every value
// bit for bit (both compute in f32 in ggml's order, so there is nothing to tolerate).
#include <gtest/gtest.h>
#include <fmt/format.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "core/dtype.h"
#include "core/file_util.h"
#include "core/rng.h"
#include "kernels/cpu/kernels.h"
#include "ops/ops.h"
#include "quant/ggml_blocks.h"
#include "quant/quant.h"
#include "test_util.h"

namespace llmq {
namespace {

struct KCase {
  GgmlType type;
  size_t block_bytes;
  std::vector<size_t> f16_offsets;  // d (and dmin) inside a block
};

int64_t ggml_type_bytes_test(GgmlType t, int64_t n) { return n / kQK_K * (int64_t)dtype_block_bytes(kquant_dtype(t)); }
std::string ggml_type_name_test(GgmlType t) { return fmt::format("Q{}_K", (int)t - 8); }

class KQuant : public ::testing::TestWithParam<KCase> {};

TEST_P(KQuant, DequantizeEqualsGgufPy) {
  const KCase& k = GetParam();
  const std::string gguf_py = std::string(LLMQ_SOURCE_DIR) + "/data/llamacpp/src/gguf-py";
  ASSERT_TRUE(std::filesystem::is_directory(gguf_py)) << gguf_py << " missing: run scripts/fetch_data";
  // 40 super-blocks of random bytes (every code, scale and mask pattern), with finite f16
  // d/dmin of both signs and magnitudes from 2^-14 to 2^3, and a few zero.
  const int64_t nb = 40;
  std::vector<uint8_t> raw((size_t)nb * k.block_bytes);
  for (size_t i = 0; i < raw.size(); i++) raw[i] = (uint8_t)(rng_uniform(7 + (uint64_t)k.type, i) * 256);
  for (int64_t b = 0; b < nb; b++)
    for (size_t o : k.f16_offsets) {
      const double u = rng_uniform(99 + (uint64_t)k.type, (uint64_t)(b * 4 + (int64_t)o));
      const float v = b % 13 == 5 ? 0.f : (float)((u < 0.5 ? -1 : 1) * std::ldexp(1.0 + u, -14 + (int)(u * 1000) % 17));
      const uint16_t h = f32_to_f16(v);
      std::memcpy(&raw[(size_t)b * k.block_bytes + o], &h, 2);
    }
  test::TempDir tmp("kquant");
  std::ofstream(tmp / "blocks.bin", std::ios::binary).write((const char*)raw.data(), (std::streamsize)raw.size());
  const std::string cmd = fmt::format("/usr/bin/python3 {}/tests/oracle/kquant_ref.py {} {} {} {}", LLMQ_SOURCE_DIR, gguf_py,
                                      (uint32_t)k.type, tmp / "blocks.bin", tmp / "ref.bin");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const std::string ref = read_text_file(tmp / "ref.bin");
  ASSERT_EQ(ref.size(), (size_t)(nb * kQK_K * 4));
  std::vector<float> got((size_t)(nb * kQK_K));
  dequantize_row_kquant(k.type, raw.data(), got.data(), nb * kQK_K);
  int64_t diff = 0, first = -1;
  for (int64_t i = 0; i < nb * kQK_K; i++) {
    float r;
    std::memcpy(&r, ref.data() + i * 4, 4);
    if (std::memcmp(&r, &got[(size_t)i], 4) != 0 && !(r != r && got[(size_t)i] != got[(size_t)i])) diff++, first = first < 0 ? i : first;
  }
  EXPECT_EQ(diff, 0) << "first at element " << first << " (block " << first / kQK_K << ", element " << first % kQK_K << ")";
  EXPECT_NEAR(ggml_bits_per_weight(k.type), 8.0 * (double)k.block_bytes / 256, 0);
}

INSTANTIATE_TEST_SUITE_P(Types, KQuant,
                         ::testing::Values(KCase{GgmlType::Q2_K, sizeof(BlockQ2_K), {80, 82}},
                                           KCase{GgmlType::Q3_K, sizeof(BlockQ3_K), {108}},
                                           KCase{GgmlType::Q4_K, sizeof(BlockQ4_K), {0, 2}},
                                           KCase{GgmlType::Q5_K, sizeof(BlockQ5_K), {0, 2}},
                                           KCase{GgmlType::Q6_K, sizeof(BlockQ6_K), {208}}),
                         [](const auto& info) { return fmt::format("Q{}_K", (int)info.param.type - 8); });

TEST(KQuant, BitsPerWeight) {
  EXPECT_EQ(ggml_bits_per_weight(GgmlType::Q2_K), 2.625);
  EXPECT_EQ(ggml_bits_per_weight(GgmlType::Q3_K), 3.4375);
  EXPECT_EQ(ggml_bits_per_weight(GgmlType::Q4_K), 4.5);
  EXPECT_EQ(ggml_bits_per_weight(GgmlType::Q5_K), 5.5);
  EXPECT_EQ(ggml_bits_per_weight(GgmlType::Q6_K), 6.5625);
  EXPECT_EQ(ggml_bits_per_weight(GgmlType::Q4_0), 4.5);
  EXPECT_EQ(ggml_bits_per_weight(GgmlType::Q8_0), 8.5);
  std::vector<float> y(100);
  test::expect_error_containing([&] { dequantize_row_kquant(GgmlType::Q4_K, nullptr, y.data(), 100); }, "dequantize",
                                {"not a multiple of 256"});
}

// Random super-blocks of a k-quant type (every code, scale and mask pattern) with f16 d/dmin
// of both signs and realistic magnitudes (2^-12 .. 2^-5).
std::vector<uint8_t> random_blocks(const KCase& k, int64_t nb, uint64_t seed) {
  std::vector<uint8_t> raw((size_t)nb * k.block_bytes);
  for (size_t i = 0; i < raw.size(); i++) raw[i] = (uint8_t)(rng_uniform(seed, i) * 256);
  for (int64_t b = 0; b < nb; b++)
    for (size_t o : k.f16_offsets) {
      const double u = rng_uniform(seed + 1, (uint64_t)(b * 4 + (int64_t)o));
      const uint16_t h = f32_to_f16((float)((u < 0.3 ? -1 : 1) * std::ldexp(1.0 + u, -12 + (int)(u * 100) % 8)));
      std::memcpy(&raw[(size_t)b * k.block_bytes + o], &h, 2);
    }
  return raw;
}
// Activations with a spread of magnitudes per super-block (and an outlier), so the int8
// blocks use their whole range; odd rows scaled by 1e3, one row all zero.
std::vector<float> random_acts(int64_t n, int64_t K, uint64_t seed) {
  std::vector<float> x((size_t)(n * K));
  for (int64_t i = 0; i < n; i++)
    for (int64_t e = 0; e < K; e++)
      x[(size_t)(i * K + e)] = i == 2 ? 0.f : (float)(rng_normal(seed, (uint64_t)(i * K + e)) * (i % 2 ? 1e3 : 1.0) * (e % 97 == 3 ? 20 : 1));
  return x;
}

const std::vector<KCase> kCases = {{GgmlType::Q2_K, sizeof(BlockQ2_K), {80, 82}}, {GgmlType::Q3_K, sizeof(BlockQ3_K), {108}},
                                   {GgmlType::Q4_K, sizeof(BlockQ4_K), {0, 2}},    {GgmlType::Q5_K, sizeof(BlockQ5_K), {0, 2}},
                                   {GgmlType::Q6_K, sizeof(BlockQ6_K), {208}}};

// Every ISA's k-quant product equals the scalar one bit for bit (kernels.h defines the exact
// integer lanes and float sums), for any token count (tokens are computed independently, so
// a row's result does not depend on n: the server's batch invariance), odd row counts and
// ranges starting mid-matrix.
TEST(KQuantKernel, EveryIsaEqualsScalarBitForBit) {
  const int64_t M = 37, K = 768, nb = K / kQK_K;
  for (const KCase& kc : kCases) {
    const auto raw = random_blocks(kc, M * nb, 31 + (uint64_t)kc.type);
    const KQMatView W{raw.data(), (int64_t)(nb * kc.block_bytes), K, (int)kc.type};
    for (int64_t n : {1, 2, 3, 4, 5, 7, 9}) {
      const auto x = random_acts(n, K, 5 + (uint64_t)n);
      KQActs acts;
      quantize_acts_kq(x.data(), n, K, acts);
      std::vector<float> ref((size_t)(n * M), -1.f);
      matmul_kq_ref(W, acts.view(), ref.data(), n, M, 0, M);
      std::vector<std::pair<std::string, MatmulKQFn>> fns;
      for (const CpuKernels* k : cpu_kernels_supported()) {
        fns.push_back({k->isa, k->matmul_kq});
        if (std::string(k->isa) == "avx512") fns.push_back({"avx512 (no VNNI)", matmul_kq_avx512});
      }
      for (const auto& [isa, fn] : fns) {
        std::vector<float> y((size_t)(n * M), -1.f);
        fn(W, acts.view(), y.data(), n, M, 0, 16);
        fn(W, acts.view(), y.data(), n, M, 16, M);
        EXPECT_EQ(std::memcmp(y.data(), ref.data(), y.size() * 4), 0) << ggml_type_name_test(kc.type) << " " << isa << " n=" << n;
      }
      // Row i alone gives the same bits as row i in a batch of n.
      for (int64_t i = 0; i < n; i++) {
        KQActs one;
        quantize_acts_kq(x.data() + i * K, 1, K, one);
        std::vector<float> y((size_t)M);
        cpu_kernels().matmul_kq(W, one.view(), y.data(), 1, M, 0, M);
        EXPECT_EQ(std::memcmp(y.data(), ref.data() + i * M, (size_t)M * 4), 0) << "row " << i << " of " << n;
      }
    }
  }
}

// The scalar product against float64 sums of ggml's dequantized weights times the dequantized
// int8 activations. The integer parts are exact; the float error comes from rounding the
// per-super-block lane sums to f32, the products x*d, one fma per super-block and lane and
// the 4 + 3 halvings: at most (nb + 8) roundings of 2^-24 relative, each bounded by the sum
// of |terms|. The terms are the code part d*s*u*x and the offset part dm*o*x, which may
// cancel, so the bound uses S = sum |w + off| |x| + sum |off| |x| (off = the weight at code
// 0, read by dequantizing the block with its codes cleared): tolerance 2 (nb + 8) 2^-24 S.
TEST(KQuantKernel, ScalarEqualsFloat64WithinRounding) {
  const int64_t M = 11, K = 1024, nb = K / kQK_K, n = 3;
  for (const KCase& kc : kCases) {
    auto raw = random_blocks(kc, M * nb, 77 + (uint64_t)kc.type);
    // Code fields per type (everything but the scales and d/dmin) cleared: the offsets.
    auto zero = raw;
    for (int64_t b = 0; b < M * nb; b++) {
      uint8_t* p = zero.data() + b * kc.block_bytes;
      switch (kc.type) {
        case GgmlType::Q2_K: std::memset(p + 16, 0, 64); break;
        case GgmlType::Q3_K: std::memset(p, 0, 96); break;
        case GgmlType::Q4_K: std::memset(p + 16, 0, 128); break;
        case GgmlType::Q5_K: std::memset(p + 16, 0, 160); break;
        default: std::memset(p, 0, 192); break;
      }
    }
    std::vector<float> w((size_t)(M * K)), off((size_t)(M * K));
    for (int64_t m = 0; m < M; m++) {
      dequantize_row_kquant(kc.type, raw.data() + m * nb * kc.block_bytes, w.data() + m * K, K);
      dequantize_row_kquant(kc.type, zero.data() + m * nb * kc.block_bytes, off.data() + m * K, K);
    }
    const auto x = random_acts(n, K, 3);
    KQActs acts;
    quantize_acts_kq(x.data(), n, K, acts);
    std::vector<float> y((size_t)(n * M));
    matmul_kq_ref({raw.data(), (int64_t)(nb * kc.block_bytes), K, (int)kc.type}, acts.view(), y.data(), n, M, 0, M);
    for (int64_t i = 0; i < n; i++)
      for (int64_t m = 0; m < M; m++) {
        double want = 0, S = 0;
        for (int64_t e = 0; e < K; e++) {
          const double xv = (double)acts.d[(size_t)(i * nb + e / kQK_K)] * acts.q[(size_t)(i * K + e)];
          want += (double)w[(size_t)(m * K + e)] * xv;
          S += (std::fabs((double)w[(size_t)(m * K + e)] - off[(size_t)(m * K + e)]) + 2 * std::fabs((double)off[(size_t)(m * K + e)])) * std::fabs(xv);
        }
        const double tol = 2.0 * (double)(nb + 8) * std::ldexp(1.0, -24) * S;
        EXPECT_NEAR(y[(size_t)(i * M + m)], want, tol) << ggml_type_name_test(kc.type) << " row " << m << " token " << i;
      }
  }
}

// op_matmul and op_matmuls on k-quant tensors (decode and prefill sizes, threads splitting
// the rows, several types in one op_matmuls call) against f32 products of the dequantized
// weights with the unquantized activations: the difference is the activation rounding,
// at most d_x/2 per element, so |err| <= sum_e |w_e| d_x(e)/2 (plus f32 sums, far below).
TEST(KQuantKernel, OpMatmulMatchesDequantizedFloat) {
  const int64_t K = 512, nb = K / kQK_K;
  for (int64_t n : {1, 3, 20}) {
    std::vector<Tensor> Ws;
    std::vector<std::vector<float>> Wf;
    for (const KCase& kc : kCases) {
      const int64_t M = 70 + 10 * (int64_t)Ws.size();
      const auto raw = random_blocks(kc, M * nb, 11 + (uint64_t)kc.type);
      Tensor W = Tensor::empty(kquant_dtype(kc.type), {M, K});
      ASSERT_EQ(W.nbytes(), raw.size());
      std::memcpy(W.host_data(), raw.data(), raw.size());
      std::vector<float> f((size_t)(M * K));
      dequantize_tensor_rows(W, 0, M, f.data());
      Ws.push_back(W);
      Wf.push_back(std::move(f));
    }
    const auto xv = random_acts(n, K, 9);
    Tensor x = Tensor::empty(DType::F32, {n, K});
    std::memcpy(x.host_data(), xv.data(), xv.size() * 4);
    KQActs acts;
    quantize_acts_kq(xv.data(), n, K, acts);
    std::vector<Tensor> outs, outs2;
    for (const Tensor& W : Ws) outs.push_back(Tensor::empty(DType::F32, {n, W.dim(0)})), outs2.push_back(Tensor::empty(DType::F32, {n, W.dim(0)}));
    for (size_t j = 0; j < Ws.size(); j++) op_matmul(outs[j], x, Ws[j]);
    op_matmuls(x, {{&outs2[0], &Ws[0]}, {&outs2[1], &Ws[1]}, {&outs2[2], &Ws[2]}, {&outs2[3], &Ws[3]}, {&outs2[4], &Ws[4]}});
    for (size_t j = 0; j < Ws.size(); j++) {
      const int64_t M = Ws[j].dim(0);
      EXPECT_EQ(std::memcmp(outs[j].host_data(), outs2[j].host_data(), outs[j].nbytes()), 0) << "op_matmuls != op_matmul";
      for (int64_t i = 0; i < n; i++)
        for (int64_t m = 0; m < M; m++) {
          double want = 0, tol = 1e-30;
          for (int64_t e = 0; e < K; e++) {
            const double w = Wf[j][(size_t)(m * K + e)];
            want += w * xv[(size_t)(i * K + e)];
            tol += std::fabs(w) * acts.d[(size_t)(i * nb + e / kQK_K)] * 0.5;
          }
          EXPECT_NEAR(outs[j].host<float>()[i * M + m], want, tol * 1.001) << "type " << j << " n " << n;
        }
    }
  }
}

// llmq's k-quant quantizer: dequantize(quantize(x)) against the uniform-noise model of
// round-to-nearest. Per sub-block, RTN over the sub-block's own range has step R/nmax
// (asymmetric: R = max - min(min, 0); symmetric: step amax/nmax, the largest value on code
// -nmax) and mean squared error step^2/12. The quantizer starts from that RTN and keeps a
// least-squares candidate only when it is better, so before the sub-block scales are
// themselves quantized its error is at most RTN's; storing the scales as 6-bit (Q2_K: 4-bit)
// codes of the super-block's f16 d moves each step by at most half a level, which the 25%
// margin covers for 6-bit levels (a step off by 1/126 of the largest changes the error by
// ~2%) and the 60% margin for Q2_K's 4-bit levels (1/30). Gaussian rows, rows with outliers,
// an all-zero row (must come back exactly zero) and one constant row.
TEST(KQuantQuantize, ErrorWithinRoundToNearestModel) {
  const int64_t K = 1024, rows = 24;
  struct T { GgmlType t; int nmax, sub; bool sym; double margin; };
  for (const T& c : {T{GgmlType::Q2_K, 3, 16, false, 1.6}, T{GgmlType::Q3_K, 4, 16, true, 1.25}, T{GgmlType::Q4_K, 15, 32, false, 1.25},
                     T{GgmlType::Q5_K, 31, 32, false, 1.25}, T{GgmlType::Q6_K, 32, 16, true, 1.25}}) {
    std::vector<float> x((size_t)(rows * K)), y((size_t)(rows * K));
    for (int64_t i = 0; i < rows * K; i++) {
      const int64_t r = i / K;
      x[(size_t)i] = r == 0 ? 0.f : r == 1 ? 0.25f : (float)(rng_normal(5, (uint64_t)i) * 0.02 * (r % 3 == 0 && i % 61 == 0 ? 12 : 1) + (r % 4 == 1 ? 0.01 : 0));
    }
    std::vector<uint8_t> q((size_t)(rows * ggml_type_bytes_test(c.t, K)));
    for (int64_t r = 0; r < rows; r++) {
      quantize_row_kquant(c.t, x.data() + r * K, q.data() + r * ggml_type_bytes_test(c.t, K), K);
      dequantize_row_kquant(c.t, q.data() + r * ggml_type_bytes_test(c.t, K), y.data() + r * K, K);
    }
    for (int64_t k = 0; k < K; k++) ASSERT_EQ(y[(size_t)k], 0.f) << "zero row";
    double err = 0, model = 0, worst = 0;
    for (int64_t r = 2; r < rows; r++) {
      double er = 0, mr = 0;
      for (int64_t j = 0; j < K / c.sub; j++) {
        const float* xs = x.data() + r * K + j * c.sub;
        float lo = 0, hi = 0, amax = 0;
        for (int i = 0; i < c.sub; i++) lo = std::min(lo, xs[i]), hi = std::max(hi, xs[i]), amax = std::max(amax, std::fabs(xs[i]));
        const double step = c.sym ? amax / c.nmax : (hi - lo) / c.nmax;
        mr += step * step / 12 * c.sub;
        for (int i = 0; i < c.sub; i++) {
          const double e = (double)xs[i] - y[(size_t)(r * K + j * c.sub + i)];
          er += e * e;
        }
      }
      err += er, model += mr, worst = std::max(worst, er / mr);
    }
    EXPECT_LE(err, model * c.margin) << ggml_type_name_test(c.t) << ": MSE " << err / ((rows - 2) * K) << " vs RTN model "
                                     << model / ((rows - 2) * K) << ", worst row ratio " << worst;
    EXPECT_GE(err, 0.0);
    std::printf("%s: MSE / RTN model = %.3f (worst row %.3f)\n", ggml_type_name_test(c.t).c_str(), err / model, worst);
  }
}

}  // namespace
}  // namespace llmq
