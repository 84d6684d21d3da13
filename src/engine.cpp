#include <qforge/engine.hpp>
#include <qforge/format/float.hpp>
#include <qforge/kernels/kernels.hpp>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

namespace qforge {

namespace {

std::int64_t dense(std::int64_t ld, std::int64_t n) { return ld == 0 ? n : ld; }

void check_ld(std::int64_t ld, std::int64_t n, const char* what) {
    if (ld != 0 && ld < n)
        throw std::invalid_argument(std::string("qforge: leading dimension of ") + what + " " + std::to_string(ld) +
                                    " is less than its row length " + std::to_string(n));
}

float load(const void* p, element t, std::int64_t i) {
    switch (t) {
        case element::f32: return static_cast<const float*>(p)[i];
        case element::bf16: return to_float(static_cast<const bf16*>(p)[i]);
        case element::f16: return to_float(static_cast<const f16*>(p)[i]);
    }
    return 0.0f;
}

void store(void* p, element t, std::int64_t i, float v) {
    switch (t) {
        case element::f32: static_cast<float*>(p)[i] = v; return;
        case element::bf16: static_cast<bf16*>(p)[i] = to_bf16(v); return;
        case element::f16: static_cast<f16*>(p)[i] = to_f16(v); return;
    }
}

// m rows of k activations as dense f32: x itself when it already is, else widened into buf.
const float* dense_f32(const activations& x, std::int64_t m, std::int64_t k, std::vector<float>& buf) {
    detail::check_pointer(x.data, "x");
    check_ld(x.ld, k, "x");
    if (x.type == element::f32 && (m == 1 || dense(x.ld, k) == k)) return static_cast<const float*>(x.data);
    buf.resize(static_cast<std::size_t>(m * k));
    const std::int64_t ld = dense(x.ld, k);
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t j = 0; j < k; ++j) buf[static_cast<std::size_t>(i * k + j)] = load(x.data, x.type, i * ld + j);
    return buf.data();
}

// Where the kernel writes Y [m, N] (dense f32, absolute rows): y itself when it is that and
// beta == 0, else scratch that finish() combines into y.
float* kernel_output(const outputs& y, std::int64_t m, std::int64_t n, std::vector<float>& buf) {
    detail::check_pointer(y.data, "y");
    check_ld(y.ld, n, "y");
    if (y.type == element::f32 && y.beta == 0.0f && (m == 1 || dense(y.ld, n) == n)) return static_cast<float*>(y.data);
    buf.resize(static_cast<std::size_t>(m * n));
    return buf.data();
}

void finish(const outputs& y, std::int64_t m, std::int64_t n, std::int64_t n0, std::int64_t n1, const float* out) {
    if (out == y.data) return;
    const std::int64_t ld = dense(y.ld, n);
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t c = n0; c < n1; ++c) {
            float v = out[i * n + c];
            if (y.beta != 0.0f) v += y.beta * load(y.data, y.type, i * ld + c);
            store(y.data, y.type, i * ld + c, v);
        }
}

// Per-thread conversion buffers (engine.hpp: scratch memory).
struct edge_scratch {
    std::vector<float> x, y;
    prepared_x shared;  // gemv over several matrices on raw x
};
edge_scratch& scratch() {
    thread_local edge_scratch s;
    return s;
}

}  // namespace

matrix::matrix(packed_weights p) : matrix(std::make_shared<const packed_weights>([&] {
                                          arrange_for_kernels(p);  // the kernels' own arrangement, if any
                                          return std::move(p);
                                      }())) {}

matrix::matrix(std::shared_ptr<const packed_weights> p) : matrix(p->view(), p) { packed_ = p.get(); }

matrix::matrix(const weights_view& w, std::shared_ptr<const void> owner) : owner_(std::move(owner)), view_(w) {
    const registry& r = registry::global();
    gemv_ = &r.find_layout(w.cfg, op::gemv);
    gemm_ = &r.find_layout(w.cfg, op::gemm);
    dequantize_ = &r.find_layout(w.cfg, op::dequantize);
    detail::check_weights(w.cfg, w);
}

void matrix::dequantize(std::int64_t n0, std::int64_t n1, void* out, element type) const {
    switch (type) {
        case element::f32: return dequantize_->dequantize(view_, n0, n1, static_cast<float*>(out));
        case element::bf16: return dequantize_->dequantize(view_, n0, n1, static_cast<bf16*>(out));
        case element::f16: return dequantize_->dequantize(view_, n0, n1, static_cast<f16*>(out));
    }
}

void matrix::gemv(const activations& x, const float* bias, const outputs& y, std::int64_t n0, std::int64_t n1) const {
    edge_scratch& s = scratch();
    const float* xf = dense_f32(x, 1, cols(), s.x);
    float* out = kernel_output(y, 1, rows(), s.y);
    gemv_->gemv(view_, xf, bias, out, n0, n1);
    finish(y, 1, rows(), n0, n1, out);
}

void matrix::gemv(const prepared_x& x, const float* bias, const outputs& y, std::int64_t n0, std::int64_t n1) const {
    if (!x.fits(*this))
        throw std::invalid_argument("qforge: x was prepared for another kernel, K or column order than " +
                                    gemv_->full_name() + " [" + std::to_string(rows()) + ", " +
                                    std::to_string(cols()) + "]");
    float* out = kernel_output(y, 1, rows(), scratch().y);
    if (x.prepare_ == nullptr) {
        gemv_->gemv(view_, x.f32(), bias, out, n0, n1);
    } else {
        detail::check_rows(view_, n0, n1);  // the weights were checked when the matrix was built
        gemv_->gemv_prepared_ptr(view_, x.prepared_.data(), bias, out, n0, n1);
    }
    finish(y, 1, rows(), n0, n1, out);
}

void matrix::gemm(std::int64_t m, const activations& x, const float* bias, const outputs& y, std::int64_t n0,
                  std::int64_t n1) const {
    detail::check_gemm_rows(m);
    edge_scratch& s = scratch();
    const float* xf = dense_f32(x, m, cols(), s.x);
    float* out = kernel_output(y, m, rows(), s.y);
    gemm_->gemm(view_, xf, m, bias, out, n0, n1);
    finish(y, m, rows(), n0, n1, out);
}

void prepared_x::prepare(const matrix& w, const activations& x) {
    cols_ = w.cols();
    x_.resize(static_cast<std::size_t>(cols_));
    const float* xf = dense_f32(x, 1, cols_, x_);
    if (xf != x_.data()) std::copy(xf, xf + cols_, x_.begin());
    prepare_ = w.gemv_kernel().prepare_ptr;
    perm_ = w.view().perm;
    if (prepare_ == nullptr) return;
    prepared_.resize(prepare_(w.view(), x_.data(), nullptr));
    prepare_(w.view(), x_.data(), prepared_.data());
}

bool prepared_x::fits(const matrix& w) const {
    return w.cols() == cols_ && w.gemv_kernel().prepare_ptr == prepare_ && (prepare_ == nullptr || w.view().perm == perm_);
}

std::int64_t stacked_rows(std::span<const gemv_target> targets) {
    std::int64_t n = 0;
    for (const gemv_target& t : targets) {
        detail::check_pointer(t.w, "gemv_target matrix");
        n += t.w->rows();
    }
    return n;
}

namespace {
// f(target, rows [a, b) of it) for every target that the stacked rows [n0, n1) reach.
template <class F>
void for_each_part(std::span<const gemv_target> targets, std::int64_t n0, std::int64_t n1, F&& f) {
    const std::int64_t total = stacked_rows(targets);
    if (n0 < 0 || n0 > n1 || n1 > total)
        throw std::invalid_argument("qforge gemv: stacked row range [" + std::to_string(n0) + ", " +
                                    std::to_string(n1) + ") is not within [0, " + std::to_string(total) + "]");
    std::int64_t first = 0;  // the first stacked row of the target
    for (const gemv_target& t : targets) {
        const std::int64_t a = std::max(n0, first) - first, b = std::min(n1, first + t.w->rows()) - first;
        if (a < b) f(t, a, b);
        first += t.w->rows();
    }
}
}  // namespace

void gemv(std::span<const gemv_target> targets, const prepared_x& x, std::int64_t n0, std::int64_t n1) {
    for_each_part(targets, n0, n1, [&](const gemv_target& t, std::int64_t a, std::int64_t b) {
        t.w->gemv(x, t.bias, t.y, a, b);
    });
}

void gemv(std::span<const gemv_target> targets, const activations& x, std::int64_t n0, std::int64_t n1) {
    prepared_x& px = scratch().shared;
    bool prepared = false;
    for_each_part(targets, n0, n1, [&](const gemv_target& t, std::int64_t a, std::int64_t b) {
        if (!prepared || !px.fits(*t.w)) px.prepare(*t.w, x);
        prepared = true;
        t.w->gemv(px, t.bias, t.y, a, b);
    });
}

}  // namespace qforge
