// The LSTM / RNN ops of fastflow._C on CPU tensors: the fused LSTM cell (gates and state update after the two
// GEMMs) and its backward, and one layer-direction of a whole (packed) sequence, forward and backward, with no
// Python per time step.
//
// The contracts are the module docstring of fastflow/ops/lstm.py, the math fastflow/reference/lstm.py:
// float32 or float64 on CPUs (16-bit too on CUDA), one dtype for every tensor; mode 0 = LSTM, 1 = RNN tanh, 2 = RNN ReLU.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace fastflow {

// (m [B, H], c_new [B, H]) from gates [B, 4H] and c [B, H].
std::tuple<at::Tensor, at::Tensor> lstm_cell_fwd_cpu(const at::Tensor& gates, const at::Tensor& c);

// (grad_gates [B, 4H], grad_c [B, H]).
std::tuple<at::Tensor, at::Tensor> lstm_cell_bwd_cpu(const at::Tensor& grad_m, const at::Tensor& grad_c_new,
                                                     const at::Tensor& gates, const at::Tensor& c,
                                                     const at::Tensor& c_new);

// (y [N, H_r], h_n [B, H_r], c_n [B, H], gates [N, G·H], c_all [N, H]); c_n and c_all empty for the RNNs.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_fwd_cpu(
    const at::Tensor& x, const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, at::IntArrayRef batch_sizes, int64_t mode, bool reverse);

// (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b, grad_w_hr); empty where there is no such input.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& x,
    const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& y, const at::Tensor& gates, const at::Tensor& c_all,
    at::IntArrayRef batch_sizes, int64_t mode, bool reverse, bool has_bias);

// The same four on CUDA tensors (csrc/cuda/lstm.cu; float32, float16, bfloat16, float64).
std::tuple<at::Tensor, at::Tensor> lstm_cell_fwd_cuda(const at::Tensor& gates, const at::Tensor& c);
std::tuple<at::Tensor, at::Tensor> lstm_cell_bwd_cuda(const at::Tensor& grad_m, const at::Tensor& grad_c_new,
                                                      const at::Tensor& gates, const at::Tensor& c,
                                                      const at::Tensor& c_new);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_fwd_cuda(
    const at::Tensor& x, const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, at::IntArrayRef batch_sizes, int64_t mode, bool reverse);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bwd_cuda(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& x,
    const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& y, const at::Tensor& gates, const at::Tensor& c_all,
    at::IntArrayRef batch_sizes, int64_t mode, bool reverse, bool has_bias);

}  // namespace fastflow
