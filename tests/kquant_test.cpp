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
#include "quant/ggml_blocks.h"
#include "test_util.h"

namespace llmq {
namespace {

struct KCase {
  GgmlType type;
  size_t block_bytes;
  std::vector<size_t> f16_offsets;  // d (and dmin) inside a block
};

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

}  // namespace
}  // namespace llmq
