// The channel mix of the fused ActNorm + invertible 1×1 convolution op (Glow) of fastflow._C, on CPU tensors.
//
// The contract is the module docstring of fastflow/ops/actnorm_invconv.py: x [B, C, H, W] with any strides, the
// folded weight [C, C] and bias [C] in float32 (float64 for float64 x); y and grad_x contiguous in the dtype of
// x, grad_weight and grad_bias in the dtype of weight, all computed in float32 (float64).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace fastflow {

// y[b, :, h, w] = weight·x[b, :, h, w] + bias.
at::Tensor actnorm_invconv_fwd_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// (grad_x = weightᵀ·g per pixel, grad_weight = Σ_{b,p} g·xᵀ, grad_bias = Σ_{b,p} g) for g = grad_y.
std::tuple<at::Tensor, at::Tensor, at::Tensor> actnorm_invconv_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                       const at::Tensor& weight);

}  // namespace fastflow
