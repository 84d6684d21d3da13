// expect: no_kernel_in_this_build
// A policy whose kernels this build left out (as -Dkernels does; the default build has a kernel
// for every valid config) fails at compile time, naming the config it looked for.
#include <qforge_selected_kernels.h>
#undef QFORGE_SELECTED_nf4_b32_bnb_f32
#define QFORGE_SELECTED_nf4_b32_bnb_f32 0
#include <qforge/config/aliases.hpp>
#include <qforge/kernels/kernels.hpp>
using namespace qforge;
#ifdef QFORGE_CONTROL
using P = qlora_nf4;
#else
using P = policy<config{dtype::nf4, 4, 32, false, layout::bnb4, compute::f32}>;
#endif
void run(const weights_view& w, const float* x, float* y) { qforge::gemv<P>(w, x, y); }
