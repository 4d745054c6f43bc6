// The host side of the LSTM / RNN sequence op, shared by the CPU and CUDA kernels: argument checks, the packed
// layout, the loop over time steps with its GEMMs (ATen's: MKL / oneDNN on CPUs, cuBLAS on GPUs), and the
// backward's reverse walk and weight-gradient GEMMs. What differs per device is the pointwise work of a step,
// a Policy with
//
//   check(t, name, like)                       the device and dtypes it runs;
//   cell_forward(gates, c, c_out, m, m2)       LSTM: c (in c_{t−1}, out c_t), c_out = c_t, m = o·tanh(c_t), m2 a
//                                              second copy of m or undefined;
//   cell_backward(dm, gates, c_head, c_tail, c_new, dc, dg, m_out)
//                                              ∂L/∂gates from ∂L/∂m and dc (in ∂L/∂c_t, out ∂L/∂c_{t−1}); the
//                                              previous cell state of row r is c_head[r] for r < rows(c_head), else
//                                              c_tail[r − rows(c_head)]; m_out (or undefined) gets m_t;
//   rnn_forward(mode, pre, h, y)               h = y = act(pre);
//   rnn_backward(mode, dh, y, dpre)            dpre = dh·act'(pre), from the output y;
//   prepare(w, batch) -> Gemm                  a weight [N, K] made ready for the products out (+)= a·wᵀ of
//                                              every step (a of up to batch rows), once per call;
//   product(out, a, gemm, accumulate)          out = a·wᵀ, or out += a·wᵀ;
//   fused_forward(L, x, w_ih, bias, w_hh, gates, h, c, y, c_all) -> bool
//                                              the whole forward at once (gates to be made, with the input
//                                              projection; h, c hold the initial states and are left as the final
//                                              ones), or false to let the loop here run it;
//   fused_backward(L, w_hh, gates, c_all, c0, y, grad_y, dh, dc, d_gates) -> bool
//                                              the same for the backward's reverse walk (dh, dc: ∂L/∂h_n, ∂L/∂c_n
//                                              in, ∂L/∂h0, ∂L/∂c0 out; d_gates every step's ∂L/∂gates);
//
// each on contiguous row ranges [n, ·] of one step (the math: fastflow/reference/lstm.py; the contract:
// fastflow/ops/lstm.py). Packed sequences: step t's n_t rows lie at offset Σ_{s<t} n_s; the state buffers
// h [B, H_r], c [B, H] are updated in their first n_t rows, which serves both directions.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace fastflow::lstm_loop {

constexpr int64_t kLSTM = 0, kTanh = 1, kReLU = 2;

inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK_VALUE(t.sizes() == expected, "fastflow lstm: ", name, " must have shape ", expected, ", got ",
                    t.sizes());
}

struct Layout {
  int64_t N, B, T, I, H, Hr, G, mode;
  bool lstm, proj;
  std::vector<int64_t> offset, rows;  // per step, in time order
  std::vector<int64_t> order;         // processing order: step k is time index order[k]
};

inline Layout layout(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                     const std::optional<at::Tensor>& w_hr, at::IntArrayRef batch_sizes, int64_t mode,
                     bool reverse) {
  TORCH_CHECK_VALUE(mode == kLSTM || mode == kTanh || mode == kReLU,
                    "fastflow lstm: mode must be 0 (LSTM), 1 (RNN tanh) or 2 (RNN ReLU), got ", mode);
  TORCH_CHECK_VALUE(x.dim() == 2 && h0.dim() == 2 && w_ih.dim() == 2 && w_hh.dim() == 2,
                    "fastflow lstm: x, h0, w_ih and w_hh must be 2-D");
  Layout L;
  L.mode = mode;
  L.lstm = mode == kLSTM;
  L.G = L.lstm ? 4 : 1;
  L.N = x.size(0);
  L.I = x.size(1);
  L.B = h0.size(0);
  L.Hr = h0.size(1);
  TORCH_CHECK_VALUE(w_hh.size(0) % L.G == 0, "fastflow lstm: w_hh must have G·H rows, got ", w_hh.size(0));
  L.H = w_hh.size(0) / L.G;
  L.proj = w_hr.has_value() && w_hr->defined();
  TORCH_CHECK_VALUE(L.proj || L.Hr == L.H, "fastflow lstm: h0 must have H = ", L.H, " columns, got ", L.Hr);
  TORCH_CHECK_VALUE(!L.proj || L.lstm, "fastflow lstm: a projection (w_hr) needs mode 0 (LSTM)");
  check_shape(w_ih, "w_ih", {L.G * L.H, L.I});
  check_shape(w_hh, "w_hh", {L.G * L.H, L.Hr});
  if (L.proj) check_shape(*w_hr, "w_hr", {L.Hr, L.H});
  L.T = static_cast<int64_t>(batch_sizes.size());
  int64_t total = 0, previous = L.B;
  for (int64_t t = 0; t < L.T; ++t) {
    const int64_t n = batch_sizes[t];
    TORCH_CHECK_VALUE(n >= 0 && n <= previous, "fastflow lstm: batch_sizes must be non-negative and "
                      "non-increasing, at most B = ", L.B, "; got ", batch_sizes);
    L.offset.push_back(total);
    L.rows.push_back(n);
    total += n;
    previous = n;
  }
  TORCH_CHECK_VALUE(total == L.N, "fastflow lstm: batch_sizes sum to ", total, " but x has ", L.N, " rows");
  for (int64_t k = 0; k < L.T; ++k) L.order.push_back(reverse ? L.T - 1 - k : k);
  return L;
}

// Empty tensors with storages of their own: a custom op's outputs may not alias one another, and 0-element
// tensors made by at::empty({0}) share one storage as the custom op's alias check sees it.
inline at::Tensor absent(const at::TensorOptions& options) { return at::empty({1}, options).narrow(0, 0, 0); }

// The plain product: the transposed weight made contiguous once per call (MKL multiplies by a [K, N] row-major
// matrix ~1.6x faster than by the transposed view of w at these sizes; cuBLAS does not mind either way).
struct PlainGemm {
  at::Tensor w_t;  // [K, N]
};

inline PlainGemm plain_prepare(const at::Tensor& w) { return {w.t().contiguous()}; }

inline void plain_product(at::Tensor& out, const at::Tensor& a, const PlainGemm& gemm, bool accumulate) {
  if (accumulate) {
    out.addmm_(a, gemm.w_t);
  } else {
    at::mm_out(out, a, gemm.w_t);
  }
}

// ∂L/∂W_hh = Σ_t ∂L/∂gates_tᵀ · h_{t−1}, h_{t−1} being the previous step's output (in processing order) or h0.
// With every step holding all B rows, those are two products on views of y: the steps after the first against the
// outputs one step back, and the first step against h0. Packed sequences of mixed lengths gather every step's
// previous state first: the previous step supplies its first min(n, its rows) rows, the others start from h0
// (in the reverse direction, the sequences that begin at that step).
inline at::Tensor recurrent_weight_grad(const Layout& L, const at::Tensor& d_gates, const at::Tensor& y,
                                        const at::Tensor& h0) {
  const bool uniform = L.T > 0 && std::all_of(L.rows.begin(), L.rows.end(), [&](int64_t n) { return n == L.B; });
  if (uniform) {
    const int64_t B = L.B, rest = L.N - B;
    const bool reverse = L.order[0] != 0;  // the first step processed is the last in time
    auto grad = at::mm(d_gates.narrow(0, reverse ? rest : 0, B).t(), h0);
    if (rest > 0) grad.addmm_(d_gates.narrow(0, reverse ? 0 : B, rest).t(), y.narrow(0, reverse ? B : 0, rest));
    return grad;
  }
  auto h_prev = at::empty({L.N, L.Hr}, y.options());
  for (int64_t k = 0; k < L.T; ++k) {
    const int64_t t = L.order[k], n = L.rows[t], start = L.offset[t];
    const int64_t before = k > 0 ? L.offset[L.order[k - 1]] : 0;
    const int64_t head = k > 0 ? std::min(n, L.rows[L.order[k - 1]]) : 0;
    h_prev.narrow(0, start, head).copy_(y.narrow(0, before, head));
    h_prev.narrow(0, start + head, n - head).copy_(h0.narrow(0, head, n - head));
  }
  return at::mm(d_gates.t(), h_prev);
}

template <class Policy>
std::tuple<at::Tensor, at::Tensor> cell_forward(const at::Tensor& gates_in, const at::Tensor& c_in) {
  Policy::check(gates_in, "gates", gates_in);
  Policy::check(c_in, "c", gates_in);
  TORCH_CHECK_VALUE(c_in.dim() == 2, "fastflow lstm_cell: c must be [B, H], got ", c_in.sizes());
  const int64_t B = c_in.size(0), H = c_in.size(1);
  check_shape(gates_in, "gates", {B, 4 * H});
  const auto gates = gates_in.contiguous();
  auto c = c_in.contiguous().clone();
  auto c_new = at::empty({B, H}, c.options());
  auto m = at::empty({B, H}, c.options());
  Policy::cell_forward(gates, c, c_new, m, at::Tensor());
  return {m, c_new};
}

template <class Policy>
std::tuple<at::Tensor, at::Tensor> cell_backward(const at::Tensor& grad_m, const at::Tensor& grad_c_new,
                                                 const at::Tensor& gates_in, const at::Tensor& c_in,
                                                 const at::Tensor& c_new_in) {
  Policy::check(gates_in, "gates", gates_in);
  Policy::check(grad_m, "grad_m", gates_in);
  Policy::check(grad_c_new, "grad_c_new", gates_in);
  Policy::check(c_in, "c", gates_in);
  Policy::check(c_new_in, "c_new", gates_in);
  TORCH_CHECK_VALUE(c_in.dim() == 2, "fastflow lstm_cell: c must be [B, H], got ", c_in.sizes());
  const int64_t B = c_in.size(0), H = c_in.size(1);
  check_shape(gates_in, "gates", {B, 4 * H});
  check_shape(grad_m, "grad_m", {B, H});
  check_shape(grad_c_new, "grad_c_new", {B, H});
  check_shape(c_new_in, "c_new", {B, H});
  auto dc = grad_c_new.contiguous().clone();
  auto dg = at::empty({B, 4 * H}, gates_in.options());
  const auto c = c_in.contiguous();
  Policy::cell_backward(grad_m.contiguous(), gates_in.contiguous(), c, c.narrow(0, 0, 0), c_new_in.contiguous(), dc,
                        dg, at::Tensor());
  return {dg, dc};
}

template <class Policy>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& x_in, const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, at::IntArrayRef batch_sizes, int64_t mode, bool reverse) {
  Policy::check(x_in, "x", x_in);
  Policy::check(h0, "h0", x_in);
  Policy::check(w_ih, "w_ih", x_in);
  Policy::check(w_hh, "w_hh", x_in);
  const Layout L = layout(x_in, h0, w_ih, w_hh, w_hr, batch_sizes, mode, reverse);
  if (L.proj) Policy::check(*w_hr, "w_hr", x_in);
  const auto x = x_in.contiguous();
  const auto options = x.options();
  at::Tensor bias;  // b_ih + b_hh, or undefined
  if (b_ih.has_value() && b_ih->defined()) {
    TORCH_CHECK_VALUE(b_hh.has_value() && b_hh->defined(), "fastflow lstm: b_ih and b_hh come together");
    Policy::check(*b_ih, "b_ih", x);
    Policy::check(*b_hh, "b_hh", x);
    check_shape(*b_ih, "b_ih", {L.G * L.H});
    check_shape(*b_hh, "b_hh", {L.G * L.H});
    bias = at::add(*b_ih, *b_hh);
  }
  auto y = at::empty({L.N, L.Hr}, options);
  auto h = h0.contiguous().clone();
  at::Tensor c, c_all, m;
  if (L.lstm) {
    TORCH_CHECK_VALUE(c0.has_value() && c0->defined(), "fastflow lstm: mode 0 (LSTM) needs c0");
    Policy::check(*c0, "c0", x);
    check_shape(*c0, "c0", {L.B, L.H});
    c = c0->contiguous().clone();
    c_all = at::empty({L.N, L.H}, options);
    if (L.proj) m = at::empty({L.B, L.H}, options);
  } else {
    c = absent(options);
    c_all = absent(options);
  }
  at::Tensor gates;
  if (Policy::fused_forward(L, x, w_ih, bias, w_hh, gates, h, c, y, c_all)) return {y, h, c, gates, c_all};
  // Both biases once, in the input projection of every step (one GEMM).
  gates = bias.defined() ? at::addmm(bias, x, w_ih.t()) : at::mm(x, w_ih.t());
  const auto recurrent = Policy::prepare(w_hh, L.B);
  const auto projection = L.proj ? Policy::prepare(*w_hr, L.B) : typename Policy::Gemm{};
  for (int64_t k = 0; k < L.T; ++k) {
    const int64_t t = L.order[k], n = L.rows[t], start = L.offset[t];
    if (n == 0) continue;
    auto step_gates = gates.narrow(0, start, n);
    auto h_rows = h.narrow(0, 0, n);
    auto y_rows = y.narrow(0, start, n);
    Policy::product(step_gates, h_rows, recurrent, /*accumulate=*/true);
    if (L.lstm) {
      auto c_rows = c.narrow(0, 0, n);
      auto c_out = c_all.narrow(0, start, n);
      if (L.proj) {
        auto m_rows = m.narrow(0, 0, n);
        Policy::cell_forward(step_gates, c_rows, c_out, m_rows, at::Tensor());
        Policy::product(y_rows, m_rows, projection, /*accumulate=*/false);
        h_rows.copy_(y_rows);
      } else {
        Policy::cell_forward(step_gates, c_rows, c_out, y_rows, h_rows);
      }
    } else {
      Policy::rnn_forward(mode, step_gates, h_rows, y_rows);
    }
  }
  return {y, h, c, gates, c_all};
}

template <class Policy>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_y_in, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& x_in,
    const at::Tensor& h0_in, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& y_in, const at::Tensor& gates_in,
    const at::Tensor& c_all_in, at::IntArrayRef batch_sizes, int64_t mode, bool reverse, bool has_bias) {
  Policy::check(x_in, "x", x_in);
  for (const auto& [t, name] : {std::pair{&grad_y_in, "grad_y"}, {&grad_h_n, "grad_h_n"}, {&h0_in, "h0"},
                                {&w_ih, "w_ih"}, {&w_hh, "w_hh"}, {&y_in, "y"}, {&gates_in, "gates"}}) {
    Policy::check(*t, name, x_in);
  }
  const Layout L = layout(x_in, h0_in, w_ih, w_hh, w_hr, batch_sizes, mode, reverse);
  const int64_t GH = L.G * L.H, H = L.H, Hr = L.Hr;
  check_shape(grad_y_in, "grad_y", {L.N, Hr});
  check_shape(y_in, "y", {L.N, Hr});
  check_shape(grad_h_n, "grad_h_n", {L.B, Hr});
  check_shape(gates_in, "gates", {L.N, GH});
  const auto x = x_in.contiguous(), h0 = h0_in.contiguous(), y = y_in.contiguous();
  const auto grad_y = grad_y_in.contiguous(), gates = gates_in.contiguous();
  const auto options = x.options();
  at::Tensor c_all, c0c, dc;
  if (L.lstm) {
    TORCH_CHECK_VALUE(c0.has_value() && c0->defined(), "fastflow lstm: mode 0 (LSTM) needs c0");
    Policy::check(*c0, "c0", x);
    Policy::check(grad_c_n, "grad_c_n", x);
    Policy::check(c_all_in, "c_all", x);
    check_shape(*c0, "c0", {L.B, H});
    check_shape(grad_c_n, "grad_c_n", {L.B, H});
    check_shape(c_all_in, "c_all", {L.N, H});
    c_all = c_all_in.contiguous();
    c0c = c0->contiguous();
    dc = grad_c_n.contiguous().clone();
  }
  auto dh = grad_h_n.contiguous().clone();
  auto d_gates = at::empty({L.N, GH}, options);
  at::Tensor d_h_total, m_all, d_m;
  if (L.proj) {
    d_h_total = at::empty({L.N, Hr}, options);
    m_all = at::empty({L.N, H}, options);
    d_m = at::empty({L.B, H}, options);
  }
  const bool fused = !L.proj && Policy::fused_backward(L, w_hh, gates, c_all, c0c, y, grad_y, dh, dc, d_gates);
  // dh = dgates·w_hh and dm = dh·w_hr: products with the transposed weights.
  const auto recurrent = fused ? typename Policy::Gemm{} : Policy::prepare(w_hh.t(), L.B);
  const auto projection = L.proj ? Policy::prepare(w_hr->t(), L.B) : typename Policy::Gemm{};
  for (int64_t k = fused ? -1 : L.T - 1; k >= 0; --k) {
    const int64_t t = L.order[k], n = L.rows[t], start = L.offset[t];
    if (n == 0) continue;
    const int64_t before = k > 0 ? L.offset[L.order[k - 1]] : 0;
    const int64_t head = k > 0 ? std::min(n, L.rows[L.order[k - 1]]) : 0;
    auto dh_rows = dh.narrow(0, 0, n);
    dh_rows.add_(grad_y.narrow(0, start, n));
    auto dg_rows = d_gates.narrow(0, start, n);
    const auto step_gates = gates.narrow(0, start, n);
    if (L.lstm) {
      at::Tensor dm = dh_rows, m_out;
      if (L.proj) {
        d_h_total.narrow(0, start, n).copy_(dh_rows);
        dm = d_m.narrow(0, 0, n);
        Policy::product(dm, dh_rows, projection, /*accumulate=*/false);
        m_out = m_all.narrow(0, start, n);
      }
      auto dc_rows = dc.narrow(0, 0, n);
      Policy::cell_backward(dm, step_gates, c_all.narrow(0, before, head), c0c.narrow(0, head, n - head),
                            c_all.narrow(0, start, n), dc_rows, dg_rows, m_out);
    } else {
      Policy::rnn_backward(mode, dh_rows, y.narrow(0, start, n), dg_rows);
    }
    Policy::product(dh_rows, dg_rows, recurrent, /*accumulate=*/false);
  }
  const auto d_gates_t = d_gates.t();
  return {at::mm(d_gates, w_ih),
          dh,
          L.lstm ? dc : absent(options),
          at::mm(d_gates_t, x),
          recurrent_weight_grad(L, d_gates, y, h0),
          has_bias ? d_gates.sum(0) : absent(options),
          L.proj ? at::mm(d_h_total.t(), m_all) : absent(options)};
}

}  // namespace fastflow::lstm_loop
