// An allocator for large buffers that start as zeros without being written: allocations of
// 1 MiB or more are anonymous private mappings, whose pages read as zero and become resident
// only when first written; smaller ones come from calloc. Elements are default-initialised
// (no store for arithmetic types), so std::vector<float, ZeroPageAllocator<float>>(n) costs no
// memory until used. Fully sharded training allocates the model's full parameter and
// gradient buffers this way and only ever touches one unit of them at a time.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <new>
#include <utility>
#include <vector>

namespace llmq {

template <class T>
struct ZeroPageAllocator {
  using value_type = T;
  static constexpr size_t kMapBytes = size_t(1) << 20;
  ZeroPageAllocator() = default;
  template <class U>
  ZeroPageAllocator(const ZeroPageAllocator<U>&) {}
  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    void* p;
    if (bytes >= kMapBytes) {
      p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
    } else {
      p = std::calloc(n ? n : 1, sizeof(T));
      if (!p) throw std::bad_alloc();
    }
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) {
    if (n * sizeof(T) >= kMapBytes) munmap(p, n * sizeof(T));
    else std::free(p);
  }
  // Value-initialisation would store zeros into every page; the memory is zero already.
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
  template <class U>
  bool operator==(const ZeroPageAllocator<U>&) const { return true; }
};

template <class T>
using ZeroPageVector = std::vector<T, ZeroPageAllocator<T>>;

// Zeroes n elements at p, returning the whole pages inside the range to the OS (they read
// back as zeros without being resident) and clearing the partial pages at its edges.
template <class T>
void zero_and_release(T* p, int64_t n) {
  if (n <= 0) return;
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  const uintptr_t b = (uintptr_t)p, e = (uintptr_t)(p + n);
  const uintptr_t ib = (b + page - 1) / page * page, ie = e / page * page;
  if (ib >= ie) {
    std::memset(static_cast<void*>(p), 0, (size_t)n * sizeof(T));
    return;
  }
  std::memset(static_cast<void*>(p), 0, ib - b);
  std::memset(reinterpret_cast<void*>(ie), 0, e - ie);
  if (madvise(reinterpret_cast<void*>(ib), ie - ib, MADV_DONTNEED) != 0) std::memset(reinterpret_cast<void*>(ib), 0, ie - ib);
}

}  // namespace llmq
