// Helpers shared by the tests: random data, temporary directories, error-bound checks.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

namespace llmq::test {

inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// The standard output of a shell command (an oracle script), "" if it cannot start.
inline std::string run_output(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  pclose(p);
  return out;
}

// A fresh directory under the system temp dir, removed at scope exit.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag) {
    path = std::filesystem::temp_directory_path() /
           ("llmq_test_" + tag + "_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& f) const { return (path / f).string(); }
};

// Unit roundoff of f32.
constexpr double kU = 1.0 / (1 << 24);

// Runs f, which must throw an exception whose message contains every one of `parts`;
// `what` names the case in the failure message.
template <class F>
void expect_error_containing(F&& f, const std::string& what, std::initializer_list<const char*> parts) {
  try {
    f();
    ADD_FAILURE() << "no error: " << what;
  } catch (const std::exception& e) {
    for (const char* p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << what << ": " << e.what();
  }
}

}  // namespace llmq::test
