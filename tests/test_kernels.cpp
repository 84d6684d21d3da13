// Every generated kernel against the scalar reference, on the ISA named by QFORGE_ISA (Meson runs
// this binary once per ISA; an ISA this CPU lacks is skipped with a warning).
//
// What is promised, and checked:
//   dequantize        bit-exact with ref::dequantize, and bit-identical on every ISA
//   gemv/gemm f32     |y - y_ref| <= (K + 3) u (sum_k |W[n,k] x[k]| + |bias[n]|), u = 2^-24: the
//                     worst case of any f32 summation order of K products (kernels/impl/f32.hpp)
//   gemv/gemm bf16    against y_r = sum_k r(W[n,k]) r(x[k]) (+ bias), r the rounding to bf16 / f16
//   and f16           computed here with qforge::to_bf16 / to_f16: the f32 bound above on those
//                     products; and against the exact product, with |r(v) - v| <= u_r |v| + t
//                     (bf16: u_r = 2^-8, t = 0; f16: u_r = 2^-11, t = 2^-25 for subnormals):
//                     |r(w) r(x) - w x| <= (u_r |w| + t) |x| + |r(w)| (u_r |x| + t)
//   gemv/gemm i8      (a) against the exact product: the bound of kernels/impl/i8.hpp,
//                         sum_k delta s_b |x_k| + (|W[n,k]| + delta s_b) xs_b / 2, plus f32 slack;
//                     (b) against an exact emulation of the integer path written here from that
//                         header's description: only f32 rounding of the per-block combination,
//                         of terms as large as the offset form makes them (integers, and table
//                         levels + 128 with VNNI)
//   LLM.int8 (bnb8)   bit-identical with ref::int8_matmul on every ISA (its own test case below,
//                     with and without outlier columns); against the exact product, the bound of
//                     activations quantized per row: amax / 254 sum_k |W[n,k]| plus f32 slack
// on shapes with odd N, the smallest K each layout allows, unaligned x/y/codes and row ranges.
#include <qforge/config/aliases.hpp>
#include <qforge/config/name.hpp>
#include <qforge/format/packing.hpp>
#include <qforge/format/tables.hpp>
#include <qforge/kernels/kernels.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/parallel.hpp>
#include <qforge/registry.hpp>
#include <qforge/reference/layouts.hpp>
#include <qforge/reference/reference.hpp>
#include <qforge/synthetic.hpp>

#include <boost/hana/for_each.hpp>
#include <catch2/catch.hpp>

#include "isa_under_test.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

using namespace qforge;

namespace {

struct listed_kernel {
    std::string name;
    config cfg;
};

// The one generated list (generated/qforge_kernel_list.inc) drives every test below.
const std::vector<listed_kernel> kernel_list = {
#define QFORGE_KERNEL(name, family, type, bits, group, dq, storage, act) \
    {#name, QFORGE_KERNEL_CONFIG(type, bits, group, dq, storage, act)},
#include <qforge_kernel_list.inc>
#undef QFORGE_KERNEL
};

constexpr double u = 1.0 / (1 << 24);  // f32 unit roundoff

// The kernel the registry picks for this run, or nullptr when -Dkernels filtered it out.
const kernel* registered(const config& cfg, op o) {
    if (!kernels::compiled_for(cfg, active_isa())) return nullptr;  // its avx512 or avx512_vnni kernel runs: tested there
    const kernel* k = registry::global().find(cfg, o, active_isa());
    if (k == nullptr) WARN(canonical_name(cfg) << " is not built (-Dkernels): skipped");
    return k;
}

// Checkpoint-shaped weights the kernel config can pack: bnb as is, int4 through GPTQ v1.
config reference_config(config c) {
    if (c.storage == layout::qforge) c.storage = layout::gptq_v1;
    return c;
}

// Weights of one test case. GPTQ needs N to be a multiple of 32, the qforge layout does not: an
// odd N is tested on the first `rows` rows of a padded reference tensor.
struct case_data {
    ref::quantized q;       // checkpoint-shaped, possibly with more rows
    packed_weights packed;  // kernel layout, `rows` rows
    std::vector<float> w;   // ref::dequantize(q), first `rows` rows
    std::int64_t rows = 0, ref_rows = 0;
    // w rounded to bf16 / f16 by the reference conversions, made on first use (check_output)
    mutable std::vector<float> w_bf16, w_f16;
    // the i8 bounds' terms of a row that do not depend on x, made on first use per row
    // (check_output): block scales, and per element in stored column order the integer that
    // enters the dots and the weight of its lane in the f32 rounding bound
    struct i8_row {
        std::vector<double> scale, lane_weight;
        std::vector<int> value;
    };
    mutable std::vector<i8_row> i8_rows;
};

// The reference rounding of v to bf16 / f16, back in f32.
float round_half(float v, bool f16_not_bf16) { return f16_not_bf16 ? to_float(to_f16(v)) : to_float(to_bf16(v)); }

const std::vector<float>& rounded_weights(const case_data& d, bool f16_not_bf16) {
    std::vector<float>& r = f16_not_bf16 ? d.w_f16 : d.w_bf16;
    if (r.size() != d.w.size()) {
        r.resize(d.w.size());
        for (std::size_t i = 0; i < r.size(); ++i) r[i] = round_half(d.w[i], f16_not_bf16);
    }
    return r;
}

// The last input row given to `make` and what it made of it: check_output sees each row of x once
// per output row, and converting it again each time made most of the GEMM test's run time.
template <class T>
struct row_memo {
    std::vector<float> row;
    std::int64_t tag = -1;
    T value{};
    template <class F>
    const T& get(const float* x, std::int64_t k, std::int64_t tag_, F&& make) {
        if (tag != tag_ || row.size() != static_cast<std::size_t>(k) ||
            std::memcmp(row.data(), x, static_cast<std::size_t>(k) * sizeof(float)) != 0) {
            row.assign(x, x + k);
            tag = tag_;
            value = make();
        }
        return value;
    }
};

// Which checkpoint a qforge-layout case is packed from: GPTQ v1 with g_idx = k / group; GPTQ v2
// with a random act-order g_idx; AWQ gemm (int_asym only). Other layouts: their own checkpoint.
// `regrouped`: a checkpoint whose groups are whole multiples of the kernel's (kernel_config_of),
// packed with the kernel's groups: integers per channel, bnb blocks of twice the kernel's with
// double quant (its absmax decoded), FP8 one scale per tensor. `widened2`, `widened3`: a 2- or
// 3-bit GPTQ checkpoint of the same group run on a 4-bit kernel (kernel_config_of).
enum class source { gptq, gptq_act_order, awq, regrouped, widened2, widened3 };

bool regroups(const config& cfg) {
    if (cfg.storage == layout::qforge) return cfg.group != per_channel;
    return (cfg.storage == layout::bnb4 && !cfg.double_quant) || cfg.storage == layout::fp8_block;
}

std::vector<source> sources_for(const config& cfg) {
    std::vector<source> s{source::gptq};
    if (cfg.storage == layout::qforge) s.push_back(source::gptq_act_order);
    if (cfg.storage == layout::qforge && cfg.type == dtype::int_asym && cfg.bits == 4) s.push_back(source::awq);
    if (regroups(cfg)) s.push_back(source::regrouped);
    if (cfg.storage == layout::qforge && cfg.bits == 4) s.insert(s.end(), {source::widened2, source::widened3});
    return s;
}

const char* to_string(source s) {
    return s == source::gptq             ? "gptq"
           : s == source::gptq_act_order ? "gptq2 act-order"
           : s == source::awq            ? "awq"
           : s == source::widened2       ? "a widened 2-bit checkpoint"
           : s == source::widened3       ? "a widened 3-bit checkpoint"
                                         : "a regrouped checkpoint";
}

// The stored config of a regrouped case of kernel config cfg.
config regrouped_config(const config& cfg) {
    config c = reference_config(cfg);
    if (c.storage == layout::bnb4) {
        c.group = 2 * cfg.group;
        c.double_quant = true;
    } else {
        c.group = c.storage == layout::fp8_block ? per_tensor : per_channel;
    }
    return c;
}

// A valid GPTQ act-order checkpoint of the same weights: the columns quantized in a random order
// perm (quantization position j holds column perm[j]) and stored in their own order with
// g_idx[k] = invperm[k] / group (formats.md §3).
ref::gptq_tensor act_order_checkpoint(const config& cfg, const std::vector<float>& src, std::int64_t rows,
                                      std::int64_t k, std::uint64_t seed) {
    std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
    for (std::int64_t j = 0; j < k; ++j) perm[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(j);
    std::mt19937_64 rng(seed);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<float> permuted(src.size());
    for (std::int64_t n = 0; n < rows; ++n)
        for (std::int64_t j = 0; j < k; ++j)
            permuted[static_cast<std::size_t>(n * k + j)] = src[static_cast<std::size_t>(n * k + perm[static_cast<std::size_t>(j)])];
    config c = cfg;
    c.storage = layout::gptq_v2;
    auto t = std::get<ref::gptq_tensor>(ref::quantize(c, std::span<const float>(permuted), rows, k));
    const auto b = static_cast<std::size_t>(t.bits);
    std::vector<std::uint8_t> line(static_cast<std::size_t>(k)), back(static_cast<std::size_t>(k));
    for (std::int64_t n = 0; n < rows; ++n) {  // stored column perm[j] <- quantization position j
        unpack_gptq_line(t.bits, t.qweight, static_cast<std::size_t>(n), static_cast<std::size_t>(rows), line);
        for (std::int64_t j = 0; j < k; ++j) back[static_cast<std::size_t>(perm[static_cast<std::size_t>(j)])] = line[static_cast<std::size_t>(j)];
        pack_gptq_line(t.bits, back, t.qweight, static_cast<std::size_t>(n), static_cast<std::size_t>(rows));
    }
    for (std::int64_t j = 0; j < k; ++j)
        t.g_idx[static_cast<std::size_t>(perm[static_cast<std::size_t>(j)])] = static_cast<std::int32_t>(j / t.group);
    (void)b;
    return t;
}

// Rows are contiguous in the kernel layouts (dense or with their scales): keep the first n of `rows`.
void keep_first_rows(packed_weights& p, std::int64_t rows, std::int64_t n) {
    const auto keep = [&](weight_buffer& b) {
        b.resize(b.size() / static_cast<std::size_t>(rows) * static_cast<std::size_t>(n));
    };
    p.rows = n;
    keep(p.codes);
    keep(p.scales);
    keep(p.zeros);
}

// The rows of the checkpoint behind an n-row case of kernel config cfg.
std::int64_t reference_rows(const config& cfg, std::int64_t n) {
    return cfg.storage == layout::qforge ? (n + 31) / 32 * 32 : n;
}

// Checkpoint q (reference_rows(cfg, n) rows) packed for kernel config cfg, keeping n rows.
case_data pack_case(const config& cfg, ref::quantized q, std::int64_t n) {
    case_data d;
    d.q = std::move(q);
    d.packed = pack_weights(cfg, d.q);
    d.w = ref::dequantize(d.q);
    d.rows = n;
    d.ref_rows = reference_rows(cfg, n);
    if (d.ref_rows != n) {
        keep_first_rows(d.packed, d.ref_rows, n);
        d.w.resize(static_cast<std::size_t>(n * d.packed.cols));
    }
    return d;
}

// The weights of make_case, drawn once per shape and seed: the tests make the same case for every
// kernel of a group size, and drawing it each time took a third of their run time.
const std::vector<float>& case_weights(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
    static std::map<std::tuple<std::int64_t, std::int64_t, std::uint64_t>, std::vector<float>> drawn;
    auto [it, fresh] = drawn.try_emplace({rows, cols, seed});
    if (fresh) {
        synthetic_spec spec;
        spec.rows = rows;
        spec.cols = cols;
        spec.seed = seed;
        spec.outlier_rate = 1.0 / 256;
        it->second = synthetic_weights(spec);
    }
    return it->second;
}

case_data make_case(const config& cfg, std::int64_t n, std::int64_t k, std::uint64_t seed, source from = source::gptq) {
    const std::int64_t ref_rows = reference_rows(cfg, n);
    const std::vector<float>& src = case_weights(ref_rows, k, seed);
    if (from == source::gptq_act_order) return pack_case(cfg, act_order_checkpoint(cfg, src, ref_rows, k, seed + 7), n);
    config stored = from == source::regrouped ? regrouped_config(cfg) : reference_config(cfg);
    if (from == source::awq) stored.storage = layout::awq_gemm;
    if (from == source::widened2 || from == source::widened3) stored.bits = from == source::widened2 ? 2 : 3;
    return pack_case(cfg, ref::quantize(stored, std::span<const float>(src), ref_rows, k), n);
}

// ref::gemm on the case's first `rows` outputs, from its reference dequantization d.w (ref::gemm
// of d.q dequantizes the whole tensor per call): Y [m, rows].
std::vector<double> reference_gemm(const case_data& d, const std::vector<float>& x, std::int64_t m,
                                   const std::vector<float>& bias) {
    return ref::gemm(d.w, d.rows, x, m, bias);
}

std::vector<float> random_vector(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> dist(-scale, scale);
    std::vector<float> v(n);
    for (float& e : v) e = dist(rng);
    return v;
}

// Copies `v` to offset `shift` elements into a fresh buffer (unaligned for shift % 16 != 0).
template <class T>
struct shifted {
    std::vector<T> storage;
    T* data;
    template <class Vector>
    shifted(const Vector& v, std::size_t shift) : storage(v.size() + shift + 1) {
        data = storage.data() + shift;
        std::copy(v.begin(), v.end(), data);
    }
};

// ---- per-block facts the i8 bounds need, read from the reference tensors -------------------

std::int64_t group_of(const config& c, std::int64_t k) { return c.group == per_channel ? k : c.group; }

// The f32 block scale s_b of (row n, block b): absmax (reconstructed for double quant, as
// formats.md §1 specifies) or the f16 GPTQ scale.
// b is a block of the kernel's groups; regrouped checkpoints have larger ones (kernel_config_of).
float block_scale(const case_data& d, const config& cfg, std::int64_t n, std::int64_t b) {
    const std::int64_t k = d.packed.cols, blocks_per_row = k / group_of(cfg, k), first = b * group_of(cfg, k);
    if (const auto* t = std::get_if<ref::bnb4_tensor>(&d.q)) {
        const std::int64_t flat = (n * k + first) / t->blocksize;
        if (!t->nested) return t->absmax[static_cast<std::size_t>(flat)];
        const float product = t->nested_quant_map[t->absmax_codes[static_cast<std::size_t>(flat)]] *
                              t->nested_absmax[static_cast<std::size_t>(flat / nested_blocksize)];
        return product + t->nested_offset;
    }
    if (const auto* t = std::get_if<ref::mx_tensor>(&d.q))
        return e8m0_to_float(t->scales[static_cast<std::size_t>(n * blocks_per_row + b)]);
    if (const auto* t = std::get_if<ref::awq_tensor>(&d.q))
        return to_float(t->scales[static_cast<std::size_t>(first / t->group * t->rows + n)]);
    const auto& g = std::get<ref::gptq_tensor>(d.q);
    return to_float(g.scales[static_cast<std::size_t>(first / g.group * g.rows + n)]);
}

std::uint8_t code_of(const case_data& d, std::int64_t n, std::int64_t k) {
    if (const auto* t = std::get_if<ref::bnb4_tensor>(&d.q)) {
        const std::int64_t flat = n * t->cols + k;
        const std::uint8_t byte = t->packed[static_cast<std::size_t>(flat / 2)];
        return flat % 2 == 0 ? static_cast<std::uint8_t>(byte >> 4) : static_cast<std::uint8_t>(byte & 0xF);
    }
    if (const auto* t = std::get_if<ref::mx_tensor>(&d.q)) {  // element 2i in the low nibble
        const std::int64_t flat = n * t->cols + k;
        const std::uint8_t byte = t->blocks[static_cast<std::size_t>(flat / 2)];
        return flat % 2 == 0 ? static_cast<std::uint8_t>(byte & 0xF) : static_cast<std::uint8_t>(byte >> 4);
    }
    if (const auto* t = std::get_if<ref::awq_tensor>(&d.q))
        return static_cast<std::uint8_t>(
            awq_code(static_cast<std::uint32_t>(t->qweight[static_cast<std::size_t>(k * (t->rows / 8) + n / 8)]), static_cast<int>(n % 8)));
    const auto& g = std::get<ref::gptq_tensor>(d.q);
    std::uint32_t words[8];
    for (int i = 0; i < g.bits; ++i)
        words[i] = static_cast<std::uint32_t>(g.qweight[static_cast<std::size_t>(((k / 32) * g.bits + i) * g.rows + n)]);
    return static_cast<std::uint8_t>(gptq_code(g.bits, words, static_cast<int>(k % 32)));
}

bool is_integer_type(const config& c) { return c.type == dtype::int_sym || c.type == dtype::int_asym; }

// The zero point of (row n, kernel group b) of an integer checkpoint, read from its qzeros.
int zero_of(const case_data& d, const config& cfg, std::int64_t n, std::int64_t kernel_b) {
    const std::int64_t first = kernel_b * group_of(cfg, d.packed.cols);
    if (const auto* t = std::get_if<ref::awq_tensor>(&d.q)) {
        const std::int64_t b = first / t->group;
        return static_cast<int>(
            awq_code(static_cast<std::uint32_t>(t->qzeros[static_cast<std::size_t>(b * (t->rows / 8) + n / 8)]), static_cast<int>(n % 8)));
    }
    const auto& g = std::get<ref::gptq_tensor>(d.q);
    const std::int64_t b = first / g.group;
    std::uint32_t words[8];
    const std::int64_t zero_words = g.rows * g.bits / 32;
    for (int i = 0; i < g.bits; ++i)
        words[i] = static_cast<std::uint32_t>(g.qzeros[static_cast<std::size_t>(b * zero_words + (n / 32) * g.bits + i)]);
    return gptq_zero_from_field(g.bits, gptq_code(g.bits, words, static_cast<int>(n % 32)), g.v2);
}

// The i8 path's weight approximation: value(c) ~ level(c) / i8_scale (kernels/impl/format.hpp).
double i8_scale(dtype t) { return t == dtype::nf4 ? 127.0 : t == dtype::fp4 ? 120.0 : t == dtype::e2m1 ? 2.0 : 1.0; }

std::array<double, 16> code_values(const config& cfg, const case_data& d) {
    std::array<double, 16> v{};
    for (int c = 0; c < 16; ++c)
        v[c] = cfg.type == dtype::int_sym    ? c - (1 << (cfg.bits - 1))
               : cfg.type == dtype::int_asym ? c  // minus the block's zero point (zero_of)
               : cfg.type == dtype::e2m1  ? e2m1_table[static_cast<std::size_t>(c)]
                                          : static_cast<double>(d.packed.code_table[static_cast<std::size_t>(c)]);
    return v;
}

std::array<int, 16> i8_levels(const config& cfg, const case_data& d) {
    const auto v = code_values(cfg, d);
    std::array<int, 16> l{};
    for (int c = 0; c < 16; ++c) l[c] = static_cast<int>(std::nearbyint(static_cast<float>(v[c]) * static_cast<float>(i8_scale(cfg.type))));
    return l;
}

double level_error(const config& cfg, const case_data& d) {  // delta of kernels/impl/i8.hpp
    const auto v = code_values(cfg, d);
    const auto l = i8_levels(cfg, d);
    double delta = 0.0;
    for (int c = 0; c < 16; ++c) delta = std::max(delta, std::abs(v[c] - l[c] / i8_scale(cfg.type)));
    return delta;
}

struct activation_blocks {
    std::vector<float> scale;       // xs_b = amax / 127 (f32)
    std::vector<std::int32_t> q;    // RNE(x * f32(127 / amax))
};

activation_blocks quantize_x(const float* x, std::int64_t k, std::int64_t group) {
    activation_blocks a;
    a.q.resize(static_cast<std::size_t>(k));
    for (std::int64_t b = 0; b < k / group; ++b) {
        float amax = 0.0f;
        for (std::int64_t i = b * group; i < (b + 1) * group; ++i) amax = std::max(amax, std::fabs(x[i]));
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        a.scale.push_back(amax / 127.0f);
        for (std::int64_t i = b * group; i < (b + 1) * group; ++i)
            a.q[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(std::nearbyint(x[i] * inv));
    }
    return a;
}

// The integer i8 paths do not sum (code - zero) xq: the 4-bit offset form sums code * xq in the
// lanes and adds -zero * sum(xq) (kernels/impl/i8.hpp), the 8-bit path sums (code - 128) xq and
// adds (128 - zero) * sum(xq) (format_int8.hpp). Exact integers, but f32 rounds the per-lane
// partial sums, whose size is bounded by these weights times |xq| (>= |code - zero|).
// Widened int_sym codes (2 or 3 bits in a 4-bit kernel) are code - zero + 8 against the zero 8.
double integer_lane_weight(const config& cfg, int code, int zero, int checkpoint_bits) {
    if (cfg.bits == 8) return std::abs(code - 128) + std::abs(128 - zero);
    if (cfg.type == dtype::int_sym && checkpoint_bits != cfg.bits) return (code - zero + 8) + 8;
    return code + zero;
}

// ---- the checks ----------------------------------------------------------------------------

// y (one output of a kernel) against the reference, as the header of this file says.
void check_output(const config& cfg, const case_data& d, const float* x, std::int64_t n, const float* bias,
                  double y_ref, float y, const std::string& where) {
    const std::int64_t k = d.packed.cols, group = group_of(cfg, k);
    const float* wrow = d.w.data() + n * k;
    const double b = bias ? bias[n] : 0.0;
    INFO(where << ", row " << n << ": y = " << y << ", reference " << y_ref);
    const auto abs_sum = [&] {  // sum |w x|, of the f32 rounding bounds
        double sum = std::abs(b);
        for (std::int64_t i = 0; i < k; ++i) sum += std::abs(static_cast<double>(wrow[i]) * x[i]);
        return sum;
    };
    if (cfg.act == compute::f32) {
        CHECK(std::abs(y - y_ref) <= static_cast<double>(k + 3) * u * abs_sum() * 1.001 + 1e-30);
        return;
    }
    if (cfg.storage == layout::bnb8) {  // the row's absmax bounds the inliers' absmax SCA
        double amax = 0.0, w_abs = 0.0;
        for (std::int64_t i = 0; i < k; ++i) {
            amax = std::max(amax, static_cast<double>(std::fabs(x[i])));
            w_abs += std::abs(static_cast<double>(wrow[i]));
        }
        const double quantization = amax / 254 * w_abs;
        CHECK(std::abs(y - y_ref) <= quantization * 1.001 + static_cast<double>(k + 10) * u * (abs_sum() + quantization) + 1e-30);
        return;
    }
    if (cfg.act == compute::bf16 || cfg.act == compute::f16) {
        // operands rounded here with the reference conversions; |round(v) - v| <= ur |v| + tiny
        // (tiny: half the f16 subnormal quantum; bf16 keeps f32's range, 0 for these weights)
        const bool half = cfg.act == compute::f16;
        static thread_local row_memo<std::vector<float>> x_memo;
        const std::vector<float>& x_rounded = x_memo.get(x, k, half, [&] {
            std::vector<float> r(static_cast<std::size_t>(k));
            for (std::int64_t i = 0; i < k; ++i) r[static_cast<std::size_t>(i)] = round_half(x[i], half);
            return r;
        });
        const float* w_rounded = rounded_weights(d, half).data() + n * k;
        const double ur = half ? 1.0 / 2048 : 1.0 / 256, tiny = half ? 0x1p-25 : 0.0;
        double y_rounded = b, rounded_abs_sum = std::abs(b), rounding = 0.0;
        for (std::int64_t i = 0; i < k; ++i) {
            const double wr = w_rounded[i], xr = x_rounded[static_cast<std::size_t>(i)];
            y_rounded += wr * xr;
            rounded_abs_sum += std::abs(wr * xr);
            // |wr xr - w x| <= |wr - w| |x| + |wr| |xr - x|
            rounding += (ur * std::abs(wrow[i]) + tiny) * std::abs(x[i]) + std::abs(wr) * (ur * std::abs(x[i]) + tiny);
        }
        const double f32_slack = static_cast<double>(k + 3) * u * rounded_abs_sum * 1.001 + 1e-30;
        INFO((half ? "f16" : "bf16") << " operands: " << y_rounded);
        CHECK(std::abs(y - y_rounded) <= f32_slack);
        CHECK(std::abs(y - y_ref) <= rounding * 1.001 + f32_slack);
        return;
    }
    // the i8 path quantizes x per group of the stored column order (act-order: sorted by group)
    const auto& perm = d.packed.perm;
    const auto column = [&](std::int64_t i) { return perm.empty() ? i : static_cast<std::int64_t>(perm[static_cast<std::size_t>(i)]); };
    static thread_local row_memo<activation_blocks> a_memo;
    std::vector<float> xg(static_cast<std::size_t>(k));
    for (std::int64_t i = 0; i < k; ++i) xg[static_cast<std::size_t>(i)] = x[column(i)];
    const activation_blocks& a = a_memo.get(xg.data(), k, group, [&] { return quantize_x(xg.data(), k, group); });
    const double delta = level_error(cfg, d), lambda = i8_scale(cfg.type);
    const auto levels = i8_levels(cfg, d);
    const auto* gptq = std::get_if<ref::gptq_tensor>(&d.q);
    const int checkpoint_bits = gptq ? gptq->bits : cfg.bits;
    // With VNNI, table levels enter vpdpbusd as level + 128 and 128 sum(xq) is subtracted in f32
    // (i8.hpp): f32 rounds sums of that size, as the offset form of the integers below.
    const bool vnni_offset = kernels::kernel_isa(cfg, active_isa()) >= isa::avx512_vnni;
    d.i8_rows.resize(static_cast<std::size_t>(d.rows));
    case_data::i8_row& terms = d.i8_rows[static_cast<std::size_t>(n)];
    if (terms.value.empty())
        for (std::int64_t blk = 0; blk < k / group; ++blk) {
            const double s = block_scale(d, cfg, n, blk);
            const int zero = is_integer_type(cfg) ? zero_of(d, cfg, n, blk) : 0;
            terms.scale.push_back(s);
            for (std::int64_t i = blk * group; i < (blk + 1) * group; ++i) {
                const std::int64_t col = column(i);
                const int code = code_of(d, n, col);  // integers: the checkpoint's code minus its zero point
                terms.value.push_back(is_integer_type(cfg) ? code - zero : levels[static_cast<std::size_t>(code)]);
                terms.lane_weight.push_back(
                    is_integer_type(cfg) ? std::abs(s) * integer_lane_weight(cfg, code, zero, checkpoint_bits)
                    : vnni_offset ? std::abs(s) * (std::abs(levels[static_cast<std::size_t>(code)]) + 2 * 128) / lambda
                                  : std::abs(static_cast<double>(wrow[col])) + delta * std::abs(s));
            }
        }
    double bound = 0.0, slack_terms = std::abs(b), emulated = b;
    for (std::int64_t blk = 0; blk < k / group; ++blk) {
        const double s = terms.scale[static_cast<std::size_t>(blk)], xs = a.scale[static_cast<std::size_t>(blk)];
        std::int64_t dot = 0;
        for (std::int64_t i = blk * group; i < (blk + 1) * group; ++i) {
            const std::int64_t col = column(i);
            const double wabs = std::abs(static_cast<double>(wrow[col])), xabs = std::abs(x[col]);
            bound += delta * std::abs(s) * xabs + (wabs + delta * std::abs(s)) * xs / 2;
            slack_terms += terms.lane_weight[static_cast<std::size_t>(i)] * (xabs + xs / 2);
            dot += static_cast<std::int64_t>(terms.value[static_cast<std::size_t>(i)]) * a.q[static_cast<std::size_t>(i)];
        }
        emulated += s * xs / lambda * static_cast<double>(dot);
    }
    const double f32_slack = static_cast<double>(k / group + 32) * u * slack_terms;
    INFO("i8 bound " << bound << " + " << f32_slack << ", emulated " << emulated);
    CHECK(std::abs(y - y_ref) <= bound + f32_slack);
    CHECK(std::abs(y - emulated) <= f32_slack);
}

// Shapes per config: the smallest K the layout allows, windows that do not fill a register, and
// a realistic K; odd N everywhere.
std::vector<std::pair<std::int64_t, std::int64_t>> shapes_for(const config& cfg) {
    // per channel: LLM.int8 takes any K, the integer layouts whole runs of 32
    const std::int64_t g = cfg.group > 0 ? cfg.group : cfg.storage == layout::bnb8 ? 1 : 32;
    // the last: two GEMM row panels (32 rows for i8, 48 for f32), the second partial, and several
    // K slices (2048 f32, 4096 i8)
    return {{1, g}, {3, 3 * g}, {7, std::max<std::int64_t>(g, 160) / g * g + g}, {5, 1024}, {9, 4096}, {53, 4096 + 3 * g}};
}

constexpr float sentinel = -12345.0f;

// The weights a kernel runs: the rows pack_weights made, then the kernel's own arrangement
// (kernel::arrange_ptr: the avx512_vnni i8 kernels' panels) when it has one. Each must pass the
// same checks.
std::vector<packed_weights> layouts_of(const kernel& k, const packed_weights& p) {
    std::vector<packed_weights> out{p};
    if (k.arrange_ptr != nullptr) {
        out.push_back(p);
        REQUIRE(arrange(k, out.back()));
        REQUIRE(out.back().arrangement == weight_arrangement::vnni_panels);
    }
    return out;
}

const char* to_string(weight_arrangement a) { return a == weight_arrangement::rows ? "rows" : "vnni panels"; }

}  // namespace

TEST_CASE("weight memory: huge-page aligned from 2 MiB up, 64-byte aligned below") {
    const auto aligned = [](const weight_buffer& b, std::uintptr_t to) { return reinterpret_cast<std::uintptr_t>(b.data()) % to == 0; };
    const weight_buffer small(100, 7), edge(huge_page_bytes - 1, 7), big(huge_page_bytes + 1, 7);
    CHECK(aligned(small, 64));
    CHECK(aligned(edge, 64));
    CHECK(aligned(big, huge_page_bytes));
    CHECK((big.front() == 7 && big.back() == 7 && small.back() == 7));
    weight_buffer grown(small);
    grown.resize(3 * huge_page_bytes, 1);  // reallocation moves it to huge pages, contents kept
    CHECK(aligned(grown, huge_page_bytes));
    CHECK((grown[99] == 7 && grown[100] == 1));
}

TEST_CASE("the generated list names each config by qforge::canonical_name") {
    REQUIRE_FALSE(kernel_list.empty());
    for (const auto& k : kernel_list) {
        CHECK(canonical_name(k.cfg) == k.name);
        CHECK(parse_name(k.name) == k.cfg);
    }
}

TEST_CASE("registry: every registered kernel is in the list, per ISA and op, with its canonical name") {
    const registry& r = registry::global();
    REQUIRE_FALSE(r.all().empty());
    for (const kernel& k : r.all()) {
        INFO(k.full_name());
        CHECK(canonical_name(k.cfg) == k.name);
        CHECK(std::any_of(kernel_list.begin(), kernel_list.end(), [&](const auto& l) { return l.cfg == k.cfg; }));
    }
    // a built config has all three ops on every ISA it is compiled for, and nothing on the others
    for (const std::string& name : r.names())
        for (isa i : all_isas)
            for (op o : {op::dequantize, op::gemv, op::gemm}) {
                INFO(name << " on " << to_string(i));
                CHECK((r.find(parse_name(name), o, i) != nullptr) == kernels::compiled_for(parse_name(name), i));
            }
}

TEST_CASE("registry: lookup picks the active ISA; errors name the problem") {
    if (!isa_under_test_runs()) return;
    const registry& r = registry::global();
    for (const auto& l : kernel_list) {
        const kernel* exact = r.find(l.cfg, op::gemv, active_isa());
        if (exact == nullptr) continue;
        CHECK(&r.find(l.cfg, op::gemv) == exact);
        CHECK(exact->full_name() == l.name + "_gemv_" + std::string(to_string(active_isa())));
    }
    // GPTQ's checkpoint layout: find returns the kernel of the repacked layout (the walk below does
    // this for every config); find_layout, for weights already packed, refuses it and points at it
    if (kernels::kernel_built(parse_name("int4sym_g128_qf_f32"))) {
        const kernel& k = r.find(configs::gptq_int4_g128, op::gemv);
        CHECK(k.name == "int4sym_g128_qf_f32");
        CHECK(&k == &r.find(parse_name("int4sym_g128_qf_f32"), op::gemv));
    }
    try {
        (void)r.find_layout(configs::gptq_int4_g128, op::gemv);
        FAIL("gptq layout found");
    } catch (const unsupported_config& e) {
        INFO(e.what());
        CHECK(std::string(e.what()).find("int4sym_g128_gptq_f32") != std::string::npos);
        REQUIRE_FALSE(e.nearest.empty());
        if (kernels::kernel_built(parse_name("int4sym_g128_qf_f32"))) CHECK(e.nearest.front() == "int4sym_g128_qf_f32");
    }
    // a config that does not validate: find names the field
    config bad = parse_name("int4sym_g128_qf_f32");
    bad.group = 100;
    try {
        (void)r.find(bad, op::gemv);
        FAIL("invalid config found");
    } catch (const unsupported_config& e) {
        INFO(e.what());
        CHECK(std::string(e.what()).find("invalid config") != std::string::npos);
        CHECK(std::string(e.what()).find("group") != std::string::npos);
    }
    // duplicates and names that are not canonical are refused
    registry mine;
    const kernel& some = *r.all().begin();
    mine.add(some);
    CHECK_THROWS_AS(mine.add(some), std::logic_error);
    kernel renamed = some;
    renamed.name = "nf4_b64_bnb_wrong";
    CHECK_THROWS_AS(registry().add(renamed), std::logic_error);
}

// The bf16 / f16 outputs of rows [n0, n1): the reference rounding (qforge::to_bf16 / to_f16) of the
// exact f32 values w, and the other rows untouched.
void check_half_outputs(const kernel& k, const weights_view& v, std::int64_t n0, std::int64_t n1,
                        const std::vector<float>& w) {
    const std::size_t first = static_cast<std::size_t>(n0 * v.cols), last = static_cast<std::size_t>(n1 * v.cols);
    std::vector<bf16> b(w.size(), bf16{0xDEAD});
    std::vector<f16> h(w.size(), f16{0xDEAD});
    k.dequantize(v, n0, n1, b.data());
    k.dequantize(v, n0, n1, h.data());
    std::size_t bad_b = 0, bad_h = 0, first_bad = w.size();
    for (std::size_t i = 0; i < w.size(); ++i) {
        const bool inside = i >= first && i < last;
        const bool ok_b = b[i] == (inside ? to_bf16(w[i]) : bf16{0xDEAD});
        const bool ok_h = h[i] == (inside ? to_f16(w[i]) : f16{0xDEAD});
        bad_b += !ok_b;
        bad_h += !ok_h;
        if ((!ok_b || !ok_h) && first_bad == w.size()) first_bad = i;
    }
    INFO(k.full_name() << " rows [" << n0 << ", " << n1 << "), first mismatch at " << first_bad);
    CHECK(bad_b == 0);
    CHECK(bad_h == 0);
}

TEST_CASE("dequantize is bit-exact with the reference, on row ranges and every ISA") {
    if (!isa_under_test_runs()) return;
    for (const auto& l : kernel_list) {
        const kernel* k = registered(l.cfg, op::dequantize);
        if (k == nullptr) continue;
        for (const source from : sources_for(l.cfg))
        for (auto [n, kk] : shapes_for(l.cfg)) {
            const case_data d = make_case(l.cfg, n, kk, 17 + static_cast<std::uint64_t>(n * kk), from);
            INFO(k->full_name() << " from " << to_string(from) << " N=" << n << " K=" << kk);
            for (const packed_weights& w : layouts_of(*k, d.packed)) {
            INFO(to_string(w.arrangement));
            std::vector<float> out(d.w.size(), sentinel);
            k->dequantize(w.view(), 0, n, out.data());
            CHECK(std::memcmp(out.data(), d.w.data(), out.size() * sizeof(float)) == 0);
            check_half_outputs(*k, w.view(), n > 2 ? 1 : 0, n, d.w);
            // a row range writes exactly its rows
            if (n >= 3) {
                std::vector<float> part(d.w.size(), sentinel);
                k->dequantize(w.view(), 1, n - 1, part.data());
                for (std::int64_t r = 0; r < n; ++r)
                    for (std::int64_t c = 0; c < kk; ++c) {
                        const std::size_t at = static_cast<std::size_t>(r * kk + c);
                        if (r == 0 || r == n - 1) REQUIRE(part[at] == sentinel);
                        else REQUIRE(std::bit_cast<std::uint32_t>(part[at]) == std::bit_cast<std::uint32_t>(d.w[at]));
                    }
            }
            }
            // every other ISA this CPU runs gives the same bits
            for (isa other : all_isas) {
                const kernel* ko = registry::global().find(l.cfg, op::dequantize, other);
                if (!cpu_supports(other) || ko == nullptr) continue;
                std::vector<float> o(d.w.size());
                ko->dequantize(d.packed.view(), 0, n, o.data());
                CHECK(std::memcmp(o.data(), d.w.data(), o.size() * sizeof(float)) == 0);
            }
        }
    }
}

TEST_CASE("gemv matches the reference within the stated bounds, with bias, unaligned data and row ranges") {
    if (!isa_under_test_runs()) return;
    for (const auto& l : kernel_list) {
        const kernel* k = registered(l.cfg, op::gemv);
        if (k == nullptr) continue;
        for (const source from : sources_for(l.cfg))
        for (auto [n, kk] : shapes_for(l.cfg)) {
            const std::uint64_t seed = 5 + static_cast<std::uint64_t>(n * kk);
            const case_data d = make_case(l.cfg, n, kk, seed, from);
            INFO("from " << to_string(from));
            const std::vector<float> x = random_vector(static_cast<std::size_t>(kk), seed + 1);
            const std::vector<float> bias = random_vector(static_cast<std::size_t>(n), seed + 2, 0.1f);
            const std::vector<double> y_ref = reference_gemm(d, x, 1, bias);
            const std::vector<double> y_ref_nobias = reference_gemm(d, x, 1, {});

            for (const packed_weights& w : layouts_of(*k, d.packed)) {
            INFO(to_string(w.arrangement));
            // unaligned x, y and codes
            const shifted<float> xs(x, 1);
            const shifted<std::uint8_t> codes(w.codes, 3);
            weights_view view = w.view();
            const auto moved = [&](const void* p) { return codes.data + (static_cast<const std::uint8_t*>(p) - w.codes.data()); };
            view.codes = moved(view.codes);
            if (w.row_stride != 0 || w.arrangement != weight_arrangement::rows) {  // scales, zero points with the codes
                view.scales = moved(view.scales);
                if (view.zeros != nullptr) view.zeros = moved(view.zeros);
            }
            std::vector<float> y_buf(static_cast<std::size_t>(n) + 2, sentinel);
            float* y = y_buf.data() + 1;
            k->gemv(view, xs.data, bias.data(), y, 0, n);
            for (std::int64_t r = 0; r < n; ++r)
                check_output(l.cfg, d, x.data(), r, bias.data(), y_ref[static_cast<std::size_t>(r)], y[r],
                             k->full_name() + " N=" + std::to_string(n) + " K=" + std::to_string(kk));
            CHECK(y_buf.front() == sentinel);
            CHECK(y_buf.back() == sentinel);

            // rows [1, n) without bias: row 0 untouched, the rest as before
            std::vector<float> y2(static_cast<std::size_t>(n), sentinel);
            k->gemv(w.view(), x.data(), nullptr, y2.data(), n > 1 ? 1 : 0, n);
            if (n > 1) CHECK(y2[0] == sentinel);
            for (std::int64_t r = n > 1 ? 1 : 0; r < n; ++r)
                check_output(l.cfg, d, x.data(), r, nullptr, y_ref_nobias[static_cast<std::size_t>(r)], y2[static_cast<std::size_t>(r)],
                             k->full_name() + " rows [1, N)");
            }
        }
    }
}

TEST_CASE("gemm matches the reference for M = 1 to 17 and 40 and equals gemv row by row in its bounds") {
    if (!isa_under_test_runs()) return;
    for (const auto& l : kernel_list) {
        const kernel* k = registered(l.cfg, op::gemm);
        if (k == nullptr) continue;
        for (const source from : sources_for(l.cfg))
        for (auto [n, kk] : shapes_for(l.cfg)) {
            // every register tile of the small-M path (M <= 16: tiles of 8, 4, 2, 1 rows), of the
            // streamed VNNI GEMM (M <= 8: one tile of M rows) and the panels (f32: blocks of 16 or 32
            // X rows, the last one short)
            const case_data d = make_case(l.cfg, n, kk, 11 + static_cast<std::uint64_t>(n * kk), from);
            INFO("from " << to_string(from));
            for (const packed_weights& w : layouts_of(*k, d.packed))
            for (std::int64_t m : {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 16, 17, 40, 67}) {
                INFO(to_string(w.arrangement));
                if (m == 67 && w.arrangement == weight_arrangement::rows) continue;  // the panels' X chunks of 64 rows
                // K slices of the cache blocking: once per path is enough
                if (kk > 1024 && m != 2 && m != 13 && m != 17) continue;
                const std::uint64_t seed = 11 + static_cast<std::uint64_t>(n * kk + m);
                const std::vector<float> x = random_vector(static_cast<std::size_t>(m * kk), seed + 1);
                const std::vector<float> bias = random_vector(static_cast<std::size_t>(n), seed + 2, 0.1f);
                const std::vector<double> y_ref = reference_gemm(d, x, m, bias);
                const shifted<float> xs(x, 1);
                std::vector<float> y(static_cast<std::size_t>(m * n) + 1, sentinel);
                const std::int64_t n0 = n > 2 ? 1 : 0;  // a row range when there is one
                k->gemm(w.view(), xs.data, m, bias.data(), y.data() + 1, n0, n);
                for (std::int64_t i = 0; i < m; ++i)
                    for (std::int64_t r = 0; r < n; ++r) {
                        const float got = y[static_cast<std::size_t>(1 + i * n + r)];
                        if (r < n0) {
                            CHECK(got == sentinel);
                            continue;
                        }
                        check_output(l.cfg, d, x.data() + i * kk, r, bias.data(), y_ref[static_cast<std::size_t>(i * n + r)],
                                     got, k->full_name() + " M=" + std::to_string(m) + " row " + std::to_string(i) +
                                              " N=" + std::to_string(n) + " K=" + std::to_string(kk));
                    }
            }
        }
    }
}

TEST_CASE("vnni panels: back to the same rows byte for byte, the GEMV's bits from a shared preparation, refused elsewhere") {
    if (!isa_under_test_runs()) return;
    bool any = false;
    for (const auto& l : kernel_list) {
        const kernel* k = registered(l.cfg, op::gemv);
        if (k == nullptr || k->arrange_ptr == nullptr) continue;
        any = true;
        CHECK(has_vnni_panels(l.cfg));
        CHECK(k->arch == isa::avx512_vnni);
        for (const source from : sources_for(l.cfg)) {
            const std::int64_t n = 53, kk = 4096 + 3 * l.cfg.group;
            const case_data d = make_case(l.cfg, n, kk, 31, from);
            INFO(k->full_name() << " from " << to_string(from));
            packed_weights a = d.packed;
            REQUIRE(arrange(*k, a));
            // a matmul reads the same bytes, but double-quant absmax decoded: 4 bytes each, no nested ones
            const std::size_t decoded = l.cfg.double_quant ? static_cast<std::size_t>(n * (kk / l.cfg.group) * 3) -
                                                                 d.packed.nested_absmax.size() * sizeof(float)
                                                           : 0;
            CHECK(a.weight_bytes() == d.packed.weight_bytes() + decoded);
            CHECK(a.codes.size() == static_cast<std::size_t>(vnni_panels_bytes(l.cfg, n, kk)));
            CHECK_FALSE(arrange(*k, a));  // arranged already: left as it is
            // un-arranged: the bytes pack_weights made (rows with their scales, zero padding)
            weight_buffer storage;
            const weights_view back = rows_of(a.view(), storage);
            REQUIRE(back.row_stride == d.packed.row_stride);
            CHECK(storage == d.packed.codes);
            // one preparation of x serves rows and panels; prepared and plain calls give the same bits
            const std::vector<float> x = random_vector(static_cast<std::size_t>(kk), 32);
            std::vector<std::uint8_t> prepared(k->prepare_ptr(d.packed.view(), x.data(), nullptr));
            k->prepare_ptr(d.packed.view(), x.data(), prepared.data());
            std::vector<float> y1(n), y2(n), y3(n);
            k->gemv(a.view(), x.data(), nullptr, y1.data(), 0, n);
            k->gemv_prepared_ptr(a.view(), prepared.data(), nullptr, y2.data(), 0, n);
            registry::global().find(l.cfg, op::gemm, k->arch)->gemm(a.view(), x.data(), 1, nullptr, y3.data(), 0, n);
            CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)) == 0);
            CHECK(std::memcmp(y1.data(), y3.data(), y1.size() * sizeof(float)) == 0);
            // the kernels of other ISAs read rows: they refuse panels
            for (isa other : all_isas)
                if (const kernel* ko = registry::global().find(l.cfg, op::gemv, other); ko != nullptr && other != k->arch)
                    CHECK_THROWS_WITH(ko->gemv(a.view(), x.data(), nullptr, y1.data(), 0, n),
                                      Catch::Contains("arranged in vnni panels"));
        }
    }
    if (!any) WARN("no kernel of this ISA has an arrangement of its own (only avx512_vnni's i8 kernels do)");
}

TEST_CASE("gemm for few rows of X: every tile height, K in several passes over W, tail blocks, a row range") {
    // the one-pass small-M GEMMs (gemm_f32_rows, gemm_bf16_rows) split X into tiles of 8, 4, 2, 1
    // rows and K into passes when a tile's rows exceed 24-32 KiB: K here takes 2 or more passes for
    // every tile height of the bf16 path (3 rows: 2 + 1), plus blocks after the last full window
    if (!isa_under_test_runs()) return;
    for (const auto& l : kernel_list) {
        const kernel* k = registered(l.cfg, op::gemm);
        if (k == nullptr || l.cfg.act == compute::i8) continue;
        const std::int64_t g = l.cfg.group > 0 ? l.cfg.group : 32;
        const std::int64_t n = 7, kk = 16384 / g * g + 3 * g;
        const case_data d = make_case(l.cfg, n, kk, 23, source::gptq);
        for (std::int64_t m : {2, 3, 4, 5, 6, 7, 8}) {
            const std::uint64_t seed = 23 + static_cast<std::uint64_t>(m);
            const std::vector<float> x = random_vector(static_cast<std::size_t>(m * kk), seed + 1);
            const std::vector<float> bias = random_vector(static_cast<std::size_t>(n), seed + 2, 0.1f);
            const std::vector<double> y_ref = reference_gemm(d, x, m, bias);
            std::vector<float> y(static_cast<std::size_t>(m * n), sentinel);
            k->gemm(d.packed.view(), x.data(), m, bias.data(), y.data(), 2, n);
            for (std::int64_t i = 0; i < m; ++i)
                for (std::int64_t r = 0; r < n; ++r) {
                    const float got = y[static_cast<std::size_t>(i * n + r)];
                    if (r < 2) {
                        CHECK(got == sentinel);
                        continue;
                    }
                    check_output(l.cfg, d, x.data() + i * kk, r, bias.data(), y_ref[static_cast<std::size_t>(i * n + r)], got,
                                 k->full_name() + " M=" + std::to_string(m) + " row " + std::to_string(i) + " K=" + std::to_string(kk));
                }
        }
    }
}

TEST_CASE("kernel_config_of: the exact kernel, else the largest built group that divides the stored one") {
    const auto c = [](dtype t, int bits, std::int32_t g, bool dq, layout s, compute a) { return config{t, static_cast<std::uint8_t>(bits), g, dq, s, a}; };
    struct expectation {
        config stored;
        compute act;
        std::int64_t cols;
        config kernel;
    };
    const expectation cases[] = {
        {c(dtype::nf4, 4, 64, true, layout::bnb4, compute::f32), compute::f32, 0, c(dtype::nf4, 4, 64, true, layout::bnb4, compute::f32)},
        {c(dtype::nf4, 4, 128, false, layout::bnb4, compute::f32), compute::f32, 0, c(dtype::nf4, 4, 64, false, layout::bnb4, compute::f32)},
        {c(dtype::fp4, 4, 256, true, layout::bnb4, compute::bf16), compute::bf16, 0, c(dtype::fp4, 4, 64, false, layout::bnb4, compute::bf16)},
        {c(dtype::int_sym, 4, 64, false, layout::gptq_v1, compute::f32), compute::f32, 0, c(dtype::int_sym, 4, 32, false, layout::qforge, compute::f32)},
        {c(dtype::int_asym, 4, 64, false, layout::awq_gemm, compute::f32), compute::f32, 0, c(dtype::int_asym, 4, 32, false, layout::qforge, compute::f32)},
        {c(dtype::int_sym, 4, per_channel, false, layout::gptq_v1, compute::i8), compute::i8, 0, c(dtype::int_sym, 4, 32, false, layout::qforge, compute::i8)},
        {c(dtype::int_sym, 4, per_channel, false, layout::gptq_v1, compute::i8), compute::i8, 4096, c(dtype::int_sym, 4, 128, false, layout::qforge, compute::i8)},
        {c(dtype::int_sym, 8, 256, false, layout::gptq_v2, compute::i8), compute::i8, 0, c(dtype::int_sym, 8, 128, false, layout::qforge, compute::i8)},
        {c(dtype::int_sym, 8, per_channel, false, layout::gptq_v1, compute::f32), compute::f32, 0, c(dtype::int_sym, 8, per_channel, false, layout::qforge, compute::f32)},
        {c(dtype::fp8_e4m3, 8, per_tensor, false, layout::fp8_block, compute::f32), compute::f32, 0, c(dtype::fp8_e4m3, 8, 128, false, layout::fp8_block, compute::f32)},
        // bnb blocks of 32 double-quantized: their absmax decoded (the same group)
        {c(dtype::nf4, 4, 32, true, layout::bnb4, compute::i8), compute::i8, 0, c(dtype::nf4, 4, 32, false, layout::bnb4, compute::i8)},
        {c(dtype::int_asym, 8, 64, false, layout::gptq_v1, compute::bf16), compute::bf16, 0, c(dtype::int_asym, 8, 32, false, layout::qforge, compute::bf16)},
        // widened: 2- and 3-bit codes on the 4-bit kernels where their own do not fit
        {c(dtype::int_sym, 2, 128, false, layout::gptq_v1, compute::f32), compute::f32, 0, c(dtype::int_sym, 2, 128, false, layout::qforge, compute::f32)},
        {c(dtype::int_sym, 2, 64, false, layout::gptq_v1, compute::f32), compute::f32, 0, c(dtype::int_sym, 4, 32, false, layout::qforge, compute::f32)},
        {c(dtype::int_asym, 3, 32, false, layout::gptq_v2, compute::i8), compute::i8, 0, c(dtype::int_asym, 4, 32, false, layout::qforge, compute::i8)},
        {c(dtype::int_asym, 3, 128, false, layout::gptq_v1, compute::bf16), compute::bf16, 0, c(dtype::int_asym, 4, 32, false, layout::qforge, compute::bf16)},
        {c(dtype::int_sym, 2, per_channel, false, layout::gptq_v1, compute::i8), compute::i8, 4160, c(dtype::int_sym, 4, 32, false, layout::qforge, compute::i8)},
        {c(dtype::int_asym, 3, per_channel, false, layout::gptq_v1, compute::f32), compute::f32, 0, c(dtype::int_asym, 4, 32, false, layout::qforge, compute::f32)},
    };
    for (const expectation& e : cases) {
        INFO(canonical_name(e.stored) << " on " << to_string(e.act) << ", K = " << e.cols);
        if (!kernels::kernel_built(e.kernel)) continue;  // -Dkernels left it out
        // only built kernels of the same type, bits and storage compete: the expectation's group
        // is the largest built divisor unless another built kernel beats it (a filtered build)
        const config got = kernels::kernel_config_of(e.stored, e.act, e.cols);
        CHECK(kernels::kernel_built(got));
        CHECK(canonical_name(got) == canonical_name(e.kernel));
    }
    // the tier each case runs on
    CHECK(kernels::kernel_tier(c(dtype::int_sym, 4, 128, false, layout::gptq_v1, compute::f32), c(dtype::int_sym, 4, 128, false, layout::qforge, compute::f32)) == "compiled");
    CHECK(kernels::kernel_tier(c(dtype::nf4, 4, 32, true, layout::bnb4, compute::f32), c(dtype::nf4, 4, 32, false, layout::bnb4, compute::f32)) == "regrouped");
    CHECK(kernels::kernel_tier(c(dtype::int_sym, 2, 64, false, layout::gptq_v1, compute::f32), c(dtype::int_sym, 4, 32, false, layout::qforge, compute::f32)) == "widened");
}

namespace {

// Every config the vocabulary spells: each dtype, layout and compute path of vocabulary.hpp, bits
// 1 to 8 around the valid 2, 3, 4, 8, every group the rules allow and some they refuse, per channel
// and per tensor, with and without double quant.
std::vector<config> vocabulary_product() {
    const std::uint8_t widths[] = {1, 2, 3, 4, 5, 8};
    const std::int32_t groups[] = {16, 32, 48, 64, 128, 256, 512, 1024, 2048, 4096, 8192, per_channel, per_tensor};
    std::vector<config> out;
    for (const auto& t : dtype_tokens)
        for (const std::uint8_t bits : widths)
            for (const std::int32_t g : groups)
                for (const bool dq : {false, true})
                    for (const auto& l : layout_tokens)
                        for (const auto& a : compute_tokens) out.push_back({t.value, bits, g, dq, l.value, a.value});
    return out;
}

// The fields of a config that may not validate (canonical_name needs a valid one).
std::string spelled(const config& c) {
    return std::string(to_string(c.type)) + " bits " + std::to_string(c.bits) + " group " + std::to_string(c.group) +
           (c.double_quant ? " dq " : " ") + std::string(to_string(c.storage)) + " " + std::string(to_string(c.act));
}

// A small K of whole stored and kernel groups: the group itself (at least 128, an FP8 tile); per
// channel 192, which no 128-wide group divides (2-bit per channel then runs widened, int4 on g32).
std::int64_t walk_cols(const config& c) {
    if (c.group == per_channel) return 192;
    if (c.group == per_tensor) return 256;
    return std::max<std::int64_t>(c.group, 128);
}

}  // namespace

// The coverage promise (README, "Which configs have kernels"): every config that validates runs on
// kernels of every op through kernel_config_for, at SIMD speed on this ISA, with the dequantized
// values of the reference bit for bit and GEMV / GEMM outputs within the compute path's bound; every
// config that does not validate is refused by the registry and by kernel_config_for.
TEST_CASE("the whole vocabulary: every valid config runs on kernels, every invalid one is refused") {
    if (!isa_under_test_runs()) return;
    const bool full_build = std::all_of(std::begin(kernels::generated_kernels), std::end(kernels::generated_kernels),
                                        [](const kernels::generated_kernel& k) { return k.built; });
    std::int64_t valid = 0, invalid = 0, skipped = 0;
    for (const config& c : vocabulary_product()) {
        INFO(spelled(c));
        if (check(c) != config_rule::ok) {
            ++invalid;
            for (const op o : {op::dequantize, op::gemv, op::gemm})
                CHECK_THROWS_AS(registry::global().find(c, o), unsupported_config);
            CHECK_THROWS_AS(kernel_config_for(c, c.act), std::invalid_argument);
            continue;
        }
        ++valid;
        const std::int64_t n = 5, k = walk_cols(c);
        config kc;
        try {
            kc = kernel_config_for(c, c.act, k);
        } catch (const unsupported_config& e) {
            if (full_build) FAIL_CHECK(e.what());
            ++skipped;  // -Dkernels left its kernel out
            continue;
        }
        INFO("runs on " << canonical_name(kc) << " (" << kernels::kernel_tier(c, kc) << ")");
        CHECK(kc == kernels::kernel_config_of(c, c.act, k));
        CHECK(kc.act == c.act);
        const kernel* ops[3] = {};
        for (const op o : {op::dequantize, op::gemv, op::gemm}) {
            const kernel& found = registry::global().find_layout(kc, o);
            CHECK(found.arch == kernels::kernel_isa(kc, active_isa()));
            CHECK(&registry::global().find(c, o, k) == &found);  // find takes the config as it is
            ops[static_cast<int>(o)] = &found;
        }
        if (!kernels::compiled_for(kc, active_isa())) continue;  // its numbers: in the run of the ISA it runs on
        synthetic_spec spec;
        spec.rows = reference_rows(kc, n);
        spec.cols = k;
        spec.seed = 1000 + static_cast<std::uint64_t>(valid);
        const std::vector<float> src = synthetic_weights(spec);
        const case_data d = pack_case(kc, ref::quantize(reference_config(c), std::span<const float>(src), spec.rows, k), n);

        std::vector<float> w(d.w.size(), sentinel);
        ops[static_cast<int>(op::dequantize)]->dequantize(d.packed.view(), 0, n, w.data());
        CHECK(std::memcmp(w.data(), d.w.data(), w.size() * sizeof(float)) == 0);

        const std::int64_t m = 2;
        const std::vector<float> x = random_vector(static_cast<std::size_t>(m * k), spec.seed + 1);
        const std::vector<float> bias = random_vector(static_cast<std::size_t>(n), spec.seed + 2, 0.1f);
        const std::vector<double> y_ref = reference_gemm(d, x, m, bias);
        std::vector<float> y(static_cast<std::size_t>(n), sentinel), ym(static_cast<std::size_t>(m * n), sentinel);
        ops[static_cast<int>(op::gemv)]->gemv(d.packed.view(), x.data(), bias.data(), y.data(), 0, n);
        ops[static_cast<int>(op::gemm)]->gemm(d.packed.view(), x.data(), m, bias.data(), ym.data(), 0, n);
        for (std::int64_t r = 0; r < n; ++r) {
            check_output(kc, d, x.data(), r, bias.data(), y_ref[static_cast<std::size_t>(r)], y[static_cast<std::size_t>(r)], "gemv");
            for (std::int64_t i = 0; i < m; ++i)
                check_output(kc, d, x.data() + i * k, r, bias.data(), y_ref[static_cast<std::size_t>(i * n + r)],
                             ym[static_cast<std::size_t>(i * n + r)], "gemm row " + std::to_string(i));
        }
    }
    if (skipped > 0) WARN(skipped << " valid configs skipped: their kernels are not in this build (-Dkernels)");
    CHECK(valid > 0);
    CHECK(invalid > 0);
}

TEST_CASE("the compile-time route runs the same kernel as the registry") {
    if (!isa_under_test_runs()) return;
    using P = policy<config{dtype::nf4, 4, 64, true, layout::bnb4, compute::i8}>;
    if constexpr (!kernels::kernel_built(P::cfg)) {
        WARN(canonical_name(P::cfg) << " is not built (-Dkernels): skipped");
    } else {
        const kernel* k = &registry::global().find(P::cfg, op::gemv);  // the best for the active ISA
        const case_data d = make_case(P::cfg, 13, 512, 99);
        const std::vector<float> x = random_vector(512, 100);
        std::vector<float> y1(13), y2(13);
        k->gemv(d.packed.view(), x.data(), nullptr, y1.data(), 0, 13);
        qforge::gemv<P>(d.packed.view(), x.data(), y2.data());
        CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)) == 0);
    }
    // the registry knows exactly the built kernels
    for (const auto& l : kernel_list)
        CHECK((registry::global().find(l.cfg, op::gemv, isa::sse4_2) != nullptr) == kernels::kernel_built(l.cfg));
}

TEST_CASE("every alias runs on both routes: the compile-time call equals the registry's kernel") {
    if (!isa_under_test_runs()) return;
    boost::hana::for_each(all_aliases, [](auto alias) {
        using P = typename decltype(alias)::type;  // may name a checkpoint layout (gptq, awq)
        using K = kernels::kernel_policy<P>;
        INFO(canonical_name(P::cfg) << " -> " << canonical_name(K::cfg));
        if constexpr (!kernels::kernel_built(K::cfg)) {
            WARN(canonical_name(K::cfg) << " is not built (-Dkernels): skipped");
        } else {
            constexpr std::int64_t n = 64, k = 512, m = 3;
            synthetic_spec spec;
            spec.rows = n;
            spec.cols = k;
            spec.seed = 41;
            const std::vector<float> w = synthetic_weights(spec);
            const ref::quantized q = ref::quantize(P::cfg, std::span<const float>(w), n, k);
            const packed_weights packed = pack_weights<P>(q);
            CHECK(packed.cfg == K::cfg);
            const kernel& registered_gemv = registry::global().find(K::cfg, op::gemv);
            const kernel& registered_gemm = registry::global().find(K::cfg, op::gemm);
            const std::vector<float> x = random_vector(static_cast<std::size_t>(m * k), 43);
            std::vector<float> y1(n), y2(n), z1(m * n), z2(m * n), d(n * k);
            qforge::gemv<P>(packed.view(), x.data(), y1.data());
            registered_gemv.gemv(packed.view(), x.data(), nullptr, y2.data(), 0, n);
            CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)) == 0);
            qforge::gemm<P>(packed.view(), x.data(), m, nullptr, z1.data(), 0, n);
            registered_gemm.gemm(packed.view(), x.data(), m, nullptr, z2.data(), 0, n);
            CHECK(std::memcmp(z1.data(), z2.data(), z1.size() * sizeof(float)) == 0);
            qforge::dequantize<P>(packed.view(), 0, n, d.data());
            const std::vector<float> expected = ref::dequantize(q);
            CHECK(std::memcmp(d.data(), expected.data(), d.size() * sizeof(float)) == 0);
            // and the product is W x (the kernel tests bound every path tightly; here, within 2%)
            const std::vector<double> y_ref = ref::gemv(q, std::span<const float>(x.data(), k));
            double err = 0.0, norm = 0.0;
            for (std::int64_t i = 0; i < n; ++i) {
                err = std::max(err, std::abs(y1[static_cast<std::size_t>(i)] - y_ref[static_cast<std::size_t>(i)]));
                norm = std::max(norm, std::abs(y_ref[static_cast<std::size_t>(i)]));
            }
            CHECK(err <= 0.02 * norm);
        }
    });
}

TEST_CASE("thread_pool: every row once, and split GEMV/GEMM equal to one call bit for bit") {
    if (!isa_under_test_runs()) return;
    for (int threads : {1, 2, 3}) {
        thread_pool pool(threads);
        std::vector<int> seen(1000, 0);
        pool.parallel_for(3, 1000, 16, [&](std::int64_t n0, std::int64_t n1) {
            CHECK((n0 - 3) % 16 == 0);
            for (std::int64_t n = n0; n < n1; ++n) ++seen[static_cast<std::size_t>(n)];
        });
        for (std::size_t n = 0; n < seen.size(); ++n) REQUIRE(seen[n] == (n >= 3 ? 1 : 0));
    }
    const config cfg{dtype::nf4, 4, 64, false, layout::bnb4, compute::i8};
    const kernel* gv = registered(cfg, op::gemv);
    const kernel* gm = registered(cfg, op::gemm);
    if (gv == nullptr || gm == nullptr) return;
    const case_data d = make_case(cfg, 37, 256, 21);
    const std::vector<float> x = random_vector(3 * 256, 22);
    std::vector<float> y_one(37), y_split(37), ys_one(3 * 37), ys_split(3 * 37);
    gv->gemv(d.packed.view(), x.data(), nullptr, y_one.data(), 0, 37);
    gm->gemm(d.packed.view(), x.data(), 3, nullptr, ys_one.data(), 0, 37);
    thread_pool pool(2);
    pool.parallel_for(0, 37, 1, [&](std::int64_t n0, std::int64_t n1) {
        gv->gemv(d.packed.view(), x.data(), nullptr, y_split.data(), n0, n1);
        gm->gemm(d.packed.view(), x.data(), 3, nullptr, ys_split.data(), n0, n1);
    });
    CHECK(std::memcmp(y_one.data(), y_split.data(), y_one.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(ys_one.data(), ys_split.data(), ys_one.size() * sizeof(float)) == 0);
}

TEST_CASE("rows with their scales: the same bits as the dense arrays, every byte in its place") {
    if (!isa_under_test_runs()) return;
    for (const auto& l : kernel_list) {
        if (!rows_can_carry_scales(l.cfg)) continue;
        // 6 blocks of 64 per row over 70 rows: the double-quant blocks of 256 end inside row 42;
        // 3-bit rows end in a unit of 2 spans
        const std::int64_t n = 70, kk = 384;
        const case_data d = make_case(l.cfg, n, kk, 31);
        packed_weights dense_packed = detail::pack_dense(l.cfg, d.q, "weight");
        keep_first_rows(dense_packed, d.ref_rows, n);
        const weights_view arranged = d.packed.view(), dense = dense_packed.view();
        INFO(canonical_name(l.cfg));
        REQUIRE(dense.row_stride == 0);
        REQUIRE(arranged.row_stride % 64 == 0);
        const row_parts r = row_bytes(l.cfg, kk);
        CHECK(d.packed.weight_bytes() == dense_packed.weight_bytes());  // the padding is not read
        for (const std::int64_t row : {std::int64_t{0}, std::int64_t{1}, n - 1}) {
            const std::int64_t at = row * arranged.row_stride;
            CHECK(std::memcmp(static_cast<const std::uint8_t*>(arranged.scales) + at,
                              static_cast<const std::uint8_t*>(dense.scales) + row * r.scales, r.scales) == 0);
            if (r.zeros > 0) CHECK(std::memcmp(arranged.zeros + at, dense.zeros + row * r.zeros, r.zeros) == 0);
            CHECK(std::memcmp(arranged.codes + at, dense.codes + row * r.codes, r.codes) == 0);
        }
        const std::vector<float> x = random_vector(static_cast<std::size_t>(3 * kk), 32);
        // out(view, y) runs one op into y; both views must give the same bits
        const auto same = [&](std::size_t size, const auto& out) {
            std::vector<float> a(size, sentinel), b(size, sentinel);
            out(dense, a.data());
            out(arranged, b.data());
            CHECK(std::memcmp(a.data(), b.data(), size * sizeof(float)) == 0);
        };
        if (const kernel* k = registered(l.cfg, op::dequantize))
            same(static_cast<std::size_t>(n * kk), [&](const weights_view& w, float* y) { k->dequantize(w, 0, n, y); });
        if (const kernel* k = registered(l.cfg, op::gemv))
            same(static_cast<std::size_t>(n), [&](const weights_view& w, float* y) { k->gemv(w, x.data(), nullptr, y, 0, n); });
        if (const kernel* k = registered(l.cfg, op::gemm))
            same(static_cast<std::size_t>(3 * n), [&](const weights_view& w, float* y) { k->gemm(w, x.data(), 3, nullptr, y, 0, n); });
    }
}

TEST_CASE("checked calls refuse mismatched weights, shapes and ranges") {
    if (!isa_under_test_runs()) return;
    const config nf4{dtype::nf4, 4, 64, false, layout::bnb4, compute::f32};
    const config fp4{dtype::fp4, 4, 64, false, layout::bnb4, compute::f32};
    const kernel* k = registered(fp4, op::gemv);
    if (k == nullptr) return;
    const case_data d = make_case(nf4, 4, 128, 1);
    std::vector<float> x(128, 1.0f), y(4);
    CHECK_THROWS_WITH(k->gemv(d.packed.view(), x.data(), nullptr, y.data(), 0, 4),
                      Catch::Contains("the weights are nf4_b64_bnb_f32"));
    const case_data f = make_case(fp4, 4, 128, 1);
    CHECK_THROWS_WITH(k->gemv(f.packed.view(), x.data(), nullptr, y.data(), 2, 5), Catch::Contains("row range [2, 5)"));
    CHECK_THROWS_WITH(k->gemv(f.packed.view(), nullptr, nullptr, y.data(), 0, 4), Catch::Contains("x is a null pointer"));
    weights_view odd = f.packed.view();
    odd.cols = 96;
    odd.rows = 5;
    CHECK_THROWS_WITH(k->gemv(odd, x.data(), nullptr, y.data(), 0, 4), Catch::Contains("not a multiple of the group size 64"));
    CHECK_THROWS_AS(k->gemm(f.packed.view(), x.data(), 1, nullptr, y.data(), 0, 4), std::logic_error);  // a gemv entry
    weights_view narrow = f.packed.view();
    narrow.row_stride = 64;  // a row is 64 code bytes and 2 absmax
    CHECK_THROWS_WITH(k->gemv(narrow, x.data(), nullptr, y.data(), 0, 4),
                      Catch::Contains("row_stride 64 is less than a row's codes, scales and zero points (72 bytes)"));
    const config fp8{dtype::fp8_e4m3, 8, 128, false, layout::fp8_block, compute::f32};
    if (const kernel* kf = registered(fp8, op::gemv)) {
        const case_data c = make_case(fp8, 4, 128, 1);
        weights_view strided = c.packed.view();
        strided.row_stride = 256;
        CHECK_THROWS_WITH(kf->gemv(strided, x.data(), nullptr, y.data(), 0, 4),
                          Catch::Contains("row_stride 256: the rows of this layout are dense"));
    }
}

TEST_CASE("pack_weights refuses GPTQ checkpoints the qforge layout cannot hold") {
    const config kernel_cfg{dtype::int_sym, 4, 32, false, layout::qforge, compute::f32};
    const std::vector<float> w = random_vector(32 * 64, 3);
    ref::quantized q = ref::quantize(reference_config(kernel_cfg), std::span<const float>(w), 32, 64);
    auto& g = std::get<ref::gptq_tensor>(q);
    ref::quantized act_order = q;
    std::swap(std::get<ref::gptq_tensor>(act_order).g_idx[0], std::get<ref::gptq_tensor>(act_order).g_idx[40]);
    const packed_weights sorted = pack_weights(kernel_cfg, act_order);  // a valid act-order g_idx
    REQUIRE(sorted.perm.size() == 64);
    CHECK(sorted.perm[0] == 1);   // group 0 now is columns 1..31 and 40
    CHECK(sorted.perm[31] == 40);
    CHECK(sorted.perm[32] == 0);  // group 1: column 0 first (stable), then 32..39, 41..63
    CHECK(sorted.perm[33] == 32);
    CHECK(sorted.weight_bytes() == 32 * 64 / 2 + 32 * 2 * 2 + 64 * 4);
    std::get<ref::gptq_tensor>(act_order).g_idx[1] = 1;  // group 0: 31 columns, group 1: 33
    CHECK_THROWS_WITH(pack_weights(kernel_cfg, act_order, "model.layers.0.mlp.up_proj"),
                      Catch::Contains("model.layers.0.mlp.up_proj") && Catch::Contains("act-order") &&
                          Catch::Contains("group 0 31 columns"));
    g.qzeros[0] = 0x77777776;  // v1 field 6: zero point 7 in column 0
    CHECK_THROWS_WITH(pack_weights(kernel_cfg, q), Catch::Contains("zero point 7"));
    // the asymmetric kernels keep it: one zero byte per (row, group) more
    config asym = kernel_cfg;
    asym.type = dtype::int_asym;
    const packed_weights z = pack_weights(asym, q);
    const weights_view zv = z.view();  // rows with their scales: row r's zero points at zeros + r * row_stride
    CHECK(zv.zeros[0] == 7);
    CHECK(zv.zeros[1] == 8);               // row 0, group 1
    CHECK(zv.zeros[zv.row_stride] == 8);  // row 1, group 0
    CHECK(z.weight_bytes() == 32 * 64 / 2 + 32 * 2 * 2 + 32 * 2);
    CHECK_THROWS_WITH(pack_weights(config{dtype::int_sym, 4, 32, false, layout::qforge, compute::f32},
                                   ref::quantize(config{dtype::nf4, 4, 64, false, layout::bnb4, compute::f32},
                                                 std::span<const float>(w), 32, 64)),
                      Catch::Contains("need a bnb kernel config"));
}

TEST_CASE("2-bit GPTQ codes are packed four per byte in the documented span order") {
    // weights.hpp: per row K/4 bytes; byte j of 16-byte span s holds element 64s + 16p + j in bits [2p, 2p+2)
    const config cfg{dtype::int_sym, 2, 128, false, layout::qforge, compute::f32};
    const std::int64_t n = 32, k = 256;  // GPTQ packs N and K in runs of 32
    const std::vector<float> w = random_vector(static_cast<std::size_t>(n * k), 41);
    case_data d;
    d.q = ref::quantize(reference_config(cfg), std::span<const float>(w), n, k);
    const packed_weights p = pack_weights(cfg, d.q);
    const weights_view v = p.view();  // rows with their scales: row r's codes at codes + r * row_stride
    REQUIRE(v.row_stride >= k / 4);
    CHECK(p.weight_bytes() == static_cast<std::size_t>(n * k / 4 + n * (k / 128) * 2));
    bool seen[4] = {};
    for (std::int64_t r = 0; r < n; ++r)
        for (std::int64_t e = 0; e < k; ++e) {
            const std::int64_t s = e / 64, part = e % 64 / 16, j = e % 16;
            const std::uint8_t byte = v.codes[r * v.row_stride + s * 16 + j];
            INFO("row " << r << " element " << e);
            REQUIRE(((byte >> (2 * part)) & 3) == code_of(d, r, e));
            seen[code_of(d, r, e)] = true;
        }
    CHECK((seen[0] && seen[1] && seen[2] && seen[3]));  // every code occurs: a wrong bit position shows
    // a K that is no whole number of 64-element spans is refused, naming the tensor
    const config g32{dtype::int_sym, 2, 32, false, layout::qforge, compute::f32};
    const std::vector<float> w96 = random_vector(32 * 96, 42);
    const ref::quantized q96 = ref::quantize(reference_config(g32), std::span<const float>(w96), 32, 96);
    CHECK_THROWS_WITH(pack_weights(g32, q96, "blk.0.q"), Catch::Contains("blk.0.q") && Catch::Contains("multiple of 64"));
}

TEST_CASE("3-bit GPTQ codes are packed in units of a 2-bit span layout and a plane of third bits") {
    // weights.hpp (split3): per row 3K/8 bytes in units of 256 elements, the last one shorter
    const config cfg{dtype::int_sym, 3, 128, false, layout::qforge, compute::f32};
    const std::int64_t n = 32, k = 384;  // a whole unit (r = 4 spans) and a short one (r = 2)
    const std::vector<float> w = random_vector(static_cast<std::size_t>(n * k), 43);
    case_data d;
    d.q = ref::quantize(reference_config(cfg), std::span<const float>(w), n, k);
    const packed_weights p = pack_weights(cfg, d.q);
    const weights_view v = p.view();  // rows with their scales: row r's codes at codes + r * row_stride
    REQUIRE(v.row_stride >= k * 3 / 8);
    CHECK(p.weight_bytes() == static_cast<std::size_t>(n * k * 3 / 8 + n * (k / 128) * 2));
    bool seen[8] = {};
    for (std::int64_t row = 0; row < n; ++row)
        for (std::int64_t e = 0; e < k; ++e) {
            const std::int64_t u = e / 256, within = e % 256, r = std::min<std::int64_t>(4, k / 64 - 4 * u);
            const std::int64_t part = within % 64 / 16, b = within / 64 * 16 + within % 16;
            const std::uint8_t* unit = v.codes + row * v.row_stride + u * 96;
            const int low = (unit[b] >> (2 * part)) & 3, third = (unit[16 * r + 2 * r * part + b / 8] >> (b % 8)) & 1;
            INFO("row " << row << " element " << e);
            REQUIRE((low | third << 2) == code_of(d, row, e));
            seen[code_of(d, row, e)] = true;
        }
    CHECK(std::all_of(std::begin(seen), std::end(seen), [](bool b) { return b; }));  // every code occurs
    // a K that is no whole number of 64-element spans is refused, naming the tensor
    const config g32{dtype::int_sym, 3, 32, false, layout::qforge, compute::f32};
    const std::vector<float> w96 = random_vector(32 * 96, 44);
    const ref::quantized q96 = ref::quantize(reference_config(g32), std::span<const float>(w96), 32, 96);
    CHECK_THROWS_WITH(pack_weights(g32, q96, "blk.0.v"), Catch::Contains("blk.0.v") && Catch::Contains("multiple of 64"));
}

TEST_CASE("fp8 and mx dequantize decode every code and scale as the reference, NaN and subnormals included") {
    if (!isa_under_test_runs()) return;
    // every E4M3 code, both signs, in two column tiles with different scales (f.type: E4M3)
    ref::fp8_tensor f;
    f.rows = 2;
    f.cols = 256;
    for (int i = 0; i < 512; ++i) f.codes.push_back(static_cast<std::uint8_t>(i));
    f.scale_inv = {0.75f, 3.0e-3f};
    // every E2M1 code under the E8M0 scales 2^-127 (subnormal), 2^-126, 1, 2^73, 2^127 (6 * 2^127
    // overflows) and NaN
    ref::mx_tensor x;
    x.rows = 6;
    x.cols = 32;
    for (int r = 0; r < 6; ++r)
        for (int j = 0; j < 16; ++j) x.blocks.push_back(static_cast<std::uint8_t>(((2 * j) % 16) | (((2 * j + 1) % 16) << 4)));
    x.scales = {0, 1, 127, 200, 254, 255};
    // every E5M2 code the same way (Inf and NaN codes included)
    ref::fp8_tensor f5 = f;
    f5.type = dtype::fp8_e5m2;
    const config e5m2{dtype::fp8_e5m2, 8, 128, false, layout::fp8_block, compute::f32};
    for (const auto& [cfg, q] : {std::pair{configs::fp8_block128, ref::quantized(f)}, std::pair{e5m2, ref::quantized(f5)},
                                 std::pair{configs::mxfp4, ref::quantized(x)}}) {
        const std::vector<float> expected = ref::dequantize(q);
        const packed_weights p = pack_weights(cfg, q);
        for (isa i : all_isas) {
            const kernel* k = registry::global().find(cfg, op::dequantize, i);
            if (!cpu_supports(i) || k == nullptr) continue;
            INFO(k->full_name());
            std::vector<float> out(expected.size(), sentinel);
            k->dequantize(p.view(), 0, p.rows, out.data());
            CHECK(std::memcmp(out.data(), expected.data(), out.size() * sizeof(float)) == 0);
            check_half_outputs(*k, p.view(), 0, p.rows, expected);  // NaN, Inf, subnormals, f16 overflow
        }
    }
    CHECK(std::isnan(ref::dequantize(ref::quantized(f))[0x7F]));  // the NaN codes are really tested
    CHECK(std::isinf(ref::dequantize(ref::quantized(f5))[0xFC]));
    CHECK(std::isnan(ref::dequantize(ref::quantized(f5))[0x7D]));
}

namespace {

// A case of the checkpoint tensor q, all of whose rows the kernel computes.
case_data case_of(const config& cfg, const ref::quantized& q, std::int64_t rows) {
    case_data d;
    d.q = q;
    d.packed = pack_weights(cfg, d.q);
    d.w = ref::dequantize(d.q);
    d.rows = d.ref_rows = rows;
    return d;
}

// k's GEMV of every row of d against the reference, in the bounds of check_output.
void check_gemv(const kernel& k, const config& cfg, const case_data& d, const std::vector<float>& x,
                const std::string& where) {
    const std::vector<double> y_ref = reference_gemm(d, x, 1, {});
    std::vector<float> y(static_cast<std::size_t>(d.rows), sentinel);
    k.gemv(d.packed.view(), x.data(), nullptr, y.data(), 0, d.rows);
    for (std::int64_t r = 0; r < d.rows; ++r)
        check_output(cfg, d, x.data(), r, nullptr, y_ref[static_cast<std::size_t>(r)], y[static_cast<std::size_t>(r)],
                     k.full_name() + " " + where);
}

}  // namespace

TEST_CASE("bf16 gemv of fp8 and mx: every finite code under tile scales inside, at and beyond the table's range") {
    if (!isa_under_test_runs()) return;
    // FP8: row 0 holds the codes 0..127 in every column tile, row 1 the same codes negative; the
    // tiles' scales cover the table path (|s| in [2^-100, 2^100], format_fp8.hpp), its bounds and
    // the per-weight rounding beyond it (zero, underflowing and huge scales), both signs
    const std::vector<float> tile_scales = {0.75f, 3.0e-3f, -1.5f, 0x1p-100f, 0x1p100f, -0x1p-100f, 0x1p-101f,
                                            0x1p101f, 0.0f, -0x1p-120f, 0x1p105f, 0x1.fffffep-101f};
    const std::int64_t tiles = static_cast<std::int64_t>(tile_scales.size()), k = 128 * tiles;
    for (const dtype type : {dtype::fp8_e4m3, dtype::fp8_e5m2}) {
        const config cfg{type, 8, 128, false, layout::fp8_block, compute::bf16};
        const kernel* kv = registered(cfg, op::gemv);
        if (kv == nullptr) continue;
        const int largest = type == dtype::fp8_e4m3 ? 0x7E : 0x7B;  // the codes above are NaN (and Inf)
        ref::fp8_tensor f;
        f.type = type;
        f.rows = 2;
        f.cols = k;
        for (std::int64_t r = 0; r < 2; ++r)
            for (std::int64_t j = 0; j < k; ++j)
                f.codes.push_back(static_cast<std::uint8_t>(std::min<int>(static_cast<int>(j % 128), largest) | (r << 7)));
        f.scale_inv = tile_scales;
        const case_data d = case_of(cfg, f, 2);
        const std::vector<float> x = random_vector(static_cast<std::size_t>(k), 71);
        check_gemv(*kv, cfg, d, x, "edge scales");
        // one tile at a time: each tile's sum is checked on its own (a large tile hides none)
        for (std::int64_t t = 0; t < tiles; ++t) {
            std::vector<float> xt(static_cast<std::size_t>(k), 0.0f);
            std::copy_n(x.begin() + t * 128, 128, xt.begin() + t * 128);
            check_gemv(*kv, cfg, d, xt, "tile " + std::to_string(t) + " of scale " + std::to_string(tile_scales[static_cast<std::size_t>(t)]));
        }
    }
    // MXFP4: every E2M1 code under the E8M0 scales 2^-127 (subnormal), 2^-126, 1 and 2^100; its
    // bf16 weights are bf16 numbers, not rounded (f32.hpp)
    const config mx{dtype::e2m1, 4, 32, false, layout::mx, compute::bf16};
    if (const kernel* kv = registered(mx, op::gemv)) {
        ref::mx_tensor q;
        q.rows = 4;
        q.cols = 256;
        for (int r = 0; r < 4; ++r)
            for (int j = 0; j < 128; ++j) q.blocks.push_back(static_cast<std::uint8_t>(((2 * j) % 16) | (((2 * j + 1) % 16) << 4)));
        for (const std::uint8_t s : {0, 1, 127, 227})
            for (int b = 0; b < 8; ++b) q.scales.push_back(s);
        check_gemv(*kv, mx, case_of(mx, q, 4), random_vector(256, 72), "edge scales");
    }
}

TEST_CASE("f16 gemv of bnb4: blocks whose products leave f16's normal range") {
    if (!isa_under_test_runs()) return;
    // Each block's table is rounded to f16 once (f32.hpp): row 0 as quantized, each other row with
    // one block of an edge absmax (tiny: subnormal products; zero; negative; 65504; just above it,
    // where the largest products round down to 65504)
    for (const dtype type : {dtype::nf4, dtype::fp4}) {
        const config cfg{type, 4, 64, false, layout::bnb4, compute::f16};
        const kernel* kv = registered(cfg, op::gemv);
        if (kv == nullptr) continue;
        const std::int64_t n = 6, k = 512;
        auto t = std::get<ref::bnb4_tensor>(make_case(cfg, n, k, 83).q);
        REQUIRE(t.absmax.size() == static_cast<std::size_t>(n * k / 64));
        const float edge[] = {1.0e-4f, 0.0f, -0.5f, 65504.0f, 65504.0f * 1.0001f};
        for (int r = 1; r < n; ++r) t.absmax[static_cast<std::size_t>(r * (k / 64) + r)] = edge[r - 1];
        check_gemv(*kv, cfg, case_of(cfg, t, n), random_vector(static_cast<std::size_t>(k), 84, 0.5f), "edge absmax");
    }
}

// ---- LLM.int8 (formats.md §2): the outlier-threshold matmul, bit for bit -------------------

namespace {

// The LLM.int8 kernels of every ISA this CPU runs (and this build has), for one op.
std::vector<const kernel*> llm_int8_kernels(op o) {
    std::vector<const kernel*> out;
    for (isa i : all_isas)
        if (const kernel* k = registry::global().find(configs::llm_int8, o, i); k != nullptr && cpu_supports(i))
            out.push_back(k);
    return out;
}

// Quantized synthetic weights with the edge codes: a zero row (SCB = 0) when N > 2, and -128
// (not produced by bnb's quantizer, but an int8 a checkpoint can hold) and +-127 in row 0.
ref::int8row_tensor llm_int8_weights(std::int64_t n, std::int64_t k, std::uint64_t seed) {
    synthetic_spec spec;
    spec.rows = n;
    spec.cols = k;
    spec.seed = seed;
    spec.outlier_rate = 1.0 / 256;
    std::vector<float> src = synthetic_weights(spec);
    if (n > 2) std::fill_n(src.begin() + k, k, 0.0f);
    ref::int8row_tensor t = ref::quantize_int8row(src, n, k);
    t.codes[0] = -128;
    if (k > 2) {
        t.codes[1] = 127;
        t.codes[2] = -127;
    }
    return t;
}

// X [m, k] uniform in [-1, 1] with `outlier_cols` columns holding one large value each (in
// varying rows, so a column is an outlier through one row only), one of them exactly t (>= t
// counts) and, next to it, a value just below t that does not make its column an outlier.
std::vector<float> llm_int8_activations(std::int64_t m, std::int64_t k, int outlier_cols, float t, std::uint64_t seed) {
    std::vector<float> x = random_vector(static_cast<std::size_t>(m * k), seed);
    std::mt19937_64 rng(seed + 1);
    for (int j = 0; j < outlier_cols && j < k; ++j) {
        const auto col = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(k));
        const auto row = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(m));
        const float big = j == 0 ? t : (j % 2 ? -1.0f : 1.0f) * (t + static_cast<float>(rng() % 40));
        x[static_cast<std::size_t>(row * k + col)] = big;
        if (j == 0 && col + 1 < k) x[static_cast<std::size_t>(row * k + col + 1)] = std::nextafter(t, 0.0f);
    }
    return x;
}

bool same_bits(const std::vector<float>& a, const float* b) {
    return std::memcmp(a.data(), b, a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("LLM.int8: a hand-computed example, with and without the outlier decomposition") {
    if (!isa_under_test_runs()) return;
    // W = [[127, 127, -127]] with SCB = 2 (values 2, 2, -2); x = [1, 10, 0.5].
    // t = 6: column 1 is an outlier (10 * 2 = 20 in f32); the inliers [1, 0, 0.5] have SCA = 1,
    //   XA = [127, 0, RNE(63.5) = 64], C = 127 * 127 - 64 * 127 = 8001, 8001 * 2 / 16129 + 20.
    // t = 0: SCA = 10, XA = [RNE(12.7) = 13, 127, RNE(6.35) = 6], C = 127 * 134 = 17018,
    //   17018 * 20 / 16129 (the exact product is 21).
    ref::int8row_tensor t;
    t.rows = 1;
    t.cols = 3;
    t.codes = {127, 127, -127};
    t.scb = {2.0f};
    packed_weights p = pack_weights(configs::llm_int8, t);
    const std::vector<float> x = {1.0f, 10.0f, 0.5f};
    for (const auto& [threshold, expected] : {std::pair{6.0f, 8001.0 * 2 / 16129 + 20}, std::pair{0.0f, 17018.0 * 20 / 16129}}) {
        p.outlier_threshold = threshold;
        const std::vector<float> y_ref = ref::int8_matmul(t, x, 1, threshold);
        CHECK(std::abs(y_ref[0] - expected) <= 1e-5);
        for (const kernel* k : llm_int8_kernels(op::gemv)) {
            INFO(k->full_name() << " t = " << threshold);
            float y = sentinel;
            k->gemv(p.view(), x.data(), nullptr, &y, 0, 1);
            CHECK(std::abs(y - expected) <= 1e-5);
            CHECK(std::bit_cast<std::uint32_t>(y) == std::bit_cast<std::uint32_t>(y_ref[0]));
        }
    }
    // SCA so small that 127 / SCA overflows: the reference quantizes with (x / SCA) * 127
    const std::vector<float> tiny = {3e-38f, -1e-38f, 2e-39f};
    p.outlier_threshold = 6.0f;
    const std::vector<float> y_ref = ref::int8_matmul(t, tiny, 1, 6.0f);
    CHECK(y_ref[0] != 0.0f);
    for (const kernel* k : llm_int8_kernels(op::gemv)) {
        INFO(k->full_name() << " tiny activations");
        float y = sentinel;
        k->gemv(p.view(), tiny.data(), nullptr, &y, 0, 1);
        CHECK(std::bit_cast<std::uint32_t>(y) == std::bit_cast<std::uint32_t>(y_ref[0]));
    }
}

TEST_CASE("LLM.int8: gemv, gemm and dequantize equal the reference bit for bit on every ISA") {
    if (!isa_under_test_runs()) return;
    const kernel* own_gemv = registered(configs::llm_int8, op::gemv);
    if (own_gemv == nullptr) return;
    const auto gemms = llm_int8_kernels(op::gemm);
    auto matmuls = llm_int8_kernels(op::gemv);  // M = 1: gemv and gemm
    matmuls.insert(matmuls.end(), gemms.begin(), gemms.end());
    const auto dequantizes = llm_int8_kernels(op::dequantize);
    struct scenario {
        const char* name;
        float threshold;
        int outlier_cols;  // large values planted in this many columns
    };
    const scenario scenarios[] = {
        {"no outliers", 6.0f, 0},
        {"some outlier columns", 6.0f, 5},
        {"threshold 0 (no decomposition)", 0.0f, 5},
        {"every column an outlier", 1e-30f, 0},
        {"threshold 4.5", 4.5f, 3},
    };
    const std::pair<std::int64_t, std::int64_t> shapes[] = {{1, 1}, {3, 5}, {7, 161}, {5, 1024}, {9, 4096}, {33, 67}};
    for (auto [n, kk] : shapes) {
        const std::uint64_t seed = 41 + static_cast<std::uint64_t>(n * kk);
        const ref::int8row_tensor t = llm_int8_weights(n, kk, seed);
        packed_weights p = pack_weights(configs::llm_int8, t);
        const std::vector<float> w = ref::dequantize_int8row(t);
        for (const kernel* k : dequantizes) {
            std::vector<float> out(w.size(), sentinel);
            k->dequantize(p.view(), 0, n, out.data());
            INFO(k->full_name() << " N=" << n << " K=" << kk);
            CHECK(same_bits(w, out.data()));
        }
        // unaligned codes
        const shifted<std::uint8_t> codes(p.codes, 3);
        for (const scenario& sc : scenarios) {
            p.outlier_threshold = sc.threshold;
            weights_view view = p.view();
            view.codes = codes.data;
            const std::vector<float> bias = random_vector(static_cast<std::size_t>(n), seed + 2, 0.1f);
            for (std::int64_t m : {1, 2, 3, 5, 17}) {
                if (kk >= 4096 && m > 3) continue;
                std::vector<float> x = llm_int8_activations(m, kk, sc.outlier_cols, sc.threshold, seed + 3 + static_cast<std::uint64_t>(m));
                if (m >= 3) std::fill_n(x.begin() + kk, kk, 0.0f);  // a zero row: SCA = 0
                const std::vector<float> y_ref = ref::int8_matmul(t, x, m, sc.threshold, bias);
                const std::vector<float> y_ref_nobias = ref::int8_matmul(t, x, m, sc.threshold);
                const shifted<float> xs(x, 1);
                for (const kernel* k : m == 1 ? matmuls : gemms) {
                    INFO(k->full_name() << " " << sc.name << " M=" << m << " N=" << n << " K=" << kk);
                    std::vector<float> y(static_cast<std::size_t>(m * n) + 2, sentinel);
                    if (k->kind == op::gemv) k->gemv(view, xs.data, bias.data(), y.data() + 1, 0, n);
                    else k->gemm(view, xs.data, m, bias.data(), y.data() + 1, 0, n);
                    CHECK(same_bits(y_ref, y.data() + 1));
                    CHECK(y.front() == sentinel);
                    CHECK(y.back() == sentinel);
                    // rows [1, N) without bias: row 0 untouched
                    if (n < 2) continue;
                    std::vector<float> y2(static_cast<std::size_t>(m * n), sentinel);
                    if (k->kind == op::gemv) k->gemv(p.view(), x.data(), nullptr, y2.data(), 1, n);
                    else k->gemm(p.view(), x.data(), m, nullptr, y2.data(), 1, n);
                    for (std::int64_t i = 0; i < m; ++i)
                        for (std::int64_t r = 0; r < n; ++r) {
                            const auto at = static_cast<std::size_t>(i * n + r);
                            if (r == 0) REQUIRE(y2[at] == sentinel);
                            else REQUIRE(std::bit_cast<std::uint32_t>(y2[at]) == std::bit_cast<std::uint32_t>(y_ref_nobias[at]));
                        }
                }
            }
        }
    }
}

TEST_CASE("LLM.int8: exact int32 sums up to the largest K, where the VNNI offset form wraps") {
    if (!isa_under_test_runs()) return;
    if (registered(configs::llm_int8, op::gemv) == nullptr) return;
    // every code 127 and every activation code 127: C = 127 * 127 * K = 2114044159 for
    // K = 131071 fits in int32, while sum (CB + 128) * XA reaches 255 * 127 * K > 2^32
    for (std::int64_t kk : {llm_int8_max_cols, std::int64_t{4096}}) {
        ref::int8row_tensor t;
        t.rows = 2;
        t.cols = kk;
        t.codes.assign(static_cast<std::size_t>(2 * kk), 127);
        std::fill_n(t.codes.begin() + kk, kk, std::int8_t{-127});
        t.scb = {1.0f, 3.0f};
        const packed_weights p = pack_weights(configs::llm_int8, t);
        const std::vector<float> x(static_cast<std::size_t>(kk), 0.5f);
        const std::vector<float> y_ref = ref::int8_matmul(t, x, 1, 6.0f);
        CHECK(std::abs(y_ref[0] - 0.5 * static_cast<double>(kk)) <= 1e-6 * static_cast<double>(kk));
        for (const kernel* k : llm_int8_kernels(op::gemv)) {
            INFO(k->full_name() << " K=" << kk);
            std::vector<float> y(2);
            k->gemv(p.view(), x.data(), nullptr, y.data(), 0, 2);
            CHECK(same_bits(y_ref, y.data()));
        }
    }
}

TEST_CASE("LLM.int8: the checked calls refuse bad thresholds, a too large K and mismatched tensors") {
    if (!isa_under_test_runs()) return;
    const kernel* k = registered(configs::llm_int8, op::gemv);
    if (k == nullptr) return;
    const ref::int8row_tensor t = llm_int8_weights(3, 64, 5);
    packed_weights p = pack_weights(configs::llm_int8, t);
    std::vector<float> x(64, 0.25f), y(3);
    for (float bad : {-1.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        p.outlier_threshold = bad;
        CHECK_THROWS_WITH(k->gemv(p.view(), x.data(), nullptr, y.data(), 0, 3), Catch::Contains("outlier threshold"));
        CHECK_THROWS_AS(ref::int8_matmul(t, x, 1, bad), std::invalid_argument);  // as the reference
    }
    p.outlier_threshold = 6.0f;
    weights_view wide = p.view();
    wide.cols = llm_int8_max_cols + 1;
    CHECK_THROWS_WITH(k->gemv(wide, x.data(), nullptr, y.data(), 0, 1), Catch::Contains("int32"));
    CHECK_THROWS_WITH(pack_weights(configs::bnb_fp4, ref::quantized(t), "model.layers.0.mlp.up_proj"),
                      Catch::Contains("model.layers.0.mlp.up_proj") && Catch::Contains("bnb8"));
    ref::int8row_tensor short_scb = t;
    short_scb.scb.pop_back();
    CHECK_THROWS_WITH(pack_weights(configs::llm_int8, short_scb), Catch::Contains("SCB"));
}
