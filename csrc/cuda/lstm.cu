// CUDA kernels of the LSTM / RNN ops (contract: fastflow/ops/lstm.py; math: fastflow/reference/lstm.py).
//
// The host loop is lstm_loop.h's, shared with the CPU: the input projection of every step as one cuBLAS GEMM
// (through ATen), then per step one GEMM for W_hh and one launch of the pointwise kernel below, all from C++ on
// the current stream (no Python per step, no host synchronisation); the backward's weight gradients as one GEMM
// each over all steps. The pointwise kernels: one thread per (row, hidden unit), grid-stride, loads in the
// tensors' dtype (float32, float16, bfloat16, float64) and math in float32 (float64 for float64), as the CPU's.
// A persistent kernel that keeps W_hh on chip across steps (for small batches) is not here yet.
//
// Headers: only the device-generic c10 API and the CUDA runtime (see coupling.cu: CI compiles this file against a
// CPU wheel of torch, whose c10/cuda headers do not compile).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../lstm.h"
#include "../lstm_loop.h"

namespace fastflow {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

#define FF_DISPATCH_LSTM_CUDA_TYPES(TYPE, NAME, ...)                                                      \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kDouble, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)                                    \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename A>
__device__ __forceinline__ A sigmoid_(A x) {
  return A(1) / (A(1) + exp(-x));
}

template <typename T, typename A = typename Acc<T>::type>
__device__ __forceinline__ A load(const T* p) {
  return static_cast<A>(*p);
}

// LSTM cell forward over n·H (row, unit) pairs.
template <typename T>
__global__ void cell_forward_kernel(const T* __restrict__ g, T* __restrict__ c, T* __restrict__ c_out,
                                    T* __restrict__ m, T* __restrict__ m2, int64_t n, int64_t H) {
  using A = typename Acc<T>::type;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n * H;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / H, j = idx - r * H;
    const T* gr = g + r * 4 * H;
    const A i = sigmoid_(load(gr + j)), f = sigmoid_(load(gr + H + j));
    const A gg = tanh(load(gr + 2 * H + j)), o = sigmoid_(load(gr + 3 * H + j));
    const A cn = f * load(c + idx) + i * gg;
    const T cn_t = static_cast<T>(cn);
    c[idx] = cn_t;
    c_out[idx] = cn_t;
    // tanh of the rounded state: the backward recomputes from the stored c_t.
    const T v = static_cast<T>(o * tanh(static_cast<A>(cn_t)));
    m[idx] = v;
    if (m2 != nullptr) m2[idx] = v;
  }
}

template <typename T>
__global__ void cell_backward_kernel(const T* __restrict__ dm, const T* __restrict__ g, const T* __restrict__ c_head,
                                     const T* __restrict__ c_tail, int64_t head, const T* __restrict__ c_new,
                                     T* __restrict__ dc, T* __restrict__ dg, T* __restrict__ m_out, int64_t n,
                                     int64_t H) {
  using A = typename Acc<T>::type;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n * H;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / H, j = idx - r * H;
    const T* gr = g + r * 4 * H;
    T* dgr = dg + r * 4 * H;
    const A i = sigmoid_(load(gr + j)), f = sigmoid_(load(gr + H + j));
    const A gg = tanh(load(gr + 2 * H + j)), o = sigmoid_(load(gr + 3 * H + j));
    const A tc = tanh(load(c_new + idx));
    const A c_prev = r < head ? load(c_head + idx) : load(c_tail + (r - head) * H + j);
    const A d_m = load(dm + idx);
    const A dct = load(dc + idx) + d_m * o * (A(1) - tc * tc);
    dgr[j] = static_cast<T>(dct * gg * i * (A(1) - i));
    dgr[H + j] = static_cast<T>(dct * c_prev * f * (A(1) - f));
    dgr[2 * H + j] = static_cast<T>(dct * i * (A(1) - gg * gg));
    dgr[3 * H + j] = static_cast<T>(d_m * tc * o * (A(1) - o));
    dc[idx] = static_cast<T>(dct * f);
    if (m_out != nullptr) m_out[idx] = static_cast<T>(o * tc);
  }
}

template <typename T>
__global__ void rnn_forward_kernel(const T* __restrict__ pre, T* __restrict__ h, T* __restrict__ y, bool relu,
                                   int64_t count) {
  using A = typename Acc<T>::type;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < count;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const A p = load(pre + idx);
    const T v = static_cast<T>(relu ? (p < A(0) ? A(0) : p) : tanh(p));  // ReLU keeps NaN, as torch.relu
    h[idx] = v;
    y[idx] = v;
  }
}

template <typename T>
__global__ void rnn_backward_kernel(const T* __restrict__ dh, const T* __restrict__ y, T* __restrict__ dpre,
                                    bool relu, int64_t count) {
  using A = typename Acc<T>::type;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < count;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const A d = load(dh + idx), v = load(y + idx);
    dpre[idx] = static_cast<T>(relu ? (v > A(0) ? d : A(0)) : d * (A(1) - v * v));
  }
}

cudaStream_t current_stream(const at::Tensor& t) {
  const c10::impl::VirtualGuardImpl guard_impl(c10::DeviceType::CUDA);
  return static_cast<cudaStream_t>(guard_impl.getStream(t.device()).native_handle());
}

unsigned blocks_for(int64_t count) {
  return static_cast<unsigned>(std::clamp<int64_t>((count + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

void check_launch(const char* what) {
  const cudaError_t error = cudaGetLastError();
  TORCH_CHECK(error == cudaSuccess, "fastflow lstm: launching the CUDA kernel ", what, " failed: ",
              cudaGetErrorString(error));
}

template <typename T>
T* pointer_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

// The CUDA policy of lstm_loop.h.
struct CudaPointwise {
  using Gemm = lstm_loop::PlainGemm;
  static Gemm prepare(const at::Tensor& w, int64_t) { return lstm_loop::plain_prepare(w); }
  static void product(at::Tensor& out, const at::Tensor& a, const Gemm& gemm, bool accumulate) {
    lstm_loop::plain_product(out, a, gemm, accumulate);
  }
  // No whole-recurrence kernel (yet): the loop of lstm_loop.h runs every step.
  static bool fused_forward(const lstm_loop::Layout&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&) {
    return false;
  }
  static bool fused_backward(const lstm_loop::Layout&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&,
                             at::Tensor&) {
    return false;
  }

  static void check(const at::Tensor& t, const char* name, const at::Tensor& like) {
    TORCH_CHECK_VALUE(t.defined(), "fastflow lstm: ", name, " is undefined");
    TORCH_CHECK_VALUE(t.device() == like.device(), "fastflow lstm (CUDA kernel): ", name, " is on ", t.device(),
                      " but x is on ", like.device(), "; put them on one device");
    TORCH_CHECK_VALUE(t.is_cuda(), "fastflow lstm (CUDA kernel): ", name, " must be a CUDA tensor");
    TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), "fastflow lstm: ", name, " has dtype ",
                     t.scalar_type(), " but x has ", like.scalar_type(), "; they must match");
  }

  static void cell_forward(const at::Tensor& gates, at::Tensor& c, at::Tensor& c_out, at::Tensor& m,
                           const at::Tensor& m2) {
    const int64_t n = c.size(0), H = c.size(1);
    if (n * H == 0) return;
    const c10::DeviceGuard device_guard(c.device());
    const cudaStream_t stream = current_stream(c);
    FF_DISPATCH_LSTM_CUDA_TYPES(c.scalar_type(), "lstm_cell_forward_cuda", [&] {
      cell_forward_kernel<scalar_t><<<blocks_for(n * H), kThreads, 0, stream>>>(
          gates.const_data_ptr<scalar_t>(), c.mutable_data_ptr<scalar_t>(), c_out.mutable_data_ptr<scalar_t>(),
          m.mutable_data_ptr<scalar_t>(), pointer_or_null<scalar_t>(m2), n, H);
    });
    check_launch("cell_forward_kernel");
  }

  static void cell_backward(const at::Tensor& dm, const at::Tensor& gates, const at::Tensor& c_head,
                            const at::Tensor& c_tail, const at::Tensor& c_new, at::Tensor& dc, at::Tensor& dg,
                            const at::Tensor& m_out) {
    const int64_t n = dc.size(0), H = dc.size(1);
    if (n * H == 0) return;
    const c10::DeviceGuard device_guard(dc.device());
    const cudaStream_t stream = current_stream(dc);
    FF_DISPATCH_LSTM_CUDA_TYPES(dc.scalar_type(), "lstm_cell_backward_cuda", [&] {
      cell_backward_kernel<scalar_t><<<blocks_for(n * H), kThreads, 0, stream>>>(
          dm.const_data_ptr<scalar_t>(), gates.const_data_ptr<scalar_t>(), c_head.const_data_ptr<scalar_t>(),
          c_tail.const_data_ptr<scalar_t>(), c_head.size(0), c_new.const_data_ptr<scalar_t>(),
          dc.mutable_data_ptr<scalar_t>(), dg.mutable_data_ptr<scalar_t>(), pointer_or_null<scalar_t>(m_out), n, H);
    });
    check_launch("cell_backward_kernel");
  }

  static void rnn_forward(int64_t mode, const at::Tensor& pre, at::Tensor& h, at::Tensor& y) {
    const int64_t count = h.numel();
    if (count == 0) return;
    const c10::DeviceGuard device_guard(h.device());
    const cudaStream_t stream = current_stream(h);
    FF_DISPATCH_LSTM_CUDA_TYPES(h.scalar_type(), "rnn_forward_cuda", [&] {
      rnn_forward_kernel<scalar_t><<<blocks_for(count), kThreads, 0, stream>>>(
          pre.const_data_ptr<scalar_t>(), h.mutable_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
          mode == lstm_loop::kReLU, count);
    });
    check_launch("rnn_forward_kernel");
  }

  static void rnn_backward(int64_t mode, const at::Tensor& dh, const at::Tensor& y, at::Tensor& dpre) {
    const int64_t count = dh.numel();
    if (count == 0) return;
    const c10::DeviceGuard device_guard(dh.device());
    const cudaStream_t stream = current_stream(dh);
    FF_DISPATCH_LSTM_CUDA_TYPES(dh.scalar_type(), "rnn_backward_cuda", [&] {
      rnn_backward_kernel<scalar_t><<<blocks_for(count), kThreads, 0, stream>>>(
          dh.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), dpre.mutable_data_ptr<scalar_t>(),
          mode == lstm_loop::kReLU, count);
    });
    check_launch("rnn_backward_kernel");
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> lstm_cell_fwd_cuda(const at::Tensor& gates, const at::Tensor& c) {
  const c10::DeviceGuard device_guard(gates.device());
  return lstm_loop::cell_forward<CudaPointwise>(gates, c);
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_bwd_cuda(const at::Tensor& grad_m, const at::Tensor& grad_c_new,
                                                      const at::Tensor& gates, const at::Tensor& c,
                                                      const at::Tensor& c_new) {
  const c10::DeviceGuard device_guard(gates.device());
  return lstm_loop::cell_backward<CudaPointwise>(grad_m, grad_c_new, gates, c, c_new);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_fwd_cuda(
    const at::Tensor& x, const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& w_hr, at::IntArrayRef batch_sizes, int64_t mode, bool reverse) {
  const c10::DeviceGuard device_guard(x.device());
  return lstm_loop::forward<CudaPointwise>(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, mode, reverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bwd_cuda(
    const at::Tensor& grad_y, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n, const at::Tensor& x,
    const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& y, const at::Tensor& gates, const at::Tensor& c_all,
    at::IntArrayRef batch_sizes, int64_t mode, bool reverse, bool has_bias) {
  const c10::DeviceGuard device_guard(x.device());
  return lstm_loop::backward<CudaPointwise>(grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, w_hr, y, gates, c_all,
                                            batch_sizes, mode, reverse, has_bias);
}

}  // namespace fastflow
