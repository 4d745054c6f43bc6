// The pointwise work of one LSTM / RNN step on a run of one batch row, shared by the CPU kernels (lstm.cpp's loop
// and lstm_fused.cpp's tiled recurrence). Math: fastflow/reference/lstm.py.
//
// A run is `count` consecutive hidden units of one row; the four gates of unit j lie at g[j], g[stride + j],
// g[2·stride + j], g[3·stride + j] (stride = H for a whole row [4H], so a run starting at unit u0 passes
// g + u0). float32 uses fastmath.h's vectorising exp / expm1 (sigmoid(x) = 1/(1 + e^−x), tanh(x) =
// sign(x)·e/(e + 2) with e = expm1(2|x|), full relative precision near 0); its loops are compiled functions
// cloned per instruction set (lstm_rows.cpp). float64 inlines the templates with libm (not a speed path).
#pragma once

#include "fastmath.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fastflow::lstm_rows {

constexpr int64_t kTanh = 1, kReLU = 2;  // lstm_loop.h's mode numbers

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

// LSTM cell forward: c (in: c_{t−1}, out: c_t), c_out = c_t (the saved copy), m = o·tanh(c_t), m2 a second copy
// of m (the state buffer) or null.
template <typename T>
FF_INLINE void cell_forward(const T* __restrict g, int64_t stride, T* __restrict c, T* __restrict c_out,
                            T* __restrict m, T* __restrict m2, int64_t count) {
  for (int64_t j = 0; j < count; ++j) {
    const T i = sigmoid_(g[j]), f = sigmoid_(g[stride + j]), gg = tanh_(g[2 * stride + j]);
    const T o = sigmoid_(g[3 * stride + j]);
    const T cn = f * c[j] + i * gg;
    c[j] = cn;
    c_out[j] = cn;
    m[j] = o * tanh_(cn);
  }
  // The copy in a loop of its own: a branch inside the loop above would keep it from vectorising.
  if (m2 != nullptr) std::copy(m, m + count, m2);
}

// LSTM cell backward: dm = ∂L/∂m_t, dc (in: ∂L/∂c_t from later steps, out: ∂L/∂c_{t−1}), dg = ∂L/∂gates (the
// gates' layout, `stride` apart); m_out (optional) receives m_t recomputed (the projection's weight gradient).
template <typename T>
FF_INLINE void cell_backward(const T* __restrict dm, const T* __restrict g, int64_t stride,
                             const T* __restrict c_prev, const T* __restrict c_new, T* __restrict dc,
                             T* __restrict dg, T* __restrict m_out, int64_t count) {
  for (int64_t j = 0; j < count; ++j) {
    const T i = sigmoid_(g[j]), f = sigmoid_(g[stride + j]), gg = tanh_(g[2 * stride + j]);
    const T o = sigmoid_(g[3 * stride + j]);
    const T tc = tanh_(c_new[j]);
    const T dct = dc[j] + dm[j] * o * (T(1) - tc * tc);
    dg[j] = dct * gg * i * (T(1) - i);
    dg[stride + j] = dct * c_prev[j] * f * (T(1) - f);
    dg[2 * stride + j] = dct * i * (T(1) - gg * gg);
    dg[3 * stride + j] = dm[j] * tc * o * (T(1) - o);
    dc[j] = dct * f;
  }
  if (m_out != nullptr) {  // a loop of its own, as in cell_forward
    for (int64_t j = 0; j < count; ++j) m_out[j] = sigmoid_(g[3 * stride + j]) * tanh_(c_new[j]);
  }
}

// RNN forward: h = y = act(pre).
template <typename T, int64_t kMode>
FF_INLINE void rnn_forward(const T* __restrict pre, T* __restrict h, T* __restrict y, int64_t count) {
  for (int64_t j = 0; j < count; ++j) {
    const T v = kMode == kTanh ? tanh_(pre[j]) : relu_(pre[j]);
    h[j] = v;
    y[j] = v;
  }
}

// RNN backward: dpre = dh·(1 − h²) (tanh) or dh·[h > 0] (ReLU), h the step's output.
template <typename T, int64_t kMode>
FF_INLINE void rnn_backward(const T* __restrict dh, const T* __restrict h, T* __restrict dpre, int64_t count) {
  if constexpr (kMode == kTanh) {
    for (int64_t j = 0; j < count; ++j) dpre[j] = dh[j] * (T(1) - h[j] * h[j]);
  } else {
    for (int64_t j = 0; j < count; ++j) dpre[j] = h[j] > T(0) ? dh[j] : T(0);
  }
}

// The float32 loops, compiled once in lstm_rows.cpp and cloned per instruction set there (the clones and their
// dispatch live in that file: a caller that saw the target_clones attribute would expect clones of its own).
void f32_cell_forward(const float* g, int64_t stride, float* c, float* c_out, float* m, float* m2,
                                int64_t count);
void f32_cell_backward(const float* dm, const float* g, int64_t stride, const float* c_prev,
                                 const float* c_new, float* dc, float* dg, float* m_out, int64_t count);
void f32_rnn_forward(int64_t mode, const float* pre, float* h, float* y, int64_t count);
void f32_rnn_backward(int64_t mode, const float* dh, const float* h, float* dpre, int64_t count);

// One interface for both dtypes: Rows<T>::cell_fwd(...) etc.
template <typename T>
struct Rows {
  static void cell_fwd(const T* g, int64_t s, T* c, T* c_out, T* m, T* m2, int64_t n) {
    cell_forward<T>(g, s, c, c_out, m, m2, n);
  }
  static void cell_bwd(const T* dm, const T* g, int64_t s, const T* cp, const T* cn, T* dc, T* dg, T* mo,
                       int64_t n) {
    cell_backward<T>(dm, g, s, cp, cn, dc, dg, mo, n);
  }
  static void rnn_fwd(int64_t mode, const T* pre, T* h, T* y, int64_t n) {
    mode == kTanh ? rnn_forward<T, kTanh>(pre, h, y, n) : rnn_forward<T, kReLU>(pre, h, y, n);
  }
  static void rnn_bwd(int64_t mode, const T* dh, const T* h, T* dpre, int64_t n) {
    mode == kTanh ? rnn_backward<T, kTanh>(dh, h, dpre, n) : rnn_backward<T, kReLU>(dh, h, dpre, n);
  }
};

template <>
struct Rows<float> {
  static void cell_fwd(const float* g, int64_t s, float* c, float* c_out, float* m, float* m2, int64_t n) {
    f32_cell_forward(g, s, c, c_out, m, m2, n);
  }
  static void cell_bwd(const float* dm, const float* g, int64_t s, const float* cp, const float* cn, float* dc,
                       float* dg, float* mo, int64_t n) {
    f32_cell_backward(dm, g, s, cp, cn, dc, dg, mo, n);
  }
  static void rnn_fwd(int64_t mode, const float* pre, float* h, float* y, int64_t n) {
    f32_rnn_forward(mode, pre, h, y, n);
  }
  static void rnn_bwd(int64_t mode, const float* dh, const float* h, float* dpre, int64_t n) {
    f32_rnn_backward(mode, dh, h, dpre, n);
  }
};

}  // namespace fastflow::lstm_rows
