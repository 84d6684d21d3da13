// GPTQ (formats.md §3) and AWQ gemm (§4): packing vectors, hand-computed quantizations, the v1
// zero-point rule, and round trips with an error bound derived from the format.
#include <catch2/catch.hpp>

#include <qforge/format/packing.hpp>
#include <qforge/reference/layouts.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace qforge;

namespace {

std::uint32_t u32(std::int32_t w) { return static_cast<std::uint32_t>(w); }

std::array<std::uint32_t, 8> pack_run(int bits, const std::array<std::uint8_t, 32>& codes) {
    std::array<std::uint32_t, 8> words{};
    pack_gptq_run(bits, codes, std::span(words).first(static_cast<std::size_t>(bits)));
    return words;
}

std::array<std::uint8_t, 32> codes_mod(int m) {
    std::array<std::uint8_t, 32> c{};
    for (int k = 0; k < 32; ++k) c[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(k % m);
    return c;
}

config gptq_cfg(dtype type, int bits, std::int32_t group, layout storage) {
    return {type, static_cast<std::uint8_t>(bits), group, false, storage, compute::f32};
}

// W[n, k] = f(n, k) for an [N, K] matrix.
template <class F>
std::vector<float> make_weights(std::int64_t rows, std::int64_t cols, F f) {
    std::vector<float> w(static_cast<std::size_t>(rows * cols));
    for (std::int64_t n = 0; n < rows; ++n)
        for (std::int64_t k = 0; k < cols; ++k) w[static_cast<std::size_t>(n * cols + k)] = f(n, k);
    return w;
}

std::vector<float> random_weights(std::int64_t rows, std::int64_t cols, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> dist(0.0f, 0.02f);
    std::vector<float> w(static_cast<std::size_t>(rows * cols));
    for (float& v : w) v = dist(gen);
    return w;
}

}  // namespace

// ---- packing helpers ------------------------------------------------------------------------

TEST_CASE("GPTQ packing of 32-code runs, formats.md vectors", "[gptq][packing]") {
    SECTION("4-bit: codes 0..7 pack to 0x76543210") {
        const auto w = pack_run(4, codes_mod(8));
        for (int i = 0; i < 4; ++i) CHECK(w[static_cast<std::size_t>(i)] == 0x76543210u);
    }
    SECTION("3-bit: codes k % 8 give A, B, C = 0x88FAC688, 0xC688FAC6, 0xFAC688FA") {
        const auto w = pack_run(3, codes_mod(8));
        CHECK(w[0] == 0x88FAC688u);
        CHECK(w[1] == 0xC688FAC6u);
        CHECK(w[2] == 0xFAC688FAu);
    }
    SECTION("3-bit: code 10 straddles A/B, code 21 straddles B/C") {
        std::array<std::uint8_t, 32> c{};
        c[10] = 7;  // low 2 bits at A bits 30-31, bit 2 at B bit 0
        auto w = pack_run(3, c);
        CHECK(w[0] == 0xC0000000u);
        CHECK(w[1] == 0x00000001u);
        CHECK(w[2] == 0u);
        c[10] = 0;
        c[21] = 7;  // bit 0 at B bit 31, bits 1-2 at C bits 0-1
        w = pack_run(3, c);
        CHECK(w[0] == 0u);
        CHECK(w[1] == 0x80000000u);
        CHECK(w[2] == 0x00000003u);
        c[21] = 0;
        c[11] = 5;  // B offset 1
        c[22] = 6;  // C offset 2
        w = pack_run(3, c);
        CHECK(w[1] == 5u << 1);
        CHECK(w[2] == 6u << 2);
    }
    SECTION("2-bit: 16 codes per word, element j at bit 2j") {
        const auto w = pack_run(2, codes_mod(4));  // 0,1,2,3 -> 0b11'10'01'00 per byte
        CHECK(w[0] == 0xE4E4E4E4u);
        CHECK(w[1] == 0xE4E4E4E4u);
    }
    SECTION("8-bit: 4 codes per word, element j at bit 8j") {
        std::array<std::uint8_t, 32> c{};
        for (int k = 0; k < 32; ++k) c[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(k == 1 ? 255 : k);
        const auto w = pack_run(8, c);
        CHECK(w[0] == 0x0302FF00u);
        CHECK(w[1] == 0x07060504u);
        CHECK(w[7] == 0x1F1E1D1Cu);
    }
    SECTION("unpack inverts pack for every width") {
        std::mt19937 gen(7);
        for (const int bits : {2, 3, 4, 8}) {
            std::array<std::uint8_t, 32> c{};
            for (auto& v : c) v = static_cast<std::uint8_t>(gen() & low_mask(bits));
            const auto w = pack_run(bits, c);
            std::array<std::uint8_t, 32> back{};
            unpack_gptq_run(bits, std::span<const std::uint32_t>(w).first(static_cast<std::size_t>(bits)), back);
            CHECK(back == c);
        }
    }
    SECTION("usable at compile time") {
        constexpr auto w = [] {
            std::array<std::uint8_t, 32> c{};
            for (int k = 0; k < 32; ++k) c[static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(k % 8);
            std::array<std::uint32_t, 3> out{};
            pack_gptq_run(3, c, out);
            return out;
        }();
        STATIC_REQUIRE(w[1] == 0xC688FAC6u);
        STATIC_REQUIRE(gptq_code(3, w, 21) == 5);
    }
}

TEST_CASE("GPTQ zero-point fields: v1 stores (z - 1) mod 2^b, v2 stores z", "[gptq][packing]") {
    CHECK(gptq_zero_field(4, 8, false) == 7);
    CHECK(gptq_zero_field(4, 8, true) == 8);
    CHECK(gptq_zero_field(4, 0, false) == 0xF);  // wraps inside its field
    CHECK(gptq_zero_field(3, 0, false) == 7);
    CHECK(gptq_zero_from_field(4, 0xF, false) == 0);
    CHECK(gptq_zero_from_field(4, 7, false) == 8);
    CHECK(gptq_zero_from_field(4, 8, true) == 8);
    for (const int bits : {2, 3, 4, 8})
        for (int z = 0; z < (1 << bits); ++z) {
            CHECK(gptq_zero_from_field(bits, gptq_zero_field(bits, z, false), false) == z);
            CHECK(gptq_zero_from_field(bits, gptq_zero_field(bits, z, true), true) == z);
        }
}

TEST_CASE("AWQ interleave: columns 0..7 valued 0..7 pack to 0x75316420", "[awq][packing]") {
    const std::array<std::uint8_t, 8> c{0, 1, 2, 3, 4, 5, 6, 7};
    CHECK(pack_awq_word(c) == 0x75316420u);
    for (int col = 0; col < 8; ++col) CHECK(awq_code(0x75316420u, col) == static_cast<std::uint32_t>(col));
    const std::array<std::uint8_t, 8> one{0, 0, 0, 0, 0, 0, 0, 0xF};  // column 7 sits in nibble 7
    CHECK(pack_awq_word(one) == 0xF0000000u);
    const std::array<std::uint8_t, 8> col1{0, 0xF, 0, 0, 0, 0, 0, 0};  // column 1 sits in nibble 4
    CHECK(pack_awq_word(col1) == 0x000F0000u);
}

// ---- GPTQ quantization ------------------------------------------------------------------------

TEST_CASE("GPTQ asym: hand-computed scales, zeros and layout", "[gptq]") {
    // Row values (k % 16) - 7 span [-7, 8]: scale = 15 / 15 = 1, z = RNE(7 / 1) = 7, codes k % 16.
    const std::int64_t N = 32, K = 64;
    const auto w = make_weights(N, K, [](auto, auto k) { return static_cast<float>(k % 16) - 7.0f; });
    for (const bool v2 : {false, true}) {
        const auto q = ref::quantize_gptq(gptq_cfg(dtype::int_asym, 4, 32, v2 ? layout::gptq_v2 : layout::gptq_v1),
                                          w, N, K);
        REQUIRE(q.qweight.size() == static_cast<std::size_t>(K * 4 / 32 * N));  // [K*b/32, N]
        REQUIRE(q.qzeros.size() == static_cast<std::size_t>(2 * N * 4 / 32));   // [G, N*b/32]
        REQUIRE(q.scales.size() == static_cast<std::size_t>(2 * N));
        CHECK(q.group == 32);
        CHECK_FALSE(q.sym);
        CHECK(q.v2 == v2);
        for (std::int64_t n = 0; n < N; ++n) {
            // qweight row r holds k = 8r..8r+7 of every column n.
            CHECK(u32(q.qweight[static_cast<std::size_t>(0 * N + n)]) == 0x76543210u);
            CHECK(u32(q.qweight[static_cast<std::size_t>(1 * N + n)]) == 0xFEDCBA98u);
        }
        for (const auto s : q.scales) CHECK(s.bits == 0x3C00);  // fp16 1.0
        for (const auto z : q.qzeros) CHECK(u32(z) == (v2 ? 0x77777777u : 0x66666666u));
        for (std::int64_t k = 0; k < K; ++k) CHECK(q.g_idx[static_cast<std::size_t>(k)] == k / 32);
        CHECK(ref::dequantize_gptq(q) == w);
    }
}

TEST_CASE("GPTQ sym: z = 2^(b-1), RNE ties to even, clamp at 2^b - 1", "[gptq]") {
    // max |x| = 7.5 gives xmax = 7.5, xmin = -7.5, scale = 15 / 15 = 1 (exact), z = 8.
    const std::int64_t N = 32, K = 32;
    const std::array<float, 9> head{-7.5f, 7.5f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 3.25f, -2.5f};
    const std::array<std::uint32_t, 9> expected_codes{0, 15, 8, 10, 10, 8, 6, 11, 6};
    const auto w = make_weights(N, K, [&](auto, auto k) { return k < 9 ? head[static_cast<std::size_t>(k)] : 0.0f; });
    const auto q = ref::quantize_gptq(gptq_cfg(dtype::int_sym, 4, per_channel, layout::gptq_v1), w, N, K);
    CHECK(q.sym);
    CHECK(q.group == K);  // per channel: one group spanning K
    REQUIRE(q.scales.size() == static_cast<std::size_t>(N));
    for (const auto z : q.qzeros) CHECK(u32(z) == 0x77777777u);  // formats.md: 4-bit sym v1
    const std::array<std::uint32_t, 2> col0{u32(q.qweight[0]), u32(q.qweight[static_cast<std::size_t>(N)])};
    for (int k = 0; k < 9; ++k) CHECK(gptq_code(4, col0, k) == expected_codes[static_cast<std::size_t>(k)]);
    CHECK(gptq_code(4, col0, 9) == 8);
    CHECK(q.scales[0].bits == 0x3C00);
    const auto d = ref::dequantize_gptq(q);
    CHECK(d[1] == 7.0f);   // 7.5 clamps to code 15: 15 - 8
    CHECK(d[0] == -8.0f);  // -7.5 rounds to -8 (even)
    CHECK(d[4] == 2.0f);

    const auto q2 = ref::quantize_gptq(gptq_cfg(dtype::int_sym, 4, per_channel, layout::gptq_v2), w, N, K);
    for (const auto z : q2.qzeros) CHECK(u32(z) == 0x88888888u);
    CHECK(ref::dequantize_gptq(q2) == d);
}

TEST_CASE("GPTQ sym keeps xmin = 0 for a row without negatives (find_params quirk)", "[gptq]") {
    // Row [15, 1, 1, ...]: xmin = 0 stays, xmax = 15, scale = 15 / 15 = 1, z = 8; 15 saturates at code 15.
    const std::int64_t N = 32, K = 32;
    const auto w = make_weights(N, K, [](auto, auto k) { return k == 0 ? 15.0f : 1.0f; });
    const auto q = ref::quantize_gptq(gptq_cfg(dtype::int_sym, 4, 32, layout::gptq_v2), w, N, K);
    CHECK(q.scales[0].bits == 0x3C00);
    const auto d = ref::dequantize_gptq(q);
    CHECK(d[0] == 7.0f);
    CHECK(d[1] == 1.0f);
}

TEST_CASE("GPTQ all-zero group uses [-1, +1]", "[gptq]") {
    // scale = f32(2 / 15) = 0.13333334 (fp16 0x3044: 1.0667 * 2^-3, mantissa 68). sym: z = 8.
    // asym: z = RNE(1 / 0.13333334) where the f32 quotient is 7.4999995, not 7.5, so z = 7.
    const std::int64_t N = 32, K = 32;
    const std::vector<float> w(static_cast<std::size_t>(N * K), 0.0f);
    for (const dtype t : {dtype::int_sym, dtype::int_asym}) {
        const auto q = ref::quantize_gptq(gptq_cfg(t, 4, 32, layout::gptq_v2), w, N, K);
        const std::uint32_t z_word = t == dtype::int_sym ? 0x88888888u : 0x77777777u;
        CHECK(q.scales[0].bits == 0x3044);
        for (const auto z : q.qzeros) CHECK(u32(z) == z_word);
        for (const auto x : q.qweight) CHECK(u32(x) == z_word);  // code of 0.0 is z
        CHECK(ref::dequantize_gptq(q) == w);
    }
}

TEST_CASE("GPTQ 2-, 3- and 8-bit through the quantizer", "[gptq]") {
    const std::int64_t N = 32, K = 32;
    SECTION("3-bit asym: values (k % 8) - 3, scale 1, z 3, codes k % 8") {
        const auto w = make_weights(N, K, [](auto, auto k) { return static_cast<float>(k % 8) - 3.0f; });
        const auto q = ref::quantize_gptq(gptq_cfg(dtype::int_asym, 3, 32, layout::gptq_v2), w, N, K);
        REQUIRE(q.qweight.size() == static_cast<std::size_t>(3 * N));
        for (std::int64_t n = 0; n < N; ++n) {
            CHECK(u32(q.qweight[static_cast<std::size_t>(n)]) == 0x88FAC688u);
            CHECK(u32(q.qweight[static_cast<std::size_t>(N + n)]) == 0xC688FAC6u);
            CHECK(u32(q.qweight[static_cast<std::size_t>(2 * N + n)]) == 0xFAC688FAu);
        }
        // 32 zeros of value 3 along N: the bit stream 011 011 ... in 3 words.
        const std::array<std::uint32_t, 3> zw{u32(q.qzeros[0]), u32(q.qzeros[1]), u32(q.qzeros[2])};
        for (int i = 0; i < 32; ++i) CHECK(gptq_code(3, zw, i) == 3);
        CHECK(ref::dequantize_gptq(q) == w);
    }
    SECTION("2-bit asym: values (k % 4) - 1, scale 1, z 1") {
        const auto w = make_weights(N, K, [](auto, auto k) { return static_cast<float>(k % 4) - 1.0f; });
        const auto q = ref::quantize_gptq(gptq_cfg(dtype::int_asym, 2, 32, layout::gptq_v1), w, N, K);
        for (const auto x : q.qweight) CHECK(u32(x) == 0xE4E4E4E4u);
        for (const auto z : q.qzeros) CHECK(u32(z) == 0u);  // v1: z - 1 = 0
        CHECK(ref::dequantize_gptq(q) == w);
    }
    SECTION("8-bit asym: range [-100, 155], scale 1, z 100") {
        const auto w = make_weights(N, K, [](auto, auto k) { return k == 1 ? 155.0f : static_cast<float>(k) - 100.0f; });
        const auto q = ref::quantize_gptq(gptq_cfg(dtype::int_asym, 8, per_channel, layout::gptq_v2), w, N, K);
        REQUIRE(q.qweight.size() == static_cast<std::size_t>(8 * N));
        CHECK(u32(q.qweight[0]) == 0x0302FF00u);
        CHECK(u32(q.qweight[static_cast<std::size_t>(N)]) == 0x07060504u);
        for (const auto z : q.qzeros) CHECK(u32(z) == 0x64646464u);
        CHECK(ref::dequantize_gptq(q) == w);
    }
}

TEST_CASE("GPTQ v1 zero z = 0: field 0xF never spills, reads back as 0", "[gptq]") {
    // Row 0 is (k % 16) >= 0: xmin = 0 so z = 0; the other rows are (k % 16) - 7 with z = 7.
    const std::int64_t N = 32, K = 32;
    const auto w = make_weights(N, K, [](auto n, auto k) { return static_cast<float>(k % 16) - (n == 0 ? 0.0f : 7.0f); });
    const auto q1 = ref::quantize_gptq(gptq_cfg(dtype::int_asym, 4, 32, layout::gptq_v1), w, N, K);
    CHECK(u32(q1.qzeros[0]) == 0x6666666Fu);  // AutoGPTQ's packer would borrow from field 1 here
    for (std::size_t i = 1; i < q1.qzeros.size(); ++i) CHECK(u32(q1.qzeros[i]) == 0x66666666u);
    CHECK(ref::dequantize_gptq(q1) == w);
    const auto q2 = ref::quantize_gptq(gptq_cfg(dtype::int_asym, 4, 32, layout::gptq_v2), w, N, K);
    CHECK(u32(q2.qzeros[0]) == 0x77777770u);
    CHECK(ref::dequantize_gptq(q2) == w);
}

TEST_CASE("GPTQ dequantize follows g_idx (act order)", "[gptq]") {
    // Group 1 has doubled values: scale 2, z 7. Pointing g_idx[0] at group 1 makes
    // W[n, 0] = 2 * (code 0 - 7) = -14.
    const std::int64_t N = 32, K = 64;
    const auto w = make_weights(N, K, [](auto, auto k) { return (static_cast<float>(k % 16) - 7.0f) * (k < 32 ? 1.0f : 2.0f); });
    auto q = ref::quantize_gptq(gptq_cfg(dtype::int_asym, 4, 32, layout::gptq_v1), w, N, K);
    CHECK(q.scales[static_cast<std::size_t>(N)].bits == 0x4000);  // fp16 2.0
    q.g_idx[0] = 1;
    const auto d = ref::dequantize_gptq(q);
    CHECK(d[0] == -14.0f);
    CHECK(d[1] == -6.0f);
    q.g_idx[5] = 2;
    CHECK_THROWS_WITH(ref::dequantize_gptq(q), Catch::Contains("g_idx[5]"));
}

TEST_CASE("GPTQ round trip error <= scale/2 plus the fp16 rounding of the scale", "[gptq]") {
    // Unclamped, |x/s - RNE(x/s)| <= 1/2, so |x - s*(q - z)| <= s/2. The clamp does not break
    // this: z is within 1/2 of z* = -xmin/s (z = RNE(z*) asym, z* = maxq/2 and z = (maxq+1)/2
    // sym), so RNE(x/s) + z > maxq needs x/s >= maxq - z + 1/2 while x <= xmax gives
    // x/s <= maxq - z* <= maxq - z + 1/2: the clamped code errs by exactly s/2 (same at code 0).
    // (This needs a negative in every group for sym, see the xmin = 0 quirk above.)
    // The stored s16 differs from s by at most 2^-11 * s (fp16 keeps 11 significant bits; these
    // scales are normal fp16 numbers) and |q - z| <= 2^b - 1, so
    //   |x - x^| <= s16 * (1/2 + (2^b - 1) * 2^-11) * (1 + 2^-10)
    // where the last factor covers s vs s16 in the first term and the f32 roundings.
    const std::int64_t N = 64, K = 256;
    const auto w = random_weights(N, K, 1234);
    for (const int bits : {2, 3, 4, 8})
        for (const dtype t : {dtype::int_sym, dtype::int_asym})
            for (const std::int32_t group : {32, 128, per_channel}) {
                const auto q = ref::quantize_gptq(gptq_cfg(t, bits, group, layout::gptq_v1), w, N, K);
                const auto d = ref::dequantize_gptq(q);
                const std::size_t gs = static_cast<std::size_t>(q.group), groups = static_cast<std::size_t>(K) / gs;
                double worst_ratio = 0.0;
                for (std::size_t n = 0; n < static_cast<std::size_t>(N); ++n)
                    for (std::size_t k = 0; k < static_cast<std::size_t>(K); ++k) {
                        const float s16 = to_float(q.scales[(k / gs) * static_cast<std::size_t>(N) + n]);
                        const double bound =
                            s16 * (0.5 + static_cast<double>(low_mask(bits)) * std::ldexp(1.0, -11)) * (1.0 + std::ldexp(1.0, -10));
                        const std::size_t i = n * static_cast<std::size_t>(K) + k;
                        const double err = std::fabs(static_cast<double>(w[i]) - d[i]);
                        INFO("bits " << bits << " type " << to_string(t) << " group " << group << " n " << n << " k " << k);
                        REQUIRE(err <= bound);
                        worst_ratio = std::max(worst_ratio, err / s16);
                    }
                CHECK(groups * gs == static_cast<std::size_t>(K));
                CHECK(worst_ratio > 0.45);  // the bound is tight: errors near s/2 do occur
            }
}

TEST_CASE("GPTQ shape and NaN refusals name the shape / index", "[gptq]") {
    const config cfg = gptq_cfg(dtype::int_sym, 4, 32, layout::gptq_v1);
    const std::vector<float> w48(32 * 48, 0.5f);
    CHECK_THROWS_WITH(ref::quantize_gptq(cfg, w48, 32, 48), Catch::Contains("[32, 48]"));
    CHECK_THROWS_WITH(ref::quantize_gptq(cfg, w48, 48, 32), Catch::Contains("[48, 32]"));
    const std::vector<float> w96(32 * 96, 0.5f);
    CHECK_THROWS_WITH(ref::quantize_gptq(gptq_cfg(dtype::int_sym, 4, 64, layout::gptq_v1), w96, 32, 96),
                      Catch::Contains("[32, 96]") && Catch::Contains("64"));
    CHECK_THROWS_AS(ref::quantize_gptq(cfg, w48, 32, 48), std::invalid_argument);

    std::vector<float> w(32 * 64, 0.25f);
    w[777] = std::numeric_limits<float>::quiet_NaN();
    ref::quantize_options opt;
    opt.tensor_name = "model.layers.0.mlp.up_proj.weight";
    CHECK_THROWS_WITH(ref::quantize(cfg, std::span<const float>(w), 32, 64, opt),
                      Catch::Contains("model.layers.0.mlp.up_proj.weight") && Catch::Contains("NaN") &&
                          Catch::Contains("777"));
}

TEST_CASE("GPTQ refuses a scale that overflows fp16", "[gptq]") {
    std::vector<float> w(32 * 32, 0.0f);
    w[3] = 1e6f;  // scale 1e6 / 7.5 > 65504
    CHECK_THROWS_WITH(ref::quantize_gptq(gptq_cfg(dtype::int_sym, 4, 32, layout::gptq_v2), w, 32, 32),
                      Catch::Contains("row 0") && Catch::Contains("fp16"));
}

// ---- AWQ ---------------------------------------------------------------------------------------

TEST_CASE("AWQ gemm: hand-computed codes, interleaved packing along N", "[awq]") {
    // Row n holds (n + k) % 16 over K = 32: min 0, max 15, scale 1, z 0, codes (n + k) % 16.
    const std::int64_t N = 16, K = 32;
    const config cfg{dtype::int_asym, 4, 32, false, layout::awq_gemm, compute::f32};
    const auto w = make_weights(N, K, [](auto n, auto k) { return static_cast<float>((n + k) % 16); });
    const auto q = ref::quantize_awq(cfg, w, N, K);
    REQUIRE(q.qweight.size() == static_cast<std::size_t>(K * N / 8));  // [K, N/8]
    REQUIRE(q.qzeros.size() == static_cast<std::size_t>(1 * N / 8));   // [K/gs, N/8]
    REQUIRE(q.scales.size() == static_cast<std::size_t>(N));           // [K/gs, N]
    CHECK(u32(q.qweight[0]) == 0x75316420u);  // k = 0, columns 0..7 hold 0..7
    CHECK(u32(q.qweight[1]) == 0xFDB9ECA8u);  // k = 0, columns 8..15 hold 8..15
    CHECK(u32(q.qweight[2]) == 0x86427531u);  // k = 1, columns 0..7 hold 1..8
    for (const auto z : q.qzeros) CHECK(u32(z) == 0u);
    for (const auto s : q.scales) CHECK(s.bits == 0x3C00);
    CHECK(ref::dequantize_awq(q) == w);
}

TEST_CASE("AWQ zero point and saturation (0 is not forced into the range)", "[awq]") {
    const std::int64_t N = 8, K = 32;
    const config cfg{dtype::int_asym, 4, 32, false, layout::awq_gemm, compute::f32};
    SECTION("[-8, 7]: scale 1, z = -RNE(-8) = 8") {
        const auto w = make_weights(N, K, [](auto, auto k) { return static_cast<float>(k % 16) - 8.0f; });
        const auto q = ref::quantize_awq(cfg, w, N, K);
        CHECK(u32(q.qzeros[0]) == 0x88888888u);
        CHECK(u32(q.qweight[0]) == 0u);  // k = 0: every column has code 0
        CHECK(ref::dequantize_awq(q) == w);
    }
    SECTION("[1, 16]: z clamps to 0, 16 saturates at code 15") {
        const auto w = make_weights(N, K, [](auto, auto k) { return static_cast<float>(k % 16) + 1.0f; });
        const auto q = ref::quantize_awq(cfg, w, N, K);
        CHECK(u32(q.qzeros[0]) == 0u);
        const auto d = ref::dequantize_awq(q);
        CHECK(d[15] == 15.0f);
        CHECK(d[14] == 15.0f);
    }
    SECTION("[-16, -1]: z clamps to 15, -16 saturates at code 0") {
        const auto w = make_weights(N, K, [](auto, auto k) { return -static_cast<float>(k % 16) - 1.0f; });
        const auto q = ref::quantize_awq(cfg, w, N, K);
        CHECK(u32(q.qzeros[0]) == 0xFFFFFFFFu);
        const auto d = ref::dequantize_awq(q);
        CHECK(d[15] == -15.0f);
        CHECK(d[0] == -1.0f);
    }
    SECTION("constant group: range clamps to 1e-5") {
        const std::vector<float> w(static_cast<std::size_t>(N * K), 0.0f);
        const auto q = ref::quantize_awq(cfg, w, N, K);
        CHECK(to_float(q.scales[0]) == to_float(to_f16(1e-5f / 15.0f)));
        CHECK(ref::dequantize_awq(q) == w);
    }
}

TEST_CASE("AWQ round trip error <= scale/2 plus the fp16 rounding of the scale", "[awq]") {
    // Every group contains both signs, so z = -RNE(min/s) lies in [0, 15] without clamping and
    // |x - s(q - z)| <= s/2; with the fp16 scale: |x - x^| <= s16 * (1/2 + 15 * 2^-11) * (1 + 2^-10).
    const std::int64_t N = 64, K = 256;
    const auto w = random_weights(N, K, 99);
    for (const std::int32_t group : {32, 64, 128}) {
        const config cfg{dtype::int_asym, 4, group, false, layout::awq_gemm, compute::f32};
        const auto q = ref::quantize_awq(cfg, w, N, K);
        const auto d = ref::dequantize_awq(q);
        const std::size_t gs = static_cast<std::size_t>(group);
        double worst_ratio = 0.0;
        for (std::size_t n = 0; n < static_cast<std::size_t>(N); ++n)
            for (std::size_t k = 0; k < static_cast<std::size_t>(K); ++k) {
                const float s16 = to_float(q.scales[(k / gs) * static_cast<std::size_t>(N) + n]);
                const double bound = s16 * (0.5 + 15.0 * std::ldexp(1.0, -11)) * (1.0 + std::ldexp(1.0, -10));
                const std::size_t i = n * static_cast<std::size_t>(K) + k;
                const double err = std::fabs(static_cast<double>(w[i]) - d[i]);
                INFO("group " << group << " n " << n << " k " << k);
                REQUIRE(err <= bound);
                worst_ratio = std::max(worst_ratio, err / s16);
            }
        CHECK(worst_ratio > 0.45);
    }
}

TEST_CASE("AWQ refuses shapes it cannot pack", "[awq]") {
    const config cfg{dtype::int_asym, 4, 32, false, layout::awq_gemm, compute::f32};
    const std::vector<float> w(12 * 32, 0.5f);
    CHECK_THROWS_WITH(ref::quantize_awq(cfg, w, 12, 32), Catch::Contains("[12, 32]"));
    const std::vector<float> w2(8 * 48, 0.5f);
    CHECK_THROWS_WITH(ref::quantize_awq(cfg, w2, 8, 48), Catch::Contains("[8, 48]"));
}
