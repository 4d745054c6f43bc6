// CPU kernels of the LSTM / RNN ops (contract: fastflow/ops/lstm.py; math: fastflow/reference/lstm.py).
//
// Strategy. Two paths. In float32 on AVX-512 CPUs with H a multiple of 16 and no projection, the whole recurrence
// is lstm_fused.cpp's: the step product and its pointwise work fused in register tiles, on a team of threads that
// lives for the whole sequence (its comment says why). Elsewhere (float64, other sizes, projections) the loop of
// lstm_loop.h: the input projection of every step as one GEMM before the loop, one GEMM per step for W_hh (MKL's
// packed GEMM) and W_hr, and between them the pointwise work of a step (LSTM: three sigmoids, two tanh, the state
// update; RNN: the activation) as one pass over the step's rows (lstm_rows.h) instead of the dozen ATen kernels
// (chunk, sigmoid, tanh, mul, add, ...) that a composite cell launches. Rows are spread over threads with
// at::parallel_for: each row is independent, so the result does not depend on the thread count. In the backward,
// both paths form every weight gradient as one GEMM over all steps after the walk.
//
// This file is lstm_loop.h's CPU pointwise Policy, whose fused_* hooks hand over to lstm_fused.cpp.
#include "../lstm.h"
#include "../lstm_loop.h"
#include "dtypes.h"
#include "lstm_fused.h"
#include "lstm_rows.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fastflow {

namespace {

using lstm_rows::Rows;
// Rows per parallel chunk: at least this many numbers of pointwise work per chunk (thread start-up is a few µs).
constexpr int64_t kGrainNumbers = 16384;

// Rows [0, n) in parallel chunks of at least kGrainNumbers numbers of work (width numbers per row).
template <typename F>
void for_rows(int64_t n, int64_t width, const F& body) {
  const int64_t grain = std::max<int64_t>(1, kGrainNumbers / std::max<int64_t>(1, width));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) body(r);
  });
}

// ------------------------------------------------------------------------------------------------------
// The CPU policy of lstm_loop.h.

// MKL's packed GEMM, through torch's own mkl:: ops when this torch has them (x86 builds with MKL): the weight is
// packed once per call for the step's batch size, after which each step's small-M product runs ~1.5-2.5x
// faster than a plain GEMM (measured at B = 32, H = 256 and 512). Steps with fewer rows (the tail of a packed
// sequence) take the plain product.
struct MklLinear {
  std::optional<c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, int64_t)>> reorder;
  std::optional<c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const std::optional<at::Tensor>&, int64_t)>>
      linear;

  static const MklLinear& get() {
    static const MklLinear instance = [] {
      MklLinear found;
      auto& dispatcher = c10::Dispatcher::singleton();
      const auto reorder = dispatcher.findSchema({"mkl::_mkl_reorder_linear_weight", ""});
      const auto linear = dispatcher.findSchema({"mkl::_mkl_linear", ""});
      if (reorder.has_value() && linear.has_value() && reorder->hasKernelForDispatchKey(c10::DispatchKey::CPU) &&
          linear->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
        found.reorder = reorder->typed<at::Tensor(const at::Tensor&, int64_t)>();
        found.linear = linear->typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const std::optional<at::Tensor>&, int64_t)>();
      }
      return found;
    }();
    return instance;
  }
};

struct CpuPointwise {
  struct Gemm {
    lstm_loop::PlainGemm plain;
    at::Tensor w, packed;  // packed: MKL's layout of w for `batch` rows, or undefined
    int64_t batch = 0;
  };

  static Gemm prepare(const at::Tensor& w, int64_t batch) {
    Gemm gemm{lstm_loop::plain_prepare(w), w.contiguous(), at::Tensor(), batch};
    const auto& mkl = MklLinear::get();
    if (mkl.reorder.has_value() && w.scalar_type() == at::kFloat && batch > 0) {
      gemm.packed = mkl.reorder->call(gemm.w, batch);
    }
    return gemm;
  }

  static void product(at::Tensor& out, const at::Tensor& a, const Gemm& gemm, bool accumulate) {
    if (!gemm.packed.defined() || a.size(0) != gemm.batch) {
      lstm_loop::plain_product(out, a, gemm.plain, accumulate);
      return;
    }
    const auto result = MklLinear::get().linear->call(a, gemm.packed, gemm.w, std::nullopt, gemm.batch);
    if (accumulate) {
      out.add_(result);
    } else {
      out.copy_(result);
    }
  }

  static bool fused_forward(const lstm_loop::Layout& L, const at::Tensor& x, const at::Tensor& w_ih,
                            const at::Tensor& bias, const at::Tensor& w_hh, at::Tensor& gates, at::Tensor& h,
                            at::Tensor& c, at::Tensor& y, at::Tensor& c_all) {
    if (!lstm_fused::applies(L, x.scalar_type())) return false;
    // The biases join in the first step product of each tile (addmm would first copy them into all N rows).
    gates = at::mm(x, w_ih.t());
    lstm_fused::forward(L, w_hh.contiguous(), bias, gates, h, c, y, c_all);
    return true;
  }

  static bool fused_backward(const lstm_loop::Layout& L, const at::Tensor& w_hh, const at::Tensor& gates,
                             const at::Tensor& c_all, const at::Tensor& c0, const at::Tensor& y,
                             const at::Tensor& grad_y, at::Tensor& dh, at::Tensor& dc, at::Tensor& d_gates) {
    if (!lstm_fused::applies(L, gates.scalar_type())) return false;
    lstm_fused::backward(L, w_hh.contiguous(), gates, c_all, c0, y, grad_y, dh, dc, d_gates);
    return true;
  }

  static void check(const at::Tensor& t, const char* name, const at::Tensor& like) {
    TORCH_CHECK_VALUE(t.defined(), "fastflow lstm: ", name, " is undefined");
    TORCH_CHECK_VALUE(t.device().is_cpu(), "fastflow lstm (CPU kernel): ", name, " is on ", t.device(),
                      "; every tensor of one call must be on the CPU");
    const auto dtype = t.scalar_type();
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, "fastflow lstm (CPU kernel): ", name,
                     " must be float32 or float64, got ", dtype_name(dtype));
    TORCH_CHECK_TYPE(dtype == like.scalar_type(), "fastflow lstm: ", name, " has dtype ", dtype_name(dtype),
                     " but x has ", dtype_name(like.scalar_type()), "; they must match");
  }

  static void cell_forward(const at::Tensor& gates, at::Tensor& c, at::Tensor& c_out, at::Tensor& m,
                           const at::Tensor& m2) {
    const int64_t n = c.size(0), H = c.size(1);
    AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "lstm_cell_forward_cpu", [&] {
      const scalar_t* g = gates.const_data_ptr<scalar_t>();
      scalar_t *cs = c.mutable_data_ptr<scalar_t>(), *co = c_out.mutable_data_ptr<scalar_t>();
      scalar_t* ms = m.mutable_data_ptr<scalar_t>();
      scalar_t* m2s = m2.defined() ? m2.mutable_data_ptr<scalar_t>() : nullptr;
      for_rows(n, 4 * H, [&](int64_t r) {
        Rows<scalar_t>::cell_fwd(g + r * 4 * H, H, cs + r * H, co + r * H, ms + r * H,
                                 m2s != nullptr ? m2s + r * H : nullptr, H);
      });
    });
  }

  static void cell_backward(const at::Tensor& dm, const at::Tensor& gates, const at::Tensor& c_head,
                            const at::Tensor& c_tail, const at::Tensor& c_new, at::Tensor& dc, at::Tensor& dg,
                            const at::Tensor& m_out) {
    const int64_t n = dc.size(0), H = dc.size(1), head = c_head.size(0);
    AT_DISPATCH_FLOATING_TYPES(dc.scalar_type(), "lstm_cell_backward_cpu", [&] {
      const scalar_t *dms = dm.const_data_ptr<scalar_t>(), *g = gates.const_data_ptr<scalar_t>();
      const scalar_t *ch = c_head.const_data_ptr<scalar_t>(), *ct = c_tail.const_data_ptr<scalar_t>();
      const scalar_t* cn = c_new.const_data_ptr<scalar_t>();
      scalar_t *dcs = dc.mutable_data_ptr<scalar_t>(), *dgs = dg.mutable_data_ptr<scalar_t>();
      scalar_t* mo = m_out.defined() ? m_out.mutable_data_ptr<scalar_t>() : nullptr;
      for_rows(n, 4 * H, [&](int64_t r) {
        const scalar_t* c_prev = r < head ? ch + r * H : ct + (r - head) * H;
        Rows<scalar_t>::cell_bwd(dms + r * H, g + r * 4 * H, H, c_prev, cn + r * H, dcs + r * H, dgs + r * 4 * H,
                                 mo != nullptr ? mo + r * H : nullptr, H);
      });
    });
  }

  static void rnn_forward(int64_t mode, const at::Tensor& pre, at::Tensor& h, at::Tensor& y) {
    const int64_t n = h.size(0), H = h.size(1);
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "rnn_forward_cpu", [&] {
      const scalar_t* p = pre.const_data_ptr<scalar_t>();
      scalar_t *hs = h.mutable_data_ptr<scalar_t>(), *ys = y.mutable_data_ptr<scalar_t>();
      for_rows(n, H, [&](int64_t r) { Rows<scalar_t>::rnn_fwd(mode, p + r * H, hs + r * H, ys + r * H, H); });
    });
  }

  static void rnn_backward(int64_t mode, const at::Tensor& dh, const at::Tensor& y, at::Tensor& dpre) {
    const int64_t n = dh.size(0), H = dh.size(1);
    AT_DISPATCH_FLOATING_TYPES(dh.scalar_type(), "rnn_backward_cpu", [&] {
      const scalar_t *dhs = dh.const_data_ptr<scalar_t>(), *ys = y.const_data_ptr<scalar_t>();
      scalar_t* dp = dpre.mutable_data_ptr<scalar_t>();
      for_rows(n, H, [&](int64_t r) { Rows<scalar_t>::rnn_bwd(mode, dhs + r * H, ys + r * H, dp + r * H, H); });
    });
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> lstm_cell_fwd_cpu(const at::Tensor& gates, const at::Tensor& c) {
  return lstm_loop::cell_forward<CpuPointwise>(gates, c);
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_bwd_cpu(const at::Tensor& grad_m, const at::Tensor& grad_c_new,
                                                     const at::Tensor& gates, const at::Tensor& c,
                                                     const at::Tensor& c_new) {
  return lstm_loop::cell_backward<CpuPointwise>(grad_m, grad_c_new, gates, c, c_new);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_fwd_cpu(
    const at::Tensor& x, const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, at::IntArrayRef batch_sizes, int64_t mode, bool reverse) {
  return lstm_loop::forward<CpuPointwise>(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, mode, reverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& x,
    const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& y, const at::Tensor& gates, const at::Tensor& c_all,
    at::IntArrayRef batch_sizes, int64_t mode, bool reverse, bool has_bias) {
  return lstm_loop::backward<CpuPointwise>(grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, y, gates, c_all,
                                           batch_sizes, mode, reverse, has_bias);
}

}  // namespace fastflow
