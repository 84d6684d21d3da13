// expect: bits_must_be_4_for_nf4_fp4_e2m1
#include <qforge/config/aliases.hpp>
using namespace qforge;
#ifdef QFORGE_CONTROL
constexpr config cfg = configs::qlora_nf4;
#else
constexpr config cfg = config{dtype::nf4, 8, 64, true, layout::bnb4, compute::bf16};
#endif
static_assert(policy<cfg>::bits > 0);
