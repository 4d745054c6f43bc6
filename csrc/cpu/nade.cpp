// CPU kernels of the NADE op (see fastflow/ops/nade.py for the contract, fastflow/reference/nade.py for the math
// and for why the running pre-activation is an unevaluated sum hi + lo updated by TwoSum).
//
// Strategy. Everything is computed in float32 (float64 for float64 inputs) on contiguous copies: x [B, D], Wᵀ
// [D, H] (so that the column W[:, i] that step i adds is one contiguous row), V [D, H], c, b, with H padded to a
// multiple of kLanes by zero hidden units; 16-bit inputs are converted once (O(B·D + D·H) numbers, noise beside
// the O(B·D·H) scan).
//
// - Forward: rows of the batch in groups of kRows, spread over threads with at::parallel_for (rows are
//   independent: the result does not depend on the thread count). A group keeps its rows' running a = hi + lo
//   and h = sigmoid(a) ([kRows, H] each, L1) and walks the D dimensions. A step whose x_i is 0 leaves a as it is
//   (when W[:, i] is finite: adding 0·w changes nothing then; a non-finite column is added, so that NaN
//   propagates as the formula says), so h stays valid and the step is one dot V[i]·h; after a step that changed
//   a, one fused pass computes sigmoid(a) (exp is fastmath.h's polynomial), its dot with V[i] and, where x_i ≠ 0,
//   the compensated update a += W[:, i]·x_i. Branch-free loops that GCC vectorises. The log-likelihood
//   Σ x·l − softplus(l) is one vectorised pass over a row's logits at the end.
// - Backward: the reverse scan needs no logit (δ_i = g_i + g_p·(x_i − sigmoid(l_i)) comes from the saved logits),
//   so hidden units are independent: work items are (batch chunk, tile of kTile hidden units), each holding its
//   rows' hi, lo, h, h·(1 − h) and G = Σ_{k>i} ∂L/∂a_k ([rows, kTile]). An item first rebuilds a_D = c + x·Wᵀ by
//   the forward's own compensated updates, then walks i = D−1 … 0, recomputing h only where x_i ≠ 0 changed a.
//   It writes its own slabs of the partial sums — ∂L/∂W and ∂L/∂V per batch chunk ([chunks, D, H]; chunks ≤
//   kMaxChunks, fixed by B alone), ∂L/∂c per chunk, ∂L/∂x per tile ([tiles, B, D]) — which are summed in a fixed
//   order at the end: no atomics, no dependence on the thread count, and never a B·D·H tensor.
// - Sampling: the forward's groups, with the decision x_i = (u_i < sigmoid(logit_i)) before the update, which is
//   fused into the next step's pass.
#include "../nade.h"
#include "dtypes.h"
#include "fastmath.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace fastflow {

namespace {

using fastmath::exp_bounded;
using fastmath::exp_nonpositive;
using fastmath::log1p_unit;

constexpr int64_t kRows = 4;         // forward: rows per group
constexpr int64_t kSampleRows = 8;   // sampling: rows per group (independent chains of decisions to overlap)
constexpr int64_t kTile = 512;       // backward: hidden units per item
constexpr int64_t kMinChunkRows = 64;  // backward: rows per batch chunk, at least
constexpr int64_t kMaxChunks = 8;    // backward: batch chunks, at most (bounds the [chunks, D, H] partial sums)
// H is padded to a multiple of this with hidden units whose W, c and V are 0 (each adds 0 to every logit): the
// row loops run in whole blocks of kLanes, with no scalar remainder (at H = 500, 4 units after 31 AVX-512
// vectors, each paying a scalar exp and division).
constexpr int64_t kLanes = 16;

// ------------------------------------------------------------------------------------------------------
// Argument checks.

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
//
// Where x_i = 0 (most steps: binarised MNIST has 13 % ones) a_{i+1} = a_i, so h = sigmoid(a) is unchanged: the
// scans keep each row's h (and, backward, h·(1 − h)) and recompute it only after a step that changed a. A step
// with an unchanged a is then a dot product (forward) or a few multiply-adds (backward) per hidden unit instead
// of an exp and a division; the cached values are the ones a recomputation would give, bit for bit.

// sigmoid(a) = r = 1/(1 + e), e = exp(−a), and sigmoid·(1 − sigmoid) = e·r² (accurate also where sigmoid is
// near 1). No |a| and no select: the fewest vector operations per hidden unit, which bound the recomputing
// loops. exp_bounded clamps −a to [−86.6, 80]: for a < −80 sigmoid comes back as 1.8e-35 instead of smaller,
// an absolute error that no sum over H units can see.
template <typename T>
FF_INLINE T sigmoid_parts(T a, T& e, T& r) {
  e = exp_bounded(-a);
  r = T(1) / (T(1) + e);
  return r;
}

// (hi, lo) += w by TwoSum.
template <typename T>
FF_INLINE void two_sum_add(T& hi, T& lo, T w) {
  const T old = hi;
  const T s = old + w;
  const T w_virtual = s - old;
  lo += (old - (s - w_virtual)) + (w - w_virtual);
  hi = s;
}

// Σ of the N values of acc, pairwise in a fixed order (constant trip counts: unrolled, in registers).
template <typename T, int64_t N>
FF_INLINE T tree_sum(T* acc) {
  if constexpr (N == 1) {
    return acc[0];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < N / 2; ++j) acc[j] += acc[j + N / 2];
    return tree_sum<T, N / 2>(acc);
  }
}

// The row loops run over H (a multiple of kLanes: padded) in blocks of kLanes, each lane with its own partial
// sum, summed by tree_sum at the end: an OpenMP reduction's epilogue (16 dependent scalar additions through the
// stack) was as long as a cached row's 32 vector products.
//
// Where a sigmoid pass applies (hi, lo) += w: not at all, after the sigmoid (the forward: step i's dot, then its
// update), or before it (sampling: the previous step's update fused into this step's dot).
enum class Update { kNone, kAfter, kBefore };

// Σ_h sigmoid(hi + lo)·v over one row, with (hi, lo) += w where kUpdate says; with kStore also hc = the sigmoid.
template <typename T, Update kUpdate, bool kStore>
FF_INLINE T sigmoid_dot(T* __restrict hi, T* __restrict lo, T* __restrict hc, const T* __restrict v,
                        const T* __restrict w, int64_t n) {
  T acc[kLanes] = {};
  for (int64_t h0 = 0; h0 < n; h0 += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) {
      const int64_t h = h0 + j;
      if constexpr (kUpdate == Update::kBefore) two_sum_add(hi[h], lo[h], w[h]);
      T e, r;
      const T sg = sigmoid_parts(hi[h] + lo[h], e, r);
      if constexpr (kStore) hc[h] = sg;
      acc[j] += sg * v[h];
      if constexpr (kUpdate == Update::kAfter) two_sum_add(hi[h], lo[h], w[h]);
    }
  }
  return tree_sum<T, kLanes>(acc);
}

// Σ_h hc·v, n a multiple of kLanes (H is padded): 4·kLanes independent partial sums (four vector registers on
// AVX-512, so that the multiply-adds do not wait on each other's latency) and a short pairwise tree at the end,
// instead of an OpenMP reduction's one chain and serial epilogue, as long as the products themselves at H = 512.
template <typename T>
FF_INLINE T cached_dot(const T* __restrict hc, const T* __restrict v, int64_t n) {
  constexpr int64_t kWide = 4 * kLanes;
  T acc[kWide] = {};
  int64_t h0 = 0;
  for (; h0 + kWide <= n; h0 += kWide) {
#pragma omp simd
    for (int64_t j = 0; j < kWide; ++j) acc[j] += hc[h0 + j] * v[h0 + j];
  }
  for (; h0 < n; h0 += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += hc[h0 + j] * v[h0 + j];
  }
  return tree_sum<T, kWide>(acc);
}

template <typename T>
FF_INLINE void update_row(T* __restrict hi, T* __restrict lo, const T* __restrict w, int64_t n) {
#pragma omp simd
  for (int64_t h = 0; h < n; ++h) two_sum_add(hi[h], lo[h], w[h]);
}

// One row of one reverse step, returning G·w (∂L/∂x_i's indirect part):
// - with kWeights gw += x_i·G (without, where x_i = 0, the term is left out: it is 0 while G is finite, which
//   the scan verifies);
// - with kRecompute h_i and h_i·(1 − h_i) are computed from (hi, lo) into hc, sc — after (hi, lo) −= sub by
//   TwoSum (a_{i+1} -> a_i) with kReverse — and otherwise read from hc, sc (a_i = a_{i+1});
// - then gv += δ_i·h_i and G += δ_i·v·h_i·(1 − h_i).
template <typename T, bool kReverse, bool kRecompute, bool kWeights>
FF_INLINE T backward_row(T* __restrict G, T* __restrict hi, T* __restrict lo, T* __restrict hc, T* __restrict sc,
                         T* __restrict gw, T* __restrict gv, const T* __restrict w, const T* __restrict sub,
                         const T* __restrict v, T xi, T di, int64_t n) {
  static_assert(kRecompute || !kReverse, "a changed a needs its sigmoid recomputed");
  T dx[kLanes] = {};
  for (int64_t h0 = 0; h0 < n; h0 += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) {
      const int64_t h = h0 + j;
      const T g = G[h];
      if constexpr (kWeights) gw[h] += xi * g;
      dx[j] += g * w[h];
      T sg, slope;
      if constexpr (kRecompute) {
        T high = hi[h], low = lo[h];
        if constexpr (kReverse) {
          two_sum_add(high, low, -sub[h]);
          hi[h] = high;
          lo[h] = low;
        }
        T e, r;
        sg = sigmoid_parts(high + low, e, r);
        slope = e * (r * r);
        hc[h] = sg;
        sc[h] = slope;
      } else {
        sg = hc[h];
        slope = sc[h];
      }
      gv[h] += di * sg;
      G[h] = g + di * v[h] * slope;
    }
  }
  return tree_sum<T, kLanes>(dx);
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

// The row loops as the scans call them: Rows<double> inlines the templates (libm inside, not a speed path);
// Rows<float> calls one multiversioned function per loop (GCC vectorises each alone, not always when inlined
// together).
template <typename T>
struct Rows {
  static T sigmoid_dot_update(T* hi, T* lo, const T* v, const T* w, int64_t n) {
    return sigmoid_dot<T, Update::kAfter, false>(hi, lo, nullptr, v, w, n);
  }
  static T sigmoid_dot_store(T* hi, T* lo, T* hc, const T* v, int64_t n) {
    return sigmoid_dot<T, Update::kNone, true>(hi, lo, hc, v, nullptr, n);
  }
  static T update_sigmoid_dot(T* hi, T* lo, T* hc, const T* v, const T* w, int64_t n) {
    return sigmoid_dot<T, Update::kBefore, true>(hi, lo, hc, v, w, n);
  }
  static T cached_dot(const T* hc, const T* v, int64_t n) { return fastflow::cached_dot<T>(hc, v, n); }
  static void update(T* hi, T* lo, const T* w, int64_t n) { update_row<T>(hi, lo, w, n); }
  static T log_prob(const T* logits, const T* x, int64_t n) { return log_prob_row<T>(logits, x, n); }
  // sub: what step i added (nullptr: nothing, x_i = 0); recompute: hc, sc do not hold a_i's values; weights:
  // accumulate x_i·G into gw also where x_i = 0.
  static T backward(T* G, T* hi, T* lo, T* hc, T* sc, T* gw, T* gv, const T* w, const T* sub, const T* v, T xi,
                    T di, bool recompute, bool weights, int64_t n) {
    if (sub) return backward_row<T, true, true, true>(G, hi, lo, hc, sc, gw, gv, w, sub, v, xi, di, n);
    if (recompute) {
      return weights ? backward_row<T, false, true, true>(G, hi, lo, hc, sc, gw, gv, w, nullptr, v, xi, di, n)
                     : backward_row<T, false, true, false>(G, hi, lo, hc, sc, gw, gv, w, nullptr, v, xi, di, n);
    }
    return weights ? backward_row<T, false, false, true>(G, hi, lo, hc, sc, gw, gv, w, nullptr, v, xi, di, n)
                   : backward_row<T, false, false, false>(G, hi, lo, hc, sc, gw, gv, w, nullptr, v, xi, di, n);
  }
};

FF_CLONES float f32_sigmoid_dot_update(float* hi, float* lo, const float* v, const float* w, int64_t n) {
  return sigmoid_dot<float, Update::kAfter, false>(hi, lo, nullptr, v, w, n);
}
FF_CLONES float f32_sigmoid_dot_store(float* hi, float* lo, float* hc, const float* v, int64_t n) {
  return sigmoid_dot<float, Update::kNone, true>(hi, lo, hc, v, nullptr, n);
}
FF_CLONES float f32_update_sigmoid_dot(float* hi, float* lo, float* hc, const float* v, const float* w, int64_t n) {
  return sigmoid_dot<float, Update::kBefore, true>(hi, lo, hc, v, w, n);
}
FF_CLONES float f32_cached_dot(const float* hc, const float* v, int64_t n) { return cached_dot<float>(hc, v, n); }
FF_CLONES void f32_update(float* hi, float* lo, const float* w, int64_t n) { update_row<float>(hi, lo, w, n); }
FF_CLONES float f32_log_prob(const float* logits, const float* x, int64_t n) {
  return log_prob_row<float>(logits, x, n);
}
#define FF_NADE_BACKWARD_CLONE(name, reverse, recompute, weights)                                                \
  FF_CLONES float name(float* G, float* hi, float* lo, float* hc, float* sc, float* gw, float* gv, const float* w, \
                       const float* sub, const float* v, float xi, float di, int64_t n) {                        \
    return backward_row<float, reverse, recompute, weights>(G, hi, lo, hc, sc, gw, gv, w, sub, v, xi, di, n);    \
  }
FF_NADE_BACKWARD_CLONE(f32_backward_reverse, true, true, true)
FF_NADE_BACKWARD_CLONE(f32_backward_recompute_weights, false, true, true)
FF_NADE_BACKWARD_CLONE(f32_backward_recompute, false, true, false)
FF_NADE_BACKWARD_CLONE(f32_backward_cached_weights, false, false, true)
FF_NADE_BACKWARD_CLONE(f32_backward_cached, false, false, false)
#undef FF_NADE_BACKWARD_CLONE

template <>
struct Rows<float> {
  static float sigmoid_dot_update(float* hi, float* lo, const float* v, const float* w, int64_t n) {
    return f32_sigmoid_dot_update(hi, lo, v, w, n);
  }
  static float sigmoid_dot_store(float* hi, float* lo, float* hc, const float* v, int64_t n) {
    return f32_sigmoid_dot_store(hi, lo, hc, v, n);
  }
  static float update_sigmoid_dot(float* hi, float* lo, float* hc, const float* v, const float* w, int64_t n) {
    return f32_update_sigmoid_dot(hi, lo, hc, v, w, n);
  }
  static float cached_dot(const float* hc, const float* v, int64_t n) { return f32_cached_dot(hc, v, n); }
  static void update(float* hi, float* lo, const float* w, int64_t n) { f32_update(hi, lo, w, n); }
  static float log_prob(const float* logits, const float* x, int64_t n) { return f32_log_prob(logits, x, n); }
  static float backward(float* G, float* hi, float* lo, float* hc, float* sc, float* gw, float* gv, const float* w,
                        const float* sub, const float* v, float xi, float di, bool recompute, bool weights,
                        int64_t n) {
    if (sub) return f32_backward_reverse(G, hi, lo, hc, sc, gw, gv, w, sub, v, xi, di, n);
    if (recompute) {
      return weights ? f32_backward_recompute_weights(G, hi, lo, hc, sc, gw, gv, w, nullptr, v, xi, di, n)
                     : f32_backward_recompute(G, hi, lo, hc, sc, gw, gv, w, nullptr, v, xi, di, n);
    }
    return weights ? f32_backward_cached_weights(G, hi, lo, hc, sc, gw, gv, w, nullptr, v, xi, di, n)
                   : f32_backward_cached(G, hi, lo, hc, sc, gw, gv, w, nullptr, v, xi, di, n);
  }
};

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

// sigmoid(l) in T within an ulp or two of torch.sigmoid (sampling's probabilities): fastmath's exp inlined
// for float (libm's expf, called once per row and step, was a tenth of the sampler's time), libm for double.
template <typename T>
FF_INLINE T probability(T l) {
  const T e = exp_bounded(-l);
  return T(1) / (T(1) + e);
}

// ------------------------------------------------------------------------------------------------------
// The scans.

struct Sizes {
  int64_t batch, dims, hidden;
};

// A group of up to R rows' running state: a = hi + lo and the cached h = sigmoid(a) ([R, H] each), and per row
// whether h is a's.
template <typename T, int64_t R>
struct GroupState {
  explicit GroupState(int64_t hidden) : H(hidden), buffer(static_cast<size_t>((3 * R + 1) * hidden)) {}
  T* hi(int64_t r) { return buffer.data() + r * H; }
  T* lo(int64_t r) { return buffer.data() + (R + r) * H; }
  T* hc(int64_t r) { return buffer.data() + (2 * R + r) * H; }
  T* scaled() { return buffer.data() + 3 * R * H; }  // one row: addend's x_i·w
  void start(int64_t rows, const T* c) {
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(hi(r), c, static_cast<size_t>(H) * sizeof(T));
      std::fill(lo(r), lo(r) + H, T(0));
      fresh[r] = false;
    }
  }
  int64_t H;
  std::vector<T> buffer;
  bool fresh[R] = {};
};

// x [B, D], wt [D, H], c [H], v [D, H], b [D] -> logits [B, D], log_prob [B].
template <typename T>
void forward_scan(const Sizes& s, const T* x, const T* wt, const T* c, const T* v, const T* b,
                  const uint8_t* finite, T* logits, T* log_prob) {
  const int64_t groups = (s.batch + kRows - 1) / kRows, H = s.hidden, D = s.dims;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    GroupState<T, kRows> state(H);
    for (int64_t group = begin; group < end; ++group) {
      const int64_t r0 = group * kRows, rows = std::min(kRows, s.batch - r0);
      state.start(rows, c);
      for (int64_t i = 0; i < D; ++i) {
        const T* w = wt + i * H;
        const T* vi = v + i * H;
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = r0 + r;
          const T* add = addend(x[row * D + i], w, finite[i] != 0, state.scaled(), H);
          T dot;
          if (state.fresh[r]) {
            dot = Rows<T>::cached_dot(state.hc(r), vi, H);
            if (add) {
              Rows<T>::update(state.hi(r), state.lo(r), add, H);
              state.fresh[r] = false;
            }
          } else if (add) {
            dot = Rows<T>::sigmoid_dot_update(state.hi(r), state.lo(r), vi, add, H);
          } else {
            dot = Rows<T>::sigmoid_dot_store(state.hi(r), state.lo(r), state.hc(r), vi, H);
            state.fresh[r] = true;
          }
          logits[row * D + i] = b[i] + dot;
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        log_prob[r0 + r] = Rows<T>::log_prob(logits + (r0 + r) * D, x + (r0 + r) * D, D);
      }
    }
  });
}

// u [B, D] -> x [B, D] (0/1 in T). Each step in three phases over the group's rows — the dots, the
// probabilities, the decisions — so that the rows' chains (dot -> probability -> decision -> next step's update)
// overlap instead of one row's waiting on its own latency.
template <typename T>
void sample_scan(const Sizes& s, const T* u, const T* wt, const T* c, const T* v, const T* b, const uint8_t* finite,
                 T* out) {
  constexpr int64_t R = kSampleRows;
  const int64_t groups = (s.batch + R - 1) / R, H = s.hidden, D = s.dims;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    GroupState<T, R> state(H);
    for (int64_t group = begin; group < end; ++group) {
      const int64_t r0 = group * R, rows = std::min(R, s.batch - r0);
      state.start(rows, c);
      // pending[r]: the column a row's x_i = 1 adds, applied in the pass of step i + 1 (update_sigmoid_dot).
      const T* pending[R] = {};
      T p[R] = {};
      for (int64_t i = 0; i < D; ++i) {
        const T* w = wt + i * H;
        const T* vi = v + i * H;
        for (int64_t r = 0; r < rows; ++r) {
          T dot;
          if (pending[r]) {
            dot = Rows<T>::update_sigmoid_dot(state.hi(r), state.lo(r), state.hc(r), vi, pending[r], H);
            pending[r] = nullptr;
            state.fresh[r] = true;
          } else if (state.fresh[r]) {
            dot = Rows<T>::cached_dot(state.hc(r), vi, H);
          } else {
            dot = Rows<T>::sigmoid_dot_store(state.hi(r), state.lo(r), state.hc(r), vi, H);
            state.fresh[r] = true;
          }
          p[r] = b[i] + dot;
        }
        for (int64_t r = 0; r < R; ++r) p[r] = probability(p[r]);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = r0 + r;
          const T xi = u[row * D + i] < p[r] ? T(1) : T(0);
          out[row * D + i] = xi;
          const T* add = addend(xi, w, finite[i] != 0, state.scaled(), H);
          if (add == w) {
            pending[r] = w;
            state.fresh[r] = false;
          } else if (add) {  // x_i = 0 on a non-finite column: 0·w (NaN where w is infinite) added now
            Rows<T>::update(state.hi(r), state.lo(r), add, H);
            state.fresh[r] = false;
          }
        }
      }
    }
  });
}

// The reverse scan (see the file comment). c [H]; delta [B, D]; outputs: gw/gv [chunks, D, H],
// gc [chunks, H] (accumulated into: zero it first), gx [tiles, B, D]. With weights false, x_i·G is not added to
// ∂L/∂W where x_i = 0, which is exact while G is finite (G only accumulates, so once it holds an inf or NaN it
// keeps one to the end): returns false when some item's final G is not finite, and the caller reruns with
// weights true (0·inf = NaN must reach ∂L/∂W as in the formula).
template <typename T>
bool backward_scan(const Sizes& s, int64_t chunk_rows, int64_t chunks, const T* x, const T* wt, const T* v,
                   const T* c, const T* delta, const uint8_t* finite, bool weights, T* gw_part,
                   T* gv_part, T* gc_part, T* gx_part) {
  const int64_t H = s.hidden, D = s.dims, B = s.batch;
  const int64_t tiles = (H + kTile - 1) / kTile;
  std::atomic<bool> finite_state{true};
  at::parallel_for(0, chunks * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buffer;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t chunk = item / tiles, tile = item % tiles;
      const int64_t r0 = chunk * chunk_rows, rows = std::min(chunk_rows, B - r0);
      const int64_t h0 = tile * kTile, n = std::min(kTile, H - h0);
      buffer.assign(static_cast<size_t>(5 * rows * n + 3 * n), T(0));
      T* hi = buffer.data();
      T* lo = hi + rows * n;
      T* G = lo + rows * n;
      T* hc = G + rows * n;  // h_i per row, and h_i·(1 − h_i): a_i's from the first step on
      T* sc = hc + rows * n;
      T* gw = sc + rows * n;
      T* gv = gw + n;
      T* scaled = gv + n;
      // a_D = c + Σ_i x_i·W[:, i], by the forward's own compensated updates in the forward's order (only the
      // steps with x_i ≠ 0 add anything): hi + lo is the forward's final state, bit for bit.
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(hi + r * n, c + h0, static_cast<size_t>(n) * sizeof(T));
        for (int64_t i = 0; i < D; ++i) {
          const T* add = addend(x[(r0 + r) * D + i], wt + i * H + h0, finite[i] != 0, scaled, n);
          if (add) Rows<T>::update(hi + r * n, lo + r * n, add, n);
        }
      }
      for (int64_t i = D - 1; i >= 0; --i) {
        const T* w = wt + i * H + h0;
        const T* vi = v + i * H + h0;
        std::fill(gw, gw + 2 * n, T(0));
        const bool recompute = i == D - 1;  // afterwards hc, sc hold a_{i+1}'s values, which a_i keeps or replaces
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = r0 + r;
          const T xi = x[row * D + i];
          const T* sub = addend(xi, w, finite[i] != 0, scaled, n);
          gx_part[(tile * B + row) * D + i] =
              Rows<T>::backward(G + r * n, hi + r * n, lo + r * n, hc + r * n, sc + r * n, gw, gv, w, sub, vi, xi,
                                delta[row * D + i], recompute, weights, n);
        }
        std::memcpy(gw_part + (chunk * D + i) * H + h0, gw, static_cast<size_t>(n) * sizeof(T));
        std::memcpy(gv_part + (chunk * D + i) * H + h0, gv, static_cast<size_t>(n) * sizeof(T));
      }
      T* gc = gc_part + chunk * H + h0;
      bool ok = true;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t h = 0; h < n; ++h) {
          gc[h] += G[r * n + h];
          ok &= std::isfinite(G[r * n + h]);
        }
      }
      if (!ok) finite_state.store(false, std::memory_order_relaxed);
    }
  });
  return weights || finite_state.load();
}

// Contiguous copies in the accumulation dtype (no copy when already so).
at::Tensor prepared(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

int64_t padded_width(int64_t hidden) { return (hidden + kLanes - 1) / kLanes * kLanes; }

// t [..., H] as a contiguous [..., width] copy in acc, zeros in the columns past H (see kLanes).
at::Tensor padded(const at::Tensor& t, at::ScalarType acc, int64_t width) {
  if (t.size(-1) == width) return prepared(t, acc);
  std::vector<int64_t> sizes = t.sizes().vec();
  sizes.back() = width;
  at::Tensor out = at::zeros(sizes, t.options().dtype(acc));
  out.narrow(-1, 0, t.size(-1)).copy_(t);
  return out;
}

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
  const int64_t width = padded_width(hidden);
  const at::Tensor xs = prepared(x, acc), wt = padded(W.t(), acc, width), cs = padded(c, acc, width),
                   vs = padded(V, acc, width), bs = prepared(b, acc);
  const Sizes sizes{batch, dims, width};
  AT_DISPATCH_FLOATING_TYPES(acc, "nade_fwd_cpu", [&] {
    const auto finite = finite_columns(wt.const_data_ptr<scalar_t>(), dims, width);
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
  const int64_t width = padded_width(hidden);
  const at::Tensor xs = prepared(x, acc), wt = padded(W.t(), acc, width), vs = padded(V, acc, width);
  const at::Tensor ls = prepared(logits, acc), gp = prepared(grad_log_prob, acc);
  // δ_i = g_i + g_p·(x_i − sigmoid(l_i)): each logit's whole gradient, from the saved logits.
  const at::Tensor delta = prepared(grad_logits, acc).add(gp.unsqueeze(1).mul(xs.sub(at::sigmoid(ls)))).contiguous();
  const at::Tensor cs = padded(c, acc, width);

  const int64_t chunks_wanted = std::min<int64_t>(kMaxChunks, std::max<int64_t>(1, batch / kMinChunkRows));
  const int64_t chunk_rows = (batch + chunks_wanted - 1) / chunks_wanted;
  const int64_t chunks = (batch + chunk_rows - 1) / chunk_rows;
  const int64_t tiles = (width + kTile - 1) / kTile;
  const auto options = x.options().dtype(acc);
  at::Tensor gw_part = at::empty({chunks, dims, width}, options);
  at::Tensor gv_part = at::empty({chunks, dims, width}, options);
  at::Tensor gc_part = at::zeros({chunks, width}, options);
  at::Tensor gx_part = at::empty({tiles, batch, dims}, options);
  const Sizes sizes{batch, dims, width};
  AT_DISPATCH_FLOATING_TYPES(acc, "nade_bwd_cpu", [&] {
    const auto finite = finite_columns(wt.const_data_ptr<scalar_t>(), dims, width);
    auto scan = [&](bool weights) {
      return backward_scan<scalar_t>(sizes, chunk_rows, chunks, xs.const_data_ptr<scalar_t>(),
                                     wt.const_data_ptr<scalar_t>(), vs.const_data_ptr<scalar_t>(),
                                     cs.const_data_ptr<scalar_t>(), delta.const_data_ptr<scalar_t>(),
                                     finite.data(), weights,
                                     gw_part.mutable_data_ptr<scalar_t>(), gv_part.mutable_data_ptr<scalar_t>(),
                                     gc_part.mutable_data_ptr<scalar_t>(), gx_part.mutable_data_ptr<scalar_t>());
    };
    if (!scan(false)) {  // a non-finite G: again with every x_i·G in ∂L/∂W (see backward_scan)
      gc_part.zero_();
      scan(true);
    }
  });
  at::Tensor grad_x = at::sum(gx_part, {0}).add(gp.unsqueeze(1).mul(ls)).to(x.scalar_type()).contiguous();
  // One chunk (B < 2·kMinChunkRows): its slabs are the sums.
  auto chunk_sum = [&](const at::Tensor& part) { return chunks == 1 ? part[0] : at::sum(part, {0}); };
  at::Tensor grad_W = chunk_sum(gw_part).narrow(1, 0, hidden).t().to(W.scalar_type()).contiguous();
  at::Tensor grad_c = chunk_sum(gc_part).narrow(0, 0, hidden).to(c.scalar_type()).contiguous();
  at::Tensor grad_V = chunk_sum(gv_part).narrow(1, 0, hidden).to(V.scalar_type()).contiguous();
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
  const int64_t width = padded_width(hidden);
  const at::Tensor us = prepared(u, acc), wt = padded(W.t(), acc, width), cs = padded(c, acc, width),
                   vs = padded(V, acc, width), bs = prepared(b, acc);
  at::Tensor out = at::empty({batch, dims}, W.options().dtype(acc));
  const Sizes sizes{batch, dims, width};
  AT_DISPATCH_FLOATING_TYPES(acc, "nade_sample_cpu", [&] {
    const auto finite = finite_columns(wt.const_data_ptr<scalar_t>(), dims, width);
    sample_scan<scalar_t>(sizes, us.const_data_ptr<scalar_t>(), wt.const_data_ptr<scalar_t>(),
                          cs.const_data_ptr<scalar_t>(), vs.const_data_ptr<scalar_t>(), bs.const_data_ptr<scalar_t>(),
                          finite.data(), out.mutable_data_ptr<scalar_t>());
  });
  return out.scalar_type() == W.scalar_type() ? out : out.to(W.scalar_type());
}

}  // namespace fastflow
