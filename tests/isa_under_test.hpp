// The ISA a test run is for (QFORGE_ISA, as Meson sets it per run of a per-ISA test).
#pragma once

#include <qforge/isa.hpp>

#include <catch2/catch.hpp>

#include <cstdlib>

// False (with a warning) when the CPU cannot run the ISA named by QFORGE_ISA.
inline bool isa_under_test_runs() {
    const char* forced = std::getenv("QFORGE_ISA");
    if (forced == nullptr || *forced == '\0') return true;
    const auto wanted = qforge::isa_from_string(forced);
    REQUIRE(wanted.has_value());
    if (!qforge::cpu_supports(*wanted)) {
        WARN("this CPU has no " << forced << ": skipped");
        return false;
    }
    return true;
}
