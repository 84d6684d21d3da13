#include <qforge/config/name.hpp>
#include <qforge/kernels/kernels.hpp>
#include <qforge/registry.hpp>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>

// The generated per-ISA translation units, one registration function each.
#define QFORGE_KERNEL_TU(family, isa_name) \
    namespace qforge::kernels::generated { \
    void register_##family##_##isa_name(registry& r); \
    }
#include <qforge_kernel_tus.inc>
#undef QFORGE_KERNEL_TU

namespace qforge {

namespace detail {

void register_generated_kernels(registry& r) {
#define QFORGE_KERNEL_TU(family, isa_name) kernels::generated::register_##family##_##isa_name(r);
#include <qforge_kernel_tus.inc>
#undef QFORGE_KERNEL_TU
}

namespace {

bool is_table_type(dtype t) { return t == dtype::nf4 || t == dtype::fp4; }

config with_act(config c, compute a) {
    c.act = a;
    return c;
}

}  // namespace

void check_pointer(const void* p, const char* what) {
    if (p == nullptr) throw std::invalid_argument(std::string("qforge kernel: ") + what + " is a null pointer");
}

void check_weights(const config& kernel_cfg, const weights_view& w) {
    validate(w.cfg);
    // Messages are built only on failure: this runs on every kernel call.
    auto fail = [&](const std::string& why) {
        throw std::invalid_argument("qforge kernel " + canonical_name(kernel_cfg) + ": " + why);
    };
    if (with_act(w.cfg, kernel_cfg.act) != kernel_cfg)
        fail("the weights are " + canonical_name(w.cfg) + " (type, bits, group, double quant and storage must match)");
    if (w.rows <= 0 || w.cols <= 0)
        fail("weights shape [" + std::to_string(w.rows) + ", " + std::to_string(w.cols) + "] is empty");
    if (kernel_cfg.group == per_channel) {  // LLM.int8 takes any K; the integer layouts whole 32-element runs
        if (kernel_cfg.storage != layout::bnb8 && w.cols % 32 != 0)
            fail("K = " + std::to_string(w.cols) + " is not a multiple of 32 (per-channel kernels)");
    } else if (kernel_cfg.group <= 0 || w.cols % kernel_cfg.group != 0)
        fail("K = " + std::to_string(w.cols) + " is not a multiple of the group size " +
             std::to_string(kernel_cfg.group) + " (the kernels need whole groups per row)");
    if (w.codes == nullptr || w.scales == nullptr) fail("the weights have no codes or no scales");
    if (w.row_stride != 0) {  // rows with their scales (kernels/weights.hpp)
        const row_parts r = row_bytes(kernel_cfg, w.cols);
        if (!rows_can_carry_scales(kernel_cfg))
            fail("row_stride " + std::to_string(w.row_stride) + ": the rows of this layout are dense (row_stride 0)");
        if (w.row_stride < r.codes + r.scales + r.zeros)
            fail("row_stride " + std::to_string(w.row_stride) + " is less than a row's codes, scales and zero points (" +
                 std::to_string(r.codes + r.scales + r.zeros) + " bytes)");
    }
    if (kernel_cfg.type == dtype::int_asym && w.zeros == nullptr) fail("asymmetric integers need zero points (zeros)");
    if (is_table_type(kernel_cfg.type)) {
        if (w.code_table == nullptr) fail("the weights have no code table (quant_map)");
        // 16 values, checked on every call: the i8 path converts them to int8 levels
        if (!std::all_of(w.code_table, w.code_table + 16, [](float v) { return std::isfinite(v); }))
            fail("the code table (quant_map) holds a non-finite value");
    }
    if (kernel_cfg.double_quant && (w.nested_map == nullptr || w.nested_absmax == nullptr))
        fail("double quantization needs nested_map and nested_absmax");
    if (kernel_cfg.storage == layout::bnb8) {  // as ref::int8_matmul
        if (!(w.outlier_threshold >= 0.0f) || std::isinf(w.outlier_threshold))
            fail("LLM.int8 outlier threshold " + std::to_string(w.outlier_threshold) + " is not finite and >= 0");
        if (w.cols > llm_int8_max_cols)
            fail("K = " + std::to_string(w.cols) + " could overflow the LLM.int8 int32 sums (max " +
                 std::to_string(llm_int8_max_cols) + ")");
    }
}

void refuse_arrangement(const config& cfg, isa i) {
    throw std::invalid_argument("qforge kernel " + canonical_name(cfg) + " (" + std::string(to_string(i)) +
                                "): the weights are arranged in vnni panels, for its avx512_vnni kernels (QFORGE_ISA "
                                "must not change after kernel::arrange)");
}

void check_rows(const weights_view& w, std::int64_t n0, std::int64_t n1) {
    if (n0 < 0 || n0 > n1 || n1 > w.rows)
        throw std::invalid_argument("qforge kernel: row range [" + std::to_string(n0) + ", " + std::to_string(n1) +
                                    ") is not within [0, " + std::to_string(w.rows) + "]");
}

void check_gemm_rows(std::int64_t m) {
    if (m < 1) throw std::invalid_argument("qforge gemm: M = " + std::to_string(m) + " rows of X, need at least 1");
}

}  // namespace detail

std::string kernel::full_name() const {
    return std::string(name) + "_" + std::string(to_string(kind)) + "_" + std::string(to_string(arch));
}

namespace {
[[noreturn]] void wrong_op(const kernel& k, op called) {
    throw std::logic_error("qforge: " + k.full_name() + " called as " + std::string(to_string(called)));
}

void check_dequantize(const kernel& k, const weights_view& w, std::int64_t n0, std::int64_t n1, const void* out) {
    if (k.kind != op::dequantize) wrong_op(k, op::dequantize);
    detail::check_weights(k.cfg, w);
    detail::check_rows(w, n0, n1);
    detail::check_pointer(out, "output");
}
}  // namespace

void kernel::dequantize(const weights_view& w, std::int64_t n0, std::int64_t n1, float* out) const {
    check_dequantize(*this, w, n0, n1, out);
    dequantize_ptr(w, n0, n1, out, element::f32);
}
void kernel::dequantize(const weights_view& w, std::int64_t n0, std::int64_t n1, bf16* out) const {
    check_dequantize(*this, w, n0, n1, out);
    dequantize_ptr(w, n0, n1, out, element::bf16);
}
void kernel::dequantize(const weights_view& w, std::int64_t n0, std::int64_t n1, f16* out) const {
    check_dequantize(*this, w, n0, n1, out);
    dequantize_ptr(w, n0, n1, out, element::f16);
}

void kernel::gemv(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0,
                  std::int64_t n1) const {
    if (kind != op::gemv) wrong_op(*this, op::gemv);
    detail::check_weights(cfg, w);
    detail::check_rows(w, n0, n1);
    detail::check_pointer(x, "x");
    detail::check_pointer(y, "y");
    gemv_ptr(w, x, bias, y, n0, n1);
}

void kernel::gemm(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
                  std::int64_t n1) const {
    if (kind != op::gemm) wrong_op(*this, op::gemm);
    detail::check_weights(cfg, w);
    detail::check_rows(w, n0, n1);
    detail::check_gemm_rows(m);
    detail::check_pointer(x, "X");
    detail::check_pointer(y, "Y");
    gemm_ptr(w, x, m, bias, y, n0, n1);
}

const registry& registry::global() {
    static const registry r = [] {
        registry built;
        detail::register_generated_kernels(built);
        return built;
    }();
    return r;
}

void registry::add(const kernel& k) {
    const std::string canonical = canonical_name(k.cfg);
    if (k.name != canonical)
        throw std::logic_error("qforge registry: kernel named '" + std::string(k.name) + "' has the config of '" +
                               canonical + "' (gen/vocabulary.py and config/name.hpp disagree)");
    const bool has_fn = (k.kind == op::dequantize && k.dequantize_ptr) || (k.kind == op::gemv && k.gemv_ptr) ||
                        (k.kind == op::gemm && k.gemm_ptr);
    if (!has_fn) throw std::logic_error("qforge registry: " + k.full_name() + " has no function for its op");
    if (find(k.cfg, k.kind, k.arch) != nullptr)
        throw std::logic_error("qforge registry: duplicate registration of " + k.full_name());
    kernels_.push_back(k);
}

const kernel* registry::find(const config& cfg, op o, isa i) const noexcept {
    for (const kernel& k : kernels_)
        if (k.cfg == cfg && k.kind == o && k.arch == i) return &k;
    return nullptr;
}

const kernel& registry::find_layout(const config& layout, op o) const {
    const isa limit = active_isa();
    const kernel* best = nullptr;
    for (const kernel& k : kernels_)
        if (k.cfg == layout && k.kind == o && k.arch <= limit && (best == nullptr || k.arch > best->arch)) best = &k;
    if (best != nullptr) return *best;

    std::string wanted;
    try {
        wanted = canonical_name(layout);
    } catch (const std::invalid_argument& e) {
        throw unsupported_config(std::string("qforge registry: invalid config: ") + e.what(), {});
    }
    std::vector<std::string> near = nearest(layout);
    std::string msg = "qforge registry: no " + std::string(to_string(o)) + " kernel for " + wanted + " on " +
                      std::string(to_string(limit)) + " or below; nearest supported:";
    for (const std::string& n : near) msg += " " + n;
    if (near.empty()) msg += " (none registered)";
    throw unsupported_config(msg, std::move(near));
}

const kernel& registry::find(const config& cfg, op o, std::int64_t cols) const {
    if (check(cfg) != config_rule::ok) {  // e.g. a group GPTQ does not allow, or FP8 with int8 activations
        std::vector<std::string> near = nearest(cfg);
        std::string msg;
        try {
            validate(cfg);
        } catch (const std::invalid_argument& e) {
            msg = std::string("qforge registry: invalid config: ") + e.what() + "; nearest supported:";
        }
        for (const std::string& n : near) msg += " " + n;
        throw unsupported_config(msg, std::move(near));
    }
    return find_layout(kernel_config_for(cfg, cfg.act, cols), o);  // cfg itself when it has kernels
}

config kernel_config_for(const config& stored, compute wanted, std::int64_t cols) {
    config want = stored;
    want.act = wanted;
    if (const config_rule r = check(want); r != config_rule::ok) {
        if (describe(r).field != "act") validate(want);  // not a config: the error names its field
        // e.g. LLM.int8 with f32 activations: say which kernels exist
        std::vector<std::string> near = registry::global().nearest(want);
        std::string msg = "qforge: no kernel runs " + canonical_name(stored) + " weights with " +
                          std::string(to_string(wanted)) + " activations (" +
                          std::string(describe(check(want)).message) + "); nearest supported:";
        for (const std::string& n : near) msg += " " + n;
        throw unsupported_config(msg, std::move(near));
    }
    const config k = kernels::kernel_config_of(stored, wanted, cols);
    (void)registry::global().find_layout(k, op::gemv);  // throws unsupported_config naming the nearest
    return k;
}

std::vector<std::string> registry::names() const {
    std::set<std::string> unique;
    for (const kernel& k : kernels_) unique.insert(std::string(k.name));
    return {unique.begin(), unique.end()};
}

std::vector<std::string> registry::nearest(const config& cfg, std::size_t count) const {
    // Distance: differing fields, the data type and the storage counting most (they change
    // the checkpoint), the compute path least (a different speed, the same weights).
    auto distance = [&](const config& c) {
        int d = 0;
        if (c.type != cfg.type) d += 8;
        if (c.bits != cfg.bits) d += 8;
        if (c.storage != cfg.storage) d += 4;
        if (c.group != cfg.group) d += 2;
        if (c.double_quant != cfg.double_quant) d += 2;
        if (c.act != cfg.act) d += 1;
        return d;
    };
    std::vector<std::pair<int, std::string>> ranked;
    for (const std::string& n : names()) ranked.emplace_back(distance(parse_name(n)), n);
    std::sort(ranked.begin(), ranked.end());
    std::vector<std::string> out;
    for (std::size_t i = 0; i < ranked.size() && i < count; ++i) out.push_back(ranked[i].second);
    return out;
}

bool arrange(const kernel& k, packed_weights& p) {
    if (k.arrange_ptr == nullptr || p.arrangement != weight_arrangement::rows) return false;
    detail::check_weights(k.cfg, p.view());
    weight_buffer panels(static_cast<std::size_t>(vnni_panels_bytes(p.cfg, p.rows, p.cols)), 0);
    k.arrange_ptr(p.view(), panels.data());
    p.codes = std::move(panels);
    p.scales = weight_buffer();
    p.zeros = weight_buffer();
    p.row_stride = p.row_codes_offset = 0;
    p.arrangement = weight_arrangement::vnni_panels;
    return true;
}

bool arrange_for_kernels(packed_weights& p) { return arrange(registry::global().find_layout(p.cfg, op::gemv), p); }

weights_view rows_of(const weights_view& w, weight_buffer& storage) {
    if (w.arrangement == weight_arrangement::rows) return w;
    const kernel* k = registry::global().find(w.cfg, op::gemv, isa::avx512_vnni);
    if (k == nullptr || k->unarrange_ptr == nullptr)
        throw std::logic_error("qforge: weights of " + canonical_name(w.cfg) + " in vnni panels, but no kernel of this build un-arranges them");
    storage = weight_buffer(static_cast<std::size_t>(w.rows * row_storage_of(w.cfg, w.cols).stride));
    k->unarrange_ptr(w, 0, w.rows, storage.data());
    return rows_at(w, w.rows, storage.data());
}

}  // namespace qforge
