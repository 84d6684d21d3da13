// FineGrainedFP8 (formats.md §5) and MXFP4 (§6): hand-derived codes and scales, edge tiles,
// zero rules, E2M1 ties, both MX scale rules, and round trips with bounds derived from the formats.
#include <catch2/catch.hpp>

#include <qforge/format/tables.hpp>
#include <qforge/reference/layouts.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

using namespace qforge;

namespace {

config fp8_cfg(dtype t, std::int32_t group) { return {t, 8, group, false, layout::fp8_block, compute::f32}; }

float pow2(int e) { return std::ldexp(1.0f, e); }

std::vector<float> random_weights(std::size_t count, unsigned seed, float sigma) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> dist(0.0f, sigma);
    std::vector<float> w(count);
    for (float& v : w) v = dist(gen);
    return w;
}

// The E2M1 code of element i of an MX tensor (element 2i in the low nibble).
std::uint8_t mx_code(const ref::mx_tensor& q, std::size_t i) {
    const std::uint8_t byte = q.blocks[i / 2];
    return static_cast<std::uint8_t>(i % 2 == 0 ? byte & 0xF : byte >> 4);
}

// One row of 32 elements, the rest zero.
std::vector<float> one_block(std::initializer_list<float> head) {
    std::vector<float> w(32, 0.0f);
    std::size_t i = 0;
    for (const float v : head) w[i++] = v;
    return w;
}

std::uint8_t ocp_scale_byte(float amax) { return ref::quantize_mx(one_block({amax}), 1, 32, ref::mx_scale_rule::ocp).scales[0]; }
std::uint8_t round_up_scale_byte(float amax) {
    return ref::quantize_mx(one_block({amax}), 1, 32, ref::mx_scale_rule::round_up).scales[0];
}

}  // namespace

// ---- FP8 ---------------------------------------------------------------------------------------

TEST_CASE("FP8 E4M3 block: scale = 448 / amax, hand-computed codes", "[fp8]") {
    // amax 1: scale 448. 1 -> 448 (0x7E), -0.5 -> -224 = -1.75 * 2^7 (0xF6), 0.25 -> 112 =
    // 1.75 * 2^6 (0x6E), 2^-12 -> 0.109375 = 1.75 * 2^-4 (field 3: 0x1E).
    const std::vector<float> w{1.0f, -0.5f, 0.25f, pow2(-12), 0.0f, -0.0f};
    const auto q = ref::quantize_fp8(fp8_cfg(dtype::fp8_e4m3, 128), w, 1, 6);
    REQUIRE(q.scale_inv.size() == 1);
    CHECK(q.scale_inv[0] == 1.0f / 448.0f);
    CHECK(q.codes == std::vector<std::uint8_t>{0x7E, 0xF6, 0x6E, 0x1E, 0x00, 0x80});
    const auto d = ref::dequantize_fp8(q);
    CHECK(d[0] == 448.0f * (1.0f / 448.0f));
    CHECK(std::signbit(d[5]));
}

TEST_CASE("FP8 E5M2 block: scale = 57344 / amax", "[fp8]") {
    // amax 1: 1 -> 57344 (0x7B); 0.5 -> 28672 = 1.75 * 2^14 (0x77); -0.25 -> -14336 (0xF3).
    const std::vector<float> w{1.0f, 0.5f, -0.25f, 0.0f};
    const auto q = ref::quantize_fp8(fp8_cfg(dtype::fp8_e5m2, 128), w, 2, 2);
    CHECK(q.scale_inv[0] == 1.0f / 57344.0f);
    CHECK(q.codes == std::vector<std::uint8_t>{0x7B, 0x77, 0xF3, 0x00});
}

TEST_CASE("FP8 partial edge tiles: [130, 200] has 2 x 2 tiles of 128", "[fp8]") {
    // Background 2^-10 everywhere; tile (i, j) holds one element of magnitude 2^(2i + j), placed at
    // the far corner for the partial tile (1, 1). Powers of two make 448 / amax exact, so
    // scale_inv = 2^e * f32(1/448) exactly.
    const std::int64_t N = 130, K = 200;
    std::vector<float> w(static_cast<std::size_t>(N * K), pow2(-10));
    const auto at = [&](std::int64_t n, std::int64_t k) -> float& { return w[static_cast<std::size_t>(n * K + k)]; };
    at(5, 7) = 1.0f;
    at(0, 128) = -2.0f;
    at(128, 0) = 4.0f;
    at(129, 199) = -8.0f;
    const auto q = ref::quantize_fp8(fp8_cfg(dtype::fp8_e4m3, 128), w, N, K);
    REQUIRE(q.scale_inv.size() == 4);  // [ceil(130/128), ceil(200/128)]
    CHECK(q.tile_rows == 128);
    CHECK(q.tile_cols == 128);
    const float base = 1.0f / 448.0f;
    CHECK(q.scale_inv[0] == 1.0f * base);
    CHECK(q.scale_inv[1] == 2.0f * base);
    CHECK(q.scale_inv[2] == 4.0f * base);
    CHECK(q.scale_inv[3] == 8.0f * base);
    CHECK(q.codes[5 * K + 7] == 0x7E);
    CHECK(q.codes[128] == 0xFE);
    CHECK(q.codes[128 * K] == 0x7E);
    CHECK(q.codes[129 * K + 199] == 0xFE);
    // The background 2^-10 scaled by 448 / 8 = 56 is 0.0546875 = 1.75 * 2^-5 (field 2: 0x16) in
    // tile (1, 1); scaled by 448 it is 0.4375 = 1.75 * 2^-2 (field 5: 0x2E) in tile (0, 0).
    CHECK(q.codes[129 * K + 198] == 0x16);
    CHECK(q.codes[0] == 0x2E);
    const auto d = ref::dequantize_fp8(q);
    CHECK(d[129 * K + 199] == -448.0f * (8.0f * base));
}

TEST_CASE("FP8 all-zero tile stores scale_inv 1 and keeps -0.0 as 0x80", "[fp8]") {
    const std::int64_t N = 2, K = 256;
    std::vector<float> w(static_cast<std::size_t>(N * K), 0.0f);
    w[3] = -0.0f;
    w[130] = 0.5f;  // tile (0, 1) is not zero
    for (const dtype t : {dtype::fp8_e4m3, dtype::fp8_e5m2}) {
        const auto q = ref::quantize_fp8(fp8_cfg(t, 128), w, N, K);
        REQUIRE(q.scale_inv.size() == 2);
        CHECK(q.scale_inv[0] == 1.0f);
        CHECK(q.scale_inv[1] != 1.0f);
        CHECK(q.codes[3] == 0x80);
        CHECK(q.codes[4] == 0x00);
        CHECK(q.codes[131] == 0x00);
        const auto d = ref::dequantize_fp8(q);
        CHECK(d[3] == 0.0f);
        CHECK(std::signbit(d[3]));
    }
}

TEST_CASE("FP8 per tensor: one scale for the whole tensor", "[fp8]") {
    std::vector<float> w(300 * 7, 0.125f);
    w[1000] = -3.5f;
    const auto q = ref::quantize_fp8(fp8_cfg(dtype::fp8_e4m3, per_tensor), w, 300, 7);
    CHECK(q.tile_rows == 300);
    CHECK(q.tile_cols == 7);
    REQUIRE(q.scale_inv.size() == 1);
    CHECK(q.scale_inv[0] == 1.0f / (448.0f / 3.5f));  // 448 / 3.5 = 128 exactly, so this is 2^-7
    CHECK(q.scale_inv[0] == pow2(-7));
    CHECK(q.codes[1000] == 0xFE);
    CHECK(q.codes[0] == 0x58);  // 0.125 * 128 = 16 = 2^4: field 11
}

TEST_CASE("FP8 quantizer never produces NaN/Inf codes from finite input", "[fp8]") {
    const float big = std::numeric_limits<float>::max(), tiny = std::numeric_limits<float>::denorm_min();
    const std::vector<std::vector<float>> cases{
        {big, -big, 1.0f, 0.0f},         // 448 / FLT_MAX is a normal scale
        {tiny, -tiny, 0.0f, -0.0f},      // 448 / denorm_min overflows: the scale is capped at FLT_MAX
        {pow2(-130), 3 * pow2(-140), -pow2(-149), 0.0f},
        {464.0f, 465.0f, -480.0f, 1e30f},  // would be NaN in a raw cast; amax scaling keeps them in range
    };
    for (const auto& w : cases)
        for (const dtype t : {dtype::fp8_e4m3, dtype::fp8_e5m2}) {
            const auto q = ref::quantize_fp8(fp8_cfg(t, per_tensor), w, 1, 4);
            for (const std::uint8_t c : q.codes) {
                const float v = t == dtype::fp8_e4m3 ? e4m3_to_float(c) : e5m2_to_float(c);
                CHECK(std::isfinite(v));
            }
            CHECK(std::isfinite(q.scale_inv[0]));
            CHECK(q.scale_inv[0] > 0.0f);
        }
    // The largest element always maps to the format's maximum.
    const auto q = ref::quantize_fp8(fp8_cfg(dtype::fp8_e4m3, 128), std::vector<float>{3.0f, -1.0f}, 1, 2);
    CHECK(q.codes[0] == 0x7E);  // 3 * f32(448 / 3) = 448.00003 is clamped to 448 before the cast
}

TEST_CASE("FP8 round trip: relative error <= 2^-(m+1), subnormals within half their quantum", "[fp8]") {
    // In the scaled domain y = w * scale (|y| <= max), RNE to m mantissa bits errs by at most
    // 2^-(m+1) * |y| for normals and half the subnormal quantum (E4M3 2^-10, E5M2 2^-17) below.
    // Back in the weight domain (w * scale, 1 / scale and fp8 * scale_inv are f32 roundings of
    // relative size 2^-24 each, covered by the 2^-20 terms):
    //   |w - w^| <= (2^-(m+1) + 2^-20) * |w| + half_quantum * scale_inv * (1 + 2^-20)
    const std::int64_t N = 200, K = 300;
    const auto w = random_weights(static_cast<std::size_t>(N * K), 42, 0.05f);
    struct fmt {
        dtype type;
        int man_bits;
        float half_quantum;
    };
    for (const fmt f : {fmt{dtype::fp8_e4m3, 3, pow2(-10)}, fmt{dtype::fp8_e5m2, 2, pow2(-17)}}) {
        const auto q = ref::quantize_fp8(fp8_cfg(f.type, 128), w, N, K);
        const auto d = ref::dequantize_fp8(q);
        double worst_rel = 0.0;
        for (std::int64_t n = 0; n < N; ++n)
            for (std::int64_t k = 0; k < K; ++k) {
                const std::size_t i = static_cast<std::size_t>(n * K + k);
                const float sinv = q.scale_inv[static_cast<std::size_t>((n / 128) * 3 + k / 128)];
                const double bound = (std::ldexp(1.0, -(f.man_bits + 1)) + std::ldexp(1.0, -20)) * std::fabs(w[i]) +
                                     f.half_quantum * sinv * (1.0 + std::ldexp(1.0, -20));
                const double err = std::fabs(static_cast<double>(w[i]) - d[i]);
                INFO(to_string(f.type) << " n " << n << " k " << k);
                REQUIRE(err <= bound);
                if (std::fabs(w[i]) > 0.01f) worst_rel = std::max(worst_rel, err / std::fabs(w[i]));
            }
        CHECK(worst_rel > 0.9 * std::ldexp(1.0, -(f.man_bits + 1)) / (1.0 + std::ldexp(1.0, -f.man_bits)));
    }
}

// ---- MXFP4 -------------------------------------------------------------------------------------

TEST_CASE("E2M1 rounding: RNE ties, saturation at 6, signed zero", "[mx]") {
    // amax 7 gives the OCP exponent floor(log2 7) - 2 = 0, so elements are rounded unscaled.
    const auto w = one_block({0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 7.0f,  //
                              -0.0f, -0.1f, -0.25f, 0.26f, 5.5f, -6.0f, 1.5f, -4.5f, 0.5f, -3.0f});
    const std::array<std::uint8_t, 18> expected{
        0,  // 0.25: tie 0 / 0.5 -> 0
        2,  // 0.75: tie 0.5 / 1 -> 1.0
        2,  // 1.25: tie 1 / 1.5 -> 1.0
        4,  // 1.75: tie 1.5 / 2 -> 2.0
        4,  // 2.5:  tie 2 / 3 -> 2
        6,  // 3.5:  tie 3 / 4 -> 4
        6,  // 5:    tie 4 / 6 -> 4
        7,  // 7: saturates to 6
        8,  // -0.0 keeps its sign
        8,  // -0.1 rounds to -0
        8,  // -0.25: tie -> -0
        1,  // 0.26 -> 0.5
        7,  // 5.5 -> 6
        15, // -6
        3,  // 1.5 exact
        14, // -4.5 -> -4
        1,  // 0.5 exact
        13, // -3 exact
    };
    const auto q = ref::quantize_mx(w, 1, 32, ref::mx_scale_rule::ocp);
    REQUIRE(q.scales.size() == 1);
    REQUIRE(q.blocks.size() == 16);
    CHECK(q.scales[0] == 127);
    for (std::size_t i = 0; i < expected.size(); ++i) {
        INFO("element " << i << " = " << w[i]);
        CHECK(mx_code(q, i) == expected[i]);
    }
    for (std::size_t i = expected.size(); i < 32; ++i) CHECK(mx_code(q, i) == 0);
    // Element 2i in the low nibble: byte j = code[2j] | code[2j+1] << 4.
    CHECK(q.blocks[0] == 0x20);
    CHECK(q.blocks[1] == 0x42);
    CHECK(q.blocks[2] == 0x64);
    CHECK(q.blocks[3] == 0x76);
    CHECK(q.blocks[4] == 0x88);
    CHECK(q.blocks[5] == 0x18);
    const auto d = ref::dequantize_mx(q);
    CHECK(d[8] == 0.0f);
    CHECK(std::signbit(d[8]));  // code 8 dequantizes to -0.0
    CHECK(d[7] == 6.0f);
    CHECK(d[15] == -4.0f);
}

TEST_CASE("MX scale is exact: the same block times 2^j gives the same codes, byte 127 + j", "[mx]") {
    const auto w = one_block({0.25f, 0.75f, 1.25f, 5.0f, 7.0f, -0.1f, -4.5f});
    const auto q0 = ref::quantize_mx(w, 1, 32, ref::mx_scale_rule::ocp);
    for (const int j : {-100, -10, -1, 1, 10, 100}) {
        std::vector<float> ws(w);
        for (float& v : ws) v = std::ldexp(v, j);
        const auto q = ref::quantize_mx(ws, 1, 32, ref::mx_scale_rule::ocp);
        CHECK(q.scales[0] == 127 + j);
        CHECK(q.blocks == q0.blocks);
        const auto d = ref::dequantize_mx(q);
        CHECK(d[3] == std::ldexp(4.0f, j));
    }
}

TEST_CASE("MX OCP exponent = clamp(floor(log2(amax)) - 2, -127, 127)", "[mx]") {
    CHECK(ocp_scale_byte(4.0f) == 127);        // log2 = 2
    CHECK(ocp_scale_byte(6.0f) == 127);        // floor(2.58) = 2
    CHECK(ocp_scale_byte(7.99f) == 127);
    CHECK(ocp_scale_byte(8.0f) == 128);        // power of two: exactly 3
    CHECK(ocp_scale_byte(1.0f) == 125);        // 0 - 2
    CHECK(ocp_scale_byte(1.5f) == 125);
    CHECK(ocp_scale_byte(0.5f) == 124);
    CHECK(ocp_scale_byte(0.49f) == 123);       // floor(-1.03) = -2
    CHECK(ocp_scale_byte(pow2(-120)) == 5);    // -122 + 127
    CHECK(ocp_scale_byte(pow2(-125)) == 0);    // -127: the lowest representable
    CHECK(ocp_scale_byte(pow2(-130)) == 0);    // -132 clamps to -127
    CHECK(ocp_scale_byte(std::numeric_limits<float>::denorm_min()) == 0);
    CHECK(ocp_scale_byte(std::numeric_limits<float>::max()) == 252);  // 127 - 2
    CHECK(ocp_scale_byte(-8.0f) == 128);       // amax is |x|
}

TEST_CASE("MX all-zero block: scale byte 0 and every code 0, even for -0.0", "[mx]") {
    std::vector<float> w(64, 0.0f);
    w[1] = -0.0f;
    w[40] = 1.0f;  // second block is not zero
    for (const auto rule : {ref::mx_scale_rule::ocp, ref::mx_scale_rule::round_up}) {
        const auto q = ref::quantize_mx(w, 1, 64, rule);
        CHECK(q.scales[0] == 0);
        for (std::size_t i = 0; i < 16; ++i) CHECK(q.blocks[i] == 0);
        CHECK(q.scales[1] != 0);
        CHECK(ref::dequantize_mx(q)[1] == 0.0f);
    }
}

TEST_CASE("MX round_up rule: amax / 6 rounded up to a power of two", "[mx]") {
    CHECK(round_up_scale_byte(6.0f) == 127);    // 1 = 2^0
    CHECK(round_up_scale_byte(6.01f) == 128);   // 1.0017 -> 2
    CHECK(round_up_scale_byte(4.0f) == 127);    // 0.667 -> 1
    CHECK(round_up_scale_byte(3.0f) == 126);    // 0.5 exactly
    CHECK(round_up_scale_byte(12.0f) == 128);   // 2 exactly
    CHECK(round_up_scale_byte(7.0f) == 128);    // OCP would pick 127 and saturate
    CHECK(round_up_scale_byte(1.0f) == 125);    // 1/6 -> 1/4
    CHECK(round_up_scale_byte(pow2(-140)) == 0);  // clamps to -127
    CHECK(round_up_scale_byte(std::numeric_limits<float>::denorm_min()) == 0);
    // With amax 7 the scale is 2: 7 / 2 = 3.5 is a tie 3 / 4 -> 4 (code 6), no saturation.
    const auto q = ref::quantize_mx(one_block({7.0f, -1.0f}), 1, 32, ref::mx_scale_rule::round_up);
    CHECK(mx_code(q, 0) == 6);
    CHECK(mx_code(q, 1) == 9);  // -0.5
    // The generic entry point passes the rule through quantize_options.
    ref::quantize_options opt;
    opt.mx_rule = ref::mx_scale_rule::round_up;
    const config mx{dtype::e2m1, 4, 32, false, layout::mx, compute::f32};
    const auto w = one_block({7.0f});
    const auto g = std::get<ref::mx_tensor>(ref::quantize(mx, std::span<const float>(w), 1, 32, opt));
    CHECK(g.scales[0] == 128);
}

TEST_CASE("MX layout: blocks [N, K/32, 16], scales [N, K/32]", "[mx]") {
    const std::int64_t N = 3, K = 96;
    std::vector<float> w(static_cast<std::size_t>(N * K), 0.0f);
    w[static_cast<std::size_t>(2 * K + 33)] = -6.0f;  // row 2, block 1, element 1: high nibble of byte 0
    w[static_cast<std::size_t>(1 * K + 64)] = 4.0f;   // row 1, block 2, element 0: low nibble of byte 0
    const auto q = ref::quantize_mx(w, N, K, ref::mx_scale_rule::ocp);
    REQUIRE(q.blocks.size() == static_cast<std::size_t>(N * 3 * 16));
    REQUIRE(q.scales.size() == static_cast<std::size_t>(N * 3));
    CHECK(q.scales[2 * 3 + 1] == 127);
    CHECK(q.blocks[(2 * 3 + 1) * 16] == 0xF0);
    CHECK(q.scales[1 * 3 + 2] == 127);
    CHECK(q.blocks[(1 * 3 + 2) * 16] == 0x06);
    for (std::size_t b = 0; b < q.scales.size(); ++b)
        if (b != 2 * 3 + 1 && b != 1 * 3 + 2) CHECK(q.scales[b] == 0);
    CHECK(ref::dequantize_mx(q) == w);
}

TEST_CASE("MX round trip error: half the E2M1 spacing, plus saturation above 6 (OCP)", "[mx]") {
    // With v = |x| / 2^e the grid spacing is 0.5 below 2, 1 in [2, 4], 2 in [4, 6]; RNE errs by
    // at most half of it. OCP lets v reach just below 8 (amax < 2^(e+3)), which saturates to 6;
    // round_up keeps v <= 6 (amax / 6 <= 2^e), up to the f32 rounding of amax / 6.
    const auto w = random_weights(64 * 256, 5, 0.02f);
    for (const auto rule : {ref::mx_scale_rule::ocp, ref::mx_scale_rule::round_up}) {
        const auto q = ref::quantize_mx(w, 64, 256, rule);
        const auto d = ref::dequantize_mx(q);
        for (std::size_t i = 0; i < w.size(); ++i) {
            const float unit = e8m0_to_float(q.scales[i / 32]);
            const double v = std::fabs(w[i]) / unit;
            const double half_spacing = v <= 2.0 ? 0.25 : v <= 4.0 ? 0.5 : 1.0;
            const double bound = (v > 6.0 ? v - 6.0 : half_spacing) * unit;
            INFO("element " << i << " v " << v);
            REQUIRE(std::fabs(static_cast<double>(w[i]) - d[i]) <= bound);
            if (rule == ref::mx_scale_rule::round_up) REQUIRE(v <= 6.0 * (1.0 + std::ldexp(1.0, -23)));
        }
    }
}

TEST_CASE("MX refuses K that is not a multiple of 32", "[mx]") {
    const std::vector<float> w(2 * 48, 1.0f);
    CHECK_THROWS_WITH(ref::quantize_mx(w, 2, 48, ref::mx_scale_rule::ocp), Catch::Contains("[2, 48]"));
}
