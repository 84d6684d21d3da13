// Canonical names: one string per config, used as registry key, generated file name, benchmark and
// test name. gen/vocabulary.py builds the same strings.
//   <type>_<group>[_dq]_<storage>_<act>
//   type:  nf4 fp4 e4m3 e5m2 e2m1 int8row | int<bits>sym int<bits>asym
//   group: b<N> (flat bnb blocks), g<N> (groups along K), t<N> (N x N tiles), pc (per channel),
//          pt (per tensor)
// e.g. nf4_b64_dq_bnb_bf16, int4sym_g128_gptq_f32, e4m3_t128_fp8blk_f32, int8row_pc_bnb8_i8.
#pragma once

#include <qforge/config/config.hpp>

#include <string>
#include <string_view>

namespace qforge {

std::string canonical_name(const config& c);

// The exact inverse of canonical_name: parse_name(canonical_name(c)) == c for every valid c.
// Throws std::invalid_argument naming the part of the name that is wrong, or the config rule
// the parsed config breaks.
config parse_name(std::string_view name);

}  // namespace qforge
