// Bit packing of the integer layouts (formats.md §3 GPTQ, §4 AWQ gemm). Words are handled as
// uint32_t; checkpoints store them as int32 with the same bits (static_cast converts exactly).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace qforge {

// ---- GPTQ -------------------------------------------------------------------------------------
//
// A run of 32 codes of b bits fills exactly b words. The run is one little-endian bit stream:
// code i starts at stream bit b*i, stream bit s is bit s % 32 of word s / 32. For b = 2, 4, 8
// this is "element j of a word at bit offset b*j"; for b = 3 it is the A/B/C scheme (code 10
// straddles words A and B, code 21 words B and C). qweight holds runs along K (word w of the run
// at row run*b + w, one column per output feature); qzeros holds runs along N.

inline constexpr int gptq_run_codes = 32;

constexpr bool gptq_bits_supported(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }

// The low `bits` bits set.
constexpr std::uint32_t low_mask(int bits) { return (1u << bits) - 1u; }

// Code i (0..31) of the run held in words[0..bits).
constexpr std::uint32_t gptq_code(int bits, std::span<const std::uint32_t> words, int i) {
    const int bit = bits * i;
    const int w = bit / 32, shift = bit % 32;
    std::uint64_t window = words[w] >> shift;
    if (shift + bits > 32) window |= static_cast<std::uint64_t>(words[w + 1]) << (32 - shift);
    return static_cast<std::uint32_t>(window) & low_mask(bits);
}

// Packs 32 codes (each < 2^bits) into words[0..bits).
constexpr void pack_gptq_run(int bits, std::span<const std::uint8_t, gptq_run_codes> codes,
                             std::span<std::uint32_t> words) {
    for (int w = 0; w < bits; ++w) words[w] = 0;
    for (int i = 0; i < gptq_run_codes; ++i) {
        const int bit = bits * i;
        const int w = bit / 32, shift = bit % 32;
        const std::uint64_t placed = static_cast<std::uint64_t>(codes[i] & low_mask(bits)) << shift;
        words[w] |= static_cast<std::uint32_t>(placed);
        if (shift + bits > 32) words[w + 1] |= static_cast<std::uint32_t>(placed >> 32);
    }
}

// Unpacks the run held in words[0..bits) into 32 codes.
constexpr void unpack_gptq_run(int bits, std::span<const std::uint32_t> words,
                               std::span<std::uint8_t, gptq_run_codes> codes) {
    for (int i = 0; i < gptq_run_codes; ++i) codes[i] = static_cast<std::uint8_t>(gptq_code(bits, words, i));
}

// A line of codes (a qweight column along K, a qzeros row along N; its length a multiple of 32)
// is a sequence of runs of `bits` words each; word j of the line is words[first + j * stride].
inline void pack_gptq_line(int bits, std::span<const std::uint8_t> codes, std::span<std::int32_t> words,
                           std::size_t first, std::size_t stride) {
    std::array<std::uint32_t, 8> run{};
    const auto b = static_cast<std::size_t>(bits);
    for (std::size_t r = 0; r < codes.size() / gptq_run_codes; ++r) {
        pack_gptq_run(bits, codes.subspan(r * gptq_run_codes).first<gptq_run_codes>(), std::span(run).first(b));
        for (std::size_t w = 0; w < b; ++w) words[first + (r * b + w) * stride] = static_cast<std::int32_t>(run[w]);
    }
}

inline void unpack_gptq_line(int bits, std::span<const std::int32_t> words, std::size_t first, std::size_t stride,
                             std::span<std::uint8_t> codes) {
    std::array<std::uint32_t, 8> run{};
    const auto b = static_cast<std::size_t>(bits);
    for (std::size_t r = 0; r < codes.size() / gptq_run_codes; ++r) {
        for (std::size_t w = 0; w < b; ++w) run[w] = static_cast<std::uint32_t>(words[first + (r * b + w) * stride]);
        unpack_gptq_run(bits, std::span<const std::uint32_t>(run).first(b),
                        codes.subspan(r * gptq_run_codes).first<gptq_run_codes>());
    }
}

// Zero points: v1 ("gptq") stores z - 1, v2 ("gptq_v2") stores z. qforge rule: the v1 field is
// (z - 1) mod 2^b, so z = 0 gives an all-ones field instead of a borrow into the next field, and
// it reads back as (field + 1) mod 2^b.
constexpr std::uint32_t gptq_zero_field(int bits, int zero, bool v2) {
    return static_cast<std::uint32_t>(v2 ? zero : zero - 1) & low_mask(bits);
}
constexpr int gptq_zero_from_field(int bits, std::uint32_t field, bool v2) {
    return static_cast<int>((v2 ? field : field + 1) & low_mask(bits));
}

// ---- AWQ gemm ----------------------------------------------------------------------------------
//
// 4-bit codes packed along N, 8 per word; nibble i (bit offset 4i) of word w holds column
// 8*w + awq_order[i]. awq_nibble_of[c] is the inverse: the nibble holding column 8*w + c.

inline constexpr int awq_pack_codes = 8;
inline constexpr std::array<int, awq_pack_codes> awq_order{0, 2, 4, 6, 1, 3, 5, 7};
inline constexpr std::array<int, awq_pack_codes> awq_nibble_of = [] {
    std::array<int, awq_pack_codes> inv{};
    for (int i = 0; i < awq_pack_codes; ++i) inv[awq_order[i]] = i;
    return inv;
}();

// Packs the codes of 8 consecutive columns (codes[c] for column c, each < 16) into one word.
constexpr std::uint32_t pack_awq_word(std::span<const std::uint8_t, awq_pack_codes> codes) {
    std::uint32_t word = 0;
    for (int i = 0; i < awq_pack_codes; ++i)
        word |= static_cast<std::uint32_t>(codes[awq_order[i]] & 0xFu) << (4 * i);
    return word;
}

// The code of column c (0..7) of the 8 columns packed in `word`.
constexpr std::uint32_t awq_code(std::uint32_t word, int c) { return (word >> (4 * awq_nibble_of[c])) & 0xFu; }

}  // namespace qforge
