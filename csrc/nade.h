// The fused NADE op of fastflow._C on CPU tensors: every conditional's logit and the log-likelihood in one scan
// over the dimensions, its backward as one reverse scan, and incremental sampling.
//
// The contract is the module docstring of fastflow/ops/nade.py: x [B, D], W [H, D], c [H], V [D, H], b [D] of
// one float dtype, any strides; logits and log_prob in float32 (float64 for float64 inputs), gradients in their
// inputs' dtypes, the sample in the parameters' dtype; all computed in float32 (float64).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace fastflow {

// (logits [B, D], log_prob [B]).
std::tuple<at::Tensor, at::Tensor> nade_fwd_cpu(const at::Tensor& x, const at::Tensor& W, const at::Tensor& c,
                                                const at::Tensor& V, const at::Tensor& b);

// (grad_x, grad_W, grad_c, grad_V, grad_b); logits are the forward's.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> nade_bwd_cpu(
    const at::Tensor& grad_logits, const at::Tensor& grad_log_prob, const at::Tensor& x, const at::Tensor& W,
    const at::Tensor& c, const at::Tensor& V, const at::Tensor& b, const at::Tensor& logits);

// x [B, D] with x_i = (u_i < sigmoid(logit_i)).
at::Tensor nade_sample_cpu(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                           const at::Tensor& u);

}  // namespace fastflow
