// The single run-time dispatch point: reads CPU features once and picks the kernel table.
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "kernels/cpu/kernels.h"

namespace llmq {

namespace {
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

const CpuKernels& choose() {
  __builtin_cpu_init();
  const char* want = std::getenv("LLMQ_ISA");
  if (want && *want) {
    for (auto* k : cpu_kernels_supported())
      if (std::strcmp(k->isa, want) == 0) return *k;
    fail("LLMQ_ISA={} is not supported on this CPU (choose ref, avx2 or avx512)", want);
  }
  if (has_avx512()) return *cpu_kernels_avx512();
  if (has_avx2()) return *cpu_kernels_avx2();
  return cpu_kernels_ref();
}
}  // namespace

std::vector<const CpuKernels*> cpu_kernels_supported() {
  __builtin_cpu_init();
  std::vector<const CpuKernels*> v{&cpu_kernels_ref()};
  if (has_avx2()) v.push_back(cpu_kernels_avx2());
  if (has_avx512()) v.push_back(cpu_kernels_avx512());
  return v;
}

const CpuKernels& cpu_kernels() {
  static const CpuKernels& k = choose();
  return k;
}

}  // namespace llmq
