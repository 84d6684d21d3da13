// The xsimd architecture tags qforge's kernels are instantiated for, one per qforge::isa.
//
// xsimd 8.1 has no tag for AVX-512 VNNI, so qforge adds one in xsimd's own style: it derives from
// xsimd::avx512bw (every xsimd kernel and every qforge overload for avx512bw applies), and the
// qforge overloads that need vpdpbusd take `requires_arch<avx512vnni>` and win as more specific.
// avx512bf16 (+ vdpbf16ps) derives from avx512vnni in the same way.
#pragma once

#include <qforge/isa.hpp>

#include <xsimd/types/xsimd_all_registers.hpp>

#include <type_traits>

namespace qforge {

struct avx512vnni : xsimd::avx512bw {
    static constexpr bool supported() noexcept { return XSIMD_WITH_AVX512BW; }
    static constexpr bool available() noexcept { return true; }
    static constexpr unsigned version() noexcept { return xsimd::generic::version(3, 5, 0); }
    static constexpr char const* name() noexcept { return "avx512vnni"; }
};

struct avx512bf16 : avx512vnni {
    static constexpr unsigned version() noexcept { return xsimd::generic::version(3, 6, 0); }
    static constexpr char const* name() noexcept { return "avx512bf16"; }
};

}  // namespace qforge

#if XSIMD_WITH_AVX512BW
namespace xsimd::types {
template <class T>
struct get_bool_simd_register<T, qforge::avx512vnni> {
    using type = simd_avx512_bool_register<T>;
};
XSIMD_DECLARE_SIMD_REGISTER_ALIAS(qforge::avx512vnni, xsimd::avx512bw);
template <class T>
struct get_bool_simd_register<T, qforge::avx512bf16> {
    using type = simd_avx512_bool_register<T>;
};
XSIMD_DECLARE_SIMD_REGISTER_ALIAS(qforge::avx512bf16, qforge::avx512vnni);
}  // namespace xsimd::types
#endif

namespace qforge::kernels {

template <isa I>
struct arch_of;
template <>
struct arch_of<isa::sse4_2> {
    using type = xsimd::sse4_2;
};
template <>
struct arch_of<isa::avx2> {
    using type = xsimd::fma3<xsimd::avx2>;
};
template <>
struct arch_of<isa::avx512> {
    using type = xsimd::avx512bw;
};
template <>
struct arch_of<isa::avx512_vnni> {
    using type = avx512vnni;
};
template <>
struct arch_of<isa::avx512_bf16> {
    using type = avx512bf16;
};

// The xsimd tag of an ISA: arch_t<isa::avx2> is xsimd::fma3<xsimd::avx2>.
template <isa I>
using arch_t = typename arch_of<I>::type;

// The ISA of an xsimd tag (exact match; the tags form an inheritance chain).
template <class A>
constexpr isa isa_of() {
    if constexpr (std::is_same_v<A, avx512bf16>) return isa::avx512_bf16;
    else if constexpr (std::is_same_v<A, avx512vnni>) return isa::avx512_vnni;
    else if constexpr (std::is_same_v<A, xsimd::avx512bw>) return isa::avx512;
    else if constexpr (std::is_same_v<A, xsimd::fma3<xsimd::avx2>>) return isa::avx2;
    else {
        static_assert(std::is_same_v<A, xsimd::sse4_2>, "qforge kernels exist for sse4_2, fma3<avx2>, avx512bw, avx512vnni and avx512bf16");
        return isa::sse4_2;
    }
}

}  // namespace qforge::kernels
