// expect: layout_awq_needs_bits_4
#include <qforge/config/aliases.hpp>
using namespace qforge;
#ifdef QFORGE_CONTROL
constexpr config cfg = configs::awq_int4_g128;
#else
constexpr config cfg = config{dtype::int_asym, 3, 128, false, layout::awq_gemm, compute::f32};
#endif
static_assert(policy<cfg>::bits > 0);
