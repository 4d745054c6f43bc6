// float32 exp / expm1 / log1p of the CPU kernels, written as range reduction + polynomial because the libm
// calls would keep the kernels' loops scalar; the float64 overloads keep libm (float64 is not a speed path).
// The float versions are branch-free (selects only) so that the loops vectorise.
//
// Error bounds ("max B ulp on [lo, hi]"): |result − exact| / ulp(exact rounded to float32), exact being the
// float64 libm value, maximised over every float32 input in [lo, hi] (measured exhaustively when written),
// with and without FMA contraction (the x86-64-v3/v4 clones contract a·b + c into FMAs, the baseline clone
// cannot; the worst inputs differ); B is the larger maximum rounded up. tests/ops/test_fastmath.py samples
// each range through torch.ops.fastflow_C._fastmath and asserts these bounds: keep them in this form. NaN
// gives NaN in all four.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#define FF_INLINE inline __attribute__((always_inline))

// Function multiversioning: one build runs the AVX-512 loop on machines that have it, AVX2+FMA on older
// ones, SSE2 elsewhere. Only for x86-64 GCC (clang's target_clones does not accept arch= names). The probe
// of these functions (fastmath_probe.cpp) is cloned the same way, so it measures the code the kernels run.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FF_CLONES
#endif

namespace fastflow::fastmath {

FF_INLINE float from_bits(int32_t bits) { return __builtin_bit_cast(float, bits); }

// exp(x) = 2^k·(1 + p) with x = k·ln2 + r, |r| <= ln2/2, p = expm1(r) = r + r²·Q(r) (Q: degree 4, fitted
// near-minimax here): exp_core gives k and p for an x already clamped; exp_parts also p and half = 2^(k−1), so
// that 2^k stays finite up to the overflow threshold of exp; exp and expm1 share this.
FF_INLINE void exp_core(float x, float& k, float& p) {
  // Round-to-nearest by the 1.5·2^23 trick: vectorises, unlike nearbyint.
  k = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  // Cody-Waite: ln2 split so that k·ln2_hi is exact.
  const float r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
  float q = 0.001362021081149578f;
  q = q * r + 0.008372793905436993f;
  q = q * r + 0.041672706604003906f;
  q = q * r + 0.16666477918624878f;
  q = q * r + 0.4999997019767761f;
  p = r + r * r * q;
}

FF_INLINE void exp_parts(float x, float& p, float& half) {
  // k in [-125, 128]: 2^(k−1) is a normal float. 88.72284 is the first float above log(FLT_MAX): every x whose
  // exp is finite in float32 passes unclamped, and at the clamp 2^k·(1 + p) overflows to inf as it should.
  x = std::min(std::max(x, -86.6f), 88.72284f);
  float k;
  exp_core(x, k, p);
  half = from_bits((static_cast<int32_t>(k) + 126) << 23);
}

// exp(x): max 1.0 ulp on [-86.6, 88.7228] (measured 0.990 with FMA, 0.966 without, up to 88.72 exhaustively;
// the test samples the rest up to the last float with a finite exp). Below -86.6 the result (< 2.5e-38) is
// flushed to 0; from 88.72284, the first float above log(FLT_MAX), it is inf, as expf.
FF_INLINE float exp_(float x) {
  float p, half;
  exp_parts(x, p, half);
  const float value = 2.f * (half + half * p);
  return x < -86.6f ? 0.f : x >= 88.72284f ? __builtin_inff() : value;
}

// exp(x) for x <= 0 where a result below 2.5e-38 may stay 2.5e-38 (it is added to 1 or multiplied into
// something finite): two selects fewer in the hottest loop. Max 1.0 ulp on [-86.6, 0] (the worst inputs of exp_);
// exp(-86.6) = 2.455e-38 for x < -86.6.
FF_INLINE float exp_nonpositive(float x) {
  float p, half;
  exp_parts(x, p, half);
  return 2.f * (half + half * p);
}

// exp(x) with x clamped to [-86.6, 80], for sigmoid(a) = 1/(1 + exp(−a)) without |a| and a select: there
// 2^k is a normal float (k in [-125, 116]), so no half-scale and no edge selects; every result is a normal
// float, so nothing downstream meets a subnormal (a slow path on x86). Outside the range the result is exp of
// the range end: 1/(1 + e) is then exact to 2e-35 (above 80) or rounds to 1 anyway (below -86.6).
// Max 1.0 ulp on [-86.6, 80] (measured 0.990 with FMA, exhaustively): bit for bit exp_ there, whose scaling by
// 2·2^(k−1) rounds as this one by 2^k (a power of two is exact), so exp_'s bound without FMA holds as well.
FF_INLINE float exp_bounded(float x) {
  float k, p;
  exp_core(std::min(std::max(x, -86.6f), 80.f), k, p);
  const float two_k = from_bits((static_cast<int32_t>(k) + 127) << 23);
  return two_k + two_k * p;
}

// expm1(x) for x in [0, 40] (the kernels' range): p itself when k = 0 (small x keeps full relative
// precision, tiny x is returned exactly), else 2^k·p + (2^k − 1). Max 1.5 ulp on [0, 40] (measured 1.44
// with FMA, 1.4998 without). Callers must clamp: from x ≈ 88.38 (k = 128) 2^k overflows and the result
// is inf or NaN.
FF_INLINE float expm1_(float x) {
  float p, half;
  exp_parts(x, p, half);
  const float two_k = 2.f * half;
  return two_k * p + (two_k - 1.f);
}

// log(1 + e) for e in [0, 1], given r = 1/(1 + e) (the caller needs it anyway): log(u) of u = 1 + e by
// u = 2^k·m, m in [√½, √2], log1p(m − 1) = x − x²/2 + x³·P(x) (P: degree 7, fitted near-minimax on
// [√½ − 1, √2 − 1]), plus (e − (u − 1))·r for the rounding of 1 + e (which is all of the result when e is
// tiny: e < 2^-24 is returned exactly). No division, so the loop stays on the FMA units. With r computed
// as 1.f / (1.f + e): max 1.75 ulp on [0, 1] (measured 1.66 with FMA, 1.72 without, both just above
// √2 − 1, where u is halved and the ln2 part added).
FF_INLINE float log1p_unit(float e, float r) {
  const float u = 1.f + e;
  const bool upper = u > 1.41421356f;
  const float x = (upper ? 0.5f * u : u) - 1.f;  // exact (Sterbenz)
  float poly = -0.06406231224536896f;
  poly = poly * x + 0.12051301449537277f;
  poly = poly * x - 0.13306918740272522f;
  poly = poly * x + 0.14321132004261017f;
  poly = poly * x - 0.16619718074798584f;
  poly = poly * x + 0.19995002448558807f;
  poly = poly * x - 0.2500080168247223f;
  poly = poly * x + 0.3333342671394348f;
  const float log_m = x - 0.5f * x * x + x * x * x * poly;
  const float correction = (e - (u - 1.f)) * r;
  // ln2 in two parts so that adding it keeps the result's last bits.
  return (upper ? 0.693145752f : 0.f) + (log_m + ((upper ? 1.42860677e-6f : 0.f) + correction));
}

FF_INLINE double exp_(double x) { return std::exp(x); }
FF_INLINE double expm1_(double x) { return std::expm1(x); }
FF_INLINE double exp_nonpositive(double x) { return std::exp(x); }
FF_INLINE double exp_bounded(double x) { return std::exp(std::min(std::max(x, -700.0), 700.0)); }
FF_INLINE double log1p_unit(double e, double) { return std::log1p(e); }

}  // namespace fastflow::fastmath
