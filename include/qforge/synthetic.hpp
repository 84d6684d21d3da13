// Deterministic LLM-like weights: the embedded default of `qforge sweep`, also used by tests and
// benchmarks. Deterministic: our own Box-Muller over std::mt19937_64 (whose sequence the standard
// fixes) rather than std::normal_distribution (whose algorithm it does not).
#pragma once

#include <cstdint>
#include <vector>

namespace qforge {

struct synthetic_spec {
    std::int64_t rows = 4096;
    std::int64_t cols = 4096;
    std::uint64_t seed = 0x9f0f'2023;
    float sigma = 0.02f;              // typical std of an LLM linear layer
    double outlier_rate = 1.0 / 2048;  // fraction of elements that are outliers
    float outlier_scale = 12.0f;       // outliers are this many sigma times a N(0,1) draw, at least 6 sigma
};

// Row-major [rows, cols] f32: N(0, sigma^2) with a few large outliers.
std::vector<float> synthetic_weights(const synthetic_spec& spec = {});

}  // namespace qforge
