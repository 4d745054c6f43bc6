// The fused CPU recurrence of the LSTM / RNN sequence op (lstm_fused.cpp): every step's W_hh product and its
// pointwise work in one pass over register tiles, on a team of threads that each own a slice of the hidden units
// for the whole sequence. The hooks of lstm_loop.h's CPU Policy call it; where it does not apply they return false
// and the loop of lstm_loop.h runs.
#pragma once

#include "../lstm_loop.h"

#include <ATen/core/Tensor.h>

namespace fastflow::lstm_fused {

// float32, no projection, H a multiple of 16, and a CPU with AVX-512F.
bool applies(const lstm_loop::Layout& L, at::ScalarType dtype);

// The forward recurrence (contiguous tensors; the shapes of lstm_loop::forward): gates [N, G·H] holds x·W_ihᵀ and
// is completed in place with bias [G·H] (b_ih + b_hh, or undefined) and h·W_hhᵀ; y [N, H] and (LSTM) c_all [N, H]
// are written; h [B, H] and c [B, H] hold h0, c0 and are left as h_n, c_n.
void forward(const lstm_loop::Layout& L, const at::Tensor& w_hh, const at::Tensor& bias, at::Tensor& gates,
             at::Tensor& h, at::Tensor& c, at::Tensor& y, at::Tensor& c_all);

// The backward's reverse walk: d_gates [N, G·H] written; dh [B, H], dc [B, H] hold ∂L/∂h_n, ∂L/∂c_n and are left
// as ∂L/∂h0, ∂L/∂c0.
void backward(const lstm_loop::Layout& L, const at::Tensor& w_hh, const at::Tensor& gates, const at::Tensor& c_all,
              const at::Tensor& c0, const at::Tensor& y, const at::Tensor& grad_y, at::Tensor& dh, at::Tensor& dc,
              at::Tensor& d_gates);

}  // namespace fastflow::lstm_fused
