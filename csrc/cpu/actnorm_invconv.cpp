// CPU kernels of the actnorm_invconv op's channel mix (see fastflow/ops/actnorm_invconv.py for the contract,
// fastflow/reference/actnorm_invconv.py for the math).
//
// Strategy. Per sample the op is a GEMM: y_b = W·x_b + b with x_b the [C, P] matrix of the sample's P = H·W
// pixels, so everything here is a batched ATen GEMM (MKL / oneDNN, which also spreads the work over the
// threads): baddbmm for y, bmm with the transposed weight (a view) for grad_x, addbmm_ (Σ_b g_b·x_bᵀ into one
// [C, C] buffer) for grad_weight and a sum for grad_bias. x is seen as [B, C, P] without a copy whenever its
// pixel dimensions merge (contiguous and channels-last tensors do). float32 and float64 operands are used in
// place and the results written straight into the outputs; float16 / bfloat16 operands are converted to float32
// a chunk of samples at a time (about kChunkElements elements, at least one sample), so that the float32 copies
// stay small whatever the batch.
#include "../actnorm_invconv.h"
#include "dtypes.h"

#include <ATen/ops/addbmm.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdint>

namespace fastflow {

namespace {

// Elements of one converted float32 chunk of x or grad_y (4 MiB).
constexpr int64_t kChunkElements = int64_t{1} << 20;


bool supported_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble;
}

void check_x(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.defined(), "fastflow actnorm_invconv: ", name, " is undefined");
  TORCH_CHECK_VALUE(x.device().is_cpu(), "fastflow actnorm_invconv (CPU kernel): ", name, " is on ", x.device(),
                    "; every tensor of one call must be on the CPU");
  TORCH_CHECK_VALUE(x.dim() == 4, "fastflow actnorm_invconv: ", name, " must be a 4-d [B, C, H, W] tensor, got shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(supported_dtype(x.scalar_type()), "fastflow actnorm_invconv: ", name,
                   " must be float32, float16, bfloat16 or float64, got ", dtype_name(x.scalar_type()));
}

void check_parameter(const at::Tensor& param, const char* name, at::IntArrayRef expected, const at::Tensor& x) {
  TORCH_CHECK_VALUE(param.defined(), "fastflow actnorm_invconv: ", name, " is undefined");
  TORCH_CHECK_VALUE(param.device() == x.device(), "fastflow actnorm_invconv: ", name, " is on ", param.device(),
                    " but x is on ", x.device(), "; put them on one device");
  TORCH_CHECK_VALUE(param.sizes() == expected, "fastflow actnorm_invconv: ", name, " must have shape ", expected,
                    " for x of shape ", x.sizes(), ", got ", param.sizes());
  const auto acc = accumulation_dtype(x.scalar_type());
  TORCH_CHECK_TYPE(param.scalar_type() == acc, "fastflow actnorm_invconv: ", name, " must be ", dtype_name(acc),
                   " for x of dtype ", dtype_name(x.scalar_type()), " (the op computes in ", dtype_name(acc), "), got ",
                   dtype_name(param.scalar_type()));
}

// Samples per chunk: all of them when no conversion is needed, else about kChunkElements elements' worth.
int64_t samples_per_chunk(const at::Tensor& x, bool convert) {
  const int64_t batch = x.size(0);
  if (!convert) return std::max<int64_t>(batch, 1);
  const int64_t per_sample = std::max<int64_t>(x.size(1) * x.size(2) * x.size(3), 1);
  return std::clamp<int64_t>(kChunkElements / per_sample, 1, std::max<int64_t>(batch, 1));
}

// [B, C, H, W] as [B, C, H·W]: a view when the pixel dimensions merge, else a contiguous copy.
at::Tensor pixels_view(const at::Tensor& t) { return t.reshape({t.size(0), t.size(1), t.size(2) * t.size(3)}); }

}  // namespace

at::Tensor actnorm_invconv_fwd_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  check_x(x, "x");
  const int64_t batch = x.size(0), channels = x.size(1);
  check_parameter(weight, "weight", {channels, channels}, x);
  check_parameter(bias, "bias", {channels}, x);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;

  const auto acc = accumulation_dtype(x.scalar_type());
  const bool convert = x.scalar_type() != acc;
  const at::Tensor x_pixels = pixels_view(x);
  const at::Tensor y_pixels = y.view({batch, channels, -1});
  const at::Tensor bias_column = bias.view({1, channels, 1});
  const int64_t chunk = samples_per_chunk(x, convert);
  for (int64_t first = 0; first < batch; first += chunk) {
    const int64_t count = std::min(chunk, batch - first);
    const at::Tensor x_chunk = x_pixels.narrow(0, first, count);
    at::Tensor y_chunk = y_pixels.narrow(0, first, count);
    const at::Tensor w = weight.expand({count, channels, channels});
    if (convert) {
      y_chunk.copy_(at::baddbmm(bias_column, w, x_chunk.to(acc)));
    } else {
      at::baddbmm_out(y_chunk, bias_column, w, x_chunk);
    }
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_invconv_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                       const at::Tensor& weight) {
  check_x(x, "x");
  check_x(grad_y, "grad_y");
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "fastflow actnorm_invconv: grad_y must have the shape of x ",
                    x.sizes(), ", got ", grad_y.sizes());
  const int64_t batch = x.size(0), channels = x.size(1);
  check_parameter(weight, "weight", {channels, channels}, x);
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_weight = at::zeros({channels, channels}, weight.options());
  at::Tensor grad_bias = at::zeros({channels}, weight.options());
  if (x.numel() == 0) return {grad_x, grad_weight, grad_bias};

  const auto acc = weight.scalar_type();
  const bool convert = x.scalar_type() != acc || grad_y.scalar_type() != acc;
  const at::Tensor x_pixels = pixels_view(x);
  const at::Tensor g_pixels = pixels_view(grad_y);
  const at::Tensor grad_x_pixels = grad_x.view({batch, channels, -1});
  const int64_t chunk = samples_per_chunk(x, convert);
  for (int64_t first = 0; first < batch; first += chunk) {
    const int64_t count = std::min(chunk, batch - first);
    const at::Tensor x_chunk = x_pixels.narrow(0, first, count).to(acc);
    const at::Tensor g_chunk = g_pixels.narrow(0, first, count).to(acc);
    at::Tensor grad_x_chunk = grad_x_pixels.narrow(0, first, count);
    const at::Tensor w_transposed = weight.t().expand({count, channels, channels});
    if (x.scalar_type() == acc) {
      at::bmm_out(grad_x_chunk, w_transposed, g_chunk);
    } else {
      grad_x_chunk.copy_(at::bmm(w_transposed, g_chunk));
    }
    grad_weight.addbmm_(g_chunk, x_chunk.transpose(1, 2));
    grad_bias.add_(at::sum(g_chunk, {0, 2}));
  }
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace fastflow
