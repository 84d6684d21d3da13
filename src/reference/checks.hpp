// Error helpers shared by the reference's layout files (private to src/reference/).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace qforge::ref::detail {

[[noreturn]] inline void fail(const std::string& what) { throw std::invalid_argument(what); }
[[noreturn]] inline void fail(std::string_view where, const std::string& what) {
    throw std::invalid_argument(std::string(where) + ": " + what);
}

inline std::string shape_text(std::int64_t rows, std::int64_t cols) {
    return "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
}

// "<where> <field>: <actual> elements, expected <expected>"
inline void expect_size(std::string_view where, std::string_view field, std::size_t actual, std::size_t expected) {
    if (actual != expected)
        fail(std::string(where) + " " + std::string(field) + ": " + std::to_string(actual) + " elements, expected " +
             std::to_string(expected));
}

constexpr std::size_t ceil_div(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

}  // namespace qforge::ref::detail
