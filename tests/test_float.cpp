// Conversions of format/float.hpp against hand-derived bit patterns (formats.md §5, §6).
// Every expected pattern below follows from the format definition: sign | biased exponent | mantissa.
#include <catch2/catch.hpp>

#include <qforge/format/float.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

using namespace qforge;

namespace {

float f32_from_bits(std::uint32_t b) { return std::bit_cast<float>(b); }
float pow2(int e) { return std::ldexp(1.0f, e); }
constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float qnan = std::numeric_limits<float>::quiet_NaN();

}  // namespace

TEST_CASE("E4M3FN encoding: bias 7, max 448, NaN at 0x7F/0xFF, no infinities", "[float][e4m3]") {
    CHECK(to_e4m3(1.0f) == 0x38);    // exponent field 7
    CHECK(to_e4m3(1.25f) == 0x3A);   // mantissa 010
    CHECK(to_e4m3(448.0f) == 0x7E);  // 1.75 * 2^8: field 15, mantissa 110 (111 is NaN)
    CHECK(to_e4m3(-448.0f) == 0xFE);
    CHECK(to_e4m3(256.0f) == 0x78);
    CHECK(to_e4m3(pow2(-6)) == 0x08);  // smallest normal
    SECTION("ties to even in the normal range") {
        CHECK(to_e4m3(1.0f + 1.0f / 16) == 0x38);  // halfway 1.0 (m=0) / 1.125 (m=1)
        CHECK(to_e4m3(1.0f + 3.0f / 16) == 0x3A);  // halfway 1.125 (m=1) / 1.25 (m=2)
    }
    SECTION("the raw cast does not saturate") {
        CHECK(to_e4m3(464.0f) == 0x7E);  // halfway 448 (m=6) / 480 (m=7, NaN): even wins
        CHECK(to_e4m3(465.0f) == 0x7F);  // above the tie: rounds to the NaN pattern
        CHECK(to_e4m3(480.0f) == 0x7F);
        CHECK(to_e4m3(-480.0f) == 0xFF);
        CHECK(to_e4m3(std::numeric_limits<float>::max()) == 0x7F);
    }
    SECTION("Inf and NaN become NaN, keeping the sign") {
        CHECK(to_e4m3(inf) == 0x7F);
        CHECK(to_e4m3(-inf) == 0xFF);
        CHECK(to_e4m3(qnan) == 0x7F);
    }
    SECTION("subnormals: quantum 2^-9, ties to even") {
        CHECK(to_e4m3(pow2(-9)) == 0x01);
        CHECK(to_e4m3(7 * pow2(-9)) == 0x07);    // largest subnormal
        CHECK(to_e4m3(pow2(-10)) == 0x00);       // half the minimum: tie between 0 and 1 -> 0
        CHECK(to_e4m3(-pow2(-10)) == 0x80);      // ... keeping the sign
        CHECK(to_e4m3(3 * pow2(-10)) == 0x02);   // 1.5 quanta: tie between 1 and 2 -> 2
        CHECK(to_e4m3(5 * pow2(-10)) == 0x02);   // 2.5 quanta: tie between 2 and 3 -> 2
        CHECK(to_e4m3(pow2(-10) + pow2(-20)) == 0x01);  // just above the tie
        CHECK(to_e4m3(pow2(-30)) == 0x00);
    }
    CHECK(to_e4m3(0.0f) == 0x00);
    CHECK(to_e4m3(-0.0f) == 0x80);
}

TEST_CASE("E4M3FN decoding", "[float][e4m3]") {
    CHECK(e4m3_to_float(0x7E) == 448.0f);
    CHECK(e4m3_to_float(0xFE) == -448.0f);
    CHECK(e4m3_to_float(0x78) == 256.0f);  // exponent all ones is still finite when m != 111
    CHECK(std::isnan(e4m3_to_float(0x7F)));
    CHECK(std::isnan(e4m3_to_float(0xFF)));
    CHECK(e4m3_to_float(0x01) == pow2(-9));
    CHECK(e4m3_to_float(0x38) == 1.0f);
    CHECK(e4m3_to_float(0x80) == 0.0f);
    CHECK(std::signbit(e4m3_to_float(0x80)));
    // Every finite code survives decode -> encode.
    for (int c = 0; c < 256; ++c)
        if ((c & 0x7F) != 0x7F) CHECK(to_e4m3(e4m3_to_float(static_cast<std::uint8_t>(c))) == c);
}

TEST_CASE("E5M2: bias 15, max 57344, Inf at 0x7C", "[float][e5m2]") {
    CHECK(to_e5m2(1.0f) == 0x3C);
    CHECK(to_e5m2(57344.0f) == 0x7B);  // 1.75 * 2^15
    CHECK(to_e5m2(-57344.0f) == 0xFB);
    CHECK(to_e5m2(61439.0f) == 0x7B);  // below the tie
    CHECK(to_e5m2(61440.0f) == 0x7C);  // halfway 57344 (m=3) / 65536: even wins, which overflows to Inf
    CHECK(to_e5m2(inf) == 0x7C);
    CHECK(to_e5m2(-inf) == 0xFC);
    CHECK(to_e5m2(pow2(-16)) == 0x01);  // minimum subnormal
    CHECK(to_e5m2(pow2(-17)) == 0x00);  // tie -> even
    CHECK(to_e5m2(-0.0f) == 0x80);
    CHECK(std::isnan(e5m2_to_float(to_e5m2(qnan))));
    CHECK(e5m2_to_float(0x7B) == 57344.0f);
    CHECK(e5m2_to_float(0x7C) == inf);
    CHECK(e5m2_to_float(0xFC) == -inf);
    CHECK(std::isnan(e5m2_to_float(0x7D)));
    CHECK(e5m2_to_float(0x01) == pow2(-16));
    for (int c = 0; c < 256; ++c)
        if ((c & 0x7C) != 0x7C) CHECK(to_e5m2(e5m2_to_float(static_cast<std::uint8_t>(c))) == c);
}

TEST_CASE("bf16: RNE on the top 16 bits of f32", "[float][bf16]") {
    CHECK(to_bf16(1.0f).bits == 0x3F80);
    CHECK(to_bf16(1.0f + pow2(-8)).bits == 0x3F80);             // tie, 0x3F80 even
    CHECK(to_bf16(1.0f + 3 * pow2(-8)).bits == 0x3F82);         // tie, 0x3F81 odd -> up
    CHECK(to_bf16(1.0f + pow2(-8) + pow2(-23)).bits == 0x3F81);  // just above the tie
    CHECK(to_bf16(f32_from_bits(0x00008000)).bits == 0x0000);   // tie among subnormals
    CHECK(to_bf16(f32_from_bits(0x00018000)).bits == 0x0002);
    CHECK(to_bf16(-0.0f).bits == 0x8000);
    SECTION("overflow") {
        CHECK(to_bf16(f32_from_bits(0x7F7F7FFF)).bits == 0x7F7F);   // below the tie: largest finite
        CHECK(to_bf16(f32_from_bits(0x7F7F8000)).bits == 0x7F80);   // tie, 0x7F7F odd -> Inf
        CHECK(to_bf16(std::numeric_limits<float>::max()).bits == 0x7F80);
        CHECK(to_bf16(-std::numeric_limits<float>::max()).bits == 0xFF80);
        CHECK(to_bf16(inf).bits == 0x7F80);
    }
    CHECK(std::isnan(to_float(to_bf16(qnan))));
    CHECK(to_float(bf16{0x3F81}) == 1.0f + pow2(-7));
    CHECK(to_float(bf16{0x7F80}) == inf);
}

TEST_CASE("fp16: bias 15, max 65504, subnormal quantum 2^-24", "[float][f16]") {
    CHECK(to_f16(1.0f).bits == 0x3C00);
    CHECK(to_f16(1.0f + pow2(-11)).bits == 0x3C00);      // tie -> even
    CHECK(to_f16(1.0f + 3 * pow2(-11)).bits == 0x3C02);  // tie -> even (up)
    CHECK(to_f16(pow2(-14)).bits == 0x0400);             // smallest normal
    CHECK(to_f16(pow2(-24)).bits == 0x0001);
    CHECK(to_f16(pow2(-25)).bits == 0x0000);  // tie -> even
    CHECK(to_f16(3 * pow2(-25)).bits == 0x0002);
    CHECK(to_f16(-0.0f).bits == 0x8000);
    SECTION("overflow") {
        CHECK(to_f16(65504.0f).bits == 0x7BFF);
        CHECK(to_f16(65519.0f).bits == 0x7BFF);  // below the tie
        CHECK(to_f16(65520.0f).bits == 0x7C00);  // halfway 65504 (odd) / 65536: Inf
        CHECK(to_f16(-1e6f).bits == 0xFC00);
        CHECK(to_f16(std::numeric_limits<float>::max()).bits == 0x7C00);
    }
    CHECK(std::isnan(to_float(to_f16(qnan))));
    CHECK(to_float(f16{0x7BFF}) == 65504.0f);
    CHECK(to_float(f16{0x0001}) == pow2(-24));
    CHECK(to_float(f16{0x7C00}) == inf);
    CHECK(std::isnan(to_float(f16{0x7E00})));
    for (std::uint32_t c = 0; c < 0x10000; ++c)
        if ((c & 0x7C00) != 0x7C00) REQUIRE(to_f16(to_float(f16{static_cast<std::uint16_t>(c)})).bits == c);
}

TEST_CASE("E8M0 scales: 2^(s - 127), 0xFF is NaN", "[float][e8m0]") {
    CHECK(e8m0_to_float(127) == 1.0f);
    CHECK(e8m0_to_float(0) == pow2(-127));
    CHECK(e8m0_to_float(254) == pow2(127));
    CHECK(e8m0_to_float(125) == 0.25f);
    CHECK(std::isnan(e8m0_to_float(0xFF)));
}
