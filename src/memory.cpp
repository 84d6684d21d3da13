#include <qforge/memory.hpp>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace qforge {

namespace {

std::size_t rounded(std::size_t bytes) {
    return bytes >= huge_page_bytes ? (bytes + huge_page_bytes - 1) / huge_page_bytes * huge_page_bytes : bytes;
}
std::align_val_t alignment(std::size_t bytes) { return std::align_val_t{bytes >= huge_page_bytes ? huge_page_bytes : 64}; }

}  // namespace

void* allocate_weight_memory(std::size_t bytes) {
    void* p = ::operator new(rounded(bytes), alignment(bytes));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Advice only: without THP the buffer simply stays on small pages.
    if (bytes >= huge_page_bytes) (void)madvise(p, rounded(bytes), MADV_HUGEPAGE);
#endif
    return p;
}

void free_weight_memory(void* p, std::size_t bytes) noexcept { ::operator delete(p, alignment(bytes)); }

}  // namespace qforge
