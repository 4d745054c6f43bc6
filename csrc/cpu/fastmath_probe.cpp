// Test-only operator _fastmath(x, function): applies one float32 function of fastmath.h elementwise, so that
// tests/ops/test_fastmath.py can measure its error against float64 over the whole input range. Not public:
// the kernels call the functions inlined; this exposes exactly that code.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string_view>

#include "fastmath.h"

namespace fastflow {

namespace {

// Loops like the kernels' (cloned per ISA, vectorised), so that the probe gets the same code generation,
// FMA contraction included, as the coupling loops on the machine it runs on.
FF_CLONES void exp_loop(const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = fastmath::exp_(x[j]);
}

FF_CLONES void exp_nonpositive_loop(const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = fastmath::exp_nonpositive(x[j]);
}

FF_CLONES void exp_bounded_loop(const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = fastmath::exp_bounded(x[j]);
}

FF_CLONES void expm1_loop(const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = fastmath::expm1_(x[j]);
}

// r = 1/(1 + e) as the sigmoid coupling computes it before calling log1p_unit.
FF_CLONES void log1p_loop(const float* __restrict e, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float r = 1.f / (1.f + e[j]);
    y[j] = fastmath::log1p_unit(e[j], r);
  }
}

}  // namespace

at::Tensor fastmath_cpu(const at::Tensor& x, std::string_view function) {
  TORCH_CHECK_VALUE(x.defined(), "fastflow _fastmath: x is undefined");
  // The dispatcher routes only CPU tensors here; the check is for direct C++ callers.
  TORCH_CHECK_VALUE(x.device().is_cpu(), "fastflow _fastmath: x must be a CPU tensor, got one on ", x.device());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat,
                   "fastflow _fastmath: x must be float32 (the polynomial versions are float32 only), got ",
                   x.scalar_type());
  using Loop = void (*)(const float*, float*, int64_t);
  Loop loop = nullptr;
  if (function == "exp") {
    loop = exp_loop;
  } else if (function == "exp_nonpositive") {
    loop = exp_nonpositive_loop;
  } else if (function == "exp_bounded") {
    loop = exp_bounded_loop;
  } else if (function == "expm1") {
    loop = expm1_loop;
  } else if (function == "log1p") {
    loop = log1p_loop;
  }
  TORCH_CHECK_VALUE(loop != nullptr, "fastflow _fastmath: function must be one of exp, exp_nonpositive, "
                    "exp_bounded, expm1, log1p; got '", function, "'");
  const at::Tensor input = x.contiguous();
  at::Tensor y = at::empty(input.sizes(), input.options());
  loop(input.const_data_ptr<float>(), y.mutable_data_ptr<float>(), input.numel());
  return y;
}

}  // namespace fastflow
