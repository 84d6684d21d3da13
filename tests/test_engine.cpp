// The engine calls (engine.hpp) on the ISA named by QFORGE_ISA, for every built kernel config:
//   - prepared activations give the bits of the plain kernel call, shared by three matrices and by
//     two threads taking row ranges; one call over several matrices gives the bits of one call each
//   - bf16 / f16 activations give the bits of the kernel on their exact f32 widening; bf16 / f16
//     outputs are the RNE rounding of the kernel's f32 result; beta y and leading dimensions
//   - every result also against the scalar reference (ref::gemv / ref::gemm in double), within
//     a bound loose enough for the i8 path (the tight per-path bounds are test_kernels'; the bits
//     above tie the engine calls to the kernels those bounds were checked on)
// Also: kernel_config_for, and the packed-file format (round trip of every layout, refusals).
#include <qforge/config/name.hpp>
#include <qforge/engine.hpp>
#include <qforge/format/float.hpp>
#include <qforge/io/packed_file.hpp>
#include <qforge/kernels/kernels.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/reference/reference.hpp>
#include <qforge/synthetic.hpp>

#include <catch2/catch.hpp>

#include "isa_under_test.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

using namespace qforge;

namespace {

const std::vector<config> kernel_list = {
#define QFORGE_KERNEL(name, family, type, bits, group, dq, storage, act) \
    QFORGE_KERNEL_CONFIG(type, bits, group, dq, storage, act),
#include <qforge_kernel_list.inc>
#undef QFORGE_KERNEL
};

// The configs this run tests: built, and compiled for the active ISA (else their avx512 or
// avx512_vnni kernel runs, tested in that run).
std::vector<config> configs_under_test() {
    std::vector<config> out;
    for (const config& c : kernel_list)
        if (kernels::kernel_built(c) && kernels::compiled_for(c, active_isa())) out.push_back(c);
    return out;
}

// The checkpoint a kernel config is packed from: GPTQ v1 for the qforge layout, else its own.
config stored_config(config c) {
    if (c.storage == layout::qforge) c.storage = layout::gptq_v1;
    if (c.type == dtype::int8_row) c.act = compute::i8;
    return c;
}

struct weights {
    ref::quantized q;
    matrix m;
};

weights make(const config& cfg, std::int64_t n, std::int64_t k, std::uint64_t seed) {
    synthetic_spec spec;
    spec.rows = n;
    spec.cols = k;
    spec.seed = seed;
    const std::vector<float> src = synthetic_weights(spec);
    ref::quantized q = ref::quantize(stored_config(cfg), std::span<const float>(src), n, k);
    matrix m(pack_weights(cfg, q));
    return {std::move(q), std::move(m)};
}

std::vector<float> input(std::int64_t k, float phase) {
    std::vector<float> x(static_cast<std::size_t>(k));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(phase + 0.37f * static_cast<float>(i));
    return x;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// |y - reference| within 2% of sum |W x| per output (+ tiny absolute slack): wide enough for
// the i8 and bf16 paths, far below what a wrong row, column or scale gives.
void check_near(const std::vector<float>& y, const std::vector<double>& ref, const std::vector<double>& magnitude) {
    for (std::size_t i = 0; i < y.size(); ++i) {
        INFO("output " << i);
        CHECK(std::fabs(y[i] - ref[i]) <= 0.02 * magnitude[i] + 1e-6);
    }
}

std::vector<double> magnitudes(const ref::quantized& q, std::int64_t n, std::int64_t k, const std::vector<float>& x,
                               std::int64_t m = 1) {
    const std::vector<float> w = ref::dequantize(q);
    std::vector<double> out(static_cast<std::size_t>(m * n));
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t r = 0; r < n; ++r)
            for (std::int64_t j = 0; j < k; ++j)
                out[static_cast<std::size_t>(i * n + r)] += std::fabs(static_cast<double>(w[r * k + j]) * x[i * k + j]);
    return out;
}

constexpr std::int64_t N = 96, K = 512;

}  // namespace

TEST_CASE("prepared activations: the bits of separate calls, shared by three matrices and two threads") {
    if (!isa_under_test_runs()) return;
    for (const config& cfg : configs_under_test()) {
        INFO(canonical_name(cfg) << " on " << to_string(active_isa()));
        const weights a = make(cfg, N, K, 1), b = make(cfg, N, K, 2), c = make(cfg, N, K, 3);
        const std::vector<float> x = input(K, 0.5f);
        const std::vector<float> bias = input(N, 2.0f);
        std::vector<float> direct[3];
        const weights* all[3] = {&a, &b, &c};
        for (int t = 0; t < 3; ++t) {
            direct[t].resize(N);
            all[t]->m.gemv_kernel().gemv(all[t]->m.view(), x.data(), bias.data(), direct[t].data(), 0, N);
            check_near(direct[t], ref::gemv(all[t]->q, x, bias), magnitudes(all[t]->q, N, K, x));
        }
        const prepared_x px(a.m, {x.data()});
        CHECK(px.fits(b.m));
        std::vector<float> y[3];
        for (int t = 0; t < 3; ++t) {
            y[t].assign(N, NAN);
            all[t]->m.gemv(px, bias.data(), {y[t].data()}, 0, N);
            CHECK(same_bits(y[t], direct[t]));
        }
        // two threads, each its half of the rows of each matrix, one prepared x
        std::vector<float> yt[3];
        for (auto& v : yt) v.assign(N, NAN);
        auto half = [&](std::int64_t n0, std::int64_t n1) {
            for (int t = 0; t < 3; ++t) all[t]->m.gemv(px, bias.data(), {yt[t].data()}, n0, n1);
        };
        std::thread first(half, 0, 40);
        std::thread second(half, 40, N);
        first.join();
        second.join();
        for (int t = 0; t < 3; ++t) CHECK(same_bits(yt[t], direct[t]));

        // one call over the three, prepared or not, split at rows that cross matrix boundaries
        for (const bool use_prepared : {false, true}) {
            std::vector<float> ym[3];
            for (auto& v : ym) v.assign(N, NAN);
            const gemv_target targets[3] = {{&a.m, bias.data(), {ym[0].data()}},
                                            {&b.m, bias.data(), {ym[1].data()}},
                                            {&c.m, bias.data(), {ym[2].data()}}};
            REQUIRE(stacked_rows(targets) == 3 * N);
            for (const auto& [n0, n1] : {std::pair<std::int64_t, std::int64_t>{0, 50}, {50, 200}, {200, 3 * N}}) {
                if (use_prepared) gemv(targets, px, n0, n1);
                else gemv(targets, activations{x.data()}, n0, n1);
            }
            for (int t = 0; t < 3; ++t) CHECK(same_bits(ym[t], direct[t]));
        }
    }
}

TEST_CASE("bf16 / f16 activations and outputs, beta, leading dimensions") {
    if (!isa_under_test_runs()) return;
    for (const config& cfg : configs_under_test()) {
        INFO(canonical_name(cfg) << " on " << to_string(active_isa()));
        const weights a = make(cfg, N, K, 4);
        const kernel& kv = a.m.gemv_kernel();
        const std::vector<float> x = input(K, 1.0f);
        std::vector<bf16> xb(K);
        std::vector<f16> xh(K);
        std::vector<float> xbf(K), xhf(K);
        for (std::int64_t i = 0; i < K; ++i) {
            xb[i] = to_bf16(x[i]), xh[i] = to_f16(x[i]);
            xbf[i] = to_float(xb[i]), xhf[i] = to_float(xh[i]);
        }
        std::vector<float> want(N), got(N, NAN);
        kv.gemv(a.m.view(), xbf.data(), nullptr, want.data(), 0, N);
        a.m.gemv(activations{xb.data(), element::bf16}, nullptr, {got.data()}, 0, N);
        CHECK(same_bits(got, want));
        check_near(got, ref::gemv(a.q, xbf), magnitudes(a.q, N, K, xbf));
        kv.gemv(a.m.view(), xhf.data(), nullptr, want.data(), 0, N);
        a.m.gemv(activations{xh.data(), element::f16}, nullptr, {got.data()}, 0, N);
        CHECK(same_bits(got, want));
        const prepared_x ph(a.m, {xh.data(), element::f16});
        a.m.gemv(ph, nullptr, {got.data()}, 0, N);
        CHECK(same_bits(got, want));

        // outputs: f32 with beta, bf16, f16 with beta (from the f32 result `want` on xhf)
        const std::vector<float> y0 = input(N, 3.0f);
        std::vector<float> yb = y0;
        a.m.gemv(activations{xh.data(), element::f16}, nullptr, {yb.data(), element::f32, 0, 0.5f}, 0, N);
        std::vector<bf16> ob(N);
        a.m.gemv(activations{xh.data(), element::f16}, nullptr, {ob.data(), element::bf16}, 0, N);
        std::vector<f16> oh(N);
        for (std::int64_t i = 0; i < N; ++i) oh[i] = to_f16(y0[i]);
        a.m.gemv(ph, nullptr, {oh.data(), element::f16, 0, -2.0f}, 0, N);
        for (std::int64_t i = 0; i < N; ++i) {
            INFO("row " << i);
            CHECK(yb[i] == want[i] + 0.5f * y0[i]);
            CHECK(ob[i].bits == to_bf16(want[i]).bits);
            CHECK(oh[i].bits == to_f16(want[i] + -2.0f * to_float(to_f16(y0[i]))).bits);
        }

        // GEMM: X [3, K] at stride K + 8, Y [3, N] at stride N + 5, beta 1, columns [7, 70)
        constexpr std::int64_t M = 3, ldx = K + 8, ldy = N + 5, n0 = 7, n1 = 70;
        std::vector<float> xs(M * ldx, NAN), dense(M * K);
        for (std::int64_t i = 0; i < M; ++i)
            for (std::int64_t j = 0; j < K; ++j) xs[i * ldx + j] = dense[i * K + j] = std::cos(0.1f * (i * K + j));
        std::vector<float> wantm(M * N), ym(M * ldy);
        for (std::size_t i = 0; i < ym.size(); ++i) ym[i] = 0.25f * static_cast<float>(i % 7);
        const std::vector<float> ym0 = ym;
        a.m.gemm_kernel().gemm(a.m.view(), dense.data(), M, nullptr, wantm.data(), n0, n1);
        a.m.gemm(M, {xs.data(), element::f32, ldx}, nullptr, {ym.data(), element::f32, ldy, 1.0f}, n0, n1);
        const std::vector<double> refm = ref::gemm(a.q, dense, M);
        const std::vector<double> mag = magnitudes(a.q, N, K, dense, M);
        for (std::int64_t i = 0; i < M; ++i)
            for (std::int64_t c = 0; c < ldy; ++c) {
                INFO("Y[" << i << ", " << c << "]");
                const float old = ym0[i * ldy + c];
                if (c >= n0 && c < n1) {
                    CHECK(ym[i * ldy + c] == wantm[i * N + c] + 1.0f * old);
                    CHECK(std::fabs(wantm[i * N + c] - refm[i * N + c]) <= 0.02 * mag[i * N + c] + 1e-6);
                } else {
                    CHECK(ym[i * ldy + c] == old);  // outside the columns and in the padding: untouched
                }
            }
    }
}

TEST_CASE("kernel_config_for: the layout a checkpoint runs in, and refusals") {
    const auto expect = [](const config& stored, compute act, const config& want) {
        INFO(canonical_name(stored) << " with " << to_string(act));
        const config nearest = kernels::kernel_config_of(stored, act);  // -Dkernels may leave want out
        if (kernels::kernel_built(want)) CHECK(kernel_config_for(stored, act) == want);
        else if (kernels::kernel_built(nearest)) CHECK(kernel_config_for(stored, act) == nearest);
        else CHECK_THROWS_AS(kernel_config_for(stored, act), unsupported_config);
    };
    const config gptq{dtype::int_sym, 4, 128, false, layout::gptq_v1, compute::f32};
    expect(gptq, compute::i8, {dtype::int_sym, 4, 128, false, layout::qforge, compute::i8});
    expect({dtype::int_sym, 4, 128, false, layout::gptq_v2, compute::f32}, compute::f32,
           {dtype::int_sym, 4, 128, false, layout::qforge, compute::f32});
    expect({dtype::int_asym, 4, 128, false, layout::awq_gemm, compute::f32}, compute::i8,
           {dtype::int_asym, 4, 128, false, layout::qforge, compute::i8});
    expect({dtype::nf4, 4, 64, false, layout::bnb4, compute::bf16}, compute::bf16,
           {dtype::nf4, 4, 64, false, layout::bnb4, compute::bf16});
    expect({dtype::e2m1, 4, 32, false, layout::mx, compute::f32}, compute::i8,
           {dtype::e2m1, 4, 32, false, layout::mx, compute::i8});
    const config fp8{dtype::fp8_e4m3, 8, 128, false, layout::fp8_block, compute::f32};
    expect(fp8, compute::f32, fp8);
    const config llm_int8{dtype::int8_row, 8, per_channel, false, layout::bnb8, compute::i8};
    expect(llm_int8, compute::i8, llm_int8);
    // no such kernel: FP8 with i8 activations, LLM.int8 with f32 ones; the message names the nearest
    CHECK_THROWS_AS(kernel_config_for(fp8, compute::i8), unsupported_config);
    CHECK_THROWS_WITH(kernel_config_for(llm_int8, compute::f32), Catch::Contains("int8row") && Catch::Contains("f32"));
}

namespace {

std::filesystem::path temp_file(const std::string& name) {
    return std::filesystem::temp_directory_path() / ("qforge_test_" + std::to_string(::getpid()) + "_" + name);
}

std::vector<char> read_all(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

void write_all(const std::filesystem::path& p, const std::vector<char>& bytes) {
    std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

template <class T>
void poke(std::vector<char>& bytes, std::size_t at, T v) {
    std::memcpy(bytes.data() + at, &v, sizeof(T));
}

}  // namespace

TEST_CASE("packed files: every layout round-trips through a mapped file with the same bits") {
    if (!isa_under_test_runs()) return;
    std::vector<weights> all;
    std::vector<std::string> names;
    for (const config& cfg : configs_under_test()) {
        all.push_back(make(cfg, N, K, 5));
        names.push_back(canonical_name(cfg));
    }
    if (all.empty()) return;
    std::vector<packed_file::named_weights> list;
    for (std::size_t i = 0; i < all.size(); ++i) list.push_back({names[i], all[i].m.view()});
    const auto path = temp_file("roundtrip.qfpack");
    packed_file::save(path, list);
    const auto file = packed_file::open(path);
    REQUIRE(file->names().size() == all.size());
    const std::vector<float> x = input(K, 0.25f);
    for (std::size_t i = 0; i < all.size(); ++i) {
        INFO(names[i]);
        const matrix mapped(file->view(names[i]), file);
        // the file holds rows: the matrix's own arrangement (kernel::arrange_ptr) stays in memory
        weight_buffer storage;
        const matrix in_rows(rows_of(all[i].m.view(), storage), nullptr);
        CHECK(mapped.view().arrangement == weight_arrangement::rows);
        std::vector<float> want(N), got(N), dw(N * K), dg(N * K);
        in_rows.gemv(activations{x.data()}, nullptr, {want.data()}, 0, N);
        mapped.gemv(activations{x.data()}, nullptr, {got.data()}, 0, N);
        CHECK(same_bits(got, want));
        all[i].m.dequantize(0, N, dw.data(), element::f32);
        mapped.dequantize(0, N, dg.data(), element::f32);
        CHECK(same_bits(dg, dw));
    }
    std::filesystem::remove(path);
}

TEST_CASE("packed files: an act-order permutation must hold every column once") {
    // A repeated column would leave another column of dequantize's output unwritten (fuzz_packed
    // checks that every element is written).
    std::vector<config> cfgs;
    for (const config& c : configs_under_test())
        if (c.storage == layout::qforge) cfgs.push_back(c);
    if (cfgs.empty()) return;
    const weights a = make(cfgs.front(), N, K, 6);
    std::vector<std::int32_t> perm(K);
    for (std::int64_t j = 0; j < K; ++j) perm[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(K - 1 - j);
    weights_view v = a.m.view();
    v.perm = perm.data();
    const auto path = temp_file("perm.qfpack");
    packed_file::save(path, {{"w", v}});
    REQUIRE_NOTHROW(packed_file::open(path));
    std::vector<char> bytes = read_all(path);
    const std::size_t perm_field = 24 + 4 + 1 + 52 + 16 * 6;  // the array (offset, bytes) of perm
    std::uint64_t perm_at = 0;
    std::memcpy(&perm_at, bytes.data() + perm_field, sizeof(perm_at));
    poke<std::int32_t>(bytes, perm_at + 4 * 3, perm[1]);  // column perm[1] twice, column perm[3] never
    write_all(path, bytes);
    CHECK_THROWS_WITH(packed_file::open(path), Catch::Contains(path.string()) &&
                                                   Catch::Contains("byte " + std::to_string(perm_at + 12)) &&
                                                   Catch::Contains("twice"));
    perm[3] = perm[1];
    CHECK_THROWS_AS(packed_file::save(path, {{"w", v}}), std::invalid_argument);
    std::filesystem::remove(path);
}

TEST_CASE("a non-finite code table is refused by the kernels and by packed files") {
    // The i8 path converts the table to int8 levels: a NaN there was undefined behaviour (UBSan,
    // found by fuzz_packed on a packed nf4_b64_bnb_i8 matrix).
    std::vector<config> cfgs;
    for (const config& c : configs_under_test())
        if (c.type == dtype::nf4 || c.type == dtype::fp4) cfgs.push_back(c);
    if (cfgs.empty()) return;
    for (const config& cfg : cfgs) {
        INFO(canonical_name(cfg));
        const weights a = make(cfg, N, K, 6);
        for (const float bad : {std::nanf(""), INFINITY}) {
            std::vector<float> table(a.m.view().code_table, a.m.view().code_table + 16);
            table[5] = bad;
            weights_view v = a.m.view();
            v.code_table = table.data();
            const std::vector<float> x = input(K, 0.5f);
            std::vector<float> y(N);
            CHECK_THROWS_WITH(matrix(v, nullptr).gemv(activations{x.data()}, nullptr, {y.data()}, 0, N),
                              Catch::Contains("code table"));
            CHECK_THROWS_WITH(a.m.gemv_kernel().gemv(v, x.data(), nullptr, y.data(), 0, N), Catch::Contains("code table"));
        }
    }
    const weights a = make(cfgs.front(), N, K, 6);
    const auto path = temp_file("table.qfpack");
    packed_file::save(path, {{"w", a.m.view()}});
    std::vector<char> bytes = read_all(path);
    const std::size_t table_field = 24 + 4 + 1 + 52 + 16 * 3;  // the array (offset, bytes) of code_table
    std::uint64_t table_at = 0;
    std::memcpy(&table_at, bytes.data() + table_field, sizeof(table_at));
    poke<float>(bytes, table_at + 4 * 5, std::nanf(""));
    write_all(path, bytes);
    CHECK_THROWS_WITH(packed_file::open(path), Catch::Contains(path.string()) && Catch::Contains("code table"));
    std::filesystem::remove(path);
}

TEST_CASE("packed files: truncation, bad offsets and overflow are refused naming the file and byte") {
    const std::vector<config> cfgs = configs_under_test();
    if (cfgs.empty()) return;
    const weights a = make(cfgs.front(), N, K, 6);
    const auto path = temp_file("bad.qfpack");
    packed_file::save(path, {{"w", a.m.view()}});
    const std::vector<char> good = read_all(path);
    REQUIRE_NOTHROW(packed_file::open(path));
    const std::string file = path.string();
    const auto refused = [&](std::vector<char> bytes, const std::string& why) {
        write_all(path, bytes);
        CHECK_THROWS_WITH(packed_file::open(path), Catch::Contains(file) && Catch::Contains(why));
    };
    // truncated anywhere: in the header, the directory, the data
    for (const std::size_t keep : {std::size_t{0}, std::size_t{7}, std::size_t{23}, std::size_t{40}, good.size() / 2,
                                   good.size() - 1})
        refused(std::vector<char>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(keep)),
                keep < 24 ? "truncated" : keep < 300 ? "byte" : "outside");
    auto bad = good;
    bad[0] = 'X';
    refused(bad, "magic");
    bad = good;
    poke<std::uint64_t>(bad, 8, std::uint64_t{1} << 60);  // entry count
    refused(bad, "byte 8");
    bad = good;
    poke<std::uint64_t>(bad, 16, ~std::uint64_t{0});  // directory bytes
    refused(bad, "byte 16");
    // the first array (codes) of the only entry: its offset and byte count follow the name
    const std::size_t record = 24 + 4 + 1, codes_field = record + 52;
    bad = good;
    poke<std::uint64_t>(bad, codes_field, good.size());  // past the end
    refused(bad, "byte " + std::to_string(codes_field));
    bad = good;
    poke<std::uint64_t>(bad, codes_field, ~std::uint64_t{0} - 63);  // offset + bytes overflows
    refused(bad, "byte " + std::to_string(codes_field));
    bad = good;
    poke<std::uint64_t>(bad, codes_field + 8, ~std::uint64_t{0});  // a size the shape does not give
    refused(bad, "byte " + std::to_string(codes_field));
    bad = good;
    poke<std::int64_t>(bad, record + 12, std::int64_t{1} << 62);  // rows
    refused(bad, "too large");
    bad = good;
    bad[record + 1] = 5;  // bits
    refused(bad, "invalid config");
    std::filesystem::remove(path);
    CHECK_THROWS_WITH(packed_file::open(path), Catch::Contains(file));
}
