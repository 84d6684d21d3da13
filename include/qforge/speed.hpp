// Timing helpers shared by `qforge sweep` and the benchmarks: the machine's read bandwidth and
// the speed of one GEMV kernel with its weights coming from DRAM ("cold").
#pragma once

#include <qforge/kernels/weights.hpp>
#include <qforge/registry.hpp>

#include <cstddef>
#include <cstdint>

namespace qforge {

inline constexpr std::size_t mib = std::size_t{1} << 20;

// One pass over a 64-byte aligned buffer (bytes a multiple of 256) with the widest loads this CPU
// has, summing its 64-bit words: the read-bandwidth yardstick of sweep and the benchmarks.
std::uint64_t read_pass(const std::uint8_t* p, std::size_t bytes);

// Reads a 64-byte aligned buffer of `bytes` (split over the threads of `pool_threads`) with the
// widest loads this CPU has; returns the bytes/s of the fastest of `passes` passes: what the
// machine attains, since a shared machine's noise only ever slows a pass down (the median of a
// noisy moment made GEMV fractions above 1).
double read_bandwidth(int threads, std::size_t bytes = 512 * mib, int passes = 5);

struct gemv_speed {
    double seconds = 0.0;           // median time of one y = W x over all rows
    double bytes_per_second = 0.0;  // weight bytes (codes + scales + nested absmax) / seconds
};

// Runs k.gemv over copies of `w` totalling more than 256 MiB, one copy per call, so every call
// reads its weights from DRAM; rows are split over `threads`. Runs for about `min_seconds`.
gemv_speed measure_gemv_cold(const kernel& k, const packed_weights& w, int threads, double min_seconds = 0.5);

}  // namespace qforge
