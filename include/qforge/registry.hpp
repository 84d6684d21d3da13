// The run-time route to the kernels: descriptors of every generated kernel, looked up by config.
//
//   const qforge::kernel& k = qforge::registry::global().find(cfg, qforge::op::gemv);
//   const qforge::packed_weights w = qforge::pack_weights(k.cfg, quantized);  // k.cfg: its layout
//   k.gemv(w.view(), x, bias, y, 0, w.rows);
//
// Each descriptor is filled from its config by traits in the generated TU that instantiates the
// kernel (name = canonical_name(cfg), config, op, ISA, function pointer). The global registry is
// built once, on first use (thread-safe), and is immutable afterwards: lookups take no lock.
#pragma once

#include <qforge/config/config.hpp>
#include <qforge/format/float.hpp>
#include <qforge/isa.hpp>
#include <qforge/kernels/weights.hpp>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace qforge {

struct kernel {
    std::string_view name;  // canonical_name(cfg), static storage
    config cfg{};
    op kind = op::gemv;
    isa arch = isa::sse4_2;
    dequantize_fn dequantize_ptr = nullptr;  // set when kind == op::dequantize
    gemv_fn gemv_ptr = nullptr;              // set when kind == op::gemv
    gemm_fn gemm_ptr = nullptr;              // set when kind == op::gemm
    // op::gemv kernels that transform x (the i8 path, except LLM.int8 and 8-bit integers): the
    // GEMV in two parts (kernels/weights.hpp); null otherwise (x is used as it is)
    prepare_fn prepare_ptr = nullptr;
    gemv_prepared_fn gemv_prepared_ptr = nullptr;
    // Kernels with an arrangement of their own (avx512_vnni i8 kernels of has_vnni_panels configs,
    // every op): rows -> arranged and back; null otherwise. The arranged weights run only on the
    // kernels of this config and ISA (the others refuse them).
    arrange_fn arrange_ptr = nullptr;
    unarrange_fn unarrange_ptr = nullptr;

    // <name>_<op>_<isa>, e.g. nf4_b64_bnb_f32_gemv_avx512
    std::string full_name() const;

    // Checked calls (see kernels/weights.hpp for the contracts): the weights' config and shape,
    // the pointers and the row range are validated, then the kernel runs. They throw
    // std::invalid_argument, or std::logic_error when called for another op than `kind`.
    void dequantize(const weights_view& w, std::int64_t n0, std::int64_t n1, float* out) const;
    void dequantize(const weights_view& w, std::int64_t n0, std::int64_t n1, bf16* out) const;  // RNE of f32
    void dequantize(const weights_view& w, std::int64_t n0, std::int64_t n1, f16* out) const;   // RNE of f32
    void gemv(const weights_view& w, const float* x, const float* bias, float* y, std::int64_t n0,
              std::int64_t n1) const;
    void gemm(const weights_view& w, const float* x, std::int64_t m, const float* bias, float* y, std::int64_t n0,
              std::int64_t n1) const;
};

// The config of the kernels that run weights stored as `stored` (a checkpoint's layout:
// to_config(quantization_config), or checkpoint::quantized_weight::cfg) with K = cols on the
// compute path `wanted`: kernels::kernel_config_of (GPTQ and AWQ repacked into qforge's layout,
// the exact config when built, else a regrouped one), checked at run time. Throws
// unsupported_config (naming the nearest kernels) when this build has no GEMV kernel for it, e.g.
// FP8 with i8 activations, or LLM.int8 with anything but i8.
config kernel_config_for(const config& stored, compute wanted, std::int64_t cols = 0);

// No kernel for a config: the message lists the nearest supported names.
struct unsupported_config : std::invalid_argument {
    std::vector<std::string> nearest;
    unsupported_config(const std::string& what, std::vector<std::string> near)
        : std::invalid_argument(what), nearest(std::move(near)) {}
};

class registry {
public:
    // Every kernel of the generated list that this build selected (-Dkernels=...), all ISAs.
    static const registry& global();

    // Throws std::logic_error on a duplicate (config, op, ISA) or a name that is not
    // canonical_name(cfg) (the generator and the C++ naming disagree).
    void add(const kernel& k);

    // The kernel that runs weights of config cfg, for every config that validates (checkpoint
    // layouts such as GPTQ's included), on the best ISA not above active_isa(): the kernel of
    // exactly cfg when this build has one, else the one kernel_config_for(cfg, cfg.act, cols) names
    // (K = cols picks the regrouping of per-channel configs; 0: any K the kernel takes). Its k.cfg
    // is the layout it computes on: pack the weights for it (pack_weights(k.cfg, ...)). Throws
    // unsupported_config when cfg does not validate or this build (-Dkernels) left its kernel out.
    const kernel& find(const config& cfg, op o = op::gemv, std::int64_t cols = 0) const;
    // For weights already packed (weights_view::cfg): the kernel of exactly that layout on the best
    // ISA, or unsupported_config naming the nearest registered ones.
    const kernel& find_layout(const config& layout, op o = op::gemv) const;
    // Exact ISA, or nullptr.
    const kernel* find(const config& cfg, op o, isa i) const noexcept;

    std::span<const kernel> all() const { return kernels_; }
    // Distinct canonical names of the registered configs, sorted.
    std::vector<std::string> names() const;
    // The registered config names closest to cfg (fewest differing fields first).
    std::vector<std::string> nearest(const config& cfg, std::size_t count = 3) const;

private:
    std::vector<kernel> kernels_;
};

// The kernels' own arrangement of the weights (weight_arrangement, kernel::arrange_ptr).
// arrange(k, p) arranges weights p (in rows, packed for k.cfg) for kernel k when it has an
// arrangement, and says whether it did; arrange_for_kernels does it for the kernels
// find_layout(p.cfg) picks on this CPU (qforge::matrix calls it). rows_of returns arranged weights
// as rows with their scales (written to `storage`; a view in rows is returned as it is): what a
// file stores, whatever the CPU (packed_file::save calls it).
bool arrange(const kernel& k, packed_weights& p);
bool arrange_for_kernels(packed_weights& p);
weights_view rows_of(const weights_view& w, weight_buffer& storage);

namespace detail {
// Defined by the generated code: adds every selected kernel of every ISA.
void register_generated_kernels(registry& r);
}  // namespace detail

}  // namespace qforge
