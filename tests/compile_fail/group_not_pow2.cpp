// expect: group_not_power_of_two_32_to_4096
#include <qforge/config/aliases.hpp>
using namespace qforge;
#ifdef QFORGE_CONTROL
constexpr config cfg = configs::gptq_int4_g128;
#else
constexpr config cfg = config{dtype::int_sym, 4, 100, false, layout::gptq_v1, compute::f32};
#endif
static_assert(policy<cfg>::bits > 0);
