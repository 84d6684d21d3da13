// expect: double_quant_needs_bnb4_absmax
#include <qforge/config/aliases.hpp>
using namespace qforge;
#ifdef QFORGE_CONTROL
constexpr config cfg = configs::gptq_int4_g128;
#else
constexpr config cfg = config{dtype::int_sym, 4, 128, true, layout::gptq_v1, compute::f32};
#endif
static_assert(policy<cfg>::bits > 0);
