// expect: no_kernel_in_this_build
// A policy that validates but has no kernel (no compiled bnb block divides 32) fails at compile
// time, naming the config it looked for.
#include <qforge/config/aliases.hpp>
#include <qforge/kernels/kernels.hpp>
using namespace qforge;
#ifdef QFORGE_CONTROL
using P = qlora_nf4;
#else
using P = policy<config{dtype::nf4, 4, 32, false, layout::bnb4, compute::f32}>;
#endif
void run(const weights_view& w, const float* x, float* y) { qforge::gemv<P>(w, x, y); }
