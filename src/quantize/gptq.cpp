// GPTQ calibration (formats.md §3), on Eigen: the Hessian's products and the lazy block updates
// are GEMMs, the factorization is Eigen's LLT plus blocked triangular solves.
#include <qforge/format/float.hpp>
#include <qforge/format/packing.hpp>
#include <qforge/quantize/gptq.hpp>
#include <qforge/reference/layouts.hpp>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace qforge::gptq {

namespace {

using matf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>;  // column-major
using matf_rm = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using matd_rm = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Work is cut into pieces whose sizes depend only on the shapes, never on the thread count, and
// every piece writes its own memory: that is what makes results independent of `threads`.
constexpr std::int64_t hessian_row_slice = 1024;  // rows of X per f32 product (bounds f32 error)
constexpr std::int64_t hessian_panel = 256;       // columns of H per task
constexpr std::int64_t inverse_panel = 128;       // columns of L^-1 per task
constexpr std::int64_t row_chunk = 128;           // output rows per task of the column loop

int resolve_threads(int threads) {
    if (threads > 0) return threads;
    const unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? static_cast<int>(hw) : 1;
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Runs body(i) for i = 0..count-1 on up to `threads` threads (the caller is one of them), items
// handed out in increasing order. The first exception stops the handing out and is rethrown.
template <class Body>
void parallel_for(int threads, std::int64_t count, Body&& body) {
    std::atomic<std::int64_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto worker = [&] {
        while (!failed.load(std::memory_order_relaxed)) {
            const std::int64_t i = next.fetch_add(1);
            if (i >= count) return;
            try {
                body(i);
            } catch (...) {
                const std::lock_guard lock(error_mutex);
                if (!error) error = std::current_exception();
                failed = true;
            }
        }
    };
    const auto extra = std::min<std::int64_t>(threads, count) - 1;
    std::vector<std::thread> pool;
    for (std::int64_t t = 0; t < extra; ++t) pool.emplace_back(worker);
    worker();
    for (auto& t : pool) t.join();
    if (error) std::rethrow_exception(error);
}

// Serializes calls of the user's progress callback.
class progress_reporter {
public:
    progress_reporter(const options& opt, std::string_view stage, std::int64_t total)
        : callback_(opt.progress), stage_(stage), total_(total) {}
    void advance(std::int64_t amount) {
        if (!callback_) return;
        const std::lock_guard lock(mutex_);
        done_ += amount;
        callback_(stage_, done_, total_);
    }

private:
    const std::function<void(std::string_view, std::int64_t, std::int64_t)>& callback_;
    std::string_view stage_;
    std::int64_t total_;
    std::int64_t done_ = 0;
    std::mutex mutex_;
};

template <class T>
std::vector<float> widen(std::span<const T> x) {
    std::vector<float> out(x.size());
    std::transform(x.begin(), x.end(), out.begin(), [](T v) { return to_float(v); });
    return out;
}

std::string layer_prefix(const options& opt) { return "layer '" + opt.layer_name + "': "; }

std::string format_double(double v) {
    std::ostringstream s;
    s << v;
    return s.str();
}

void check_inputs(std::span<const float> w, std::int64_t rows, std::int64_t cols, const hessian& h, const options& opt) {
    const std::string where = layer_prefix(opt);
    if (rows <= 0 || cols <= 0 || static_cast<std::uint64_t>(rows) * static_cast<std::uint64_t>(cols) != w.size())
        throw std::invalid_argument(where + "shape [" + std::to_string(rows) + ", " + std::to_string(cols) +
                                    "] does not match " + std::to_string(w.size()) + " weights");
    if (opt.bits != 2 && opt.bits != 3 && opt.bits != 4 && opt.bits != 8)
        throw std::invalid_argument(where + "bits must be 2, 3, 4 or 8, got " + std::to_string(opt.bits));
    if (opt.group_size != -1 && opt.group_size <= 0)
        throw std::invalid_argument(where + "group_size must be -1 or positive, got " + std::to_string(opt.group_size));
    if (opt.group_size > 0 && cols % opt.group_size != 0)
        throw std::invalid_argument(where + "group_size " + std::to_string(opt.group_size) +
                                    " does not divide in_features K = " + std::to_string(cols));
    if (!(opt.damp_percent > 0.0 && opt.damp_percent < 1.0))
        throw std::invalid_argument(where + "damp_percent must be in (0, 1), got " + format_double(opt.damp_percent));
    if (opt.block_size <= 0)
        throw std::invalid_argument(where + "block_size must be positive, got " + std::to_string(opt.block_size));
    if (opt.max_damp_retries < 0)
        throw std::invalid_argument(where + "max_damp_retries must be >= 0, got " + std::to_string(opt.max_damp_retries));
    if (h.cols() != cols)
        throw std::invalid_argument(where + "the Hessian is [" + std::to_string(h.cols()) + ", " +
                                    std::to_string(h.cols()) + "] but in_features K = " + std::to_string(cols));
    if (h.nsamples() <= 0)
        throw std::invalid_argument(where + "the Hessian holds no calibration rows (nsamples = " +
                                    std::to_string(h.nsamples()) + ")");
    ref::check_finite(w, opt.layer_name);
}

// The upper Cholesky factor U of (Hp + damp I)^-1, Hp = H[order][:, order] with dead diagonal
// entries set to 1, as f32 row-major [K, K] (only the upper triangle is written), computed in
// `Scalar` arithmetic. With J the reversal, J Hp J = L L^T gives Hp^-1 = (J L^-1 J)^T (J L^-1 J),
// and J L^-1 J is upper triangular with a positive diagonal: it is U. This takes one factorization
// and one triangular inverse (K^3/3 flops each, the inverse cut into independent column panels),
// where GPTQ's cholesky -> cholesky_inverse -> cholesky takes two factorizations and an inverse.
// Returns false when the factorization fails or U is not finite in f32.
template <class Scalar>
bool upper_factor_of_inverse(const hessian& h, std::span<const std::int32_t> order, const std::vector<bool>& dead,
                             double damp, int threads, const options& opt, std::vector<float>& u) {
    using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    const std::int64_t k = h.cols();
    const double* hm = h.matrix().data();
    // reversed[a] = the original column at reversed position a
    const std::vector<std::int32_t> reversed(order.rbegin(), order.rend());

    matrix l(k, k);  // only the lower triangle is filled and used
    for (std::int64_t b = 0; b < k; ++b) {
        const double* hrow = hm + static_cast<std::int64_t>(reversed[b]) * k;  // H symmetric: row = column
        for (std::int64_t a = b + 1; a < k; ++a) l(a, b) = static_cast<Scalar>(hrow[reversed[a]]);
        l(b, b) = static_cast<Scalar>((dead[reversed[b]] ? 1.0 : hrow[reversed[b]]) + damp);
    }
    progress_reporter progress(opt, "factorize", ceil_div(k, inverse_panel));
    progress.advance(0);  // the factorization itself reports no progress: say it started
    Eigen::LLT<Eigen::Ref<matrix>, Eigen::Lower> llt(l);  // in place: l holds L
    if (llt.info() != Eigen::Success) return false;

    u.assign(static_cast<std::size_t>(k * k), 0.0f);
    std::atomic<bool> finite{true};
    // Panel [j0, j0 + w) of L^-1 only involves L[j0:, j0:]: solve L[j0:, j0:] X = I[j0:, j0:j0+w].
    parallel_for(threads, ceil_div(k, inverse_panel), [&](std::int64_t panel) {
        const std::int64_t j0 = panel * inverse_panel, w = std::min(inverse_panel, k - j0), m = k - j0;
        matrix x = matrix::Zero(m, w);
        x.topRows(w).setIdentity();
        l.bottomRightCorner(m, m).template triangularView<Eigen::Lower>().solveInPlace(x);
        // U[a][b] = L^-1[k-1-a][k-1-b]
        for (std::int64_t c = 0; c < w; ++c)
            for (std::int64_t r = c; r < m; ++r) {
                const auto v = static_cast<float>(x(r, c));
                if (!std::isfinite(v)) finite = false;
                u[static_cast<std::size_t>((k - 1 - j0 - r) * k + (k - 1 - j0 - c))] = v;
            }
        progress.advance(1);
    });
    return finite;
}

// One row's parameters for the group being quantized.
struct row_params {
    group_params p;
    float stored_scale = 0.0f;  // fp16(scale) widened: what a checkpoint dequantizes with
};

// Everything the row chunks share, read-only.
struct layer_job {
    std::span<const float> w;
    std::int64_t n = 0, k = 0, gs = 0, block = 0;
    int bits = 4;
    bool sym = true, static_groups = false;
    std::span<const std::int32_t> order;  // position -> original column
    const std::vector<bool>* dead = nullptr;
    const float* u = nullptr;  // [K, K] row-major, upper
    const options* opt = nullptr;
};

row_params make_row_params(const layer_job& job, float rowmin, float rowmax, std::int64_t row, std::int64_t group) {
    row_params rp;
    rp.p = find_params(rowmin, rowmax, job.bits, job.sym);
    rp.stored_scale = to_float(to_f16(rp.p.scale));
    if (!std::isfinite(rp.stored_scale))
        throw std::runtime_error(layer_prefix(*job.opt) + "the scale " + format_double(rp.p.scale) + " of row " +
                                 std::to_string(row) + ", group " + std::to_string(group) + " overflows fp16");
    return rp;
}

// Runs the column loop of GPTQ on output rows [r0, r0 + nr): every row is independent given U.
// Writes the rows' codes, scales and zeros in `res`; returns their part of the loss.
double quantize_rows(const layer_job& job, std::int64_t r0, std::int64_t nr, result& res) {
    const std::int64_t k = job.k, gs = job.gs, n = job.n;
    const Eigen::Map<const matf_rm> u(job.u, k, k);
    const auto& dead = *job.dead;

    // The rows in quantization order, dead columns zeroed; lazily updated block after block.
    matf_rm wc(nr, k);
    for (std::int64_t r = 0; r < nr; ++r) {
        const float* src = job.w.data() + (r0 + r) * k;
        for (std::int64_t i = 0; i < k; ++i) wc(r, i) = dead[job.order[i]] ? 0.0f : src[job.order[i]];
    }

    // Static groups: parameters of the original column groups, from the unpermuted weights.
    std::vector<row_params> static_params;
    if (job.static_groups) {
        static_params.resize(static_cast<std::size_t>((k / gs) * nr));
        for (std::int64_t g = 0; g < k / gs; ++g)
            for (std::int64_t r = 0; r < nr; ++r) {
                const float* src = job.w.data() + (r0 + r) * k;
                float lo = std::numeric_limits<float>::infinity(), hi = -lo;
                for (std::int64_t c = g * gs; c < (g + 1) * gs; ++c) {
                    const float v = dead[c] ? 0.0f : src[c];
                    lo = std::min(lo, v);
                    hi = std::max(hi, v);
                }
                const row_params rp = make_row_params(job, lo, hi, r0 + r, g);
                static_params[g * nr + r] = rp;
                res.scales[g * n + r0 + r] = rp.p.scale;
                res.zeros[g * n + r0 + r] = static_cast<std::uint8_t>(rp.p.zero);
            }
    }

    std::vector<row_params> current(static_cast<std::size_t>(nr));
    const row_params* params = current.data();
    matf w1(nr, job.block), err1(nr, job.block);
    Eigen::VectorXf lo(nr), hi(nr);
    double loss = 0.0;

    for (std::int64_t i1 = 0; i1 < k; i1 += job.block) {
        const std::int64_t count = std::min(job.block, k - i1), i2 = i1 + count;
        w1.leftCols(count) = wc.middleCols(i1, count);
        for (std::int64_t i = 0; i < count; ++i) {
            const std::int64_t col = i1 + i;
            if (job.static_groups) {
                params = static_params.data() + (job.order[col] / gs) * nr;
            } else if (col % gs == 0) {
                // The group's current weights: updated in-block columns from w1, the columns past
                // this block (when the group reaches beyond it) as of the last lazy update.
                const std::int64_t in_block = std::min(gs, count - i);
                lo = w1.middleCols(i, in_block).rowwise().minCoeff();
                hi = w1.middleCols(i, in_block).rowwise().maxCoeff();
                if (col + gs > i2) {
                    lo = lo.cwiseMin(wc.middleCols(i2, col + gs - i2).rowwise().minCoeff());
                    hi = hi.cwiseMax(wc.middleCols(i2, col + gs - i2).rowwise().maxCoeff());
                }
                // The run of gs positions from here is one group (desc_act: a run of the
                // permutation; act_group_aware: one contiguous original group).
                const std::int64_t g = res.g_idx[job.order[col]];
                for (std::int64_t r = 0; r < nr; ++r) {
                    current[r] = make_row_params(job, lo[r], hi[r], r0 + r, g);
                    res.scales[g * n + r0 + r] = current[r].p.scale;
                    res.zeros[g * n + r0 + r] = static_cast<std::uint8_t>(current[r].p.zero);
                }
            }
            const float d = u(col, col);
            const std::int64_t original = job.order[col];
            for (std::int64_t r = 0; r < nr; ++r) {
                const float x = w1(r, i);
                const int q = quantize_value(x, params[r].p, job.bits);
                res.codes[(r0 + r) * k + original] = static_cast<std::uint8_t>(q);
                const float dq = static_cast<float>(q - params[r].p.zero) * params[r].stored_scale;
                const float e = (x - dq) / d;
                err1(r, i) = e;
                loss += 0.5 * static_cast<double>(e) * static_cast<double>(e);
            }
            // Propagate within the block now: W1[:, i+1:] -= err * U[col, col+1:i2]
            if (i + 1 < count)
                w1.middleCols(i + 1, count - i - 1).noalias() -=
                    err1.col(i) * u.row(col).segment(col + 1, count - i - 1);
        }
        // ... and to the rest lazily, one GEMM per block: W[:, i2:] -= Err1 U[i1:i2, i2:]
        if (i2 < k) wc.rightCols(k - i2).noalias() -= err1.leftCols(count) * u.block(i1, i2, count, k - i2);
    }
    return loss;
}

// GAR's order (options::act_group_aware): within each group of gs contiguous columns, decreasing
// diag(H); the groups by decreasing maximum of diag(H). Both sorts are stable (ties keep the
// column order), as GPTQModel's global sort is.
std::vector<std::int32_t> group_aware_order(const std::vector<double>& diag, std::int64_t gs) {
    const auto k = static_cast<std::int64_t>(diag.size());
    const std::int64_t groups = k / gs;
    std::vector<std::int32_t> local(static_cast<std::size_t>(k));
    std::iota(local.begin(), local.end(), 0);
    const auto by_diag = [&](std::int32_t a, std::int32_t b) { return diag[a] > diag[b]; };
    for (std::int64_t g = 0; g < groups; ++g) std::stable_sort(local.begin() + g * gs, local.begin() + (g + 1) * gs, by_diag);
    std::vector<std::int32_t> group_order(static_cast<std::size_t>(groups));
    std::iota(group_order.begin(), group_order.end(), 0);
    // local[g * gs] is the group's largest diag(H).
    std::stable_sort(group_order.begin(), group_order.end(),
                     [&](std::int32_t a, std::int32_t b) { return diag[local[a * gs]] > diag[local[b * gs]]; });
    std::vector<std::int32_t> order;
    order.reserve(static_cast<std::size_t>(k));
    for (const std::int32_t g : group_order) order.insert(order.end(), local.begin() + g * gs, local.begin() + (g + 1) * gs);
    return order;
}

// Copies the lower triangle of a square matrix onto its upper triangle, tile by tile (a plain
// column walk over a K = 11008 matrix would miss the cache on every element).
void mirror_lower(Eigen::Map<matd_rm>& m) {
    constexpr std::int64_t tile = 64;
    const std::int64_t k = m.rows();
    for (std::int64_t i0 = 0; i0 < k; i0 += tile)
        for (std::int64_t j0 = i0; j0 < k; j0 += tile)
            for (std::int64_t i = i0; i < std::min(i0 + tile, k); ++i)
                for (std::int64_t j = std::max(j0, i + 1); j < std::min(j0 + tile, k); ++j) m(i, j) = m(j, i);
}

}  // namespace

// ---- hessian ---------------------------------------------------------------------------------

hessian::hessian(std::int64_t cols) : cols_(cols) {
    if (cols <= 0) throw std::invalid_argument("hessian: K must be positive, got " + std::to_string(cols));
    h_.assign(static_cast<std::size_t>(cols * cols), 0.0);
}

hessian::hessian(std::int64_t cols, std::span<const float> h, std::int64_t nsamples) : hessian(cols) {
    if (h.size() != h_.size())
        throw std::invalid_argument("hessian: " + std::to_string(h.size()) + " values are not [" +
                                    std::to_string(cols) + ", " + std::to_string(cols) + "]");
    if (nsamples < 0) throw std::invalid_argument("hessian: nsamples must be >= 0, got " + std::to_string(nsamples));
    ref::check_finite(h, "hessian");
    // Products computed on a GPU need not be exactly symmetric: keep the average of both halves.
    for (std::int64_t i = 0; i < cols; ++i)
        for (std::int64_t j = 0; j < cols; ++j)
            h_[i * cols + j] = (static_cast<double>(h[i * cols + j]) + static_cast<double>(h[j * cols + i])) * 0.5;
    nsamples_ = nsamples;
}

void hessian::add_batch(std::span<const float> x, std::int64_t tokens, int threads) {
    const std::int64_t k = cols_;
    if (tokens < 0 || static_cast<std::uint64_t>(tokens) * static_cast<std::uint64_t>(k) != x.size())
        throw std::invalid_argument("hessian: " + std::to_string(x.size()) + " calibration values are not [" +
                                    std::to_string(tokens) + ", " + std::to_string(k) + "]");
    if (tokens == 0) return;
    ref::check_finite(x, "calibration inputs");
    const std::int64_t total = nsamples_ + tokens;
    const double keep = static_cast<double>(nsamples_) / static_cast<double>(total);
    const double alpha = 2.0 / static_cast<double>(total);
    const Eigen::Map<const matf_rm> xs(x.data(), tokens, k);
    Eigen::Map<matd_rm> hm(h_.data(), k, k);

    // Panel [p0, p0 + w) of the lower triangle: H[p0:, p0:p0+w] from X[:, p0:]^T X[:, p0:p0+w].
    parallel_for(resolve_threads(threads), ceil_div(k, hessian_panel), [&](std::int64_t panel) {
        const std::int64_t p0 = panel * hessian_panel, w = std::min(hessian_panel, k - p0), m = k - p0;
        auto target = hm.block(p0, p0, m, w);
        target *= keep;
        matf_rm product(m, w);  // row-major like H: the f64 accumulation walks both in order
        for (std::int64_t s0 = 0; s0 < tokens; s0 += hessian_row_slice) {
            const std::int64_t t = std::min(hessian_row_slice, tokens - s0);
            product.noalias() = xs.block(s0, p0, t, m).transpose() * xs.block(s0, p0, t, w);
            target += alpha * product.cast<double>();
        }
    });
    mirror_lower(hm);
    nsamples_ = total;
}

void hessian::add_batch(std::span<const bf16> x, std::int64_t tokens, int threads) {
    add_batch(widen(x), tokens, threads);
}
void hessian::add_batch(std::span<const f16> x, std::int64_t tokens, int threads) {
    add_batch(widen(x), tokens, threads);
}

void hessian::merge(const hessian& other) {
    if (other.cols_ != cols_)
        throw std::invalid_argument("hessian: cannot merge K = " + std::to_string(other.cols_) + " into K = " +
                                    std::to_string(cols_));
    const std::int64_t total = nsamples_ + other.nsamples_;
    if (total == 0) return;
    const double a = static_cast<double>(nsamples_) / static_cast<double>(total);
    const double b = static_cast<double>(other.nsamples_) / static_cast<double>(total);
    for (std::size_t i = 0; i < h_.size(); ++i) h_[i] = a * h_[i] + b * other.h_[i];
    nsamples_ = total;
}

std::vector<float> hessian::to_f32() const {
    std::vector<float> out(h_.size());
    for (std::size_t i = 0; i < h_.size(); ++i) out[i] = static_cast<float>(h_[i]);
    return out;
}

// ---- the quantizer of one group ----------------------------------------------------------

group_params find_params(float rowmin, float rowmax, int bits, bool sym) {
    const float maxq = static_cast<float>((1 << bits) - 1);
    float xmin = std::min(rowmin, 0.0f), xmax = std::max(rowmax, 0.0f);
    if (sym) {
        xmax = std::max(std::fabs(xmin), xmax);
        if (xmin < 0.0f) xmin = -xmax;
    }
    float scale = (xmax - xmin) / maxq;
    // An empty range, or one so narrow that its scale underflows to 0, quantizes with [-1, +1].
    if ((xmin == 0.0f && xmax == 0.0f) || scale == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
        scale = (xmax - xmin) / maxq;
    }
    group_params p;
    p.scale = scale;
    // -xmin / scale lies in [0, maxq] up to rounding; the clamp only guards the last ulp.
    p.zero = sym ? 1 << (bits - 1) : static_cast<int>(std::clamp(std::nearbyint(-xmin / scale), 0.0f, maxq));
    return p;
}

int quantize_value(float x, const group_params& p, int bits) {
    const float maxq = static_cast<float>((1 << bits) - 1);
    return static_cast<int>(std::clamp(std::nearbyint(x / p.scale) + static_cast<float>(p.zero), 0.0f, maxq));
}

// ---- the algorithm -----------------------------------------------------------------------

options options_from(const config& cfg) {
    validate(cfg);
    if (!is_gptq(cfg.storage) || (cfg.type != dtype::int_sym && cfg.type != dtype::int_asym))
        throw std::invalid_argument("GPTQ calibration needs a gptq / gptq_v2 config with integer codes");
    options opt;
    opt.bits = cfg.bits;
    opt.group_size = cfg.group == per_channel ? -1 : cfg.group;
    opt.sym = cfg.type == dtype::int_sym;
    return opt;
}

result quantize_layer(std::span<const float> w, std::int64_t rows, std::int64_t cols, const hessian& h,
                      const options& opt) {
    check_inputs(w, rows, cols, h, opt);
    const int threads = resolve_threads(opt.threads);
    const std::int64_t k = cols, n = rows;
    const std::int64_t gs = opt.group_size == -1 ? k : opt.group_size;

    result res;
    res.rows = n;
    res.cols = k;
    res.bits = opt.bits;
    res.group_size = static_cast<std::int32_t>(gs);
    res.sym = opt.sym;

    // Dead columns: no calibration input ever reached them.
    const auto hm = h.matrix();
    std::vector<bool> dead(static_cast<std::size_t>(k));
    std::vector<double> diag(static_cast<std::size_t>(k));
    for (std::int64_t i = 0; i < k; ++i) {
        dead[i] = hm[i * k + i] == 0.0;
        diag[i] = dead[i] ? 1.0 : hm[i * k + i];
        res.dead_columns += dead[i] ? 1 : 0;
    }

    std::vector<std::int32_t> order(static_cast<std::size_t>(k));
    std::iota(order.begin(), order.end(), 0);
    if (opt.desc_act) {
        std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return diag[a] > diag[b]; });
        res.perm = order;
    } else if (opt.act_group_aware) {
        order = group_aware_order(diag, gs);
        res.perm = order;
    }
    res.g_idx.resize(static_cast<std::size_t>(k));
    for (std::int64_t i = 0; i < k; ++i) {
        // Without static groups, act-order groups are runs of quantization positions.
        const std::int64_t column = opt.desc_act && !opt.static_groups ? order[i] : i;
        res.g_idx[column] = static_cast<std::int32_t>(i / gs);
    }

    // The factorization runs in f32 as GPTQ's does (half the time of f64); when f32 fails, f64 at
    // the same damping; when both fail, the damping is multiplied by 10.
    const double mean_diag = std::accumulate(diag.begin(), diag.end(), 0.0) / static_cast<double>(k);
    res.damp = opt.damp_percent * mean_diag;
    std::vector<float> u;
    const auto factorize = [&] {
        res.f64_factorization = !upper_factor_of_inverse<float>(h, order, dead, res.damp, threads, opt, u);
        return !res.f64_factorization || upper_factor_of_inverse<double>(h, order, dead, res.damp, threads, opt, u);
    };
    while (!factorize()) {
        if (res.damp_retries == opt.max_damp_retries)
            throw std::runtime_error(layer_prefix(opt) + "H + damping is not positive definite even with damping " +
                                     format_double(res.damp) + " (damp_percent " + format_double(opt.damp_percent) +
                                     " x 10^" + std::to_string(res.damp_retries) +
                                     " of mean(diag(H))); the calibration inputs may be degenerate");
        res.warnings.push_back(layer_prefix(opt) + "Cholesky factorization failed with damping " +
                               format_double(res.damp) + "; retrying with 10x the damping");
        res.damp *= 10.0;
        ++res.damp_retries;
    }

    res.codes.resize(static_cast<std::size_t>(n * k));
    res.scales.resize(static_cast<std::size_t>((k / gs) * n));
    res.zeros.resize(res.scales.size());
    const layer_job job{w,  n,           k,     gs,   opt.block_size, opt.bits, opt.sym, opt.static_groups,
                        order, &dead, u.data(), &opt};
    const std::int64_t chunks = ceil_div(n, row_chunk);
    std::vector<double> chunk_loss(static_cast<std::size_t>(chunks));
    progress_reporter progress(opt, "quantize", n);
    parallel_for(threads, chunks, [&](std::int64_t c) {
        const std::int64_t r0 = c * row_chunk, nr = std::min(row_chunk, n - r0);
        chunk_loss[c] = quantize_rows(job, r0, nr, res);
        progress.advance(nr);
    });
    res.loss = std::accumulate(chunk_loss.begin(), chunk_loss.end(), 0.0);
    return res;
}

result quantize_layer(std::span<const bf16> w, std::int64_t rows, std::int64_t cols, const hessian& h,
                      const options& opt) {
    return quantize_layer(widen(w), rows, cols, h, opt);
}
result quantize_layer(std::span<const f16> w, std::int64_t rows, std::int64_t cols, const hessian& h,
                      const options& opt) {
    return quantize_layer(widen(w), rows, cols, h, opt);
}

std::vector<float> dequantize(const result& r) {
    std::vector<float> out(r.codes.size());
    for (std::int64_t row = 0; row < r.rows; ++row)
        for (std::int64_t c = 0; c < r.cols; ++c) {
            const std::size_t g = static_cast<std::size_t>(r.g_idx[c] * r.rows + row);
            const int diff = r.codes[row * r.cols + c] - r.zeros[g];
            out[row * r.cols + c] = to_float(to_f16(r.scales[g])) * static_cast<float>(diff);
        }
    return out;
}

ref::gptq_tensor to_gptq_tensor(const result& r, bool v2) {
    if (r.rows % 32 != 0 || r.cols % 32 != 0)
        throw std::invalid_argument("GPTQ checkpoint: shape [" + std::to_string(r.rows) + ", " +
                                    std::to_string(r.cols) + "] needs N and K to be multiples of 32");
    const auto n = static_cast<std::size_t>(r.rows), k = static_cast<std::size_t>(r.cols);
    const auto groups = static_cast<std::size_t>(r.groups()), b = static_cast<std::size_t>(r.bits);
    ref::gptq_tensor t;
    t.rows = r.rows;
    t.cols = r.cols;
    t.bits = r.bits;
    t.group = r.group_size;
    t.v2 = v2;
    t.sym = r.sym;
    t.qweight.assign(k * b / 32 * n, 0);
    for (std::size_t row = 0; row < n; ++row) pack_gptq_line(r.bits, std::span(r.codes).subspan(row * k, k), t.qweight, row, n);
    std::vector<std::uint8_t> fields(n);
    t.qzeros.assign(groups * (n * b / 32), 0);
    for (std::size_t g = 0; g < groups; ++g) {
        for (std::size_t row = 0; row < n; ++row)
            fields[row] = static_cast<std::uint8_t>(gptq_zero_field(r.bits, r.zeros[g * n + row], v2));
        pack_gptq_line(r.bits, fields, t.qzeros, g * (n * b / 32), 1);
    }
    t.scales.resize(r.scales.size());
    std::transform(r.scales.begin(), r.scales.end(), t.scales.begin(), [](float s) { return to_f16(s); });
    t.g_idx = r.g_idx;
    return t;
}

}  // namespace qforge::gptq
