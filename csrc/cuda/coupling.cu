// CUDA kernels of the coupling op (contract: fastflow/ops/coupling.py; math: fastflow/reference/coupling.py).
//
// Layout. Grid (tiles, samples): a block covers kTile consecutive elements of one sample's contiguous output
// (y or grad_x, flat index i = (c·H + h)·W + w), each thread kItems consecutive ones; the inputs are read
// through their own strides, so views of a conditioner output need no copy. A thread splits its first index
// into (c, h, w) once (32-bit division where the sample fits) and steps to its next elements (w + 1, wrapping
// into h + 1, then c + 1): integer division is slow on GPUs (64-bit: a long software routine), so there is
// none per element. Whether each element is transformed is computed once per thread, then reused by the
// loads, the math and the stores. When every input has contiguous (H, W) planes, a thread's kItems elements
// lie in one plane and are loaded as one vector (kVec); else each is loaded at its (c, h, w). Math runs
// in float32; log s of the transformed positions is reduced per block into partial[b, tile] and a second
// tiny kernel sums each sample's row in a fixed order: no atomics, the result is deterministic.
//
// Headers. Only the device-generic c10 API and the CUDA runtime are used: CPU wheels of torch ship c10/cuda
// without its generated c10/cuda/impl/cuda_cmake_macros.h, so c10/cuda and ATen/cuda headers would not
// compile there, and CI compiles this file against such a wheel. The current stream comes from the generic
// guard interface (c10::impl::VirtualGuardImpl) instead of c10::cuda::getCurrentCUDAStream.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../coupling.h"

namespace fastflow {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;  // elements per thread: one 16-byte float4 (8-byte for half types) load per input
constexpr int kTile = kThreads * kItems;
constexpr int kMaxGridY = 65535;

// float32, float16, bfloat16: the dtypes of the CUDA path (float64 is rejected by the argument checks).
#define FF_DISPATCH_CUDA_TYPES(TYPE, NAME, ...)                       \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

struct Strides {
  int64_t b, c, h, w;
};

Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Where the transformed positions are, and the scale function.
struct Config {
  int64_t channels, height, width, plane, sample;  // C, H, W, H·W, C·H·W
  int64_t first;                                   // first transformed channel (channel mask)
  int64_t param_channels;                          // channels of raw_scale / shift: C/2 or C
  int mask, scale, parity;                         // parity: (h + w) mod 2 of transformed positions
  bool inverse;
  float clamp, inv_clamp;
};

template <typename T>
struct alignas(sizeof(T) * kItems) Pack {
  T v[kItems];
};

// n / d, and n − (n / d)·d into `rest`, for 0 <= n <= bound and d >= 1: in 32 bits when the bound fits, a
// few instructions instead of the long 64-bit routine (the branch is uniform: bound comes from the Config).
__device__ __forceinline__ int64_t divide(int64_t n, int64_t d, int64_t bound, int64_t& rest) {
  if (bound <= UINT32_MAX) {
    const auto n32 = static_cast<uint32_t>(n), d32 = static_cast<uint32_t>(d);
    const uint32_t q = n32 / d32;
    rest = n32 - q * d32;
    return q;
  }
  const int64_t q = n / d;
  rest = n - q * d;
  return q;
}

// Element (c, h, w) of one sample: a flat index 0 <= i < C·H·W split once per thread, the thread's next
// elements reached by advance() without division.
struct Position {
  int64_t c, h, w;
  __device__ Position(int64_t i, const Config& k) {
    int64_t hw;
    c = divide(i, k.plane, k.sample, hw);
    h = divide(hw, k.width, k.plane, w);
  }
  // To flat index i + 1: the next w, wrapping into the next row, then the next channel (past the sample's
  // last element, c = C: callers only use positions below their count).
  __device__ __forceinline__ void advance(const Config& k) {
    if (++w == k.width) {
      w = 0;
      if (++h == k.height) {
        h = 0;
        ++c;
      }
    }
  }
};

__device__ __forceinline__ bool is_transformed(const Position& p, const Config& k) {
  if (k.mask == kMaskChannel) return p.c >= k.first && p.c < k.first + k.param_channels;
  return ((p.h + p.w) & 1) == k.parity;
}

// A thread's kItems elements: the position of the first and whether each is transformed, false past
// count = how many of them lie in the sample (< kItems in the last tile, 0 for idle threads); computed once
// per thread, reused by the loads, the math and the stores of every sample b. The scalar loads step from
// `first` again (a few compares and adds) rather than keep kItems positions in registers.
struct Items {
  Position first;
  bool transformed[kItems];
  __device__ Items(const Position& p, int64_t count, const Config& k) : first(p) {
    Position q = p;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      if (j > 0) q.advance(k);
      transformed[j] = j < count && is_transformed(q, k);
    }
  }
};

__device__ __forceinline__ int64_t offset(const Strides& s, int64_t b, int64_t c, int64_t h, int64_t w) {
  return b * s.b + c * s.c + h * s.h + w * s.w;
}

// Sigmoid: a = h + 2, e = exp(−|a|), log s = min(a, 0) − log1p(e), s = (a >= 0 ? 1 : e)/(1 + e),
// d = 1 − s. Exp: u = h/c, E = expm1(2|u|), tanh|u| = E/(E + 2), log s = c·tanh u, d = 4(E + 1)/(E + 2)².
struct Scale {
  float log_s, s, inv_s, d;
};

__device__ __forceinline__ Scale scale_of(float h, const Config& k, bool need_d) {
  Scale r;
  if (k.scale == kScaleSigmoid) {
    const float a = h + 2.f;
    const float e = expf(-fabsf(a));
    const float e_or_1 = a >= 0.f ? 1.f : e;
    r.log_s = fminf(a, 0.f) - log1pf(e);
    r.s = e_or_1 / (1.f + e);
    r.inv_s = (1.f + e) / e_or_1;
    r.d = need_d ? (a >= 0.f ? e : 1.f) / (1.f + e) : 0.f;
  } else {
    const float E = expm1f(2.f * fminf(fabsf(h * k.inv_clamp), 20.f));  // |u| <= 20 keeps E finite
    const float magnitude = k.clamp * (E / (E + 2.f));
    r.log_s = h < 0.f ? -magnitude : magnitude;
    r.s = expf(r.log_s);
    r.inv_s = expf(-r.log_s);
    r.d = need_d ? 4.f * (E + 1.f) / ((E + 2.f) * (E + 2.f)) : 0.f;
  }
  return r;
}

// Sum over the block, valid in thread 0; callable repeatedly (the trailing barrier frees the scratch).
__device__ float block_sum(float value) {
  __shared__ float warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  value = threadIdx.x < kThreads / 32 ? warp_sums[lane] : 0.f;
  if (warp == 0) {
    for (int offset = kThreads / 64; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  __syncthreads();
  return value;
}

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// Loads a thread's `count` elements (items) of sample b from a tensor with strides s, element (c, h, w)
// read at channel c − channel_offset (raw_scale / shift skip the pass-through half). kVec: one vector load
// at the first position (the caller checked contiguity and alignment, and with the channel mask that the
// group is transformed). Else one strided load per element at its stepped position, only where it is
// transformed when `params`, since raw_scale / shift have no pass-through channels to read.
template <bool kVec, typename scalar_t>
__device__ __forceinline__ void load(const scalar_t* data, const Strides& s, int64_t b, const Items& items,
                                     int64_t channel_offset, bool params, int64_t count, const Config& k,
                                     float out[kItems]) {
  if constexpr (kVec) {
    const Position& p = items.first;
    const auto* pack = reinterpret_cast<const Pack<scalar_t>*>(data + offset(s, b, p.c - channel_offset, p.h, p.w));
    const Pack<scalar_t> values = *pack;
#pragma unroll
    for (int j = 0; j < kItems; ++j) out[j] = static_cast<float>(values.v[j]);
  } else {
    Position q = items.first;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      if (j > 0) q.advance(k);
      out[j] = 0.f;
      if (j < count && (!params || items.transformed[j])) {
        out[j] = static_cast<float>(data[offset(s, b, q.c - channel_offset, q.h, q.w)]);
      }
    }
  }
}

template <bool kVec, typename scalar_t>
__device__ __forceinline__ void store(scalar_t* data, int64_t i0, int64_t count, const float values[kItems]) {
  if constexpr (kVec) {
    Pack<scalar_t> pack;
#pragma unroll
    for (int j = 0; j < kItems; ++j) pack.v[j] = static_cast<scalar_t>(values[j]);
    *reinterpret_cast<Pack<scalar_t>*>(data + i0) = pack;
  } else {
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      if (j < count) data[i0 + j] = static_cast<scalar_t>(values[j]);
    }
  }
}

// ------------------------------------------------------------------------------------------------------
// Forward: y (contiguous) and partial[b, tile] = Σ log s over the tile's transformed positions.

template <typename scalar_t, bool kVec>
__global__ void __launch_bounds__(kThreads)
    coupling_fwd_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ raw,
                        const scalar_t* __restrict__ shift, scalar_t* __restrict__ y, float* __restrict__ partial,
                        Strides xs, Strides hs, Strides ts, Config k, int64_t batch) {
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x * kItems;
  const int64_t count = i0 < k.sample ? imin(kItems, k.sample - i0) : 0;
  // Idle threads (count 0) split a valid index; their items are all not transformed.
  const Items items(Position(imin(i0, k.sample - 1), k), count, k);
  // Whether any element of the group may be transformed (kVec with the channel mask: all or none).
  const bool group = !kVec || k.mask != kMaskChannel || is_transformed(items.first, k);
  const int64_t param_offset = k.mask == kMaskChannel ? k.first : 0;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    float xv[kItems], yv[kItems], hv[kItems], tv[kItems];
    float logdet = 0.f;
    if (count > 0) {
      load<kVec>(x, xs, b, items, 0, false, count, k, xv);
      if (group && k.scale != kScaleAdditive) load<kVec>(raw, hs, b, items, param_offset, true, count, k, hv);
      if (group) load<kVec>(shift, ts, b, items, param_offset, true, count, k, tv);
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        yv[j] = xv[j];
        if (!group || !items.transformed[j]) continue;
        if (k.scale == kScaleAdditive) {
          yv[j] = k.inverse ? xv[j] - tv[j] : xv[j] + tv[j];
        } else {
          const Scale sc = scale_of(hv[j], k, false);
          yv[j] = k.inverse ? (xv[j] - tv[j]) * sc.inv_s : xv[j] * sc.s + tv[j];
          logdet += sc.log_s;
        }
      }
      store<kVec>(y + b * k.sample, i0, count, yv);
    }
    const float total = block_sum(logdet);
    if (threadIdx.x == 0) partial[b * gridDim.x + blockIdx.x] = total;
  }
}

// logdet[b] = sign · Σ_tile partial[b, tile], one block per sample, in a fixed order.
__global__ void __launch_bounds__(kThreads)
    logdet_sum_kernel(const float* __restrict__ partial, float* __restrict__ logdet, int64_t tiles, float sign) {
  const int64_t b = blockIdx.x;
  float sum = 0.f;
  for (int64_t t = threadIdx.x; t < tiles; t += kThreads) sum += partial[b * tiles + t];
  const float total = block_sum(sum);
  if (threadIdx.x == 0) logdet[b] = sign * total;
}

// ------------------------------------------------------------------------------------------------------
// Backward: grad_x (contiguous like z), grad_raw_scale and grad_shift (contiguous like raw_scale).

template <typename scalar_t, bool kVec>
__global__ void __launch_bounds__(kThreads)
    coupling_bwd_kernel(const scalar_t* __restrict__ grad_y, const float* __restrict__ grad_logdet,
                        const scalar_t* __restrict__ z, const scalar_t* __restrict__ raw, scalar_t* __restrict__ grad_x,
                        scalar_t* __restrict__ grad_raw, scalar_t* __restrict__ grad_shift, Strides gs, Strides zs,
                        Strides hs, Config k, int64_t batch) {
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x * kItems;
  if (i0 >= k.sample) return;  // no block-wide reduction here: idle threads may leave
  const int64_t count = imin(kItems, k.sample - i0);
  const Items items(Position(i0, k), count, k);
  // Whether any element of the group may be transformed (kVec with the channel mask: all or none).
  const bool group = !kVec || k.mask != kMaskChannel || is_transformed(items.first, k);
  const int64_t param_offset = k.mask == kMaskChannel ? k.first : 0;
  const int64_t param_sample = k.param_channels * k.plane;
  // Flat index of the thread's first element inside raw_scale's [C/2 or C, H, W]: shifted by the first
  // transformed channel.
  const int64_t param_i0 = i0 - (k.mask == kMaskChannel ? k.first * k.plane : 0);
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    float gv[kItems], zv[kItems], hv[kItems], gx[kItems], gh[kItems], gt[kItems];
    load<kVec>(grad_y, gs, b, items, 0, false, count, k, gv);
    if (group) {
      load<kVec>(z, zs, b, items, 0, false, count, k, zv);
      load<kVec>(raw, hs, b, items, param_offset, true, count, k, hv);
    }
    const float gl = grad_logdet[b];
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      gx[j] = gv[j];
      gh[j] = 0.f;
      gt[j] = 0.f;
      if (!group || !items.transformed[j]) continue;
      const Scale sc = scale_of(hv[j], k, true);
      if (k.inverse) {
        gx[j] = gv[j] * sc.inv_s;
        gh[j] = -sc.d * (gv[j] * zv[j] + gl);
        gt[j] = -gx[j];
      } else {
        gx[j] = gv[j] * sc.s;
        gh[j] = sc.d * (gv[j] * zv[j] * sc.s + gl);
        gt[j] = gv[j];
      }
    }
    store<kVec>(grad_x + b * k.sample, i0, count, gx);
    if (k.mask == kMaskChannel) {
      // raw_scale covers the transformed channels only; kVec groups lie in one channel, the others are
      // written element by element where transformed.
      if (kVec) {
        if (group) store<kVec>(grad_raw + b * param_sample, param_i0, count, gh);
        if (group) store<kVec>(grad_shift + b * param_sample, param_i0, count, gt);
      } else {
#pragma unroll
        for (int j = 0; j < kItems; ++j) {
          if (items.transformed[j]) {
            grad_raw[b * param_sample + param_i0 + j] = static_cast<scalar_t>(gh[j]);
            grad_shift[b * param_sample + param_i0 + j] = static_cast<scalar_t>(gt[j]);
          }
        }
      }
    } else {
      store<kVec>(grad_raw + b * param_sample, i0, count, gh);
      store<kVec>(grad_shift + b * param_sample, i0, count, gt);
    }
  }
}

// ------------------------------------------------------------------------------------------------------
// Host side.

Config make_config(const at::Tensor& x, int64_t mask, int64_t scale, bool flip, bool inverse, double clamp) {
  Config k;
  k.channels = x.size(1);
  k.height = x.size(2);
  k.width = x.size(3);
  k.plane = k.height * k.width;
  k.sample = k.channels * k.plane;
  k.first = mask == kMaskChannel && !flip ? k.channels / 2 : 0;
  k.param_channels = mask == kMaskChannel ? k.channels / 2 : k.channels;
  k.mask = static_cast<int>(mask);
  k.scale = static_cast<int>(scale);
  k.parity = flip ? 0 : 1;
  k.inverse = inverse;
  k.clamp = static_cast<float>(clamp);
  k.inv_clamp = static_cast<float>(1.0 / clamp);
  return k;
}

// True when a thread's kItems elements can be read from this tensor as one aligned vector: contiguous
// (H, W) planes whose size, channel and batch strides keep every group of kItems in one aligned plane.
bool vector_friendly(const at::Tensor& t) {
  const int64_t plane = t.size(2) * t.size(3);
  const bool planes = t.stride(3) == 1 && (t.size(2) == 1 || t.stride(2) == t.size(3));
  const auto bytes = static_cast<int64_t>(t.element_size()) * kItems;
  return planes && plane % kItems == 0 && t.stride(1) % kItems == 0 && t.stride(0) % kItems == 0 &&
         reinterpret_cast<uintptr_t>(t.const_data_ptr()) % bytes == 0;
}

cudaStream_t current_stream(const at::Tensor& t) {
  const c10::impl::VirtualGuardImpl guard_impl(c10::DeviceType::CUDA);
  return static_cast<cudaStream_t>(guard_impl.getStream(t.device()).native_handle());
}

void check_launch(const char* what) {
  const cudaError_t error = cudaGetLastError();
  TORCH_CHECK(error == cudaSuccess, "fastflow coupling: launching the CUDA kernel ", what, " failed: ",
              cudaGetErrorString(error));
}

void check_cuda(const at::Tensor& t, const at::Tensor& reference, const char* name) {
  TORCH_CHECK(t.device() == reference.device(), "fastflow coupling (CUDA kernel): ", name, " is on ", t.device(),
              " but the other tensors are on ", reference.device(), "; put them on one device");
}

dim3 grid_for(int64_t tiles, int64_t batch) {
  TORCH_CHECK(tiles <= INT32_MAX, "fastflow coupling: a sample of ", tiles * kTile, " elements is too large");
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(std::min<int64_t>(batch, kMaxGridY)));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> coupling_fwd_cuda(const at::Tensor& x, const std::optional<at::Tensor>& raw_scale,
                                                     const at::Tensor& shift, int64_t mask, int64_t scale, bool flip,
                                                     bool inverse, double clamp) {
  check_cuda(x, x, "x");
  check_coupling_fwd_args(x, raw_scale, shift, mask, scale, clamp);
  const bool has_raw = raw_scale.has_value() && raw_scale->defined();
  const c10::DeviceGuard device_guard(x.device());
  const int64_t batch = x.size(0);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor logdet = at::empty({batch}, x.options().dtype(at::kFloat));
  const Config k = make_config(x, mask, scale, flip, inverse, clamp);
  if (batch == 0) return {y, logdet};
  if (k.sample == 0) return {y, logdet.zero_()};

  TORCH_CHECK(batch <= INT32_MAX, "fastflow coupling: batch ", batch, " is too large for one launch");
  const int64_t tiles = (k.sample + kTile - 1) / kTile;
  at::Tensor partial = at::empty({batch, tiles}, x.options().dtype(at::kFloat));
  const bool vec = vector_friendly(x) && vector_friendly(shift) && (!has_raw || vector_friendly(*raw_scale));
  const cudaStream_t stream = current_stream(x);
  const Strides hs = has_raw ? strides_of(*raw_scale) : Strides{0, 0, 0, 0};
  FF_DISPATCH_CUDA_TYPES(x.scalar_type(), "coupling_fwd_cuda", [&] {
    const scalar_t* raw = has_raw ? raw_scale->const_data_ptr<scalar_t>() : nullptr;
    auto launch = [&](auto kernel) {
      kernel<<<grid_for(tiles, batch), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), raw, shift.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
          partial.mutable_data_ptr<float>(), strides_of(x), hs, strides_of(shift), k, batch);
    };
    if (vec) {
      launch(coupling_fwd_kernel<scalar_t, true>);
    } else {
      launch(coupling_fwd_kernel<scalar_t, false>);
    }
  });
  check_launch("coupling_fwd");
  logdet_sum_kernel<<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
      partial.const_data_ptr<float>(), logdet.mutable_data_ptr<float>(), tiles, inverse ? -1.f : 1.f);
  check_launch("logdet_sum");
  return {y, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> coupling_bwd_cuda(const at::Tensor& grad_y,
                                                                 const at::Tensor& grad_logdet, const at::Tensor& z,
                                                                 const at::Tensor& raw_scale, int64_t mask,
                                                                 int64_t scale, bool flip, bool inverse,
                                                                 double clamp) {
  check_cuda(z, z, "z");
  check_coupling_bwd_args(grad_y, grad_logdet, z, raw_scale, mask, scale, clamp);
  const c10::DeviceGuard device_guard(z.device());
  const auto contiguous = z.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_x = at::empty(z.sizes(), contiguous);
  at::Tensor grad_raw = at::empty(raw_scale.sizes(), contiguous);
  at::Tensor grad_shift = at::empty(raw_scale.sizes(), contiguous);
  const int64_t batch = z.size(0);
  const Config k = make_config(z, mask, scale, flip, inverse, clamp);
  if (batch == 0 || k.sample == 0) return {grad_x, grad_raw, grad_shift};

  // [B] values, possibly expanded (stride 0) or of another float dtype: one small float32 copy.
  const at::Tensor gl = grad_logdet.to(at::kFloat).contiguous();
  const int64_t tiles = (k.sample + kTile - 1) / kTile;
  const bool vec = vector_friendly(grad_y) && vector_friendly(z) && vector_friendly(raw_scale);
  const cudaStream_t stream = current_stream(z);
  FF_DISPATCH_CUDA_TYPES(z.scalar_type(), "coupling_bwd_cuda", [&] {
    auto launch = [&](auto kernel) {
      kernel<<<grid_for(tiles, batch), kThreads, 0, stream>>>(
          grad_y.const_data_ptr<scalar_t>(), gl.const_data_ptr<float>(), z.const_data_ptr<scalar_t>(),
          raw_scale.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(),
          grad_raw.mutable_data_ptr<scalar_t>(), grad_shift.mutable_data_ptr<scalar_t>(), strides_of(grad_y),
          strides_of(z), strides_of(raw_scale), k, batch);
    };
    if (vec) {
      launch(coupling_bwd_kernel<scalar_t, true>);
    } else {
      launch(coupling_bwd_kernel<scalar_t, false>);
    }
  });
  check_launch("coupling_bwd");
  return {grad_x, grad_raw, grad_shift};
}

}  // namespace fastflow
