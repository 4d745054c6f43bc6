// CPU kernels of the LSTM / RNN ops (contract: fastflow/ops/lstm.py; math: fastflow/reference/lstm.py).
//
// Strategy. The GEMMs are ATen's (MKL / oneDNN): the input projection of every step as one GEMM before the
// loop, one GEMM per step for W_hh (and W_hr), and in the backward every weight gradient as one GEMM over all
// steps after the loop. Between them, the pointwise work of a step — LSTM: three sigmoids, two tanh, the state
// update; RNN: the activation — is one pass over the step's rows here, instead of the dozen ATen kernels
// (chunk, sigmoid, tanh, mul, add, ...) that a composite cell launches, each reading and writing [B, 4H]. The
// float32 passes use fastmath.h's vectorising exp / expm1 (sigmoid(x) = 1/(1 + e^−x), tanh(x) = sign(x)·e/(e + 2)
// with e = expm1(2|x|), full relative precision near 0); float64 uses libm. Rows are spread over threads with
// at::parallel_for: each row is independent, so the result does not depend on the thread count.
//
// The loop over time steps, its GEMMs and the packed layout are lstm_loop.h's, shared with the CUDA kernels; this
// file is its CPU pointwise Policy.
#include "../lstm.h"
#include "../lstm_loop.h"
#include "dtypes.h"
#include "fastmath.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fastflow {

namespace {

using lstm_loop::kReLU;
using lstm_loop::kTanh;
// Rows per parallel chunk: at least this many numbers of pointwise work per chunk (thread start-up is a few µs).
constexpr int64_t kGrainNumbers = 16384;

// ------------------------------------------------------------------------------------------------------
// Activations.

template <typename T>
FF_INLINE T sigmoid_(T x);
template <>
FF_INLINE float sigmoid_(float x) { return 1.f / (1.f + fastmath::exp_bounded(-x)); }
template <>
FF_INLINE double sigmoid_(double x) { return 1. / (1. + std::exp(-x)); }

template <typename T>
FF_INLINE T tanh_(T x);
template <>
FF_INLINE float tanh_(float x) {
  // 2|x| clamped to 40: expm1(40)/(expm1(40) + 2) rounds to 1, as tanh does from |x| ≈ 9.
  const float e = fastmath::expm1_(std::min(2.f * std::fabs(x), 40.f));
  return std::copysign(e / (e + 2.f), x);
}
template <>
FF_INLINE double tanh_(double x) { return std::tanh(x); }

template <typename T>
FF_INLINE T relu_(T x) { return x < T(0) ? T(0) : x; }  // NaN stays NaN, as torch.relu

// ------------------------------------------------------------------------------------------------------
// Row loops over contiguous arrays of T (one row of a step).

// LSTM cell forward: c (in: c_{t−1}, out: c_t), c_out = c_t (the saved copy), m = o·tanh(c_t), m2 a second
// copy of m (the state buffer) or null.
template <typename T>
FF_INLINE void cell_forward(const T* __restrict g, T* __restrict c, T* __restrict c_out, T* __restrict m,
                            T* __restrict m2, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = sigmoid_(g[j]), f = sigmoid_(g[H + j]), gg = tanh_(g[2 * H + j]), o = sigmoid_(g[3 * H + j]);
    const T cn = f * c[j] + i * gg;
    c[j] = cn;
    c_out[j] = cn;
    const T v = o * tanh_(cn);
    m[j] = v;
    if (m2 != nullptr) m2[j] = v;
  }
}

// LSTM cell backward: dm = ∂L/∂m_t, dc (in: ∂L/∂c_t from later steps, out: ∂L/∂c_{t−1}), dg = ∂L/∂gates;
// m_out (optional) receives m_t recomputed (the projection's weight gradient needs it).
template <typename T>
FF_INLINE void cell_backward(const T* __restrict dm, const T* __restrict g, const T* __restrict c_prev,
                             const T* __restrict c_new, T* __restrict dc, T* __restrict dg, T* __restrict m_out,
                             int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = sigmoid_(g[j]), f = sigmoid_(g[H + j]), gg = tanh_(g[2 * H + j]), o = sigmoid_(g[3 * H + j]);
    const T tc = tanh_(c_new[j]);
    const T dct = dc[j] + dm[j] * o * (T(1) - tc * tc);
    dg[j] = dct * gg * i * (T(1) - i);
    dg[H + j] = dct * c_prev[j] * f * (T(1) - f);
    dg[2 * H + j] = dct * i * (T(1) - gg * gg);
    dg[3 * H + j] = dm[j] * tc * o * (T(1) - o);
    dc[j] = dct * f;
    if (m_out != nullptr) m_out[j] = o * tc;
  }
}

template <typename T, int64_t kMode>
FF_INLINE void rnn_forward(const T* __restrict pre, T* __restrict h, T* __restrict y, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T v = kMode == kTanh ? tanh_(pre[j]) : relu_(pre[j]);
    h[j] = v;
    y[j] = v;
  }
}

// dpre = dh·(1 − h²) (tanh) or dh·[h > 0] (ReLU), h the step's output.
template <typename T, int64_t kMode>
FF_INLINE void rnn_backward(const T* __restrict dh, const T* __restrict h, T* __restrict dpre, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    dpre[j] = kMode == kTanh ? dh[j] * (T(1) - h[j] * h[j]) : (h[j] > T(0) ? dh[j] : T(0));
  }
}

// The float32 loops as compiled functions, cloned per instruction set (fastmath.h's FF_CLONES); float64 inlines
// the templates (libm inside; not a speed path).
FF_CLONES void f32_cell_forward(const float* g, float* c, float* c_out, float* m, float* m2, int64_t H) {
  cell_forward<float>(g, c, c_out, m, m2, H);
}
FF_CLONES void f32_cell_backward(const float* dm, const float* g, const float* c_prev, const float* c_new,
                                 float* dc, float* dg, float* m_out, int64_t H) {
  cell_backward<float>(dm, g, c_prev, c_new, dc, dg, m_out, H);
}
FF_CLONES void f32_tanh_forward(const float* pre, float* h, float* y, int64_t H) {
  rnn_forward<float, kTanh>(pre, h, y, H);
}
FF_CLONES void f32_relu_forward(const float* pre, float* h, float* y, int64_t H) {
  rnn_forward<float, kReLU>(pre, h, y, H);
}
FF_CLONES void f32_tanh_backward(const float* dh, const float* h, float* dpre, int64_t H) {
  rnn_backward<float, kTanh>(dh, h, dpre, H);
}
FF_CLONES void f32_relu_backward(const float* dh, const float* h, float* dpre, int64_t H) {
  rnn_backward<float, kReLU>(dh, h, dpre, H);
}

template <typename T>
struct Rows {
  static void cell_fwd(const T* g, T* c, T* c_out, T* m, T* m2, int64_t H) { cell_forward<T>(g, c, c_out, m, m2, H); }
  static void cell_bwd(const T* dm, const T* g, const T* cp, const T* cn, T* dc, T* dg, T* mo, int64_t H) {
    cell_backward<T>(dm, g, cp, cn, dc, dg, mo, H);
  }
  static void rnn_fwd(int64_t mode, const T* pre, T* h, T* y, int64_t H) {
    mode == kTanh ? rnn_forward<T, kTanh>(pre, h, y, H) : rnn_forward<T, kReLU>(pre, h, y, H);
  }
  static void rnn_bwd(int64_t mode, const T* dh, const T* h, T* dpre, int64_t H) {
    mode == kTanh ? rnn_backward<T, kTanh>(dh, h, dpre, H) : rnn_backward<T, kReLU>(dh, h, dpre, H);
  }
};

template <>
struct Rows<float> {
  static void cell_fwd(const float* g, float* c, float* c_out, float* m, float* m2, int64_t H) {
    f32_cell_forward(g, c, c_out, m, m2, H);
  }
  static void cell_bwd(const float* dm, const float* g, const float* cp, const float* cn, float* dc, float* dg,
                       float* mo, int64_t H) {
    f32_cell_backward(dm, g, cp, cn, dc, dg, mo, H);
  }
  static void rnn_fwd(int64_t mode, const float* pre, float* h, float* y, int64_t H) {
    mode == kTanh ? f32_tanh_forward(pre, h, y, H) : f32_relu_forward(pre, h, y, H);
  }
  static void rnn_bwd(int64_t mode, const float* dh, const float* h, float* dpre, int64_t H) {
    mode == kTanh ? f32_tanh_backward(dh, h, dpre, H) : f32_relu_backward(dh, h, dpre, H);
  }
};

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
        Rows<scalar_t>::cell_fwd(g + r * 4 * H, cs + r * H, co + r * H, ms + r * H,
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
        Rows<scalar_t>::cell_bwd(dms + r * H, g + r * 4 * H, c_prev, cn + r * H, dcs + r * H, dgs + r * 4 * H,
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
