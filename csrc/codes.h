// Generated from fastflow/_codes.py by `python -m fastflow._codes > csrc/codes.h`: edit that file, not this
// one (tests/test_codes.py checks that the two agree).
#pragma once

#include <cstdint>

namespace fastflow {

enum Mask : int64_t { kMaskChannel = 0, kMaskCheckerboard = 1 };
enum Scale : int64_t { kScaleSigmoid = 0, kScaleExp = 1, kScaleAdditive = 2 };

}  // namespace fastflow
