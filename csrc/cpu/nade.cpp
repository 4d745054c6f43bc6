// CPU kernels of the NADE op (see fastflow/ops/nade.py for the contract, fastflow/reference/nade.py for the math
// and for why the running pre-activation is an unevaluated sum hi + lo updated by TwoSum).
//
// Strategy. Everything is computed in float32 (float64 for float64 inputs) on contiguous copies: x [B, D], Wᵀ
// [D, H] (so that the column W[:, i] that step i adds is one contiguous row), V [D, H], c, b; 16-bit inputs are
// converted once (O(B·D + D·H) numbers, noise beside the O(B·D·H) scan).
//
// - Forward: rows of the batch in groups of kRows, spread over threads with at::parallel_for (rows are
//   independent: the result does not depend on the thread count). A group keeps its rows' running a = hi + lo
//   ([kRows, H], a few KB: L1) and walks the D dimensions; per row and step one fused pass over H computes
//   sigmoid(a), the dot with V[i] and the compensated update a += W[:, i]·x_i, a branch-free loop that GCC
//   vectorises (exp is fastmath.h's polynomial). A step whose x_i is 0 skips the update when W[:, i] is finite
//   (adding 0·w changes nothing then; a non-finite column is added, so that NaN propagates as the formula says).
//   The log-likelihood Σ x·l − softplus(l) is one vectorised pass over a row's logits at the end.
// - Backward: the reverse scan needs no logit (δ_i = g_i + g_p·(x_i − sigmoid(l_i)) comes from the saved logits),
//   so hidden units are independent: work items are (batch chunk, tile of kTile hidden units), each holding its
//   rows' hi, lo and G = Σ_{k>i} ∂L/∂a_k ([rows, kTile]) and walking i = D−1 … 0 from a_D = c + x·Wᵀ (one float64
//   GEMM, split into hi + lo). An item writes its own slabs of the partial sums — ∂L/∂W and ∂L/∂V per batch chunk
//   ([chunks, D, H]; chunks ≤ kMaxChunks, fixed by B alone), ∂L/∂c per chunk, ∂L/∂x per tile ([tiles, B, D]) —
//   which are summed in a fixed order at the end: no atomics, no dependence on the thread count, and never a
//   B·D·H tensor.
// - Sampling: the forward's groups, with the update applied after the decision x_i = (u_i < sigmoid(logit_i)).
#include "../nade.h"
#include "fastmath.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace fastflow {

namespace {

using fastmath::exp_nonpositive;
using fastmath::log1p_unit;

constexpr int64_t kRows = 4;         // forward / sampling: rows per group
constexpr int64_t kTile = 128;       // backward: hidden units per item
constexpr int64_t kMinChunkRows = 16;  // backward: rows per batch chunk, at least
constexpr int64_t kMaxChunks = 8;    // backward: batch chunks, at most (bounds the [chunks, D, H] partial sums)

// ------------------------------------------------------------------------------------------------------
// Argument checks.

at::ScalarType accumulation_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

const char* dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(dtype);
  }
}

void check_tensor(const at::Tensor& t, const char* name, at::IntArrayRef expected, const char* what) {
  TORCH_CHECK_VALUE(t.defined(), "fastflow nade: ", name, " is undefined");
  TORCH_CHECK_VALUE(t.device().is_cpu(), "fastflow nade (CPU kernel): ", name, " is on ", t.device(),
                    "; every tensor of one call must be on the CPU");
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                   "fastflow nade: ", name, " must be float32, float16, bfloat16 or float64, got ", dtype_name(dtype));
  TORCH_CHECK_VALUE(t.sizes() == expected, "fastflow nade: ", name, " must have shape ", expected, " (", what,
                    "), got ", t.sizes());
}

void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), "fastflow nade: ", name, " has dtype ",
                   dtype_name(t.scalar_type()), " but ", like_name, " has ", dtype_name(like.scalar_type()),
                   "; they must match");
}

// W, c, V, b against each other; returns (H, D).
std::pair<int64_t, int64_t> check_parameters(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V,
                                             const at::Tensor& b) {
  TORCH_CHECK_VALUE(W.defined() && W.dim() == 2, "fastflow nade: W must be a 2-d [H, D] tensor, got ",
                    W.defined() ? W.sizes() : at::IntArrayRef{});
  const int64_t hidden = W.size(0), dims = W.size(1);
  TORCH_CHECK_VALUE(hidden >= 1 && dims >= 1, "fastflow nade: W must be [H, D] with H >= 1 and D >= 1, got ",
                    W.sizes());
  check_tensor(W, "W", {hidden, dims}, "hidden units by dimensions");
  check_tensor(c, "c", {hidden}, "one bias per hidden unit");
  check_tensor(V, "V", {dims, hidden}, "dimensions by hidden units");
  check_tensor(b, "b", {dims}, "one bias per dimension");
  check_same_dtype(c, "c", W, "W");
  check_same_dtype(V, "V", W, "W");
  check_same_dtype(b, "b", W, "W");
  return {hidden, dims};
}

void check_data(const at::Tensor& t, const char* name, int64_t dims, const char* what) {
  TORCH_CHECK_VALUE(t.defined() && t.dim() == 2, "fastflow nade: ", name, " must be a 2-d [B, D] tensor (", what,
                    "), got ", t.defined() ? t.sizes() : at::IntArrayRef{});
  check_tensor(t, name, {t.size(0), dims}, what);
}

// ------------------------------------------------------------------------------------------------------
// Row loops over contiguous arrays of T (float or double).

// sigmoid(a) with e = exp(−|a|) and r = 1/(1 + e): sigmoid(a) = r (a ≥ 0) or e·r, sigmoid·(1 − sigmoid) = e·r².
template <typename T>
FF_INLINE T sigmoid_parts(T a, T& e, T& r) {
  e = exp_nonpositive(-std::abs(a));
  r = T(1) / (T(1) + e);
  return a >= T(0) ? r : e * r;
}

// Σ_h sigmoid(hi + lo)·v over one row; with kUpdate also (hi, lo) += w by TwoSum, in the same pass.
template <typename T, bool kUpdate>
FF_INLINE T forward_row(T* __restrict hi, T* __restrict lo, const T* __restrict v, const T* __restrict w, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t h = 0; h < n; ++h) {
    const T old = hi[h];
    T e, r;
    acc += sigmoid_parts(old + lo[h], e, r) * v[h];
    if constexpr (kUpdate) {
      const T s = old + w[h];
      const T w_virtual = s - old;
      lo[h] += (old - (s - w_virtual)) + (w[h] - w_virtual);
      hi[h] = s;
    }
  }
  return acc;
}

// (hi, lo) += w by TwoSum (sampling: the update comes after the decision).
template <typename T>
FF_INLINE void update_row(T* __restrict hi, T* __restrict lo, const T* __restrict w, int64_t n) {
#pragma omp simd
  for (int64_t h = 0; h < n; ++h) {
    const T old = hi[h];
    const T s = old + w[h];
    const T w_virtual = s - old;
    lo[h] += (old - (s - w_virtual)) + (w[h] - w_virtual);
    hi[h] = s;
  }
}

// One row of one reverse step: gw += x_i·G, returns G·w (∂L/∂x_i's indirect part); with kReverse (hi, lo) −= sub
// by TwoSum (a_{i+1} -> a_i); then gv += δ_i·h_i and G += δ_i·v·h_i·(1 − h_i), h_i = sigmoid(hi + lo).
template <typename T, bool kReverse>
FF_INLINE T backward_row(T* __restrict G, T* __restrict hi, T* __restrict lo, T* __restrict gw, T* __restrict gv,
                         const T* __restrict w, const T* __restrict sub, const T* __restrict v, T xi, T di,
                         int64_t n) {
  T dx = 0;
#pragma omp simd reduction(+ : dx)
  for (int64_t h = 0; h < n; ++h) {
    const T g = G[h];
    gw[h] += xi * g;
    dx += g * w[h];
    T high = hi[h], low = lo[h];
    if constexpr (kReverse) {
      const T m = -sub[h];
      const T s = high + m;
      const T m_virtual = s - high;
      low += (high - (s - m_virtual)) + (m - m_virtual);
      high = s;
      hi[h] = high;
      lo[h] = low;
    }
    T e, r;
    const T sg = sigmoid_parts(high + low, e, r);
    gv[h] += di * sg;
    G[h] = g + di * v[h] * (e * (r * r));
  }
  return dx;
}

// Σ_i x_i·l_i − softplus(l_i), softplus(l) = max(l, 0) + log1p(exp(−|l|)).
template <typename T>
FF_INLINE T log_prob_row(const T* __restrict logits, const T* __restrict x, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const T l = logits[i];
    const T e = exp_nonpositive(-std::abs(l));
    const T r = T(1) / (T(1) + e);
    acc += x[i] * l - (std::max(l, T(0)) + log1p_unit(e, r));
  }
  return acc;
}

// float32: one multiversioned function per loop (GCC vectorises each alone, not always when inlined together).
FF_CLONES float forward_row_f32_update(float* hi, float* lo, const float* v, const float* w, int64_t n) {
  return forward_row<float, true>(hi, lo, v, w, n);
}
FF_CLONES float forward_row_f32_dot(float* hi, float* lo, const float* v, int64_t n) {
  return forward_row<float, false>(hi, lo, v, nullptr, n);
}
FF_CLONES void update_row_f32(float* hi, float* lo, const float* w, int64_t n) { update_row<float>(hi, lo, w, n); }
FF_CLONES float backward_row_f32_reverse(float* G, float* hi, float* lo, float* gw, float* gv, const float* w,
                                         const float* sub, const float* v, float xi, float di, int64_t n) {
  return backward_row<float, true>(G, hi, lo, gw, gv, w, sub, v, xi, di, n);
}
FF_CLONES float backward_row_f32_keep(float* G, float* hi, float* lo, float* gw, float* gv, const float* w,
                                      const float* v, float xi, float di, int64_t n) {
  return backward_row<float, false>(G, hi, lo, gw, gv, w, nullptr, v, xi, di, n);
}
FF_CLONES float log_prob_row_f32(const float* logits, const float* x, int64_t n) {
  return log_prob_row<float>(logits, x, n);
}

// Overloads the scans call (float: the clones above; double: libm inside, not a speed path).
inline float step(float* hi, float* lo, const float* v, const float* w, int64_t n) {
  return w ? forward_row_f32_update(hi, lo, v, w, n) : forward_row_f32_dot(hi, lo, v, n);
}
inline double step(double* hi, double* lo, const double* v, const double* w, int64_t n) {
  return w ? forward_row<double, true>(hi, lo, v, w, n) : forward_row<double, false>(hi, lo, v, nullptr, n);
}
inline void update(float* hi, float* lo, const float* w, int64_t n) { update_row_f32(hi, lo, w, n); }
inline void update(double* hi, double* lo, const double* w, int64_t n) { update_row<double>(hi, lo, w, n); }
inline float reverse_step(float* G, float* hi, float* lo, float* gw, float* gv, const float* w, const float* sub,
                          const float* v, float xi, float di, int64_t n) {
  return sub ? backward_row_f32_reverse(G, hi, lo, gw, gv, w, sub, v, xi, di, n)
             : backward_row_f32_keep(G, hi, lo, gw, gv, w, v, xi, di, n);
}
inline double reverse_step(double* G, double* hi, double* lo, double* gw, double* gv, const double* w,
                           const double* sub, const double* v, double xi, double di, int64_t n) {
  return sub ? backward_row<double, true>(G, hi, lo, gw, gv, w, sub, v, xi, di, n)
             : backward_row<double, false>(G, hi, lo, gw, gv, w, nullptr, v, xi, di, n);
}
inline float row_log_prob(const float* logits, const float* x, int64_t n) { return log_prob_row_f32(logits, x, n); }
inline double row_log_prob(const double* logits, const double* x, int64_t n) { return log_prob_row<double>(logits, x, n); }

// What step i adds to a row's a: nothing (x_i = 0 and a finite column), the column itself (x_i = 1, the binary
// case: no product to round), or x_i·w written to `scaled` (any other value; stored, so that the product is
// rounded once and the same value is added and later subtracted, never fused into an FMA on one side only).
template <typename T>
FF_INLINE const T* addend(T xi, const T* w, bool finite, T* scaled, int64_t n) {
  if (xi == T(0) && finite) return nullptr;
  if (xi == T(1)) return w;
  for (int64_t h = 0; h < n; ++h) scaled[h] = xi * w[h];
  return scaled;
}

// 1 where the column W[:, i] (row i of Wᵀ) is finite everywhere.
template <typename T>
std::vector<uint8_t> finite_columns(const T* wt, int64_t dims, int64_t hidden) {
  std::vector<uint8_t> finite(static_cast<size_t>(dims));
  for (int64_t i = 0; i < dims; ++i) {
    bool ok = true;
    for (int64_t h = 0; h < hidden; ++h) ok &= std::isfinite(wt[i * hidden + h]);
    finite[i] = ok;
  }
  return finite;
}

// sigmoid(l) in T, as torch.sigmoid computes it to the last ulp or so (sampling's probabilities).
template <typename T>
FF_INLINE T probability(T l) {
  const T e = std::exp(-std::abs(l));
  return l >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

// ------------------------------------------------------------------------------------------------------
// The scans.

struct Sizes {
  int64_t batch, dims, hidden;
};

// x [B, D], wt [D, H], c [H], v [D, H], b [D] -> logits [B, D], log_prob [B].
template <typename T>
void forward_scan(const Sizes& s, const T* x, const T* wt, const T* c, const T* v, const T* b,
                  const uint8_t* finite, T* logits, T* log_prob) {
  const int64_t groups = (s.batch + kRows - 1) / kRows, H = s.hidden, D = s.dims;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> state(static_cast<size_t>(2 * kRows * H)), scaled(static_cast<size_t>(H));
    T* hi = state.data();
    T* lo = hi + kRows * H;
    for (int64_t group = begin; group < end; ++group) {
      const int64_t r0 = group * kRows, rows = std::min(kRows, s.batch - r0);
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(hi + r * H, c, static_cast<size_t>(H) * sizeof(T));
        std::fill(lo + r * H, lo + (r + 1) * H, T(0));
      }
      for (int64_t i = 0; i < D; ++i) {
        const T* w = wt + i * H;
        const T* vi = v + i * H;
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = r0 + r;
          const T* add = addend(x[row * D + i], w, finite[i] != 0, scaled.data(), H);
          logits[row * D + i] = b[i] + step(hi + r * H, lo + r * H, vi, add, H);
        }
      }
      for (int64_t r = 0; r < rows; ++r) log_prob[r0 + r] = row_log_prob(logits + (r0 + r) * D, x + (r0 + r) * D, D);
    }
  });
}

// u [B, D] -> x [B, D] (0/1 in T).
template <typename T>
void sample_scan(const Sizes& s, const T* u, const T* wt, const T* c, const T* v, const T* b, const uint8_t* finite,
                 T* out) {
  const int64_t groups = (s.batch + kRows - 1) / kRows, H = s.hidden, D = s.dims;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> state(static_cast<size_t>(2 * kRows * H)), scaled(static_cast<size_t>(H));
    T* hi = state.data();
    T* lo = hi + kRows * H;
    for (int64_t group = begin; group < end; ++group) {
      const int64_t r0 = group * kRows, rows = std::min(kRows, s.batch - r0);
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(hi + r * H, c, static_cast<size_t>(H) * sizeof(T));
        std::fill(lo + r * H, lo + (r + 1) * H, T(0));
      }
      for (int64_t i = 0; i < D; ++i) {
        const T* w = wt + i * H;
        const T* vi = v + i * H;
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = r0 + r;
          const T logit = b[i] + step(hi + r * H, lo + r * H, vi, static_cast<const T*>(nullptr), H);
          const T xi = u[row * D + i] < probability(logit) ? T(1) : T(0);
          out[row * D + i] = xi;
          const T* add = addend(xi, w, finite[i] != 0, scaled.data(), H);
          if (add) update(hi + r * H, lo + r * H, add, H);
        }
      }
    }
  });
}

// The reverse scan (see the file comment). hi0/lo0 [B, H]: a_D; delta [B, D]; outputs: gw/gv [chunks, D, H],
// gc [chunks, H], gx [tiles, B, D].
template <typename T>
void backward_scan(const Sizes& s, int64_t chunk_rows, int64_t chunks, const T* x, const T* wt, const T* v,
                   const T* delta, const T* hi0, const T* lo0, const uint8_t* finite, T* gw_part, T* gv_part,
                   T* gc_part, T* gx_part) {
  const int64_t H = s.hidden, D = s.dims, B = s.batch;
  const int64_t tiles = (H + kTile - 1) / kTile;
  at::parallel_for(0, chunks * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buffer;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t chunk = item / tiles, tile = item % tiles;
      const int64_t r0 = chunk * chunk_rows, rows = std::min(chunk_rows, B - r0);
      const int64_t h0 = tile * kTile, n = std::min(kTile, H - h0);
      buffer.assign(static_cast<size_t>(3 * rows * n + 3 * n), T(0));
      T* hi = buffer.data();
      T* lo = hi + rows * n;
      T* G = lo + rows * n;
      T* gw = G + rows * n;
      T* gv = gw + n;
      T* scaled = gv + n;
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(hi + r * n, hi0 + (r0 + r) * H + h0, static_cast<size_t>(n) * sizeof(T));
        std::memcpy(lo + r * n, lo0 + (r0 + r) * H + h0, static_cast<size_t>(n) * sizeof(T));
      }
      for (int64_t i = D - 1; i >= 0; --i) {
        const T* w = wt + i * H + h0;
        const T* vi = v + i * H + h0;
        std::fill(gw, gw + 2 * n, T(0));
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = r0 + r;
          const T xi = x[row * D + i];
          const T* sub = addend(xi, w, finite[i] != 0, scaled, n);
          gx_part[(tile * B + row) * D + i] =
              reverse_step(G + r * n, hi + r * n, lo + r * n, gw, gv, w, sub, vi, xi, delta[row * D + i], n);
        }
        std::memcpy(gw_part + (chunk * D + i) * H + h0, gw, static_cast<size_t>(n) * sizeof(T));
        std::memcpy(gv_part + (chunk * D + i) * H + h0, gv, static_cast<size_t>(n) * sizeof(T));
      }
      T* gc = gc_part + chunk * H + h0;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t h = 0; h < n; ++h) gc[h] += G[r * n + h];
      }
    }
  });
}

// Contiguous copies in the accumulation dtype (no copy when already so).
at::Tensor prepared(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> nade_fwd_cpu(const at::Tensor& x, const at::Tensor& W, const at::Tensor& c,
                                                const at::Tensor& V, const at::Tensor& b) {
  const auto [hidden, dims] = check_parameters(W, c, V, b);
  check_data(x, "x", dims, "a batch of binary vectors");
  check_same_dtype(x, "x", W, "W");
  const auto acc = accumulation_dtype(x.scalar_type());
  const int64_t batch = x.size(0);
  at::Tensor logits = at::empty({batch, dims}, x.options().dtype(acc));
  at::Tensor log_prob = at::empty({batch}, x.options().dtype(acc));
  if (batch == 0) return {logits, log_prob};
  const at::Tensor xs = prepared(x, acc), wt = prepared(W.t(), acc), cs = prepared(c, acc), vs = prepared(V, acc),
                   bs = prepared(b, acc);
  const Sizes sizes{batch, dims, hidden};
  AT_DISPATCH_FLOATING_TYPES(acc, "nade_fwd_cpu", [&] {
    const auto finite = finite_columns(wt.const_data_ptr<scalar_t>(), dims, hidden);
    forward_scan<scalar_t>(sizes, xs.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(),
                           cs.const_data_ptr<scalar_t>(), vs.const_data_ptr<scalar_t>(), bs.const_data_ptr<scalar_t>(),
                           finite.data(), logits.mutable_data_ptr<scalar_t>(), log_prob.mutable_data_ptr<scalar_t>());
  });
  return {logits, log_prob};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> nade_bwd_cpu(
    const at::Tensor& grad_logits, const at::Tensor& grad_log_prob, const at::Tensor& x, const at::Tensor& W,
    const at::Tensor& c, const at::Tensor& V, const at::Tensor& b, const at::Tensor& logits) {
  const auto [hidden, dims] = check_parameters(W, c, V, b);
  check_data(x, "x", dims, "the forward's input");
  check_same_dtype(x, "x", W, "W");
  const int64_t batch = x.size(0);
  check_tensor(logits, "logits", {batch, dims}, "the forward's logits");
  check_tensor(grad_logits, "grad_logits", {batch, dims}, "the gradient of the logits");
  check_tensor(grad_log_prob, "grad_log_prob", {batch}, "the gradient of log_prob");
  const auto acc = accumulation_dtype(x.scalar_type());
  if (batch == 0) {
    return {at::empty({0, dims}, x.options()), at::zeros(W.sizes(), W.options()), at::zeros(c.sizes(), c.options()),
            at::zeros(V.sizes(), V.options()), at::zeros(b.sizes(), b.options())};
  }
  const at::Tensor xs = prepared(x, acc), wt = prepared(W.t(), acc), vs = prepared(V, acc);
  const at::Tensor ls = prepared(logits, acc), gp = prepared(grad_log_prob, acc);
  // δ_i = g_i + g_p·(x_i − sigmoid(l_i)): each logit's whole gradient, from the saved logits.
  const at::Tensor delta = prepared(grad_logits, acc).add(gp.unsqueeze(1).mul(xs.sub(at::sigmoid(ls)))).contiguous();
  // a_D = c + x·Wᵀ in float64, split into hi + lo: where the reverse scan starts.
  const at::Tensor exact = at::addmm(c.to(at::kDouble), x.to(at::kDouble), W.to(at::kDouble).t());
  const at::Tensor hi0 = exact.to(acc).contiguous();
  const at::Tensor lo0 = exact.sub(hi0.to(at::kDouble)).to(acc).contiguous();

  const int64_t chunks_wanted = std::min<int64_t>(kMaxChunks, std::max<int64_t>(1, batch / kMinChunkRows));
  const int64_t chunk_rows = (batch + chunks_wanted - 1) / chunks_wanted;
  const int64_t chunks = (batch + chunk_rows - 1) / chunk_rows;
  const int64_t tiles = (hidden + kTile - 1) / kTile;
  const auto options = x.options().dtype(acc);
  at::Tensor gw_part = at::empty({chunks, dims, hidden}, options);
  at::Tensor gv_part = at::empty({chunks, dims, hidden}, options);
  at::Tensor gc_part = at::zeros({chunks, hidden}, options);
  at::Tensor gx_part = at::empty({tiles, batch, dims}, options);
  const Sizes sizes{batch, dims, hidden};
  AT_DISPATCH_FLOATING_TYPES(acc, "nade_bwd_cpu", [&] {
    const auto finite = finite_columns(wt.const_data_ptr<scalar_t>(), dims, hidden);
    backward_scan<scalar_t>(sizes, chunk_rows, chunks, xs.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(),
                            vs.const_data_ptr<scalar_t>(), delta.const_data_ptr<scalar_t>(),
                            hi0.const_data_ptr<scalar_t>(), lo0.const_data_ptr<scalar_t>(), finite.data(),
                            gw_part.mutable_data_ptr<scalar_t>(), gv_part.mutable_data_ptr<scalar_t>(),
                            gc_part.mutable_data_ptr<scalar_t>(), gx_part.mutable_data_ptr<scalar_t>());
  });
  at::Tensor grad_x = at::sum(gx_part, {0}).add(gp.unsqueeze(1).mul(ls)).to(x.scalar_type()).contiguous();
  at::Tensor grad_W = at::sum(gw_part, {0}).t().to(W.scalar_type()).contiguous();
  at::Tensor grad_c = at::sum(gc_part, {0}).to(c.scalar_type()).contiguous();
  at::Tensor grad_V = at::sum(gv_part, {0}).to(V.scalar_type()).contiguous();
  at::Tensor grad_b = at::sum(delta, {0}).to(b.scalar_type()).contiguous();
  return {grad_x, grad_W, grad_c, grad_V, grad_b};
}

at::Tensor nade_sample_cpu(const at::Tensor& W, const at::Tensor& c, const at::Tensor& V, const at::Tensor& b,
                           const at::Tensor& u) {
  const auto [hidden, dims] = check_parameters(W, c, V, b);
  check_data(u, "u", dims, "uniforms in [0, 1), one per dimension");
  const auto acc = accumulation_dtype(W.scalar_type());
  const int64_t batch = u.size(0);
  if (batch == 0) return at::empty({0, dims}, W.options());
  const at::Tensor us = prepared(u, acc), wt = prepared(W.t(), acc), cs = prepared(c, acc), vs = prepared(V, acc),
                   bs = prepared(b, acc);
  at::Tensor out = at::empty({batch, dims}, W.options().dtype(acc));
  const Sizes sizes{batch, dims, hidden};
  AT_DISPATCH_FLOATING_TYPES(acc, "nade_sample_cpu", [&] {
    const auto finite = finite_columns(wt.const_data_ptr<scalar_t>(), dims, hidden);
    sample_scan<scalar_t>(sizes, us.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(),
                          cs.const_data_ptr<scalar_t>(), vs.const_data_ptr<scalar_t>(), bs.const_data_ptr<scalar_t>(),
                          finite.data(), out.mutable_data_ptr<scalar_t>());
  });
  return out.scalar_type() == W.scalar_type() ? out : out.to(W.scalar_type());
}

}  // namespace fastflow
