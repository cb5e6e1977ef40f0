// Internal-invariant failures become Errors naming the source line.
#include "core/error.h"

namespace llmq {

void check_failed(const char* file, int line, const char* expr) {
  throw Error(fmt::format("internal error: check '{}' failed at {}:{}", expr, file, line));
}

}  // namespace llmq
