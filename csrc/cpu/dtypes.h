// The dtype helpers every CPU kernel's argument checks and dispatch use.
#pragma once

#include <ATen/ATen.h>

namespace fastflow {

// The dtype a kernel computes in: float64 for float64 inputs, float32 for the others (16-bit inputs included).
inline at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// The names users know from Python (torch.float32), not ATen's (Float).
inline const char* dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(dtype);
  }
}

}  // namespace fastflow
