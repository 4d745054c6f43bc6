// The fused coupling op of fastflow._C: affine (Glow, RealNVP) and additive (NICE) coupling with the
// per-sample log-determinant, forward and backward, on CPU and CUDA tensors.
//
// The contract is the module docstring of fastflow/ops/coupling.py: canonical [B, C, H, W] tensors with any
// strides, y / gradients returned contiguous, logdet [B] float32 (float64 for float64 inputs).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "codes.h"  // Mask and Scale, generated from fastflow/_codes.py

namespace fastflow {

// Argument checks common to both devices (dims, dtypes, shapes, devices against x / z), with messages that
// name the argument; each kernel calls them before touching data.
void check_coupling_fwd_args(const at::Tensor& x, const std::optional<at::Tensor>& raw_scale,
                             const at::Tensor& shift, int64_t mask, int64_t scale, double clamp);
void check_coupling_bwd_args(const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& z,
                             const at::Tensor& raw_scale, int64_t mask, int64_t scale, double clamp);

// y = x·s(h_s) + h_t on the transformed positions (or x = (y − h_t)/s for `inverse`), x elsewhere;
// returns (y contiguous, logdet [B]).
std::tuple<at::Tensor, at::Tensor> coupling_fwd_cpu(const at::Tensor& x, const std::optional<at::Tensor>& raw_scale,
                                                    const at::Tensor& shift, int64_t mask, int64_t scale,
                                                    bool flip, bool inverse, double clamp);

// (grad_x, grad_raw_scale, grad_shift), all contiguous; z is the forward's x or the inverse's output.
std::tuple<at::Tensor, at::Tensor, at::Tensor> coupling_bwd_cpu(const at::Tensor& grad_y,
                                                                const at::Tensor& grad_logdet,
                                                                const at::Tensor& z, const at::Tensor& raw_scale,
                                                                int64_t mask, int64_t scale, bool flip,
                                                                bool inverse, double clamp);

#ifdef FASTFLOW_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> coupling_fwd_cuda(const at::Tensor& x,
                                                     const std::optional<at::Tensor>& raw_scale,
                                                     const at::Tensor& shift, int64_t mask, int64_t scale,
                                                     bool flip, bool inverse, double clamp);

std::tuple<at::Tensor, at::Tensor, at::Tensor> coupling_bwd_cuda(const at::Tensor& grad_y,
                                                                 const at::Tensor& grad_logdet,
                                                                 const at::Tensor& z, const at::Tensor& raw_scale,
                                                                 int64_t mask, int64_t scale, bool flip,
                                                                 bool inverse, double clamp);
#endif

}  // namespace fastflow
