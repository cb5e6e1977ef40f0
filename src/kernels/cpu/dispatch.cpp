// The single run-time dispatch point: reads CPU features once and picks the kernel table.
#include <cpuid.h>

#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "kernels/cpu/kernels.h"

namespace llmq {

namespace {
// CPU features from CPUID, and from XGETBV whether the OS saves the AVX / AVX-512 registers.
struct Features {
  bool avx2 = false, avx512 = false, avx_vnni = false, avx512_vnni = false, avx512_bf16 = false;
};

Features detect() {
  Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & bit_FMA, f16c = c & bit_F16C, osxsave = c & bit_OSXSAVE, avx = c & bit_AVX;
  if (!osxsave || !avx) return f;
  unsigned xlo, xhi;
  __asm__("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  const bool ymm_state = (xlo & 0x6) == 0x6, zmm_state = (xlo & 0xe6) == 0xe6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  f.avx2 = ymm_state && fma && f16c && (b & bit_AVX2);
  f.avx512 = f.avx2 && zmm_state && (b & bit_AVX512F) && (b & bit_AVX512BW) && (b & bit_AVX512VL) && (b & bit_AVX512DQ);
  f.avx512_vnni = f.avx512 && (c & (1u << 11));  // CPUID.7.0:ECX.AVX512_VNNI
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
    f.avx_vnni = f.avx2 && (a & (1u << 4));       // CPUID.7.1:EAX.AVX_VNNI
    f.avx512_bf16 = f.avx512 && (a & (1u << 5));  // CPUID.7.1:EAX.AVX512_BF16
  }
  return f;
}

const Features& features() {
  static const Features f = detect();
  return f;
}
bool has_avx2() { return features().avx2; }
bool has_avx512() { return features().avx512; }

// The SIMD tables with their quantized matrix product chosen by the dot-product instructions present.
CpuKernels with_q(const CpuKernels* base, const char* isa, MatmulQFn q) {
  CpuKernels k = *base;
  k.isa = isa;
  k.matmul_q = q;
  k.matmul_kq = matmul_kq_avx2;
  return k;
}
const CpuKernels* table_avx2() {
  static const CpuKernels k = with_q(cpu_kernels_avx2(), "avx2", matmul_q_avx2);
  return &k;
}
const CpuKernels* table_avx2_vnni() {
  static const CpuKernels k = with_q(cpu_kernels_avx2(), "avx2vnni", matmul_q_avxvnni);
  return &k;
}
const CpuKernels* table_avx512() {
  static const CpuKernels k = [] {
    CpuKernels t = with_q(cpu_kernels_avx512(), "avx512",
                          features().avx512_vnni ? matmul_q_avx512vnni
                          : features().avx_vnni  ? matmul_q_avxvnni
                                                 : matmul_q_avx2);
    t.matmul_kq = features().avx512_vnni ? matmul_kq_avx512vnni : matmul_kq_avx512;
    if (features().avx512_bf16) {
      t.gemm_bf16 = gemm_bf16_avx512bf16;
      t.gemm_bf16_rows = gemm_bf16_rows_avx512bf16;
      t.pack_bf16_rows = pack_bf16_rows_avx512bf16;
      t.pack_bf16_panels = pack_bf16_panels_avx512bf16;
      t.pack_bf16_panels_t = pack_bf16_panels_t_avx512bf16;
    }
    return t;
  }();
  return &k;
}

const CpuKernels& choose() {
  const char* want = std::getenv("LLMQ_ISA");
  if (want && *want) {
    for (auto* k : cpu_kernels_supported())
      if (std::strcmp(k->isa, want) == 0) return *k;
    fail("LLMQ_ISA={} is not supported on this CPU (choose ref, avx2, avx2vnni or avx512)", want);
  }
  if (has_avx512()) return *table_avx512();
  if (has_avx2()) return features().avx_vnni ? *table_avx2_vnni() : *table_avx2();
  return cpu_kernels_ref();
}
}  // namespace

std::vector<const CpuKernels*> cpu_kernels_supported() {
  std::vector<const CpuKernels*> v{&cpu_kernels_ref()};
  if (has_avx2()) v.push_back(table_avx2());
  if (has_avx2() && features().avx_vnni) v.push_back(table_avx2_vnni());
  if (has_avx512()) v.push_back(table_avx512());
  return v;
}

const CpuKernels& cpu_kernels() {
  static const CpuKernels& k = choose();
  return k;
}

}  // namespace llmq
