// The one registration file of fastflow._C: operator schemas (TORCH_LIBRARY) and the CPU / CUDA kernels
// behind them (TORCH_LIBRARY_IMPL). Python reaches them as torch.ops.fastflow_C.<op>; fastflow/ops/ wraps
// them in custom ops with fake functions and autograd, so nothing here registers Autograd or Meta kernels.
//
// The extension is built against the limited Python API (Py_LIMITED_API, one wheel for every CPython >= 3.10)
// and without pybind11: the module object only has to exist so that `import fastflow._C` runs the static
// registrations below, as pytorch/extension-cpp does.
#include <Python.h>
#include <torch/library.h>

#include <string_view>

#include "actnorm_invconv.h"
#include "coupling.h"
#include "lstm.h"
#include "nade.h"

namespace fastflow {
// Test-only, hence no header: one float32 function of cpu/fastmath.h applied elementwise, for
// tests/ops/test_fastmath.py (defined in cpu/fastmath_probe.cpp).
at::Tensor fastmath_cpu(const at::Tensor& x, std::string_view function);
}  // namespace fastflow

extern "C" {
// Importing the module loads this shared library, which runs the TORCH_LIBRARY initialisers.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",                                                              // name
      "fastflow's compiled kernels, registered as torch.ops.fastflow_C",  // doc
      -1,                                                                // no per-interpreter state
      nullptr,                                                           // no methods
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastflow_C, m) {
  m.def(
      "coupling_fwd(Tensor x, Tensor? raw_scale, Tensor shift, int mask, int scale, bool flip, bool inverse, "
      "float clamp) -> (Tensor, Tensor)");
  m.def(
      "coupling_bwd(Tensor grad_y, Tensor grad_logdet, Tensor z, Tensor raw_scale, int mask, int scale, bool flip, "
      "bool inverse, float clamp) -> (Tensor, Tensor, Tensor)");
  m.def("actnorm_invconv_fwd(Tensor x, Tensor weight, Tensor bias) -> Tensor");
  m.def("actnorm_invconv_bwd(Tensor grad_y, Tensor x, Tensor weight) -> (Tensor, Tensor, Tensor)");
  m.def("nade_fwd(Tensor x, Tensor W, Tensor c, Tensor V, Tensor b) -> (Tensor, Tensor)");
  m.def(
      "nade_bwd(Tensor grad_logits, Tensor grad_log_prob, Tensor x, Tensor W, Tensor c, Tensor V, Tensor b, "
      "Tensor logits) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("nade_sample(Tensor W, Tensor c, Tensor V, Tensor b, Tensor u) -> Tensor");
  m.def("lstm_cell_fwd(Tensor gates, Tensor c) -> (Tensor, Tensor)");
  m.def("lstm_cell_bwd(Tensor grad_m, Tensor grad_c_new, Tensor gates, Tensor c, Tensor c_new) -> (Tensor, Tensor)");
  m.def(
      "lstm_fwd(Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, "
      "int[] batch_sizes, int mode, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_bwd(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, "
      "Tensor w_hh, Tensor? w_hr, Tensor y, Tensor gates, Tensor c_all, int[] batch_sizes, int mode, bool reverse, "
      "bool has_bias) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Leading underscore: internal, for tests; fastflow/ops/ does not wrap it.
  m.def("_fastmath(Tensor x, str function) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastflow_C, CPU, m) {
  m.impl("coupling_fwd", &fastflow::coupling_fwd_cpu);
  m.impl("coupling_bwd", &fastflow::coupling_bwd_cpu);
  m.impl("actnorm_invconv_fwd", &fastflow::actnorm_invconv_fwd_cpu);
  m.impl("actnorm_invconv_bwd", &fastflow::actnorm_invconv_bwd_cpu);
  m.impl("nade_fwd", &fastflow::nade_fwd_cpu);
  m.impl("nade_bwd", &fastflow::nade_bwd_cpu);
  m.impl("nade_sample", &fastflow::nade_sample_cpu);
  m.impl("lstm_cell_fwd", &fastflow::lstm_cell_fwd_cpu);
  m.impl("lstm_cell_bwd", &fastflow::lstm_cell_bwd_cpu);
  m.impl("lstm_fwd", &fastflow::lstm_fwd_cpu);
  m.impl("lstm_bwd", &fastflow::lstm_bwd_cpu);
  m.impl("_fastmath", &fastflow::fastmath_cpu);
}

#ifdef FASTFLOW_WITH_CUDA
TORCH_LIBRARY_IMPL(fastflow_C, CUDA, m) {
  m.impl("coupling_fwd", &fastflow::coupling_fwd_cuda);
  m.impl("coupling_bwd", &fastflow::coupling_bwd_cuda);
  m.impl("lstm_cell_fwd", &fastflow::lstm_cell_fwd_cuda);
  m.impl("lstm_cell_bwd", &fastflow::lstm_cell_bwd_cuda);
  m.impl("lstm_fwd", &fastflow::lstm_fwd_cuda);
  m.impl("lstm_bwd", &fastflow::lstm_bwd_cuda);
}
#endif
