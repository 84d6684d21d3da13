// What the kernels need to know about a format, as two traits templates with the same small
// set of members for every specialization:
//   code_traits<dtype>    what a 4-bit code means (f32 value, int8 level for the i8 path)
//   layout_traits<layout> where a code sits in memory and how a row's block scales decode
// The primary templates fail with a readable message for formats without kernels yet.
// Members are templates on the arch tag A even where A is unused: a function compiled with one
// ISA's flags must never be shared by the linker with another ISA's translation unit.
#pragma once

#include <qforge/config/config.hpp>
#include <qforge/format/tables.hpp>
#include <qforge/kernels/impl/simd.hpp>
#include <qforge/kernels/weights.hpp>

#include <array>
#include <cstdint>
#include <type_traits>

namespace qforge::kernels {

template <auto>
inline constexpr bool no_traits_for = false;

// ---- code_traits -----------------------------------------------------------------------------
// values(w, out16):   the f32 value of each code (the checkpoint's quant_map for table formats)
// i8_scale:           the i8 path approximates value v by the integer level RNE(i8_scale * v)
// from_table:         levels come from a runtime table (else: exact integers code - offset)
template <dtype T>
struct code_traits {
    static_assert(no_traits_for<T>, "qforge: no 4-bit kernel code_traits for this dtype yet (kernels/impl/format.hpp)");
};

template <dtype T>
struct table_code_traits {
    static constexpr bool from_table = true;
    template <class A>
    static void values(const weights_view& w, float* out) {
        for (int i = 0; i < 16; ++i) out[i] = w.code_table[i];
    }
};
// NF4 levels round(127 v): |v - level/127| <= 0.5/127 for every entry of the bnb table.
template <>
struct code_traits<dtype::nf4> : table_code_traits<dtype::nf4> {
    static constexpr float i8_scale = 127.0f;
};
// FP4 magnitudes are {0, 1/192, 2/3, 1, 1/3, 1/2, 1/6, 1/4}: times 120 all are integers except
// 1/192 (0.625 -> 1), so the int8 levels are exact but for the smallest non-zero code.
template <>
struct code_traits<dtype::fp4> : table_code_traits<dtype::fp4> {
    static constexpr float i8_scale = 120.0f;
};
// The code of table index i (0..15) of a bits-wide integer: its low bits. The f32 lookups index
// by 4 bits; above a 2- or 3-bit code lie the next field's bits, so the table repeats.
[[gnu::always_inline]] inline int integer_code(int i, int bits) { return bits < 4 ? i & ((1 << bits) - 1) : i; }

// Symmetric integers: value = code - 2^(bits-1), exact in both paths.
template <>
struct code_traits<dtype::int_sym> {
    static constexpr bool from_table = false;
    static constexpr float i8_scale = 1.0f;
    template <class A>
    static void values(const weights_view& w, float* out) {
        for (int i = 0; i < 16; ++i) out[i] = static_cast<float>(integer_code(i, w.cfg.bits) - (1 << (w.cfg.bits - 1)));
    }
};

// Asymmetric integers (GPTQ sym=False, AWQ): value = code - zero with one zero point per (row,
// group) in weights_view::zeros. The table yields the code; the kernels subtract the block's zero,
// an exact small-integer difference in f32, as the reference's integer q - z.
template <>
struct code_traits<dtype::int_asym> {
    static constexpr bool from_table = false;
    static constexpr float i8_scale = 1.0f;
    template <class A>
    static void values(const weights_view& w, float* out) {
        for (int i = 0; i < 16; ++i) out[i] = static_cast<float>(integer_code(i, w.cfg.bits));
    }
};

template <class P>
inline constexpr bool has_zeros = P::type == dtype::int_asym;

// Where the stored per-block values T (scales, zero points) of blocks [b0, ...) of row n are:
// in the row (row_stride, weights.hpp) or in the dense [N, K / group] array at `values`.
template <class P, class T>
[[gnu::always_inline]] inline const T* row_blocks(const weights_view& w, const void* values, std::int64_t n, std::int64_t b0) {
    const auto* base = static_cast<const std::uint8_t*>(values);
    const std::int64_t dense = row_blocks_of(P::cfg, w.cols) * std::int64_t{sizeof(T)};
    return reinterpret_cast<const T*>(base + n * (w.row_stride != 0 ? w.row_stride : dense)) + b0;
}

// f32 zero points of blocks [b0, b0+nb) of row n (int_asym).
template <class P, class A>
inline const float* row_zeros(const weights_view& w, std::int64_t n, std::int64_t b0, int nb, float* buf) {
    const std::uint8_t* z = row_blocks<P, std::uint8_t>(w, w.zeros, n, b0);
    for (int i = 0; i < nb; ++i) buf[i] = static_cast<float>(z[i]);
    return buf;
}

// ---- layout_traits ---------------------------------------------------------------------------
// Codes are Bits wide: 4 (a nibble), or 2 or 3 for integers in the qforge layout (code_bits).
// element_of<Bits>(byte, part):  element index, relative to a 16-byte-aligned window start, of
//                          code `part` (bits [Bits part, Bits part + Bits)) of byte `byte` of the
//                          window (16 bytes hold 128 / Bits elements; also valid for any multiple
//                          of 16 bytes)
// interleaved:             the codes of a byte are neighbouring elements (else: 16 apart)
// slot_of<Bits>(k):         where the code of element k is (nibbles and 2-bit codes): its byte in
//                          the row and the shift of its bits in that byte
// code_at<A, Bits>(row, cols, k): the code of element k of a row of cols elements
// row_scales(w, n, b0, nb, buf): f32 scales of blocks [b0, b0+nb) of row n (pointer into w or buf)
struct code_slot {
    std::int64_t byte;
    int shift;
};

template <layout L>
struct layout_traits {
    static_assert(no_traits_for<L>, "qforge: no kernel layout_traits for this storage yet (kernels/impl/format.hpp)");
};

template <>
struct layout_traits<layout::bnb4> {
    static constexpr bool interleaved = true;  // byte j: element 2j high nibble, 2j+1 low nibble
    template <int Bits = 4>
    static constexpr int element_of(int byte, int part) {
        static_assert(Bits == 4, "bitsandbytes codes are nibbles");
        return 2 * byte + 1 - part;
    }
    template <int Bits = 4>
    static constexpr code_slot slot_of(std::int64_t k) {
        static_assert(Bits == 4, "bitsandbytes codes are nibbles");
        return {k / 2, k % 2 == 0 ? 4 : 0};
    }
    template <class A, int Bits = 4>
    static std::uint8_t code_at(const std::uint8_t* row, std::int64_t, std::int64_t k) {
        const code_slot at = slot_of<Bits>(k);
        return static_cast<std::uint8_t>((row[at.byte] >> at.shift) & 0x0F);
    }
    template <class P, class A>
    static const float* row_scales(const weights_view& w, std::int64_t n, std::int64_t b0, int nb, float* buf) {
        using S = std::conditional_t<P::double_quant, std::uint8_t, float>;  // absmax or its code
        const S* row = row_blocks<P, S>(w, w.scales, n, b0);
        if constexpr (!P::double_quant) {
            // copied, in both arrangements: returning `row` made the cold NF4 GEMVs about 1.2x
            // slower (i8 and f32; measured, the cause not pinned down)
            for (int i = 0; i < nb; ++i) buf[i] = simd::load<float>(row + i);
            return buf;
        } else {
            // formats.md §1: absmax = map[q] * nested_absmax[b / 256], then + offset (two roundings)
            static_assert(nested_blocksize == 256);
            const std::int64_t first = (w.first_row + n) * (w.cols / P::group) + b0;  // flat block index
            simd::nested_absmax<A>(row, nb, first, w.nested_map, w.nested_absmax, w.nested_offset, buf);
            return buf;
        }
    }
};

template <>
struct layout_traits<layout::qforge> {
    // 16-byte span: code p of byte j is element 16 p + j (nibbles: low 0-15, high 16-31); 3-bit
    // codes: the span order of their low two bits (split3)
    static constexpr bool interleaved = false;
    template <int Bits = 4>
    static constexpr int element_of(int byte, int part) {
        constexpr int field = Bits == 3 ? 2 : Bits;
        return (byte / 16) * (128 / field) + 16 * part + byte % 16;
    }
    template <int Bits = 4>
    static constexpr code_slot slot_of(std::int64_t k) {
        static_assert(Bits == 2 || Bits == 4 || Bits == 8, "one code field per slot: 3-bit codes are split (code_at)");
        constexpr std::int64_t span = 128 / Bits;
        const std::int64_t within = k % span;
        return {(k / span) * 16 + within % 16, static_cast<int>(Bits * (within / 16))};
    }
    template <class A, int Bits = 4>
    static std::uint8_t code_at(const std::uint8_t* row, std::int64_t cols, std::int64_t k);
    template <class P, class A>
    static const float* row_scales(const weights_view& w, std::int64_t n, std::int64_t b0, int nb, float* buf) {
        simd::f16_to_f32<A>(row_blocks<P, std::uint16_t>(w, w.scales, n, b0), nb, buf);
        return buf;
    }
};

// Where window `window` (V bytes of codes) of a row lies: its code bytes, and for 3-bit codes the
// third bits of its code field p at high + p * high_stride.
struct window_codes {
    const std::uint8_t* low;
    const std::uint8_t* high;
    std::int64_t high_stride;
};

template <class A, int Bits>
std::uint8_t layout_traits<layout::qforge>::code_at(const std::uint8_t* row, std::int64_t cols, std::int64_t k) {
    if constexpr (Bits == 3) {
        const std::int64_t u = k / split3::unit_elems, within = k % split3::unit_elems, r = split3::spans(cols, u);
        const std::int64_t part = within % 64 / 16, byte = within / 64 * 16 + within % 16;
        const std::uint8_t* unit = row + u * split3::unit_bytes;
        const int low = (unit[byte] >> (2 * part)) & 3;
        const int high = (unit[split3::plane_byte(r, part, byte)] >> (byte % 8)) & 1;
        return static_cast<std::uint8_t>(low | high << 2);
    } else {
        const code_slot at = slot_of<Bits>(k);
        return static_cast<std::uint8_t>((row[at.byte] >> at.shift) & ((1 << Bits) - 1));
    }
}

// Bits per code in the kernel layout: the qforge layout's integer width (2-bit codes four per byte;
// 3-bit codes as 2-bit codes plus a plane of third bits, split3; 4; 8, a byte each); every other
// format here has 4-bit codes. field_bits: the bits of a code within a byte of codes.
template <class P>
inline constexpr int code_bits = row_code_bits(P::cfg);
template <class P>
inline constexpr bool split_planes = code_bits<P> == 3;
template <class P>
inline constexpr int field_bits = split_planes<P> ? 2 : code_bits<P>;
template <class P>
inline constexpr int codes_per_byte = 8 / field_bits<P>;

// The packed codes of row n: K * code_bits / 8 bytes, rows dense or row_stride apart.
template <class P, class A>
inline const std::uint8_t* row_codes(const weights_view& w, std::int64_t n) {
    return w.codes + n * (w.row_stride != 0 ? w.row_stride : w.cols * code_bits<P> / 8);
}

// Window `window` of V code bytes of a row of cols elements (split3 for 3-bit codes).
template <class P, class A, int V>
inline window_codes window_at(const std::uint8_t* row, std::int64_t cols, std::int64_t window) {
    if constexpr (!split_planes<P>) {
        return {row + window * V, nullptr, 0};
    } else if constexpr (V == 64) {
        // a window of 64 low bytes is a whole unit, and a full one: windows never reach the row's
        // short last unit (it lies in the tail). Constant offsets: the kernels' address arithmetic
        // per window (the spans of the unit, a compare and a move) took as many scalar ops as
        // the window's vector ops (int3 g128 i8 GEMV, AVX-512)
        static_assert(split3::unit_bytes == 96 && split3::field_plane_bytes(4) == 8);
        const std::uint8_t* unit = row + window * split3::unit_bytes;
        return {unit, unit + split3::plane_byte(4, 0, 0), split3::field_plane_bytes(4)};
    } else {
        static_assert(V < 64 && 64 % V == 0);
        const std::int64_t first = window * V, u = first / 64, r = split3::spans(cols, u);
        const std::uint8_t* unit = row + u * split3::unit_bytes;
        return {unit + first % 64, unit + split3::plane_byte(r, 0, first % 64), split3::field_plane_bytes(r)};
    }
}

}  // namespace qforge::kernels
