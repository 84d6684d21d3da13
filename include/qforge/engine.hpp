// The calls an inference engine makes: one weight matrix ready to run (packed once, kernels found
// once), activations prepared once and shared, several matrices that read the same x in one
// call, bf16 / f16 activations in and out, y = W x + beta y, leading dimensions.
//
//   qforge::matrix q(qforge::pack_weights(cfg, wq)), k(...), v(...);   // at load time
//   qforge::prepared_x x(q, {x_data});                                  // once per token
//   qforge::gemv_target t[] = {{&q, nullptr, {yq}}, {&k, nullptr, {yk}}, {&v, nullptr, {yv}}};
//   qforge::gemv(t, x, n0, n1);   // each thread: its range of the stacked rows [0, stacked_rows(t))
//
// Threads: a matrix and a prepared_x are immutable once built; any number of threads may call
// every function here at the same time on them, each writing its own outputs (in practice: its own
// row range). Nothing here starts a thread: the engine splits the rows over its own pool.
// Scratch memory: the kernels and the conversions below use grow-only buffers, one set per thread
// (thread_local), sized by the largest call the thread made (about 5 K M bytes for the activations,
// a few hundred KiB of GEMM panels, and M N floats when y is not f32, has a leading dimension or
// beta != 0); they are freed when the thread ends. A prepared_x owns its memory.
//
// Conversions and accumulation happen at the edge of the kernels, not in their inner loops: bf16
// and f16 activations are widened to f32 first (exactly), outputs other than f32 are rounded to
// nearest even from the kernel's f32 result, and beta y is added after it.
#pragma once

#include <qforge/kernels/weights.hpp>
#include <qforge/registry.hpp>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace qforge {

class prepared_x;

// M rows of K activations: row i starts at element i * ld of data (ld 0: K, dense).
struct activations {
    const void* data = nullptr;
    element type = element::f32;
    std::int64_t ld = 0;
};

// M rows of N outputs, row i at element i * ld of data (ld 0: N): y = W x (+ bias) + beta y.
// With beta == 0, y is only written (it may hold anything, NaN included).
struct outputs {
    void* data = nullptr;
    element type = element::f32;
    std::int64_t ld = 0;
    float beta = 0.0f;
};

// One weight matrix in a kernel layout and its kernels (registry::global(), the active ISA).
class matrix {
public:
    // Takes the packed weights and arranges them for its kernels when they have an arrangement of
    // their own (arrange_for_kernels: the avx512_vnni i8 panels); throws unsupported_config when
    // this build has no kernel for p.cfg.
    explicit matrix(packed_weights p);
    // Weights owned elsewhere (e.g. a mapped packed file: packed_file.hpp), kept alive by owner,
    // used as they are (rows, or arranged for the kernels this CPU runs).
    matrix(const weights_view& w, std::shared_ptr<const void> owner);

    const weights_view& view() const { return view_; }
    const config& cfg() const { return view_.cfg; }
    std::int64_t rows() const { return view_.rows; }
    std::int64_t cols() const { return view_.cols; }
    const kernel& gemv_kernel() const { return *gemv_; }
    const kernel& gemm_kernel() const { return *gemm_; }
    const kernel& dequantize_kernel() const { return *dequantize_; }
    // The packed weights when built from them (null for a view).
    const packed_weights* packed() const { return packed_; }

    // out rows [n0, n1) of W (row n at element n K of out) as f32, bf16 or f16.
    void dequantize(std::int64_t n0, std::int64_t n1, void* out, element type) const;
    // y = W x (+ bias) + beta y for output rows [n0, n1) (one row of x: its ld is unused).
    void gemv(const activations& x, const float* bias, const outputs& y, std::int64_t n0, std::int64_t n1) const;
    void gemv(const prepared_x& x, const float* bias, const outputs& y, std::int64_t n0, std::int64_t n1) const;
    // Y = X W^T (+ bias) + beta Y, X [m, K] and Y [m, N], output columns [n0, n1).
    void gemm(std::int64_t m, const activations& x, const float* bias, const outputs& y, std::int64_t n0,
              std::int64_t n1) const;

private:
    explicit matrix(std::shared_ptr<const packed_weights> p);
    std::shared_ptr<const void> owner_;
    const packed_weights* packed_ = nullptr;
    weights_view view_;
    const kernel* gemv_ = nullptr;
    const kernel* gemm_ = nullptr;
    const kernel* dequantize_ = nullptr;
};

// One row of activations prepared once for the GEMV of every matrix whose kernel, K and column
// order (act-order perm) are those of `w`: widened to f32, and for kernels that transform x (the
// i8 path: quantized per block, kernel::prepare_ptr) transformed. Results are bit-identical to
// gemv() on the raw x. For other matrices (another kernel or K), gemv() throws invalid_argument.
class prepared_x {
public:
    prepared_x() = default;
    prepared_x(const matrix& w, const activations& x) { prepare(w, x); }
    // Prepares x again (for another token), reusing this object's memory.
    void prepare(const matrix& w, const activations& x);

    bool fits(const matrix& w) const;
    std::int64_t cols() const { return cols_; }
    const float* f32() const { return x_.data(); }

private:
    friend class matrix;
    std::vector<float> x_;
    weight_buffer prepared_;  // the kernel's preparation (empty when it has none)
    prepare_fn prepare_ = nullptr;
    const std::int32_t* perm_ = nullptr;
    std::int64_t cols_ = 0;
};

// One matrix of a call over several matrices that share x.
struct gemv_target {
    const matrix* w = nullptr;
    const float* bias = nullptr;
    outputs y;
};

// The rows of the targets stacked in order (Q's rows, then K's, then V's): the row space that
// gemv(targets, ...) splits into ranges.
std::int64_t stacked_rows(std::span<const gemv_target> targets);

// y_t = W_t x (+ bias_t) + beta_t y_t for the stacked rows [n0, n1) of the targets: one call for
// Q/K/V or gate/up. x is prepared once per distinct preparation (once when the matrices share a
// kernel and K, as Q/K/V do), or taken prepared.
void gemv(std::span<const gemv_target> targets, const activations& x, std::int64_t n0, std::int64_t n1);
void gemv(std::span<const gemv_target> targets, const prepared_x& x, std::int64_t n0, std::int64_t n1);

}  // namespace qforge
