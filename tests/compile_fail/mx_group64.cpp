// expect: group_mx_must_be_32
#include <qforge/config/aliases.hpp>
using namespace qforge;
#ifdef QFORGE_CONTROL
constexpr config cfg = configs::mxfp4;
#else
constexpr config cfg = config{dtype::e2m1, 4, 64, false, layout::mx, compute::f32};
#endif
static_assert(policy<cfg>::bits > 0);
