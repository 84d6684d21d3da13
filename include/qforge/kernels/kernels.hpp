// The kernel templates (declared here, defined in kernels/impl/, instantiated only in the
// generated per-ISA translation units) and the compile-time route to them:
//
//   qforge::gemv<qforge::policy<cfg>>(w, x, bias, y);   // no registry: dispatch on active_isa()
//
// Every kernel of the generated list (generated/qforge_kernel_list.inc) is declared
// `extern template` below, so including this header never compiles a kernel: the call links to
// the instantiation of the generated TU of each ISA. A policy outside the generated list, or
// filtered out of this build with -Dkernels=..., is rejected at compile time (kernel_built()).
#pragma once

#include <qforge/config/config.hpp>
#include <qforge/format/float.hpp>
#include <qforge/isa.hpp>
#include <qforge/kernels/arch.hpp>
#include <qforge/kernels/weights.hpp>

#include <qforge_selected_kernels.h>

#include <cstdint>
#include <string_view>

namespace qforge::kernels {

template <class P, class A>
void dequantize(const weights_view& w, std::int64_t n0, std::int64_t n1, void* out, element type);
template <class P, class A>
void gemv(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1);
template <class P, class A>
void gemm(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
          std::int64_t n1);

// The config of a generated kernel, spelled from the list's tokens.
#define QFORGE_KERNEL_CONFIG(type, bits, group, dq, storage, act)                                         \
    ::qforge::config {                                                                                    \
        ::qforge::dtype::type, bits, group, dq, ::qforge::layout::storage, ::qforge::compute::act         \
    }

#define QFORGE_EXTERN_KERNELS_FOR(P, A)                                                                   \
    extern template void dequantize<P, A>(const weights_view&, std::int64_t, std::int64_t, void*, element); \
    extern template void gemv<P, A>(const weights_view&, const float*, const float*, float*, std::int64_t, \
                                    std::int64_t);                                                        \
    extern template void gemm<P, A>(const weights_view&, const float*, std::int64_t, const float*, float*, \
                                    std::int64_t, std::int64_t);

// (avx512_vnni and avx512_bf16 are declared for every kernel but instantiated only where
// compiled_for() says so; the dispatch below never names the others.)
#define QFORGE_KERNEL(name, family, type, bits, group, dq, storage, act)                                 \
    QFORGE_EXTERN_KERNELS_FOR(policy<QFORGE_KERNEL_CONFIG(type, bits, group, dq, storage, act)>,          \
                              arch_t<isa::sse4_2>)                                                        \
    QFORGE_EXTERN_KERNELS_FOR(policy<QFORGE_KERNEL_CONFIG(type, bits, group, dq, storage, act)>,          \
                              arch_t<isa::avx2>)                                                          \
    QFORGE_EXTERN_KERNELS_FOR(policy<QFORGE_KERNEL_CONFIG(type, bits, group, dq, storage, act)>,          \
                              arch_t<isa::avx512>)                                                        \
    QFORGE_EXTERN_KERNELS_FOR(policy<QFORGE_KERNEL_CONFIG(type, bits, group, dq, storage, act)>,          \
                              arch_t<isa::avx512_vnni>)                                                   \
    QFORGE_EXTERN_KERNELS_FOR(policy<QFORGE_KERNEL_CONFIG(type, bits, group, dq, storage, act)>,          \
                              arch_t<isa::avx512_bf16>)
#include <qforge_kernel_list.inc>
#undef QFORGE_KERNEL
#undef QFORGE_EXTERN_KERNELS_FOR

// Whether the kernels of config c are compiled for ISA i (the same rule as gen/space.py's
// compiled_for): avx512_vnni adds only the int8 compute path (vpdpbusd) and avx512_bf16 only the
// bf16 one (vdpbf16ps); every other path would be the avx512 (or avx512_vnni) code again, compiled
// twice, so those run their avx512 (or avx512_vnni) kernels there.
constexpr bool compiled_for(const config& c, isa i) {
    if (i == isa::avx512_vnni) return c.act == compute::i8;
    if (i == isa::avx512_bf16) return c.act == compute::bf16;
    return true;
}

// The ISA whose kernel of config c runs when ISA i is active.
constexpr isa kernel_isa(const config& c, isa i) {
    if (compiled_for(c, i)) return i;
    return c.act == compute::i8 ? isa::avx512_vnni : isa::avx512;
}

struct generated_kernel {
    config cfg;
    bool built;  // selected by -Dkernels in this build
};
inline constexpr generated_kernel generated_kernels[] = {
#define QFORGE_KERNEL(name, family, type, bits, group, dq, storage, act) \
    {QFORGE_KERNEL_CONFIG(type, bits, group, dq, storage, act), QFORGE_SELECTED_##name != 0},
#include <qforge_kernel_list.inc>
#undef QFORGE_KERNEL
};

// Whether this build has the kernels of config c (all ISAs).
constexpr bool kernel_built(const config& c) {
    for (const generated_kernel& k : generated_kernels)
        if (k.cfg == c) return k.built;
    return false;
}

// The kernel config of this build that runs weights stored as `stored` on compute path `act`;
// kernel_built() of the result is false when this build has none. The rule, in order:
//   - GPTQ (v1, v2) and AWQ weights run in qforge's layout (storage qf), the others as stored;
//   - compiled: the exact config when it is built;
//   - regrouped: a built kernel whose group divides the stored group (per channel: the whole
//     row; per tensor: FP8's whole tensor), the largest such. pack_weights then repeats each
//     stored scale (and zero point) for the kernel's groups: the same values, more scale bytes.
//     Double-quantized absmax cannot be repeated as codes (its nested blocks would shift): a
//     regrouped bnb kernel has double_quant false, and pack_weights decodes the absmax to f32.
//     Per channel with `cols` unknown (0), a group that divides every K the layout allows (the
//     integer layouts: 32, GPTQ's K granularity); with `cols`, the largest that divides it;
//   - widened: 2- and 3-bit integers without such a kernel (groups below 128: their code windows
//     span 64 elements; the bf16 and f16 paths) run on the 4-bit kernel of the same kind, compiled
//     or regrouped. pack_weights stores each code c as c + 8 - 2^(bits-1) (int_sym: the same
//     value, scale (c - 2^(bits-1))) or as c with its zero point (int_asym): the same values,
//     twice or 4/3 the code bytes.
// The fully unrolled kernels are the compile-time tier (gen/space.py); the other two are the
// run-time tier: every config that validates runs at SIMD speed on a compiled kernel.
namespace detail {
constexpr config nearest_group(const config& want, std::int64_t cols) {
    if (kernel_built(want)) return want;
    const auto whole = [&](std::int32_t g) { return g == per_channel || g == per_tensor; };
    const auto divides = [&](std::int32_t g) {
        if (g <= 0) return false;
        if (whole(want.group)) return cols == 0 ? want.storage != layout::qforge || g == 32 : cols % g == 0;
        return want.group % g == 0;
    };
    const generated_kernel* best = nullptr;
    for (const generated_kernel& k : generated_kernels) {
        const config& c = k.cfg;
        if (!k.built || c.type != want.type || c.bits != want.bits || c.storage != want.storage || c.act != want.act ||
            c.double_quant || !divides(c.group))
            continue;
        if (best == nullptr || (whole(want.group) && cols == 0 ? c.group < best->cfg.group : c.group > best->cfg.group))
            best = &k;
    }
    return best ? best->cfg : want;  // want: not built
}
}  // namespace detail

// Whether weights stored as `stored` may run on 4-bit integer kernels (the widened tier).
constexpr bool widens(const config& stored) {
    return (stored.type == dtype::int_sym || stored.type == dtype::int_asym) && stored.bits < 4;
}

constexpr config kernel_config_of(const config& stored, compute act, std::int64_t cols = 0) {
    config want = stored;
    want.act = act;
    if (is_gptq(want.storage) || want.storage == layout::awq_gemm) want.storage = layout::qforge;
    const config k = detail::nearest_group(want, cols);
    if (kernel_built(k) || !widens(want)) return k;
    config wide = want;
    wide.bits = 4;
    const config kw = detail::nearest_group(wide, cols);
    return kernel_built(kw) ? kw : k;
}

// The tier that runs `stored` on kernel config `kernel` (kernel_config_of): "compiled",
// "regrouped" or "widened" (the README's table).
constexpr std::string_view kernel_tier(const config& stored, const config& kernel) {
    if (kernel.bits != stored.bits) return "widened";
    return kernel.group == stored.group && kernel.double_quant == stored.double_quant ? "compiled" : "regrouped";
}

// The policy whose kernels run weights that policy P describes: P itself for a kernel layout,
// else kernel_config_of on P's compute path (gptq_int4_g128 runs int4sym_g128_qf_f32).
template <class P>
using kernel_policy = policy<kernel_config_of(P::cfg, P::act)>;

// A compile-time call of a policy without kernels fails here, naming this type and the config it
// looked for (kernel_policy<P>).
template <config C>
struct no_kernel_in_this_build {
    static_assert(kernel_built(C), "qforge: no kernel runs this policy in this build: add the config in this "
                                   "type's name to gen/space.py, or include it in -Dkernels");
    static constexpr bool value = true;
};

template <class P>
constexpr void require_built() {
    static_assert(no_kernel_in_this_build<P::cfg>::value);
}

}  // namespace qforge::kernels

namespace qforge {

namespace detail {
// Argument checks shared by both routes (src/registry.cpp); they throw std::invalid_argument
// naming the problem: a weights_view whose config or shape the kernel cannot take, null
// pointers, a row range outside [0, N].
void check_weights(const config& kernel_cfg, const weights_view& w);
void check_rows(const weights_view& w, std::int64_t n0, std::int64_t n1);
void check_gemm_rows(std::int64_t m);
void check_pointer(const void* p, const char* what);
// Weights arranged for another kernel (weight_arrangement) given to the kernel of cfg on ISA i.
[[noreturn]] void refuse_arrangement(const config& cfg, isa i);
}  // namespace detail

// Calls f(A{}) with the xsimd arch tag of the kernels of policy P for the active ISA.
template <class P, class F>
void with_active_arch(F&& f) {
    switch (kernels::kernel_isa(P::cfg, active_isa())) {
        case isa::sse4_2: return f(kernels::arch_t<isa::sse4_2>{});
        case isa::avx2: return f(kernels::arch_t<isa::avx2>{});
        case isa::avx512: return f(kernels::arch_t<isa::avx512>{});
        case isa::avx512_vnni:
            if constexpr (kernels::compiled_for(P::cfg, isa::avx512_vnni)) return f(kernels::arch_t<isa::avx512_vnni>{});
            else return;  // unreachable: kernel_isa() maps it to avx512
        case isa::avx512_bf16:
            if constexpr (kernels::compiled_for(P::cfg, isa::avx512_bf16)) return f(kernels::arch_t<isa::avx512_bf16>{});
            else return;  // unreachable: kernel_isa() maps it to avx512 or avx512_vnni
    }
}

namespace detail {
template <class Policy>
void dequantize_as(const weights_view& w, std::int64_t n0, std::int64_t n1, void* out, element type) {
    using P = kernels::kernel_policy<Policy>;
    kernels::require_built<P>();
    check_weights(P::cfg, w);
    check_rows(w, n0, n1);
    check_pointer(out, "output");
    with_active_arch<P>([&](auto a) { kernels::dequantize<P, decltype(a)>(w, n0, n1, out, type); });
}
}  // namespace detail

// Run the kernel of policy P for the active ISA (see isa.hpp), without the registry. P may name a
// checkpoint layout (an alias such as gptq_int4_g128): the kernels of kernels::kernel_policy<P>
// run, on weights packed for them (pack_weights<P>).
template <class P>
void dequantize(const weights_view& w, std::int64_t n0, std::int64_t n1, float* out) {
    detail::dequantize_as<P>(w, n0, n1, out, element::f32);
}
// ... rounded to bf16 / f16 (RNE, as qforge::to_bf16 / to_f16)
template <class P>
void dequantize(const weights_view& w, std::int64_t n0, std::int64_t n1, bf16* out) {
    detail::dequantize_as<P>(w, n0, n1, out, element::bf16);
}
template <class P>
void dequantize(const weights_view& w, std::int64_t n0, std::int64_t n1, f16* out) {
    detail::dequantize_as<P>(w, n0, n1, out, element::f16);
}

template <class Policy>
void gemv(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0, std::int64_t n1) {
    using P = kernels::kernel_policy<Policy>;
    kernels::require_built<P>();
    detail::check_weights(P::cfg, w);
    detail::check_rows(w, n0, n1);
    detail::check_pointer(x, "x");
    detail::check_pointer(y, "y");
    with_active_arch<P>([&](auto a) { kernels::gemv<P, decltype(a)>(w, x, bias, y, n0, n1); });
}
// All rows: y = W x (+ bias).
template <class P>
void gemv(const weights_view& w, const float* x, float* y, const float* bias = nullptr) {
    gemv<P>(w, x, bias, y, 0, w.rows);
}

template <class Policy>
void gemm(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
          std::int64_t n1) {
    using P = kernels::kernel_policy<Policy>;
    kernels::require_built<P>();
    detail::check_weights(P::cfg, w);
    detail::check_rows(w, n0, n1);
    detail::check_gemm_rows(m);
    detail::check_pointer(x, "X");
    detail::check_pointer(y, "Y");
    with_active_arch<P>([&](auto a) { kernels::gemm<P, decltype(a)>(w, x, m, bias, y, n0, n1); });
}

}  // namespace qforge
