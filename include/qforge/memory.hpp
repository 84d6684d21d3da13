// Memory for weight matrices: large buffers in transparent huge pages.
//
// A GEMV streams its weights once per call. With 4 KiB pages the CPU's stream prefetchers stop at
// every page boundary and every 64 cache lines cost a TLB miss. On this machine's Zen 5 that kept
// a 4-bit GEMV at about 20 GB/s from DRAM (0.6 of the read bandwidth). The same loop on 2 MiB
// pages, with software prefetch, reached 0.88. So buffers of 2 MiB or more are 2 MiB aligned,
// rounded up to whole huge pages and advised MADV_HUGEPAGE. Linux's default THP mode ("madvise")
// then backs them with huge pages when it can; elsewhere this is a plain aligned allocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace qforge {

inline constexpr std::size_t huge_page_bytes = std::size_t{2} << 20;

// 64-byte aligned, huge pages from huge_page_bytes up; free with the same byte count.
void* allocate_weight_memory(std::size_t bytes);
void free_weight_memory(void* p, std::size_t bytes) noexcept;

template <class T>
struct weight_allocator {
    using value_type = T;
    weight_allocator() = default;
    template <class U>
    constexpr weight_allocator(const weight_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) { return static_cast<T*>(allocate_weight_memory(n * sizeof(T))); }
    void deallocate(T* p, std::size_t n) noexcept { free_weight_memory(p, n * sizeof(T)); }
    template <class U>
    bool operator==(const weight_allocator<U>&) const noexcept { return true; }
};

// The storage of codes, scales and zero points in packed_weights.
using weight_buffer = std::vector<std::uint8_t, weight_allocator<std::uint8_t>>;

}  // namespace qforge
