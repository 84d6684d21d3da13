#include <qforge/synthetic.hpp>

#include <cmath>
#include <numbers>
#include <random>

namespace qforge {

namespace {
// Uniform in (0, 1) from the top 53 bits: never 0, so log() is finite.
double uniform_open(std::mt19937_64& rng) { return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53; }

double standard_normal(std::mt19937_64& rng) {
    const double u = uniform_open(rng), v = uniform_open(rng);
    return std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * std::numbers::pi * v);
}
}  // namespace

std::vector<float> synthetic_weights(const synthetic_spec& spec) {
    std::mt19937_64 rng(spec.seed);
    std::vector<float> w(static_cast<std::size_t>(spec.rows * spec.cols));
    for (float& x : w) {
        double v = standard_normal(rng) * spec.sigma;
        if (uniform_open(rng) < spec.outlier_rate) {
            const double z = standard_normal(rng);
            v = spec.sigma * std::copysign(std::max(6.0, std::fabs(z) * spec.outlier_scale), z);
        }
        x = static_cast<float>(v);
    }
    return w;
}

}  // namespace qforge
