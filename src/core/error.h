// The one error type of llmq, and the check macro for internal invariants.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace llmq {

// Carries a complete, user-facing message (file, tensor name, shape, what was expected).
// The CLI prints what() on one line and exits non-zero.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... A>
[[noreturn]] void fail(fmt::format_string<A...> f, A&&... a) {
  throw Error(fmt::format(f, std::forward<A>(a)...));
}

[[noreturn]] void check_failed(const char* file, int line, const char* expr);

}  // namespace llmq

// Internal invariant: a failure is a bug in llmq, reported with file:line.
#define LLMQ_CHECK(cond)                                          \
  do {                                                            \
    if (!(cond)) ::llmq::check_failed(__FILE__, __LINE__, #cond); \
  } while (0)
