#include <qforge/isa.hpp>

#include <cpuid.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace qforge {

namespace {

struct cpuid_regs {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};

cpuid_regs query(unsigned leaf, unsigned subleaf) {
    cpuid_regs r;
    if (!__get_cpuid_count(leaf, subleaf, &r.eax, &r.ebx, &r.ecx, &r.edx)) return {};
    return r;
}

bool bit(unsigned reg, int b) { return (reg >> b) & 1u; }

// Register state the OS saves on context switches (XCR0), read only when OSXSAVE is set.
unsigned long long xcr0() {
    unsigned eax = 0, edx = 0;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<unsigned long long>(edx) << 32) | eax;
}

cpu_features detect() {
    cpu_features f;
    const unsigned max_leaf = __get_cpuid_max(0, nullptr);
    const cpuid_regs l1 = query(1, 0);
    f.sse4_2 = bit(l1.ecx, 19) && bit(l1.ecx, 20) && bit(l1.ecx, 9);  // SSE4.1, SSE4.2, SSSE3
    const bool osxsave = bit(l1.ecx, 27);
    if (!osxsave || max_leaf < 7) return f;
    const unsigned long long xcr = xcr0();
    const bool os_ymm = (xcr & 0x6) == 0x6;     // xmm + ymm state
    const bool os_zmm = (xcr & 0xE6) == 0xE6;   // + opmask, zmm0-15 high halves, zmm16-31
    const cpuid_regs l7 = query(7, 0);
    const bool avx = bit(l1.ecx, 28), fma = bit(l1.ecx, 12), f16c = bit(l1.ecx, 29);
    f.avx2_fma = f.sse4_2 && os_ymm && avx && fma && f16c && bit(l7.ebx, 5);
    const bool avx512f = bit(l7.ebx, 16), avx512dq = bit(l7.ebx, 17), avx512bw = bit(l7.ebx, 30),
               avx512vl = bit(l7.ebx, 31);
    f.avx512bw = f.avx2_fma && os_zmm && avx512f && avx512dq && avx512bw && avx512vl;
    f.avx512_vnni = f.avx512bw && bit(l7.ecx, 11);
    const cpuid_regs l7_1 = query(7, 1);
    f.avx512_bf16 = f.avx512bw && bit(l7_1.eax, 5);
    return f;
}

isa choose_active() {
    const char* forced = std::getenv("QFORGE_ISA");
    if (forced == nullptr || *forced == '\0') return best_supported_isa();
    const auto wanted = isa_from_string(forced);
    if (!wanted) {
        std::string known;
        for (isa i : all_isas) known += (known.empty() ? "" : ", ") + std::string(to_string(i));
        throw std::runtime_error(std::string("QFORGE_ISA='") + forced + "' is not one of " + known);
    }
    if (!cpu_supports(*wanted))
        throw std::runtime_error(std::string("QFORGE_ISA='") + forced + "' is not supported by this CPU (best: " +
                                 std::string(to_string(best_supported_isa())) + ")");
    return *wanted;
}

}  // namespace

const cpu_features& cpu() {
    static const cpu_features features = detect();
    return features;
}

bool cpu_supports(isa i) {
    const cpu_features& f = cpu();
    switch (i) {
        case isa::sse4_2: return f.sse4_2;
        case isa::avx2: return f.avx2_fma;
        case isa::avx512: return f.avx512bw;
        case isa::avx512_vnni: return f.avx512_vnni;
        case isa::avx512_bf16: return f.avx512_vnni && f.avx512_bf16;
    }
    return false;
}

isa best_supported_isa() {
    isa best = isa::sse4_2;
    for (isa i : all_isas)
        if (cpu_supports(i)) best = i;
    if (!cpu_supports(best)) throw std::runtime_error("qforge needs at least SSE4.2 (with SSSE3)");
    return best;
}

isa active_isa() {
    static const isa active = choose_active();
    return active;
}

}  // namespace qforge
