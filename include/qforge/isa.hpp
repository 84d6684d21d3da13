// Instruction sets qforge has kernels for, what this CPU supports, and which one is active.
//
// The active ISA is the best one this CPU (and OS) supports, unless the environment variable
// QFORGE_ISA=sse4_2|avx2|avx512|avx512_vnni|avx512_bf16 forces one; forcing an ISA the CPU lacks is an error.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace qforge {

// Ordered by preference: a later value is faster where the CPU has it.
enum class isa : std::uint8_t {
    sse4_2,       // SSE4.2 (with SSSE3 pshufb / pmaddubsw)
    avx2,         // AVX2 + FMA3 + F16C
    avx512,       // AVX-512 F/BW/DQ/VL
    avx512_vnni,  // AVX-512 as above + VNNI (vpdpbusd)
    avx512_bf16,  // AVX-512 + VNNI + BF16 (vdpbf16ps): only the bf16 compute path has kernels here
};

inline constexpr std::array all_isas{isa::sse4_2, isa::avx2, isa::avx512, isa::avx512_vnni, isa::avx512_bf16};

constexpr std::string_view to_string(isa i) {
    switch (i) {
        case isa::sse4_2: return "sse4_2";
        case isa::avx2: return "avx2";
        case isa::avx512: return "avx512";
        case isa::avx512_vnni: return "avx512_vnni";
        case isa::avx512_bf16: return "avx512_bf16";
    }
    return "?";
}

constexpr std::optional<isa> isa_from_string(std::string_view s) {
    for (isa i : all_isas)
        if (to_string(i) == s) return i;
    return std::nullopt;
}

// What the CPU and the OS (saved register state) support, detected once with cpuid / xgetbv.
// BF16 is detected separately from VNNI (Ice Lake has VNNI without BF16).
struct cpu_features {
    bool sse4_2 = false;
    bool avx2_fma = false;     // AVX2, FMA3, F16C, OS saves ymm
    bool avx512bw = false;     // AVX-512 F, BW, DQ, VL; OS saves zmm and mask registers
    bool avx512_vnni = false;  // vpdpbusd on zmm
    bool avx512_bf16 = false;  // vdpbf16ps
};

const cpu_features& cpu();
bool cpu_supports(isa i);

// The best ISA of this CPU, ignoring QFORGE_ISA.
isa best_supported_isa();

// The ISA kernels run on: QFORGE_ISA if set (std::runtime_error if unknown or unsupported by
// this CPU), else best_supported_isa(). Read once; later changes of the environment are ignored.
isa active_isa();

}  // namespace qforge
