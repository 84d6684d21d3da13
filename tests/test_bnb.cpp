// The bitsandbytes part of the scalar reference (formats.md §1, §2) against hand-checked vectors.
// Code tables and thresholds are restated from formats.md here, not taken from the code under test.
#include <qforge/format/tables.hpp>
#include <qforge/reference/layouts.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

using namespace qforge;

namespace {

constexpr float u = 0x1p-24f;  // unit roundoff of f32
constexpr float inf = std::numeric_limits<float>::infinity();

// formats.md §1, verbatim.
const std::array<float, 16> nf4{-1.0f,
                                -0.6961928009986877f,
                                -0.5250730514526367f,
                                -0.39491748809814453f,
                                -0.28444138169288635f,
                                -0.18477343022823334f,
                                -0.09105003625154495f,
                                0.0f,
                                0.07958029955625534f,
                                0.16093020141124725f,
                                0.24611230194568634f,
                                0.33791524171829224f,
                                0.44070982933044434f,
                                0.5626170039176941f,
                                0.7229568362236023f,
                                1.0f};
const std::array<float, 7> fp4_literal_thresholds{0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                                  0.4166667f,  0.583333f,  0.8333333f};
// code of a magnitude that lies at (or just below) threshold i, and just above it: rank -> code
// [0,1,6,7,4,5,2,3] read by hand.
const std::array<std::uint8_t, 7> fp4_code_at_threshold{0, 1, 6, 7, 4, 5, 2};
const std::array<std::uint8_t, 7> fp4_code_above_threshold{1, 6, 7, 4, 5, 2, 3};

config bnb4_config(dtype type, std::int32_t blocksize, bool double_quant = false) {
    return config{type, 4, blocksize, double_quant, layout::bnb4, compute::f32};
}

std::vector<std::uint8_t> unpack(const ref::bnb4_tensor& q) {
    const auto n = static_cast<std::size_t>(q.rows * q.cols);
    std::vector<std::uint8_t> codes(n);
    for (std::size_t i = 0; i < n; ++i) codes[i] = i % 2 == 0 ? q.packed[i / 2] >> 4 : q.packed[i / 2] & 0xF;
    return codes;
}

float below(float x) { return std::nextafter(x, -inf); }
float above(float x) { return std::nextafter(x, inf); }

// Deterministic values in [-1, 1) (a plain LCG: the same on every standard library).
struct lcg {
    std::uint32_t state;
    float next() {
        state = state * 1664525u + 1013904223u;
        return static_cast<float>(state >> 8) * 0x1p-23f - 1.0f;
    }
};

// Rows of random values with magnitudes spread over several decades, a zero row and a zero run.
std::vector<float> spread_values(std::size_t n, std::uint32_t seed) {
    lcg g{seed};
    std::vector<float> w(n);
    for (std::size_t i = 0; i < n; ++i) {
        const float decade = std::pow(10.0f, static_cast<float>(static_cast<int>(i / 97 % 7) - 3));
        w[i] = g.next() * decade;
    }
    for (std::size_t i = n / 3; i < n / 3 + 150 && i < n; ++i) w[i] = 0.0f;
    return w;
}

// Largest distance from a value in [-1, 1] to the nearest table entry (tables are sorted).
template <std::size_t N>
double max_half_gap(const std::array<float, N>& table) {
    double h = std::max(1.0 + table.front(), 1.0 - table.back());
    for (std::size_t i = 0; i + 1 < N; ++i) h = std::max(h, (static_cast<double>(table[i + 1]) - table[i]) / 2);
    return h;
}

std::vector<float> block_absmax(const std::vector<float>& w, std::size_t bs) {
    std::vector<float> a((w.size() + bs - 1) / bs, 0.0f);
    for (std::size_t i = 0; i < w.size(); ++i) a[i / bs] = std::max(a[i / bs], std::fabs(w[i]));
    return a;
}

}  // namespace

// ---- NF4 / FP4 codes -----------------------------------------------------------------------

TEST_CASE("exact_mean: the f32 nearest to the exact mean, whatever the magnitudes and the count") {
    using ref::exact_mean;
    CHECK(exact_mean(std::vector<float>{1.0f, 2.0f}) == 1.5f);
    // (2^24 + 2) / 3 = 5592406 exactly; a float sum would lose the ones
    CHECK(exact_mean(std::vector<float>{16777216.0f, 1.0f, 1.0f}) == 5592406.0f);
    const float big = std::numeric_limits<float>::max(), tiny = std::numeric_limits<float>::denorm_min();
    CHECK(exact_mean(std::vector<float>{big, big, big}) == big);  // no overflow
    CHECK(exact_mean(std::vector<float>{tiny, 0.0f}) == 0.0f);            // half a quantum: ties to even (0)
    CHECK(exact_mean(std::vector<float>{3 * tiny, 0.0f}) == 2 * tiny);    // 1.5 quanta: ties to even (2)
    CHECK(exact_mean(std::vector<float>{big, tiny}) == big / 2);          // big / 2 is exact; tiny far below its ulp
    // (2 + 2^-23) / 2 = 1 + 2^-24, a tie between 1 and 1 + 2^-23: to even (1). Over 4 with one
    // quantum more: just above the tie between 0.5 and 0.5 + 2^-24, so up.
    CHECK(exact_mean(std::vector<float>{2.0f, std::ldexp(1.0f, -23)}) == 1.0f);
    CHECK(exact_mean(std::vector<float>{2.0f, std::ldexp(1.0f, -23), tiny, 0.0f}) == std::nextafter(0.5f, 1.0f));
    // a million equal values: their sum needs more than 32 bits per exponent
    CHECK(exact_mean(std::vector<float>(1000000, 0.1f)) == 0.1f);
    std::vector<float> mixed(1000000, 0.1f);
    mixed.resize(2000000, 0.3f);  // (0.1f + 0.3f) / 2 is exact in f64: one rounding to f32
    CHECK(exact_mean(mixed) == static_cast<float>((static_cast<double>(0.1f) + static_cast<double>(0.3f)) / 2));
}

TEST_CASE("NF4: f32 midpoints tie to the lower code, one ulp decides, table values keep their code") {
    // absmax 1 (the table holds -1 and 1), so y = x exactly.
    std::vector<float> w;
    std::vector<int> expected;
    for (int i = 0; i < 16; ++i) {
        w.push_back(nf4[static_cast<std::size_t>(i)]);
        expected.push_back(i);
    }
    for (std::size_t i = 0; i + 1 < 16; ++i) {
        const float t = (nf4[i] + nf4[i + 1]) * 0.5f;
        const int lower = static_cast<int>(i);
        w.insert(w.end(), {t, below(t), above(t)});
        expected.insert(expected.end(), {lower, lower, lower + 1});
    }
    REQUIRE(w.size() == 61);
    const auto q = ref::quantize_bnb4(bnb4_config(dtype::nf4, 64), w, 1, 61);
    REQUIRE(q.absmax == std::vector<float>{1.0f});
    const auto codes = unpack(q);
    for (std::size_t i = 0; i < w.size(); ++i) {
        INFO("element " << i << " value " << w[i]);
        CHECK(static_cast<int>(codes[i]) == expected[i]);
    }
    CHECK(q.quant_map == nf4);
}

TEST_CASE("NF4: y is x times the f32 reciprocal of absmax, not x / absmax") {
    // absmax 3: x * f32(1/3) = 0x1.45f6p-5 lies above the threshold (0 + nf4[8]) / 2 = 0x1.45f5fep-5
    // (code 8), while the correctly rounded x / 3 equals it (code 7). Checked with exact rationals.
    const float x = 0x1.e8f0fep-4f;
    REQUIRE((0.0f + nf4[8]) * 0.5f == 0x1.45f5fep-5f);
    const std::vector<float> w{3.0f, x};
    const auto q = ref::quantize_bnb4(bnb4_config(dtype::nf4, 64), w, 1, 2);
    CHECK(q.packed == std::vector<std::uint8_t>{0xF8});
}

TEST_CASE("FP4: literal thresholds, sign y < 0, code 8 is +0.0") {
    std::vector<float> w{1.0f};
    std::vector<std::uint8_t> expected{3};
    for (std::size_t i = 0; i < 7; ++i) {
        const float t = fp4_literal_thresholds[i];
        w.insert(w.end(), {t, below(t), above(t), -t, -below(t), -above(t)});
        const std::uint8_t at = fp4_code_at_threshold[i], up = fp4_code_above_threshold[i];
        const auto at_neg = static_cast<std::uint8_t>(at | 8), up_neg = static_cast<std::uint8_t>(up | 8);
        expected.insert(expected.end(), {at, at, up, at_neg, at_neg, up_neg});
    }
    // The table's own magnitudes [0, 1/192, 2/3, 1, 1/3, 1/2, 1/6, 1/4] map to codes 0..7.
    const std::array<float, 8> magnitudes{0.0f, 1.0f / 192, 2.0f / 3, 1.0f, 1.0f / 3, 0.5f, 1.0f / 6, 0.25f};
    for (std::uint8_t c = 0; c < 8; ++c) {
        w.push_back(magnitudes[c]);
        expected.push_back(c);
        if (c != 0) {
            w.push_back(-magnitudes[c]);
            expected.push_back(c | 8);
        }
    }
    // -0.0 has sign 0; a tiny negative value has sign 1 and magnitude code 0: code 8.
    w.insert(w.end(), {-0.0f, -1e-30f, -1.0f});
    expected.insert(expected.end(), {0, 8, 11});
    const auto cols = static_cast<std::int64_t>(w.size());
    const auto q = ref::quantize_bnb4(bnb4_config(dtype::fp4, 128), w, 1, cols);
    REQUIRE(q.absmax == std::vector<float>{1.0f});
    const auto codes = unpack(q);
    for (std::size_t i = 0; i < w.size(); ++i) {
        INFO("element " << i << " value " << w[i]);
        CHECK(static_cast<int>(codes[i]) == static_cast<int>(expected[i]));
    }
    // Dequantized: code 8 is +0.0, code 0 too; -0.0 input comes back as +0.0.
    const auto d = ref::dequantize_bnb4(q);
    for (std::size_t i = 0; i < w.size(); ++i)
        if (expected[i] == 8 || expected[i] == 0) {
            INFO("element " << i);
            CHECK(d[i] == 0.0f);
            CHECK_FALSE(std::signbit(d[i]));
        }
    CHECK(q.quant_map[8] == 0.0f);
    CHECK_FALSE(std::signbit(q.quant_map[8]));
    CHECK(q.quant_map[11] == -1.0f);
}

// ---- packing and blocks ----------------------------------------------------------------------

TEST_CASE("bnb4 packing: element 2i in the high nibble, odd tail padded with the zero code") {
    const std::vector<float> w{1.0f, -1.0f, 0.0f};
    const auto n = ref::quantize_bnb4(bnb4_config(dtype::nf4, 64), w, 1, 3);
    CHECK(n.packed == std::vector<std::uint8_t>{0xF0, 0x77});  // codes 15, 0 | 7, pad 7
    const auto f = ref::quantize_bnb4(bnb4_config(dtype::fp4, 64), w, 1, 3);
    CHECK(f.packed == std::vector<std::uint8_t>{0x3B, 0x00});  // codes 3, 11 | 0, pad 0
    CHECK(ref::dequantize_bnb4(n) == w);
    CHECK(ref::dequantize_bnb4(f) == w);
}

TEST_CASE("bnb4 blocks are flat, cross rows, and the partial last block has its own absmax") {
    // [3, 24] with blocksize 32: blocks [0, 32) (rows 0 and 1), [32, 64) (rows 1 and 2), [64, 72).
    std::vector<float> w(72, 0.0f);
    w[30] = 4.0f;   // row 1: block 0 absmax 4
    w[31] = -2.0f;  // y = -0.5 -> code 2 (thresholds -0.848, -0.611 are below, -0.460 is not)
    w[32] = -2.0f;  // block 1 absmax 2, y = -1 -> code 0
    w[63] = 1.0f;   // y = 0.5 -> code 12 (below the 0.5017 midpoint of codes 12 and 13)
    w[70] = 0.5f;   // partial block absmax 0.5, y = 1 -> code 15
    w[71] = 0.25f;  // y = 0.5 -> code 12
    const auto q = ref::quantize_bnb4(bnb4_config(dtype::nf4, 32), w, 3, 24);
    CHECK(q.absmax == std::vector<float>{4.0f, 2.0f, 0.5f});
    CHECK(q.packed.size() == 36);
    const auto codes = unpack(q);
    for (std::size_t i = 0; i < 72; ++i) {
        INFO("element " << i);
        const int expected = i == 30 ? 15 : i == 31 ? 2 : i == 32 ? 0 : i == 63 ? 12 : i == 70 ? 15 : i == 71 ? 12 : 7;
        CHECK(static_cast<int>(codes[i]) == expected);
    }
    const auto d = ref::dequantize_bnb4(q);
    CHECK(d[31] == nf4[2] * 4.0f);
    CHECK(d[63] == nf4[12] * 2.0f);
    CHECK(d[71] == nf4[12] * 0.5f);
    CHECK(d[70] == 0.5f);
    CHECK(d[0] == 0.0f);
}

TEST_CASE("bnb4 all-zero block: zero codes and absmax +0.0") {
    std::vector<float> w(64, 0.0f);
    w[3] = -0.0f;
    w[40] = 1.0f;
    for (const auto& [type, zero_byte] : {std::pair{dtype::nf4, 0x77}, std::pair{dtype::fp4, 0x00}}) {
        const auto q = ref::quantize_bnb4(bnb4_config(type, 32), w, 2, 32);
        REQUIRE(q.absmax.size() == 2);
        CHECK(q.absmax[0] == 0.0f);
        CHECK_FALSE(std::signbit(q.absmax[0]));
        for (std::size_t j = 0; j < 16; ++j) CHECK(static_cast<int>(q.packed[j]) == zero_byte);
        const auto d = ref::dequantize_bnb4(q);
        for (std::size_t i = 0; i < 32; ++i) CHECK(d[i] == 0.0f);
    }
}

TEST_CASE("bnb4: a block whose 1/absmax overflows f32 still quantizes by x / absmax") {
    // absmax 2^-130: 1/absmax = 2^130 is inf in f32. Codes: y = 1 -> 15, y = -0.5 -> 2, 0 -> 7.
    const std::vector<float> w{0x1p-130f, -0x1p-131f, 0.0f, 0.0f};
    const auto q = ref::quantize_bnb4(bnb4_config(dtype::nf4, 32), w, 2, 2);
    CHECK(q.packed == std::vector<std::uint8_t>{0xF2, 0x77});
}

TEST_CASE("bnb4 refuses impossible inputs with the field named") {
    const std::vector<float> w(10, 1.0f);
    CHECK_THROWS_AS(ref::quantize_bnb4(bnb4_config(dtype::nf4, 64), w, 3, 3), std::invalid_argument);
    CHECK_THROWS_AS(ref::quantize_bnb4(bnb4_config(dtype::nf4, 48), w, 2, 5), std::invalid_argument);
    auto q = ref::quantize_bnb4(bnb4_config(dtype::nf4, 64), w, 2, 5);
    q.packed.pop_back();
    CHECK_THROWS_WITH(ref::dequantize_bnb4(q), Catch::Contains("packed"));
    auto dq = ref::quantize_bnb4(bnb4_config(dtype::nf4, 64, true), w, 2, 5);
    dq.nested_absmax.clear();
    CHECK_THROWS_WITH(ref::dequantize_bnb4(dq), Catch::Contains("nested_absmax"));
}

// ---- blockwise 8-bit (dynamic map) -----------------------------------------------------------

TEST_CASE("blockwise8: an exact tie at a threshold goes to the even index") {
    // Three blocks of 256, each led by 1.0 (absmax 1, so y = x): the 255 thresholds exactly,
    // one ulp below, one ulp above. E.g. t[126] = map[126] / 2 < 0 stays 126, while
    // t[127] = map[128] / 2 > 0 goes to 128, not to 127.
    std::vector<float> x;
    std::vector<int> expected;
    for (int variant = 0; variant < 3; ++variant) {
        x.push_back(1.0f);
        expected.push_back(255);
        for (int i = 0; i < 255; ++i) {
            const float t = (dynamic_map[i] + dynamic_map[i + 1]) * 0.5f;
            x.push_back(variant == 0 ? t : variant == 1 ? below(t) : above(t));
            expected.push_back(variant == 0 ? (i % 2 == 0 ? i : i + 1) : variant == 1 ? i : i + 1);
        }
    }
    const auto q = ref::quantize_blockwise8(x, 256);
    REQUIRE(q.absmax == std::vector<float>{1.0f, 1.0f, 1.0f});
    for (std::size_t i = 0; i < x.size(); ++i) {
        INFO("element " << i << " value " << x[i]);
        CHECK(static_cast<int>(q.codes[i]) == expected[i]);
    }
    CHECK(q.codes[1 + 126] == 126);
    CHECK(q.codes[1 + 127] == 128);
}

TEST_CASE("blockwise8: all-zero block gives code 127, dequantize is map[q] * absmax") {
    std::vector<float> x(300, 0.0f);
    x[7] = -0.0f;
    x[299] = -2.0f;  // partial block [256, 300): absmax 2, y = -1 -> below every threshold: code 0
    const auto q = ref::quantize_blockwise8(x, 256);
    CHECK(q.absmax == std::vector<float>{0.0f, 2.0f});
    for (std::size_t i = 0; i < 299; ++i) CHECK(q.codes[i] == 127);
    CHECK(q.codes[299] == 0);
    const auto d = ref::dequantize_blockwise8(q, dynamic_map);
    CHECK(d[5] == 0.0f);
    CHECK(d[299] == dynamic_map[0] * 2.0f);

    const ref::blockwise8 hand{2, {255, 0, 127}, {2.0f, 0.5f}};
    CHECK(ref::dequantize_blockwise8(hand, dynamic_map) == std::vector<float>{2.0f, dynamic_map[0] * 2.0f, 0.0f});
    const ref::blockwise8 short_absmax{2, {255, 0, 127}, {2.0f}};
    CHECK_THROWS_WITH(ref::dequantize_blockwise8(short_absmax, dynamic_map), Catch::Contains("absmax"));
    CHECK_THROWS_AS(ref::quantize_blockwise8(x, 0), std::invalid_argument);
}

// ---- double quantization ---------------------------------------------------------------------

TEST_CASE("double quant: the offset is the f32 nearest to the exact mean of absmax") {
    // Block absmax 2, 2^-23, 2^-99, 0: exact mean 0.5 + 2^-25 + 2^-101 lies just above the midpoint
    // of 0.5 and 0.5 + 2^-24, so it rounds up. (A double sum loses 2^-99 and then ties to 0.5.)
    std::vector<float> w(128, 0.0f);
    w[0] = 2.0f;
    w[32] = 0x1p-23f;
    w[64] = -0x1p-99f;
    const auto q = ref::quantize_bnb4(bnb4_config(dtype::nf4, 32, true), w, 4, 32);
    CHECK(q.nested_offset == 0.5f + 0x1p-24f);

    // 1, 2, 4: 7/3 = 10.0101..., 24 significant bits 0x1.2aaaaa and the next bit is 0.
    std::vector<float> v(96, 0.0f);
    v[0] = 1.0f;
    v[32] = 2.0f;
    v[64] = 4.0f;
    CHECK(ref::quantize_bnb4(bnb4_config(dtype::fp4, 32, true), v, 3, 32).nested_offset == 0x1.2aaaaap+1f);
}

TEST_CASE("double quant: absmax - offset in nested blocks of 256, reconstruction map*nested + offset") {
    // 300 rows of 32 = 300 blocks; block absmax 1 for blocks 0..149 and 3 for 150..299: offset 2,
    // centered absmax -1 / +1, nested blocks [0, 256) and [256, 300) both with absmax 1;
    // codes 0 for -1 (below every threshold) and 255 for +1.
    std::vector<float> w(300 * 32, 0.0f);
    for (std::size_t b = 0; b < 300; ++b) {
        const float a = b < 150 ? 1.0f : 3.0f;
        w[b * 32] = a;
        w[b * 32 + 1] = -0.5f * a;  // y = -0.5 -> code 2
    }
    const auto q = ref::quantize_bnb4(bnb4_config(dtype::nf4, 32, true), w, 300, 32);
    REQUIRE(q.nested);
    CHECK(q.absmax.empty());
    CHECK(q.nested_offset == 2.0f);
    CHECK(q.nested_absmax == std::vector<float>{1.0f, 1.0f});
    CHECK(q.nested_quant_map == dynamic_map);
    REQUIRE(q.absmax_codes.size() == 300);
    for (std::size_t b = 0; b < 300; ++b) CHECK(static_cast<int>(q.absmax_codes[b]) == (b < 150 ? 0 : 255));

    // Reconstructed absmax: map[0] * 1 + 2 (two roundings) and map[255] * 1 + 2 = 3.
    const float small = dynamic_map[0] * 1.0f + 2.0f;
    const auto d = ref::dequantize_bnb4(q);
    CHECK(d[0] == small);
    CHECK(d[1] == nf4[2] * small);
    CHECK(d[150 * 32] == 3.0f);
    CHECK(d[150 * 32 + 1] == nf4[2] * 3.0f);
}

TEST_CASE("double quant dequantize: the product is rounded before the offset, stored maps are used") {
    ref::bnb4_tensor q;
    q.type = dtype::nf4;
    q.rows = 1;
    q.cols = 2;
    q.blocksize = 64;
    q.packed = {0xF7};  // codes 15, 7
    q.quant_map = nf4;
    q.nested = true;
    q.absmax_codes = {200};
    q.nested_absmax = {1.0f + 0x1p-13f};
    q.nested_quant_map.fill(0.0f);
    q.nested_quant_map[200] = 1.0f + 0x1p-12f;
    q.nested_offset = -1.0f;
    // (1 + 2^-12)(1 + 2^-13) = 1 + 3 * 2^-13 + 2^-25 rounds to 1 + 3 * 2^-13 (2^-25 is below half
    // an ulp); minus 1 gives 3 * 2^-13, where an FMA would keep 3 * 2^-13 + 2^-25 (exact in f32).
    CHECK(ref::dequantize_bnb4(q) == std::vector<float>{0x3p-13f, 0.0f});
    q.quant_map[15] = 0.5f;
    CHECK(ref::dequantize_bnb4(q) == std::vector<float>{0x3p-14f, 0.0f});
}

// ---- round trips -----------------------------------------------------------------------------

TEST_CASE("bnb4 round trip error is within the table's half gap (+ the double-quant absmax error)") {
    // Without double quant: y = x * f32(1/a) is within 2.01u of x/a; the chosen entry is within the
    // largest half gap H of y (FP4's literal thresholds move a boundary by < 4e-7 < 7u, only where
    // the half gap is far below H; NF4's f32 midpoints by < u); the product table * a adds u.
    // So |d - x| <= a * (H + 16u).
    // With double quant, a is replaced by a' = fl(fl(map[q] * na) + off): the nested code is within
    // Hmap (dynamic map half gap, ends included) + 3.01u of (a - off) / na, and the subtraction,
    // product and sum add u each: |a' - a| <= E = na * (Hmap + 8u) + 4u * (a + off). Since
    // |table| <= 1: |d - x| <= a * (H + 16u) + E * (1 + u).
    const double h_map = max_half_gap(dynamic_map);
    auto fp4_sorted = fp4_table;
    std::sort(fp4_sorted.begin(), fp4_sorted.end());
    for (const dtype type : {dtype::nf4, dtype::fp4}) {
        const double h = type == dtype::nf4 ? max_half_gap(nf4) : max_half_gap(fp4_sorted);
        for (const std::int32_t bs : {32, 64, 256, 4096})
            for (const bool dq : {false, true})
                for (const auto& [rows, cols] : {std::pair<std::int64_t, std::int64_t>{7, 301}, {1, 33}, {33, 129}}) {
                    INFO("type " << to_string(type) << " blocksize " << bs << " dq " << dq << " shape " << rows
                                 << "x" << cols);
                    const auto seed = 17u * static_cast<std::uint32_t>(bs + cols);
                    const auto w = spread_values(static_cast<std::size_t>(rows * cols), seed);
                    const auto q = ref::quantize_bnb4(bnb4_config(type, bs, dq), w, rows, cols);
                    const auto d = ref::dequantize_bnb4(q);
                    const auto a = block_absmax(w, static_cast<std::size_t>(bs));
                    CHECK(q.nested == dq);
                    std::vector<double> absmax_error(a.size(), 0.0);
                    if (dq) {
                        const std::size_t nested_blocks = (a.size() + 255) / 256;
                        REQUIRE(q.nested_absmax.size() == nested_blocks);
                        std::vector<float> na(nested_blocks, 0.0f);
                        for (std::size_t j = 0; j < a.size(); ++j)
                            na[j / 256] = std::max(na[j / 256], std::fabs(a[j] - q.nested_offset));
                        CHECK(q.nested_absmax == na);
                        for (std::size_t j = 0; j < a.size(); ++j)
                            absmax_error[j] = na[j / 256] * (h_map + 8 * u) + 4 * u * (a[j] + q.nested_offset);
                    } else {
                        CHECK(q.absmax == a);
                    }
                    for (std::size_t i = 0; i < w.size(); ++i) {
                        const std::size_t b = i / static_cast<std::size_t>(bs);
                        const double bound = a[b] * (h + 16 * u) + absmax_error[b] * (1 + u);
                        if (std::fabs(static_cast<double>(d[i]) - w[i]) > bound) {
                            FAIL_CHECK("element " << i << " x " << w[i] << " got " << d[i] << " bound " << bound);
                            break;
                        }
                    }
                }
    }
}

// ---- LLM.int8 weights -------------------------------------------------------------------------

TEST_CASE("int8row: SCB per row, RNE codes of W * (127 / SCB), zero rows") {
    // Row 0: SCB 2, 127/2 = 63.5: 2 -> 127, 1 -> 63.5 -> 64, -1 -> -64, 0.5 -> 31.75 -> 32.
    // Row 1: SCB 127, scale 1: ties 2.5 -> 2, -0.5 -> 0, 1.5 -> 2 (to even).
    // Row 2: zero row.
    const std::vector<float> w{2.0f, 1.0f, -1.0f, 0.5f, 127.0f, 2.5f, -0.5f, 1.5f, 0.0f, -0.0f, 0.0f, 0.0f};
    const auto q = ref::quantize_int8row(w, 3, 4);
    CHECK(q.scb == std::vector<float>{2.0f, 127.0f, 0.0f});
    CHECK(q.codes == std::vector<std::int8_t>{127, 64, -64, 32, 127, 2, 0, 2, 0, 0, 0, 0});
    CHECK_THROWS_AS(ref::quantize_int8row(w, 5, 2), std::invalid_argument);
}

TEST_CASE("int8row dequantize: (f32(CB) * SCB) * f32(1/127), two roundings") {
    // 13 * 2.75 = 35.75 exactly; times f32(1/127) = 0x1.020408p-7 rounds to 0x1.20408p-2, while
    // 35.75 / 127 and 13 * (2.75 * f32(1/127)) both give 0x1.204082p-2 (exact rationals).
    const ref::int8row_tensor q{1, 2, {13, -127}, {2.75f}};
    CHECK(ref::dequantize_int8row(q) == std::vector<float>{0x1.20408p-2f, (-127.0f * 2.75f) * (1.0f / 127.0f)});
    const ref::int8row_tensor bad{1, 2, {13, -127}, {}};
    CHECK_THROWS_WITH(ref::dequantize_int8row(bad), Catch::Contains("SCB"));
}

TEST_CASE("int8row: a row whose 127/SCB overflows f32 still quantizes") {
    // SCB 2^-126: 127 * 2^126 overflows. Codes: 127, -0.5 * 127 = -63.5 -> -64, 31.75 -> 32.
    const std::vector<float> w{0x1p-126f, -0x1p-127f, 0x1p-128f};
    CHECK(ref::quantize_int8row(w, 1, 3).codes == std::vector<std::int8_t>{127, -64, 32});
}

TEST_CASE("int8row round trip error <= SCB/254 + 6u * SCB") {
    // y = fl(W * fl(127/SCB)) is within 2.01u*|W|*127/SCB of W*127/SCB; the code within 1/2 of y;
    // dequantize (q * SCB) * c with c = (1/127)(1 + u) adds three relative u's on |q| <= 127:
    // |d - W| <= SCB/254 + 2.01u * |W| + 3.01u * SCB <= SCB/254 + 6u * SCB.
    const std::int64_t rows = 37, cols = 211;
    auto w = spread_values(static_cast<std::size_t>(rows * cols), 99u);
    std::fill(w.begin() + 5 * cols, w.begin() + 6 * cols, 0.0f);  // a zero row
    const auto q = ref::quantize_int8row(w, rows, cols);
    const auto d = ref::dequantize_int8row(q);
    for (std::int64_t r = 0; r < rows; ++r) {
        float scb = 0.0f;
        for (std::int64_t c = 0; c < cols; ++c)
            scb = std::max(scb, std::fabs(w[static_cast<std::size_t>(r * cols + c)]));
        REQUIRE(q.scb[static_cast<std::size_t>(r)] == scb);
        const double bound = scb / 254.0 + 6 * u * scb;
        for (std::int64_t c = 0; c < cols; ++c) {
            const auto i = static_cast<std::size_t>(r * cols + c);
            INFO("row " << r << " col " << c);
            REQUIRE(std::fabs(static_cast<double>(d[i]) - w[i]) <= bound);
        }
    }
    for (std::int64_t c = 0; c < cols; ++c) CHECK(d[static_cast<std::size_t>(5 * cols + c)] == 0.0f);
}

// ---- LLM.int8 matmul ---------------------------------------------------------------------------

TEST_CASE("int8_matmul without outliers: hand-computed int32 C, then C * ((SCA * SCB) / 16129) + bias") {
    // X row 0: SCA 1: XA [127, -63.5 -> -64, 31.75 -> 32, 0]; row 1: SCA 2, 63.5: [32, 32, -64, 127].
    // W rows: CB [127, 64, -64, 32] (SCB 2), [127, 2, 0, 2] (SCB 127), zero row (SCB 0).
    const std::vector<float> x{1.0f, -0.5f, 0.25f, 0.0f, 0.5f, 0.5f, -1.0f, 2.0f};
    const auto w = ref::quantize_int8row(
        std::vector<float>{2.0f, 1.0f, -1.0f, 0.5f, 127.0f, 2.5f, -0.5f, 1.5f, 0.0f, 0.0f, 0.0f, 0.0f}, 3, 4);
    const std::vector<float> bias{0.5f, -1.0f, 2.0f};
    const std::array<std::int32_t, 6> c{9985, 16001, 0, 14272, 4382, 0};
    const std::array<float, 2> sca{1.0f, 2.0f};
    const std::array<float, 3> scb{2.0f, 127.0f, 0.0f};
    const auto out = ref::int8_matmul(w, x, 2, 0.0f, bias);
    REQUIRE(out.size() == 6);
    for (std::size_t m = 0; m < 2; ++m)
        for (std::size_t n = 0; n < 3; ++n) {
            INFO("m " << m << " n " << n);
            const float expected = static_cast<float>(c[m * 3 + n]) * ((sca[m] * scb[n]) / 16129.0f) + bias[n];
            CHECK(out[m * 3 + n] == expected);
        }
    // Without bias, and the threshold far above every |x| changes nothing.
    const auto plain = ref::int8_matmul(w, x, 2, 0.0f);
    const auto high = ref::int8_matmul(w, x, 2, 100.0f);
    CHECK(plain == high);
    CHECK(plain[0] == 9985.0f * (2.0f / 16129.0f));
}

TEST_CASE("int8_matmul without outliers equals an independent computation of the formula") {
    const std::int64_t m = 5, n = 7, k = 67;
    const auto wf = spread_values(static_cast<std::size_t>(n * k), 5u);
    const auto w = ref::quantize_int8row(wf, n, k);
    auto x = spread_values(static_cast<std::size_t>(m * k), 6u);
    std::fill(x.begin() + 2 * k, x.begin() + 3 * k, 0.0f);  // a zero activation row: SCA 0
    const auto out = ref::int8_matmul(w, x, m, 0.0f);
    for (std::int64_t r = 0; r < m; ++r) {
        float sca = 0.0f;
        for (std::int64_t c = 0; c < k; ++c) sca = std::max(sca, std::fabs(x[static_cast<std::size_t>(r * k + c)]));
        std::vector<long> xa(static_cast<std::size_t>(k), 0);
        if (sca != 0.0f)
            for (std::int64_t c = 0; c < k; ++c)
                xa[static_cast<std::size_t>(c)] = std::lrint(x[static_cast<std::size_t>(r * k + c)] * (127.0f / sca));
        for (std::int64_t j = 0; j < n; ++j) {
            long acc = 0;
            for (std::int64_t c = 0; c < k; ++c)
                acc += xa[static_cast<std::size_t>(c)] * w.codes[static_cast<std::size_t>(j * k + c)];
            const float expected = static_cast<float>(acc) * ((sca * w.scb[static_cast<std::size_t>(j)]) / 16129.0f);
            INFO("m " << r << " n " << j);
            CHECK(out[static_cast<std::size_t>(r * n + j)] == expected);
        }
    }
    for (std::int64_t j = 0; j < n; ++j) CHECK(out[static_cast<std::size_t>(2 * n + j)] == 0.0f);
}

TEST_CASE("int8_matmul with an outlier column: int8 part exact, outliers in floating point") {
    // Column 0 holds 10 >= 6 in row 0, so it is an outlier column for every row (row 1's -3 too).
    // SCA over the other columns: row 0 max(1, 0.5, 0.25) = 1 -> XA [0, 127, -64, 32];
    // row 1 max(0.5, 0.5, 1) = 1 -> XA [0, 64, 64, -127] (0.5 * 127 = 63.5 -> 64).
    const std::vector<float> x{10.0f, 1.0f, -0.5f, 0.25f, -3.0f, 0.5f, 0.5f, -1.0f};
    // W row 0 [0, 2, 1, -1]: SCB 2, CB [0, 127, 64, -64]; its outlier weight is 0.
    // W row 1 [4, 1, -2, 0.5]: SCB 4, 31.75: CB [127, 32, -64, 16].
    const auto w = ref::quantize_int8row(std::vector<float>{0.0f, 2.0f, 1.0f, -1.0f, 4.0f, 1.0f, -2.0f, 0.5f}, 2, 4);
    REQUIRE(w.codes == std::vector<std::int8_t>{0, 127, 64, -64, 127, 32, -64, 16});
    const std::vector<float> bias{0.25f, -0.5f};
    const std::array<std::int32_t, 4> c{127 * 127 - 64 * 64 - 32 * 64, 127 * 32 + 64 * 64 + 32 * 16,
                                        64 * 127 + 64 * 64 + 127 * 64, 64 * 32 - 64 * 64 - 127 * 16};
    REQUIRE(c == std::array<std::int32_t, 4>{9985, 8672, 20352, -4080});

    for (const float threshold : {6.0f, 10.0f}) {  // |x| == t counts as an outlier
        INFO("threshold " << threshold);
        const auto out = ref::int8_matmul(w, x, 2, threshold, bias);
        // Row 0 of W has a zero outlier weight: the output is the int8 part, bit for bit.
        CHECK(out[0] == static_cast<float>(c[0]) * ((1.0f * 2.0f) / 16129.0f) + bias[0]);
        CHECK(out[2] == static_cast<float>(c[2]) * ((1.0f * 2.0f) / 16129.0f) + bias[0]);
        // Row 1: against a double oracle over the dequantized weight (4 * 127) * f32(1/127).
        // Derived bound: the int8 part has 3 roundings (SCA*SCB, /16129, *C), the outlier sum
        // p = 1 product, then two additions: |out - exact| <= (6 + p) u (|I| + sum |x w| + |b|).
        const double w_out = static_cast<double>((127.0f * 4.0f) * (1.0f / 127.0f));
        for (std::size_t r = 0; r < 2; ++r) {
            const double int_part = c[r * 2 + 1] * 1.0 * 4.0 / 16129.0;
            const double outlier = x[r * 4] * w_out;
            const double exact = int_part + outlier + bias[1];
            const double bound = 7 * u * (std::fabs(int_part) + std::fabs(outlier) + std::fabs(bias[1]));
            CHECK(std::fabs(out[r * 2 + 1] - exact) <= bound);
            // and bit for bit in the documented f32 order
            const float f32_order = (static_cast<float>(c[r * 2 + 1]) * ((1.0f * 4.0f) / 16129.0f) +
                                     (0.0f + x[r * 4] * static_cast<float>(w_out))) +
                                    bias[1];
            CHECK(out[r * 2 + 1] == f32_order);
        }
    }
    // A threshold just above 10 makes column 0 ordinary: SCA of row 0 becomes 10.
    const auto no_outlier = ref::int8_matmul(w, x, 2, above(10.0f), bias);
    CHECK(no_outlier[0] != ref::int8_matmul(w, x, 2, 6.0f, bias)[0]);
}

TEST_CASE("int8_matmul refuses bad shapes, bias, thresholds and non-finite activations") {
    const auto w = ref::quantize_int8row(std::vector<float>{1.0f, 2.0f, 3.0f, 4.0f}, 2, 2);
    const std::vector<float> x{1.0f, 2.0f};
    CHECK_THROWS_AS(ref::int8_matmul(w, x, 2, 6.0f), std::invalid_argument);
    CHECK_THROWS_WITH(ref::int8_matmul(w, x, 1, 6.0f, std::vector<float>{1.0f}), Catch::Contains("bias"));
    CHECK_THROWS_AS(ref::int8_matmul(w, x, 1, -1.0f), std::invalid_argument);
    CHECK_THROWS_AS(ref::int8_matmul(w, x, 1, std::numeric_limits<float>::quiet_NaN()), std::invalid_argument);
    const std::vector<float> bad{1.0f, std::numeric_limits<float>::quiet_NaN()};
    CHECK_THROWS_WITH(ref::int8_matmul(w, bad, 1, 6.0f), Catch::Contains("flat index 1"));
}

// ---- the generic entry ---------------------------------------------------------------------------

TEST_CASE("ref::quantize with a bnb config refuses NaN / Inf naming the tensor and the flat index") {
    std::vector<float> w(128, 0.25f);
    w[37] = std::numeric_limits<float>::quiet_NaN();
    w[90] = inf;
    ref::quantize_options opt;
    opt.tensor_name = "model.layers.0.mlp.down_proj.weight";
    const auto cfg = bnb4_config(dtype::nf4, 64, true);
    CHECK_THROWS_WITH(ref::quantize(cfg, std::span<const float>(w), 2, 64, opt),
                      Catch::Contains("model.layers.0.mlp.down_proj.weight") && Catch::Contains("NaN") &&
                          Catch::Contains("flat index 37"));
    w[37] = 0.0f;
    CHECK_THROWS_WITH(ref::quantize(cfg, std::span<const float>(w), 2, 64, opt),
                      Catch::Contains("Inf") && Catch::Contains("flat index 90"));
    w[90] = 1.0f;
    const auto q = ref::quantize(cfg, std::span<const float>(w), 2, 64, opt);
    REQUIRE(std::holds_alternative<ref::bnb4_tensor>(q));
    CHECK(std::get<ref::bnb4_tensor>(q).nested);
}
