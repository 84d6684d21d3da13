// GPTQ calibration on the CPU (arXiv 2210.17323; formats.md §3): choose integer codes for one
// linear layer that minimise its output error on calibration inputs, not just the weight error.
//
// Two steps, so a calibration set can be streamed and the Hessian stored between runs:
//   gptq::hessian h(K);  h.add_batch(X, tokens);  ...            // H = (2/n) sum x x^T
//   gptq::result r = gptq::quantize_layer(W, N, K, h, opts);     // codes, scales, zeros, g_idx
// W is [N, K] row-major f32 (nn.Linear.weight), X is [tokens, K] row-major f32.
#pragma once

#include <qforge/config/config.hpp>
#include <qforge/format/float.hpp>
#include <qforge/reference/reference.hpp>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qforge::gptq {

// The running average H = (2/n) sum_x x x^T over n calibration rows, [K, K] symmetric.
// Held in f64 (GPTQ's PyTorch code uses f32): a stored Hessian is the sum of many batches
// rescaled by n/(n+t) each time, and f32 would let that drift by ~1e-7 per batch; f64 also keeps
// H exact enough for the f64 fallback factorization with tiny damping. The products x x^T
// themselves are computed in f32 (fast GEMMs) over slices of at most 1024 rows, then added in f64.
class hessian {
public:
    explicit hessian(std::int64_t cols);
    // A stored Hessian: `<module>.hessian` [K, K] f32 row-major with `<module>.nsamples`, kept as
    // (H + H^T) / 2 (a product computed on a GPU need not be exactly symmetric).
    // Throws std::invalid_argument on a size mismatch, NaN/Inf or nsamples < 0.
    hessian(std::int64_t cols, std::span<const float> h, std::int64_t nsamples);

    // Adds the rows of X [tokens, K] (H *= n/(n+t); H += (2/(n+t)) X^T X; n += t).
    // Throws std::invalid_argument on a size mismatch or NaN/Inf in X (naming the flat index).
    // The result does not depend on `threads` (bitwise).
    void add_batch(std::span<const float> x, std::int64_t tokens, int threads = 1);
    // bf16 / f16 activations are widened to f32 exactly first.
    void add_batch(std::span<const bf16> x, std::int64_t tokens, int threads = 1);
    void add_batch(std::span<const f16> x, std::int64_t tokens, int threads = 1);
    // Combines two Hessians of the same K as if all their rows had been added to this one.
    void merge(const hessian& other);

    std::int64_t cols() const { return cols_; }
    std::int64_t nsamples() const { return nsamples_; }
    std::span<const double> matrix() const { return h_; }  // [K, K] row-major, symmetric
    std::vector<float> to_f32() const;                     // the stored form

private:
    std::int64_t cols_ = 0;
    std::int64_t nsamples_ = 0;
    std::vector<double> h_;
};

// The algorithm's knobs: transformers' GPTQConfig fields plus run-time choices.
struct options {
    int bits = 4;                   // 2, 3, 4 or 8
    std::int32_t group_size = 128;  // > 0 and dividing K, or -1 (one group per row)
    bool sym = true;                // zero point 2^(bits-1); false: one learned zero per group
    bool desc_act = false;          // act-order: quantize columns by decreasing diag(H)
    // GPTQModel's group-aware reordering (GAR, "act_group_aware"; ignored with desc_act): the
    // columns of each group by decreasing diag(H), the groups by decreasing max diag(H). Groups
    // stay the contiguous k / gs (g_idx needs no act-order support from a kernel); their
    // parameters are found from the current weights when the group's first position comes.
    // group_size -1 is one group of all columns: the order is then act-order's, g_idx all 0.
    bool act_group_aware = false;
    bool static_groups = false;     // group parameters from the unpermuted weights, up front
    double damp_percent = 0.1;      // 0 < damp < 1: damp * mean(diag(H)) added to the diagonal
    std::int32_t block_size = 128;  // columns per lazy-update block
    int max_damp_retries = 3;       // on a failed factorization: damping x10, this many times
    int threads = 0;                // worker threads; 0 = std::thread::hardware_concurrency()
    std::string layer_name = "weight";  // named in errors and warnings
    // Optional, called serially (possibly from a worker thread) as work completes: stage
    // "factorize" reports 0 as the Cholesky factorization starts, then counts the column panels
    // of the triangular inverse (again from 0 if a retry happens); "quantize" counts output rows.
    std::function<void(std::string_view stage, std::int64_t done, std::int64_t total)> progress;
};

// bits, group_size and sym from a validated GPTQ config (layout gptq_v1 / gptq_v2, type int_sym
// or int_asym); the algorithm fields keep their defaults. Throws std::invalid_argument otherwise.
options options_from(const config& cfg);

// One quantized layer, codes in the ORIGINAL column order whatever the act-order permutation.
struct result {
    std::int64_t rows = 0, cols = 0;  // N, K
    int bits = 4;
    std::int32_t group_size = 128;    // resolved: -1 became K
    bool sym = true;
    std::vector<std::uint8_t> codes;  // [N, K], each < 2^bits
    std::vector<float> scales;        // [G, N], f32; the checkpoint stores fp16(scale)
    std::vector<std::uint8_t> zeros;  // [G, N], the integer zero point z
    std::vector<std::int32_t> g_idx;  // [K], group of each column
    std::vector<std::int32_t> perm;   // desc_act / act_group_aware order (position -> column), else empty
    double damp = 0.0;                // absolute damping finally added to diag(H)
    int damp_retries = 0;             // how many times the damping was multiplied by 10
    bool f64_factorization = false;   // f32 failed and H + damping was factorized in f64
    std::int64_t dead_columns = 0;    // columns with diag(H) == 0, quantized as zero weights
    double loss = 0.0;                // GPTQ's error estimate: sum (w - q)^2 / U[i,i]^2 / 2
    std::vector<std::string> warnings;  // one line per damping retry

    std::int64_t groups() const { return cols / group_size; }
};

// Runs GPTQ on W [rows, cols] with the Hessian of the layer's inputs, as formats.md §3 describes,
// with two deliberate refinements over AutoGPTQ / GPTQModel:
// - the error propagated from each weight is w - fp16(scale) * (q - z), the value a checkpoint
//   dequantizes to, so the rounding of the scale to fp16 is compensated too (they use the f32
//   scale there; the codes themselves are computed from the f32 scale in both);
// - group parameters found inside a block (group_size < block_size) see the in-block updates of
//   the block's earlier columns (they read the full W, which only has the lazy updates).
// Dead columns (diag(H) == 0) get zero weights. Cost: K^3/3 flops for the Cholesky factorization
// (single-threaded, Eigen LLT), K^3/3 for the triangular inverse and N K^2 for the column loop
// (both on `threads`); memory: H (8 K^2 bytes, the caller's) plus 8 K^2 for the f32 factor and U
// (12 K^2 when f32 fails and f64 is used), plus 512 K bytes per thread (its chunk of 128 rows).
// Errors name the layer:
// std::invalid_argument for bad shapes / options / NaN or Inf in W (flat index), or a group size
// that does not divide K; std::runtime_error when H + damping is not positive definite after
// `max_damp_retries` retries, or a scale overflows fp16.
// Deterministic: the result does not depend on `threads` (bitwise).
result quantize_layer(std::span<const float> w, std::int64_t rows, std::int64_t cols, const hessian& h,
                      const options& opt);
// bf16 / f16 weights are widened to f32 exactly first.
result quantize_layer(std::span<const bf16> w, std::int64_t rows, std::int64_t cols, const hessian& h,
                      const options& opt);
result quantize_layer(std::span<const f16> w, std::int64_t rows, std::int64_t cols, const hessian& h,
                      const options& opt);

// The weights the algorithm produced, exactly as a checkpoint dequantizes them:
// W[n, k] = fp16(scales[g_idx[k], n]) * (codes[n, k] - zeros[g_idx[k], n]), [N, K] f32.
std::vector<float> dequantize(const result& r);

// The checkpoint form (formats.md §3) for `checkpoint_format` "gptq" (v2 = false: zeros stored as
// (z - 1) mod 2^b) or "gptq_v2": qweight packed along K, qzeros along N, fp16 scales, g_idx.
// ref::dequantize of it equals dequantize(r) exactly. Throws std::invalid_argument unless N and K
// are multiples of 32.
ref::gptq_tensor to_gptq_tensor(const result& r, bool v2);

// GPTQ's round-to-nearest quantizer (formats.md §3 find_params) for one row of one group, given
// the row's minimum and maximum over the group's columns (the range is extended to include 0 here).
struct group_params {
    float scale = 1.0f;  // f32; the codes are computed with it
    int zero = 0;
};
group_params find_params(float rowmin, float rowmax, int bits, bool sym);
// clamp(RNE(x / scale) + zero, 0, 2^bits - 1)
int quantize_value(float x, const group_params& p, int bits);

}  // namespace qforge::gptq
