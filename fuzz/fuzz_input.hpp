// What every fuzz target shares: the input as a file (the readers take paths and mmap them), and
// the rule that a hostile input may only end in the errors the API documents.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

namespace qforge::fuzz {

// A directory of this process for the inputs, in /dev/shm when there is one (no disk writes).
inline const std::filesystem::path& work_dir() {
    static const std::filesystem::path dir = [] {
        const std::filesystem::path base =
            std::filesystem::is_directory("/dev/shm") ? std::filesystem::path("/dev/shm") : std::filesystem::temp_directory_path();
        std::filesystem::path d = base / ("qforge-fuzz-" + std::to_string(::getpid()));
        std::filesystem::create_directories(d);
        return d;
    }();
    return dir;
}

// Writes the input to `name` in work_dir() and returns its path.
inline std::filesystem::path input_file(const std::uint8_t* data, std::size_t size, const std::string& name) {
    const std::filesystem::path p = work_dir() / name;
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    return p;
}

// A property the target checks: a violation is a finding (libFuzzer reports the abort).
inline void require(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "qforge fuzz: property violated: %s\n", what);
        std::abort();
    }
}

}  // namespace qforge::fuzz
