// CPU kernels of the coupling op (see fastflow/ops/coupling.py for the contract, fastflow/reference/coupling.py
// for the math), and the argument checks shared with the CUDA kernels.
//
// Strategy. The transformed region of one sample is (channels, H, W) of x, h_s, h_t and y; its three dims are
// coalesced over all operands (a view of a conditioner output such as h[:, 0::2] still has contiguous
// planes, so its rows are whole planes; contiguous operands merge further), rows are cut into chunks of at
// most kChunk elements, and the (sample, row, chunk) items are spread over threads with at::parallel_for.
// A chunk is computed by a branch-free loop over contiguous float arrays that GCC vectorises: float32
// operands with unit inner stride are read in place, anything else (half types, strided rows) is first
// converted into a small float buffer. exp/log1p/expm1 are written here as range reduction + polynomial
// because the libm calls would keep the loop scalar; float64 keeps libm (it is not a speed path). The
// log-determinant is reduced per chunk, the chunks' partial sums are stored, then summed per sample in a
// fixed order: the result does not depend on the thread count.
#include "../coupling.h"
#include "dtypes.h"
#include "fastmath.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace fastflow {

// ------------------------------------------------------------------------------------------------------
// Argument checks (used by the CPU and the CUDA implementations).

namespace {

const char* scale_name(int64_t scale) {
  return scale == kScaleSigmoid ? "sigmoid" : scale == kScaleExp ? "exp" : "additive";
}

std::vector<int64_t> expected_param_shape(const at::Tensor& x, int64_t mask) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  if (mask == kMaskChannel) shape[1] /= 2;
  return shape;
}

void check_param(const char* name, const at::Tensor& param, const at::Tensor& x, int64_t mask) {
  TORCH_CHECK(param.defined(), "fastflow coupling: ", name, " is undefined");
  TORCH_CHECK(param.device() == x.device(), "fastflow coupling: ", name, " is on ", param.device(),
              " but x is on ", x.device(), "; put them on one device");
  TORCH_CHECK(param.scalar_type() == x.scalar_type(), "fastflow coupling: ", name, " has dtype ",
              param.scalar_type(), " but x has ", x.scalar_type(), "; they must match");
  const auto expected = expected_param_shape(x, mask);
  TORCH_CHECK(param.sizes().vec() == expected, "fastflow coupling: ", name, " must have shape ",
              at::IntArrayRef(expected), " for x of shape ", x.sizes(), " and mask=",
              mask == kMaskChannel ? "channel" : "checkerboard", ", got ", param.sizes());
}

void check_common(const at::Tensor& x, int64_t mask, int64_t scale, double clamp, const char* x_name) {
  TORCH_CHECK(x.defined(), "fastflow coupling: ", x_name, " is undefined");
  TORCH_CHECK(mask == kMaskChannel || mask == kMaskCheckerboard,
              "fastflow coupling: mask must be 0 (channel) or 1 (checkerboard), got ", mask);
  TORCH_CHECK(scale == kScaleSigmoid || scale == kScaleExp || scale == kScaleAdditive,
              "fastflow coupling: scale must be 0 (sigmoid), 1 (exp) or 2 (additive), got ", scale);
  TORCH_CHECK(x.dim() == 4, "fastflow coupling: ", x_name, " must be a 4-d [B, C, H, W] tensor, got shape ",
              x.sizes());
  const auto dtype = x.scalar_type();
  const bool cuda = x.device().is_cuda();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || (!cuda && dtype == at::kDouble),
              "fastflow coupling: ", x_name, " must be float32, float16 or bfloat16",
              cuda ? "" : " or float64", " on ", x.device().type(), ", got ", dtype);
  TORCH_CHECK(mask != kMaskChannel || x.size(1) % 2 == 0,
              "fastflow coupling: mask=channel splits the channels in halves and needs an even count, got ",
              x.size(1), " (", x_name, " shape ", x.sizes(), ")");
  TORCH_CHECK(scale != kScaleExp || (std::isfinite(clamp) && clamp > 0),
              "fastflow coupling: clamp must be a positive finite number for scale=exp, got ", clamp);
}

}  // namespace

void check_coupling_fwd_args(const at::Tensor& x, const std::optional<at::Tensor>& raw_scale,
                             const at::Tensor& shift, int64_t mask, int64_t scale, double clamp) {
  check_common(x, mask, scale, clamp, "x");
  const bool has_raw = raw_scale.has_value() && raw_scale->defined();
  TORCH_CHECK(has_raw == (scale != kScaleAdditive), "fastflow coupling: scale=", scale_name(scale),
              has_raw ? " takes no raw_scale (pass None)" : " needs raw_scale");
  if (has_raw) check_param("raw_scale", *raw_scale, x, mask);
  check_param("shift", shift, x, mask);
}

void check_coupling_bwd_args(const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& z,
                             const at::Tensor& raw_scale, int64_t mask, int64_t scale, double clamp) {
  check_common(z, mask, scale, clamp, "z");
  TORCH_CHECK(scale != kScaleAdditive,
              "fastflow coupling: coupling_bwd is for the affine coupling (scale sigmoid or exp); the additive "
              "coupling's gradient needs no kernel");
  TORCH_CHECK(grad_y.defined() && grad_y.sizes() == z.sizes(), "fastflow coupling: grad_y must have the shape of z ",
              z.sizes(), ", got ", grad_y.defined() ? grad_y.sizes() : at::IntArrayRef{});
  TORCH_CHECK(grad_y.device() == z.device(), "fastflow coupling: grad_y is on ", grad_y.device(), " but z is on ",
              z.device());
  TORCH_CHECK(grad_y.scalar_type() == z.scalar_type(), "fastflow coupling: grad_y has dtype ", grad_y.scalar_type(),
              " but z has ", z.scalar_type(), "; they must match");
  TORCH_CHECK(grad_logdet.defined() && grad_logdet.dim() == 1 && grad_logdet.size(0) == z.size(0),
              "fastflow coupling: grad_logdet must have shape [", z.size(0), "], got ",
              grad_logdet.defined() ? grad_logdet.sizes() : at::IntArrayRef{});
  TORCH_CHECK(grad_logdet.is_floating_point(), "fastflow coupling: grad_logdet must be floating point, got ",
              grad_logdet.scalar_type());
  TORCH_CHECK(grad_logdet.device() == z.device(), "fastflow coupling: grad_logdet is on ", grad_logdet.device(),
              " but z is on ", z.device());
  check_param("raw_scale", raw_scale, z, mask);
}

// ------------------------------------------------------------------------------------------------------
// Elementwise math: exp / expm1 / log1p of fastmath.h (float: polynomial, so that the loops vectorise;
// double: libm), and the scale functions built on them.

namespace {

using fastmath::exp_;
using fastmath::exp_nonpositive;
using fastmath::expm1_;
using fastmath::log1p_unit;

// The scale s = s(h_s) in the pieces each direction needs, with one division where possible. Sigmoid:
// a = h + 2, e = exp(−|a|), r = 1/(1 + e), log s = min(a, 0) − log1p(e), s = (a >= 0 ? 1 : e)·r,
// 1/s = 1 + exp(−a), d = 1 − s = (a >= 0 ? e : 1)·r. Exp: u = h/c, E = expm1(2|u|),
// q = 1/(E + 2), tanh|u| = E·q, log s = c·tanh u, d = 1 − tanh² u = 4(E + 1)·q² (no cancellation as
// |tanh u| -> 1).
template <typename T>
FF_INLINE T sigmoid_e(T h, T& a) {
  a = h + T(2);
  return exp_nonpositive(-std::abs(a));
}

// 1/s = 1 + exp(−a): e for a >= 0, else exp(|a|) in full range (it overflows to inf where 1/s does; the
// clamped e of exp_nonpositive would give a finite 1/s there).
template <typename T>
FF_INLINE T sigmoid_inverse(T a, T e) {
  return T(1) + (a >= T(0) ? e : exp_(std::abs(a)));
}

template <typename T>
FF_INLINE T tanh_E(T h, T inv_clamp) {
  // |u| <= 20 keeps E = expm1(2|u|) finite (tanh is 1 to float precision long before).
  return expm1_(T(2) * std::min(std::abs(h * inv_clamp), T(20)));
}

// ------------------------------------------------------------------------------------------------------
// Chunk loops over contiguous arrays (accumulation type T: float or double). `keep` is the checkerboard
// pattern (1 where transformed) or null for the channel mask; h is null for the additive coupling.

template <typename T, int kScale, bool kInverse, bool kMasked>
FF_INLINE T forward_loop(const T* __restrict x, const T* __restrict h, const T* __restrict t, T* __restrict y,
                         const T* __restrict keep, int64_t n, T clamp, T inv_clamp) {
  T logdet = 0;
#pragma omp simd reduction(+ : logdet)
  for (int64_t j = 0; j < n; ++j) {
    T value, log_s = 0;
    if constexpr (kScale == kScaleAdditive) {
      value = kInverse ? x[j] - t[j] : x[j] + t[j];
    } else if constexpr (kScale == kScaleSigmoid) {
      T a;
      const T e = sigmoid_e(h[j], a);
      const T r = T(1) / (T(1) + e);
      log_s = std::min(a, T(0)) - log1p_unit(e, r);
      const T e_or_1 = a >= T(0) ? T(1) : e;
      value = kInverse ? (x[j] - t[j]) * sigmoid_inverse(a, e) : x[j] * (e_or_1 * r) + t[j];
    } else {
      const T E = tanh_E(h[j], inv_clamp);
      const T magnitude = clamp * (E / (E + T(2)));
      log_s = h[j] < T(0) ? -magnitude : magnitude;
      value = kInverse ? (x[j] - t[j]) * exp_(-log_s) : x[j] * exp_(log_s) + t[j];
    }
    if constexpr (kMasked) {
      const bool on = keep[j] != T(0);
      y[j] = on ? value : x[j];
      logdet += on ? log_s : T(0);
    } else {
      y[j] = value;
      logdet += log_s;
    }
  }
  return logdet;
}

template <typename T, int kScale, bool kInverse, bool kMasked>
FF_INLINE void backward_loop(const T* __restrict g, const T* __restrict z, const T* __restrict h, T grad_logdet,
                             T* __restrict gx, T* __restrict gh, T* __restrict gt, const T* __restrict keep,
                             int64_t n, T clamp, T inv_clamp) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    T s_or_inv, d;  // s (forward direction) or 1/s (inverse direction), and d = ∂log s/∂h
    if constexpr (kScale == kScaleSigmoid) {
      T a;
      const T e = sigmoid_e(h[j], a);
      const bool positive = a >= T(0);
      const T e_or_1 = positive ? T(1) : e;
      const T r = T(1) / (T(1) + e);
      s_or_inv = kInverse ? sigmoid_inverse(a, e) : e_or_1 * r;
      d = (positive ? e : T(1)) * r;
    } else {
      const T E = tanh_E(h[j], inv_clamp);
      const T q = T(1) / (E + T(2));
      const T magnitude = clamp * (E * q);
      const T log_s = h[j] < T(0) ? -magnitude : magnitude;
      s_or_inv = exp_(kInverse ? -log_s : log_s);
      d = T(4) * (E + T(1)) * (q * q);
    }
    T grad_x, grad_h, grad_t;
    if constexpr (kInverse) {
      grad_x = g[j] * s_or_inv;
      grad_h = -d * (g[j] * z[j] + grad_logdet);
      grad_t = -grad_x;
    } else {
      grad_x = g[j] * s_or_inv;
      grad_h = d * (g[j] * z[j] * s_or_inv + grad_logdet);
      grad_t = g[j];
    }
    if constexpr (kMasked) {
      const bool on = keep[j] != T(0);
      gx[j] = on ? grad_x : g[j];
      gh[j] = on ? grad_h : T(0);
      gt[j] = on ? grad_t : T(0);
    } else {
      gx[j] = grad_x;
      gh[j] = grad_h;
      gt[j] = grad_t;
    }
  }
}

// float32: one function per (scale, inverse, masked) variant, each multiversioned on its own. Inlined
// together into one cloned function, some of the loops were left scalar by GCC (each alone vectorises).
#define FF_FORWARD_F32(S, I, M)                                                                                 \
  FF_CLONES float forward_f32_##S##I##M(const float* x, const float* h, const float* t, float* y,           \
                                          const float* keep, int64_t n, float clamp, float inv_clamp) {       \
    return forward_loop<float, S, bool(I), bool(M)>(x, h, t, y, keep, n, clamp, inv_clamp);                 \
  }
#define FF_BACKWARD_F32(S, I, M)                                                                                \
  FF_CLONES void backward_f32_##S##I##M(const float* g, const float* z, const float* h, float grad_logdet,  \
                                          float* gx, float* gh, float* gt, const float* keep, int64_t n,      \
                                          float clamp, float inv_clamp) {                                     \
    backward_loop<float, S, bool(I), bool(M)>(g, z, h, grad_logdet, gx, gh, gt, keep, n, clamp, inv_clamp); \
  }
#define FF_ALL_VARIANTS(MACRO, S) MACRO(S, 0, 0) MACRO(S, 0, 1) MACRO(S, 1, 0) MACRO(S, 1, 1)
FF_ALL_VARIANTS(FF_FORWARD_F32, 0)
FF_ALL_VARIANTS(FF_FORWARD_F32, 1)
FF_ALL_VARIANTS(FF_FORWARD_F32, 2)
FF_ALL_VARIANTS(FF_BACKWARD_F32, 0)
FF_ALL_VARIANTS(FF_BACKWARD_F32, 1)

using ForwardF32 = float (*)(const float*, const float*, const float*, float*, const float*, int64_t, float, float);
using BackwardF32 = void (*)(const float*, const float*, const float*, float, float*, float*, float*, const float*,
                             int64_t, float, float);
// [scale][inverse][masked]
const ForwardF32 kForwardF32[3][2][2] = {
    {{forward_f32_000, forward_f32_001}, {forward_f32_010, forward_f32_011}},
    {{forward_f32_100, forward_f32_101}, {forward_f32_110, forward_f32_111}},
    {{forward_f32_200, forward_f32_201}, {forward_f32_210, forward_f32_211}},
};
const BackwardF32 kBackwardF32[2][2][2] = {
    {{backward_f32_000, backward_f32_001}, {backward_f32_010, backward_f32_011}},
    {{backward_f32_100, backward_f32_101}, {backward_f32_110, backward_f32_111}},
};
#undef FF_ALL_VARIANTS
#undef FF_BACKWARD_F32
#undef FF_FORWARD_F32

float forward_chunk(const float* x, const float* h, const float* t, float* y, const float* keep, int64_t n, int scale,
                    bool inverse, float clamp, float inv_clamp) {
  return kForwardF32[scale][inverse][keep != nullptr](x, h, t, y, keep, n, clamp, inv_clamp);
}

void backward_chunk(const float* g, const float* z, const float* h, float grad_logdet, float* gx, float* gh,
                    float* gt, const float* keep, int64_t n, int scale, bool inverse, float clamp, float inv_clamp) {
  kBackwardF32[scale][inverse][keep != nullptr](g, z, h, grad_logdet, gx, gh, gt, keep, n, clamp, inv_clamp);
}

// float64 (libm inside, not vectorised): a plain switch over the instantiations.
double forward_chunk(const double* x, const double* h, const double* t, double* y, const double* keep, int64_t n,
                     int scale, bool inverse, double clamp, double inv_clamp) {
#define FF_FWD(S, I) \
  return keep ? forward_loop<double, S, I, true>(x, h, t, y, keep, n, clamp, inv_clamp) \
              : forward_loop<double, S, I, false>(x, h, t, y, keep, n, clamp, inv_clamp)
  switch (scale) {
    case kScaleSigmoid:
      if (inverse) FF_FWD(kScaleSigmoid, true);
      FF_FWD(kScaleSigmoid, false);
    case kScaleExp:
      if (inverse) FF_FWD(kScaleExp, true);
      FF_FWD(kScaleExp, false);
    default:
      if (inverse) FF_FWD(kScaleAdditive, true);
      FF_FWD(kScaleAdditive, false);
  }
#undef FF_FWD
}

void backward_chunk(const double* g, const double* z, const double* h, double grad_logdet, double* gx, double* gh,
                    double* gt, const double* keep, int64_t n, int scale, bool inverse, double clamp,
                    double inv_clamp) {
#define FF_BWD(S, I)                                                                                          \
  return keep ? backward_loop<double, S, I, true>(g, z, h, grad_logdet, gx, gh, gt, keep, n, clamp, inv_clamp) \
              : backward_loop<double, S, I, false>(g, z, h, grad_logdet, gx, gh, gt, keep, n, clamp, inv_clamp)
  if (scale == kScaleSigmoid) {
    if (inverse) FF_BWD(kScaleSigmoid, true);
    FF_BWD(kScaleSigmoid, false);
  }
  if (inverse) FF_BWD(kScaleExp, true);
  FF_BWD(kScaleExp, false);
#undef FF_BWD
}

// ------------------------------------------------------------------------------------------------------
// Geometry: a region (channels, H, W) of each sample seen through every operand's strides.

constexpr int64_t kChunk = 1024;  // elements per work item: 4 KiB per float buffer, stays in L1
constexpr int kMaxOperands = 6;

struct Region {
  int64_t size[3];
  int64_t stride[kMaxOperands][3];  // per operand, in elements
  int operands;
};

// Merges dims d and d + 1 where every operand steps over them as one (stride[d] == stride[d+1]·size[d+1]);
// size-1 dims merge with anything. With `keep_channels` the channel dim is never merged (the checkerboard
// pattern repeats per plane), only (H, W).
Region coalesce(Region region, bool keep_channels) {
  auto mergeable = [&](int outer, int inner) {
    if (region.size[outer] == 1 || region.size[inner] == 1) return true;
    for (int op = 0; op < region.operands; ++op) {
      if (region.stride[op][outer] != region.stride[op][inner] * region.size[inner]) return false;
    }
    return true;
  };
  auto merge = [&](int outer, int inner) {  // the merged dim takes `inner`'s place, `outer` becomes size 1
    const bool inner_trivial = region.size[inner] == 1;
    region.size[inner] *= region.size[outer];
    for (int op = 0; op < region.operands; ++op) {
      if (inner_trivial) region.stride[op][inner] = region.stride[op][outer];
      region.stride[op][outer] = 0;
    }
    region.size[outer] = 1;
  };
  if (mergeable(1, 2)) merge(1, 2);
  if (!keep_channels) {
    // dims 0 and 2 are adjacent now when dim 1 became (or was) trivial; else 0 and 1.
    if (region.size[1] == 1) {
      if (mergeable(0, 2)) merge(0, 2);
    } else if (mergeable(0, 1)) {
      merge(0, 1);
    }
  }
  return region;
}

// Operand `op` of `tensor` over dims (1, 2, 3), its data starting `channel_offset` channels in.
template <typename scalar_t>
scalar_t* base_and_strides(const at::Tensor& tensor, int64_t channel_offset, Region& region, int op) {
  for (int d = 0; d < 3; ++d) region.stride[op][d] = tensor.stride(d + 1);
  return const_cast<scalar_t*>(tensor.const_data_ptr<scalar_t>()) + channel_offset * tensor.stride(1);
}

// A view of n elements at `p` with stride `stride` as a contiguous array of T: the data itself when it
// already is one, else converted into `buffer`.
template <typename T, typename scalar_t>
FF_INLINE const T* load(const scalar_t* p, int64_t stride, int64_t n, T* buffer) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    if (stride == 1) return p;
  }
  if (stride == 0) {  // an expanded gradient, e.g. of y.sum(): one value
    std::fill(buffer, buffer + n, static_cast<T>(p[0]));
    return buffer;
  }
  for (int64_t j = 0; j < n; ++j) buffer[j] = static_cast<T>(p[j * stride]);
  return buffer;
}

// Where a chunk's result of type T goes: straight into the contiguous output, or into `buffer` when the
// output's dtype is narrower (then `store` converts it).
template <typename T, typename scalar_t>
FF_INLINE T* target(scalar_t* p, T* buffer) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return p;
  } else {
    return buffer;
  }
}

template <typename T, typename scalar_t>
FF_INLINE void store(scalar_t* p, const T* values, int64_t n) {
  if constexpr (!std::is_same_v<T, scalar_t>) {
    for (int64_t j = 0; j < n; ++j) p[j] = static_cast<scalar_t>(values[j]);
  }
}

// Work items of a region: (row, chunk) pairs of one sample, rows over dims (0, 1).
struct Items {
  int64_t rows_inner, chunks, per_sample;
  explicit Items(const Region& r)
      : rows_inner(r.size[1]), chunks((r.size[2] + kChunk - 1) / kChunk), per_sample(r.size[0] * r.size[1] * chunks) {}
  // Element offset of item `item` of sample b for operand op, its first index along dim 1 and dim 2, length.
  void locate(const Region& r, int64_t item, int64_t& i1, int64_t& j0, int64_t& n) const {
    const int64_t chunk = item % chunks;
    const int64_t row = item / chunks;
    i1 = row % rows_inner;
    j0 = chunk * kChunk;
    n = std::min(kChunk, r.size[2] - j0);
  }
  static int64_t offset(const Region& r, int op, int64_t item_row0, int64_t i1, int64_t j0) {
    return item_row0 * r.stride[op][0] + i1 * r.stride[op][1] + j0 * r.stride[op][2];
  }
};

// Threads get at least ~16K elements each so that small calls do not pay for waking the pool.
int64_t grain(const Region& r) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, std::min(r.size[2], kChunk))); }

// Checkerboard pattern of one plane, 1 where transformed ((h + w) mod 2 == (flip ? 0 : 1)). Stored as T, the
// loops' own type: a byte mask beside float lanes kept GCC from vectorising the masked loops.
template <typename T>
std::vector<T> checkerboard(int64_t height, int64_t width, bool flip) {
  std::vector<T> keep(static_cast<size_t>(height * width));
  for (int64_t h = 0; h < height; ++h) {
    for (int64_t w = 0; w < width; ++w) keep[h * width + w] = ((h + w) & 1) == (flip ? 0 : 1);
  }
  return keep;
}

// Copy of the pass-through half (channel mask): operand 0 is the source, operand 1 the contiguous output.
template <typename scalar_t>
void copy_item(const Region& r, const Items& items, const scalar_t* src, scalar_t* dst, int64_t b, int64_t batch_src,
               int64_t batch_dst, int64_t item) {
  int64_t i1, j0, n;
  items.locate(r, item, i1, j0, n);
  const int64_t i0 = item / items.chunks / items.rows_inner;
  const scalar_t* from = src + b * batch_src + Items::offset(r, 0, i0, i1, j0);
  scalar_t* to = dst + b * batch_dst + Items::offset(r, 1, i0, i1, j0);
  const int64_t stride = r.stride[0][2];
  if (stride == 1) {
    std::memcpy(to, from, static_cast<size_t>(n) * sizeof(scalar_t));
  } else if (stride == 0) {
    std::fill(to, to + n, from[0]);
  } else {
    for (int64_t j = 0; j < n; ++j) to[j] = from[j * stride];
  }
}

template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// ------------------------------------------------------------------------------------------------------
// Forward.

template <typename scalar_t>
void forward_impl(const at::Tensor& x, const at::Tensor* raw_scale, const at::Tensor& shift, at::Tensor& y,
                  at::Tensor& logdet, int64_t mask, int64_t scale, bool flip, bool inverse, double clamp) {
  using T = acc_type_t<scalar_t>;
  if (x.numel() == 0) {  // B = 0 or an empty dim: nothing to read, and data pointers may be null
    logdet.zero_();
    return;
  }
  const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const bool channel_mask = mask == kMaskChannel;
  const int64_t transformed_channels = channel_mask ? channels / 2 : channels;
  const int64_t first = channel_mask && !flip ? channels / 2 : 0;  // first transformed channel of x and y
  const int64_t passed = channel_mask && flip ? channels / 2 : 0;   // first pass-through channel

  // Operands: 0 x, 1 y, 2 shift, 3 raw_scale (absent for the additive coupling).
  Region t_region{{transformed_channels, height, width}, {}, raw_scale ? 4 : 3};
  const scalar_t* x_t = base_and_strides<scalar_t>(x, first, t_region, 0);
  scalar_t* y_t = base_and_strides<scalar_t>(y, first, t_region, 1);
  const scalar_t* t_data = base_and_strides<scalar_t>(shift, 0, t_region, 2);
  const scalar_t* h_data = raw_scale ? base_and_strides<scalar_t>(*raw_scale, 0, t_region, 3) : nullptr;
  t_region = coalesce(t_region, /*keep_channels=*/!channel_mask);
  const Items t_items(t_region);

  Region p_region{{channel_mask ? channels / 2 : 0, height, width}, {}, 2};
  const scalar_t* x_p = base_and_strides<scalar_t>(x, passed, p_region, 0);
  scalar_t* y_p = base_and_strides<scalar_t>(y, passed, p_region, 1);
  p_region = coalesce(p_region, false);
  const Items p_items(p_region);

  const std::vector<T> keep = channel_mask ? std::vector<T>{} : checkerboard<T>(height, width, flip);
  // The pattern index of a row: its h when (H, W) stayed apart, 0 when they were merged into one row.
  const int64_t keep_row_stride = t_region.size[1] == 1 ? 0 : width;

  const int64_t per_sample = t_items.per_sample + p_items.per_sample;
  std::vector<T> partial(static_cast<size_t>(batch * t_items.per_sample));
  const int64_t xb = x.stride(0), yb = y.stride(0), tb = shift.stride(0), hb = raw_scale ? raw_scale->stride(0) : 0;
  const T clamp_t = static_cast<T>(clamp), inv_clamp = T(1) / static_cast<T>(clamp);

  at::parallel_for(0, batch * per_sample, grain(t_region), [&](int64_t begin, int64_t end) {
    T x_buffer[kChunk], h_buffer[kChunk], t_buffer[kChunk], y_buffer[kChunk];
    for (int64_t index = begin; index < end; ++index) {
      const int64_t b = index / per_sample, item = index % per_sample;
      if (item >= t_items.per_sample) {
        copy_item(p_region, p_items, x_p, y_p, b, xb, yb, item - t_items.per_sample);
        continue;
      }
      int64_t i1, j0, n;
      t_items.locate(t_region, item, i1, j0, n);
      const int64_t i0 = item / t_items.chunks / t_items.rows_inner;
      const T* xs = load<T>(x_t + b * xb + Items::offset(t_region, 0, i0, i1, j0), t_region.stride[0][2], n, x_buffer);
      const T* ts = load<T>(t_data + b * tb + Items::offset(t_region, 2, i0, i1, j0), t_region.stride[2][2], n, t_buffer);
      const T* hs = h_data ? load<T>(h_data + b * hb + Items::offset(t_region, 3, i0, i1, j0), t_region.stride[3][2], n,
                                     h_buffer)
                           : nullptr;
      scalar_t* out = y_t + b * yb + Items::offset(t_region, 1, i0, i1, j0);
      T* ys = target<T>(out, y_buffer);
      const T* keep_row = channel_mask ? nullptr : keep.data() + i1 * keep_row_stride + j0;
      partial[b * t_items.per_sample + item] =
          forward_chunk(xs, hs, ts, ys, keep_row, n, static_cast<int>(scale), inverse, clamp_t, inv_clamp);
      store<T>(out, ys, n);
    }
  });

  // Per-sample sums in a fixed order (chunks of a sample in sequence, accumulated in double): deterministic.
  auto* out = logdet.mutable_data_ptr<T>();
  for (int64_t b = 0; b < batch; ++b) {
    double sum = 0;
    for (int64_t item = 0; item < t_items.per_sample; ++item) sum += partial[b * t_items.per_sample + item];
    out[b] = static_cast<T>(inverse ? -sum : sum);
  }
}

// ------------------------------------------------------------------------------------------------------
// Backward.

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_y, const std::vector<double>& grad_logdet, const at::Tensor& z,
                   const at::Tensor& raw_scale, at::Tensor& grad_x, at::Tensor& grad_h, at::Tensor& grad_t,
                   int64_t mask, int64_t scale, bool flip, bool inverse, double clamp) {
  using T = acc_type_t<scalar_t>;
  if (z.numel() == 0) return;
  const int64_t batch = z.size(0), channels = z.size(1), height = z.size(2), width = z.size(3);
  const bool channel_mask = mask == kMaskChannel;
  const int64_t transformed_channels = channel_mask ? channels / 2 : channels;
  const int64_t first = channel_mask && !flip ? channels / 2 : 0;
  const int64_t passed = channel_mask && flip ? channels / 2 : 0;

  // Operands: 0 grad_y, 1 z, 2 raw_scale, 3 grad_x, 4 grad_raw_scale, 5 grad_shift.
  Region t_region{{transformed_channels, height, width}, {}, 6};
  const scalar_t* g_t = base_and_strides<scalar_t>(grad_y, first, t_region, 0);
  const scalar_t* z_t = base_and_strides<scalar_t>(z, first, t_region, 1);
  const scalar_t* h_data = base_and_strides<scalar_t>(raw_scale, 0, t_region, 2);
  scalar_t* gx_t = base_and_strides<scalar_t>(grad_x, first, t_region, 3);
  scalar_t* gh_data = base_and_strides<scalar_t>(grad_h, 0, t_region, 4);
  scalar_t* gt_data = base_and_strides<scalar_t>(grad_t, 0, t_region, 5);
  t_region = coalesce(t_region, !channel_mask);
  const Items t_items(t_region);

  Region p_region{{channel_mask ? channels / 2 : 0, height, width}, {}, 2};
  const scalar_t* g_p = base_and_strides<scalar_t>(grad_y, passed, p_region, 0);
  scalar_t* gx_p = base_and_strides<scalar_t>(grad_x, passed, p_region, 1);
  p_region = coalesce(p_region, false);
  const Items p_items(p_region);

  const std::vector<T> keep = channel_mask ? std::vector<T>{} : checkerboard<T>(height, width, flip);
  const int64_t keep_row_stride = t_region.size[1] == 1 ? 0 : width;

  const int64_t per_sample = t_items.per_sample + p_items.per_sample;
  const int64_t gb = grad_y.stride(0), zb = z.stride(0), hb = raw_scale.stride(0);
  const int64_t gxb = grad_x.stride(0), ghb = grad_h.stride(0);
  const T clamp_t = static_cast<T>(clamp), inv_clamp = T(1) / static_cast<T>(clamp);

  at::parallel_for(0, batch * per_sample, grain(t_region), [&](int64_t begin, int64_t end) {
    T g_buffer[kChunk], z_buffer[kChunk], h_buffer[kChunk], gx_buffer[kChunk], gh_buffer[kChunk], gt_buffer[kChunk];
    for (int64_t index = begin; index < end; ++index) {
      const int64_t b = index / per_sample, item = index % per_sample;
      if (item >= t_items.per_sample) {
        copy_item(p_region, p_items, g_p, gx_p, b, gb, gxb, item - t_items.per_sample);
        continue;
      }
      int64_t i1, j0, n;
      t_items.locate(t_region, item, i1, j0, n);
      const int64_t i0 = item / t_items.chunks / t_items.rows_inner;
      const T* gs = load<T>(g_t + b * gb + Items::offset(t_region, 0, i0, i1, j0), t_region.stride[0][2], n, g_buffer);
      const T* zs = load<T>(z_t + b * zb + Items::offset(t_region, 1, i0, i1, j0), t_region.stride[1][2], n, z_buffer);
      const T* hs = load<T>(h_data + b * hb + Items::offset(t_region, 2, i0, i1, j0), t_region.stride[2][2], n, h_buffer);
      scalar_t* gx_out = gx_t + b * gxb + Items::offset(t_region, 3, i0, i1, j0);
      scalar_t* gh_out = gh_data + b * ghb + Items::offset(t_region, 4, i0, i1, j0);
      scalar_t* gt_out = gt_data + b * ghb + Items::offset(t_region, 5, i0, i1, j0);
      T* gxs = target<T>(gx_out, gx_buffer);
      T* ghs = target<T>(gh_out, gh_buffer);
      T* gts = target<T>(gt_out, gt_buffer);
      const T* keep_row = channel_mask ? nullptr : keep.data() + i1 * keep_row_stride + j0;
      backward_chunk(gs, zs, hs, static_cast<T>(grad_logdet[b]), gxs, ghs, gts, keep_row, n, static_cast<int>(scale),
                     inverse, clamp_t, inv_clamp);
      store<T>(gx_out, gxs, n);
      store<T>(gh_out, ghs, n);
      store<T>(gt_out, gts, n);
    }
  });
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "fastflow coupling (CPU kernel): ", name, " is on ", t.device(),
              "; every tensor of one call must be on the CPU");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> coupling_fwd_cpu(const at::Tensor& x, const std::optional<at::Tensor>& raw_scale,
                                                    const at::Tensor& shift, int64_t mask, int64_t scale, bool flip,
                                                    bool inverse, double clamp) {
  check_cpu(x, "x");
  check_coupling_fwd_args(x, raw_scale, shift, mask, scale, clamp);
  const at::Tensor* raw = raw_scale.has_value() && raw_scale->defined() ? &*raw_scale : nullptr;
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor logdet = at::empty({x.size(0)}, x.options().dtype(accumulation_dtype(x.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "coupling_fwd_cpu", [&] {
    forward_impl<scalar_t>(x, raw, shift, y, logdet, mask, scale, flip, inverse, clamp);
  });
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> coupling_bwd_cpu(const at::Tensor& grad_y,
                                                                const at::Tensor& grad_logdet, const at::Tensor& z,
                                                                const at::Tensor& raw_scale, int64_t mask,
                                                                int64_t scale, bool flip, bool inverse, double clamp) {
  check_cpu(z, "z");
  check_coupling_bwd_args(grad_y, grad_logdet, z, raw_scale, mask, scale, clamp);
  at::Tensor grad_x = at::empty(z.sizes(), z.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_h = at::empty(raw_scale.sizes(), raw_scale.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_t = at::empty(raw_scale.sizes(), raw_scale.options().memory_format(at::MemoryFormat::Contiguous));
  // [B] values, possibly an expanded (stride 0) tensor of another float dtype: read once, on the host.
  const at::Tensor gl = grad_logdet.to(at::kDouble).contiguous();
  const std::vector<double> grad_logdet_values(gl.const_data_ptr<double>(), gl.const_data_ptr<double>() + gl.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "coupling_bwd_cpu", [&] {
    backward_impl<scalar_t>(grad_y, grad_logdet_values, z, raw_scale, grad_x, grad_h, grad_t, mask, scale, flip,
                            inverse, clamp);
  });
  return {grad_x, grad_h, grad_t};
}

}  // namespace fastflow
