// The fused CPU recurrence of the LSTM / RNN sequence op (contract: fastflow/ops/lstm.py; math:
// fastflow/reference/lstm.py; interface: lstm_fused.h).
//
// Why. At the sizes of a char-RNN (B = 32, H = 256..512) one step's product h·W_hhᵀ is a small GEMM (M = B) that a
// library call runs well below its big-GEMM rate (MKL, two threads: 235–300 against 350–390 GFLOP/s), and each
// step pays again for the call, for waking the thread pool, and for the pointwise pass over [B, 4H] that follows.
// Here a team of threads is started once per sequence; per step each thread claims blocks of hidden units (its own
// share first, whose rows of W_hh it packed and keeps in its cache), computes their gates in AVX-512 register
// tiles and finishes them (sigmoids, tanh, state update) while they are in registers; the step ends when every
// block is done, which publishes the new h. The backward is the same with the roles of the GEMM operands turned
// (∂L/∂h_{t−1} = ∂L/∂gates_t · W_hh, a block being columns of W_hh).
//
// x86-64 only (AVX-512 intrinsics, checked at run time); elsewhere applies() is false and the loop runs.
//
// Tiles: MR ≤ 6 batch rows × NV ≤ 4 vectors of 16 columns (≤ 24 accumulators); the forward LSTM tile holds gates
// i, f, g, o of the same 16 units, so its pointwise work needs nothing from other threads. K runs in chunks of 128
// so a chunk of a packed panel (128 × 64 floats, 32 KiB) stays in L1 across the row blocks. Each output number is
// computed by one thread in a fixed order: the result does not depend on the thread count.
#include "lstm_fused.h"

#include "lstm_rows.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define FF_LSTM_FUSED 1
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace fastflow::lstm_fused {

#ifdef FF_LSTM_FUSED

namespace {

constexpr int64_t kLanes = 16;      // floats per AVX-512 vector
constexpr int64_t kMaxRows = 6;     // MR: batch rows per tile
constexpr int64_t kMaxVectors = 4;  // NV: vectors per tile (64 columns)
constexpr int64_t kChunk = 128;     // K per pass over a panel chunk

// ------------------------------------------------------------------------------------------------------
// The register tile: c[v][r·ldc + 0..15] (+)= Σ_k a[r·lda + k] · p[k·NV·16 + v·16 + 0..15], r < MR, v < NV.

// With `bias` (a pointer per vector, or null), its 16 numbers are added to every row as well.
template <int MR, int NV>
__attribute__((target("avx512f"))) void tile(const float* __restrict a, int64_t lda, const float* __restrict p,
                                             int64_t K, float* const* c, int64_t ldc, bool accumulate,
                                             const float* const* bias) {
  __m512 acc[MR][NV];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = accumulate ? _mm512_loadu_ps(c[v] + r * ldc) : _mm512_setzero_ps();
      if (bias != nullptr) acc[r][v] = _mm512_add_ps(acc[r][v], _mm512_loadu_ps(bias[v]));
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    __m512 w[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) w[v] = _mm512_loadu_ps(p + k * NV * kLanes + v * kLanes);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(x, w[v], acc[r][v]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c[v] + r * ldc, acc[r][v]);
  }
}

using Tile = void (*)(const float*, int64_t, const float*, int64_t, float* const*, int64_t, bool,
                     const float* const*);

template <int MR>
constexpr Tile tile_for(int64_t nv) {
  return nv == 1 ? &tile<MR, 1> : nv == 2 ? &tile<MR, 2> : nv == 3 ? &tile<MR, 3> : &tile<MR, 4>;
}

Tile tile_for(int64_t mr, int64_t nv) {
  switch (mr) {
    case 1: return tile_for<1>(nv);
    case 2: return tile_for<2>(nv);
    case 3: return tile_for<3>(nv);
    case 4: return tile_for<4>(nv);
    case 5: return tile_for<5>(nv);
    default: return tile_for<6>(nv);
  }
}

// ------------------------------------------------------------------------------------------------------
// The LSTM pointwise work on one vector of 16 units, in registers. The library's loops (lstm_rows.h) divide; a
// division of 16 floats costs as much as ~10 FMAs here, and a step's five activations had become a fifth of the
// recurrence. So: e^x by a degree-7 polynomial on [−ln2/2, ln2/2] and scalef (≤ 2 ulp), and 1/d by rcp14 and one
// Newton step (≤ 2 ulp); tanh from e^{−2|x|} where that does not cancel (|x| ≥ 0.4), else by its odd Taylor
// series to x¹⁵ (error < 1e-9 there).

#define FF_AVX512 __attribute__((target("avx512f")))

FF_AVX512 inline __m512 v_exp(__m512 x) {  // x in [−80, 80] (callers clamp)
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2 in two parts: n·hi is exact
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

FF_AVX512 inline __m512 v_reciprocal(__m512 d) {  // d ≥ 1 here
  const __m512 y = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(y, _mm512_fnmadd_ps(d, y, _mm512_set1_ps(2.f)));
}

// x into [−bound, bound]; NaN stays NaN (min/max return their second operand when either is NaN).
FF_AVX512 inline __m512 v_clamp(__m512 x, float bound) {
  return _mm512_min_ps(_mm512_set1_ps(bound), _mm512_max_ps(_mm512_set1_ps(-bound), x));
}

FF_AVX512 inline __m512 v_sigmoid(__m512 x) {
  const __m512 e = v_exp(_mm512_sub_ps(_mm512_setzero_ps(), v_clamp(x, 80.f)));
  return v_reciprocal(_mm512_add_ps(_mm512_set1_ps(1.f), e));
}

FF_AVX512 inline __m512 v_tanh(__m512 x) {
  const __m512 a = _mm512_abs_ps(x);
  // Large |x|: 1 − 2/(1 + e^{2|x|}) = (1 − e)/(1 + e) with e = e^{−2|x|} ∈ (0, 0.45]: no cancellation.
  const __m512 e = v_exp(_mm512_mul_ps(_mm512_min_ps(_mm512_set1_ps(40.f), a), _mm512_set1_ps(-2.f)));
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 large = _mm512_mul_ps(_mm512_sub_ps(one, e), v_reciprocal(_mm512_add_ps(one, e)));
  // Small |x|: x·(1 + x²·(−1/3 + x²·(2/15 + ...))).
  const __m512 z = _mm512_mul_ps(a, a);
  __m512 p = _mm512_set1_ps(-929569.f / 638512875.f);
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(21844.f / 6081075.f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-1382.f / 155925.f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(62.f / 2835.f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-17.f / 315.f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.f / 15.f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-1.f / 3.f));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), a, a);
  const __m512 t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, _mm512_set1_ps(0.4f), _CMP_LT_OQ), large, small);
  // The sign of x back on (tanh is odd); NaN stays NaN through both branches.
  return _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(t),
      _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(static_cast<int32_t>(0x80000000u)))));
}

// lstm_rows::cell_forward on 16 units (g: the gates of the row at its first unit, `stride` = H apart).
FF_AVX512 void cell_forward_16(const float* g, int64_t stride, float* c, float* c_out, float* m, float* m2) {
  const __m512 i = v_sigmoid(_mm512_loadu_ps(g)), f = v_sigmoid(_mm512_loadu_ps(g + stride));
  const __m512 gg = v_tanh(_mm512_loadu_ps(g + 2 * stride)), o = v_sigmoid(_mm512_loadu_ps(g + 3 * stride));
  const __m512 cn = _mm512_fmadd_ps(f, _mm512_loadu_ps(c), _mm512_mul_ps(i, gg));
  _mm512_storeu_ps(c, cn);
  _mm512_storeu_ps(c_out, cn);
  const __m512 h = _mm512_mul_ps(o, v_tanh(cn));
  _mm512_storeu_ps(m, h);
  _mm512_storeu_ps(m2, h);
}

// lstm_rows::cell_backward on 16 units (dg in the gates' layout).
FF_AVX512 void cell_backward_16(const float* dm_p, const float* g, int64_t stride, const float* c_prev,
                                const float* c_new, float* dc, float* dg) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 i = v_sigmoid(_mm512_loadu_ps(g)), f = v_sigmoid(_mm512_loadu_ps(g + stride));
  const __m512 gg = v_tanh(_mm512_loadu_ps(g + 2 * stride)), o = v_sigmoid(_mm512_loadu_ps(g + 3 * stride));
  const __m512 tc = v_tanh(_mm512_loadu_ps(c_new)), dm = _mm512_loadu_ps(dm_p);
  const __m512 dct = _mm512_fmadd_ps(_mm512_mul_ps(dm, o), _mm512_fnmadd_ps(tc, tc, one), _mm512_loadu_ps(dc));
  _mm512_storeu_ps(dg, _mm512_mul_ps(_mm512_mul_ps(dct, gg), _mm512_mul_ps(i, _mm512_sub_ps(one, i))));
  _mm512_storeu_ps(dg + stride, _mm512_mul_ps(_mm512_mul_ps(dct, _mm512_loadu_ps(c_prev)),
                                              _mm512_mul_ps(f, _mm512_sub_ps(one, f))));
  _mm512_storeu_ps(dg + 2 * stride, _mm512_mul_ps(_mm512_mul_ps(dct, i), _mm512_fnmadd_ps(gg, gg, one)));
  _mm512_storeu_ps(dg + 3 * stride, _mm512_mul_ps(_mm512_mul_ps(dm, tc), _mm512_mul_ps(o, _mm512_sub_ps(one, o))));
  _mm512_storeu_ps(dc, _mm512_mul_ps(dct, f));
}

// ------------------------------------------------------------------------------------------------------
// Column blocks: the columns of one tile and the panel of the weight that multiplies into them.

struct Block {
  int64_t unit;           // first hidden unit
  int64_t nv;             // vectors
  int64_t column[kMaxVectors];  // first column of each vector in the output rows
};

// Forward LSTM: 16 units, the four gates as four vectors (columns q·H + unit). Forward RNN and every backward:
// up to `vectors` × 16 consecutive units (columns unit + 16v).
std::vector<Block> blocks(int64_t H, bool gate_tiles, int64_t vectors = kMaxVectors) {
  std::vector<Block> out;
  if (gate_tiles) {
    for (int64_t u = 0; u < H; u += kLanes) out.push_back({u, 4, {u, H + u, 2 * H + u, 3 * H + u}});
  } else {
    for (int64_t u = 0; u < H; u += vectors * kLanes) {
      Block b{u, std::min(vectors, (H - u) / kLanes), {}};
      for (int64_t v = 0; v < b.nv; ++v) b.column[v] = u + v * kLanes;
      out.push_back(b);
    }
  }
  return out;
}

// rows [0, n) in blocks of at most kMaxRows, as even as possible: body(first row, rows).
template <typename F>
void row_blocks(int64_t n, const F& body) {
  const int64_t count = (n + kMaxRows - 1) / kMaxRows;
  for (int64_t b = 0, r = 0; b < count; ++b) {
    const int64_t rows = n / count + (b < n % count ? 1 : 0);
    body(r, rows);
    r += rows;
  }
}

// out[rows] (+)= a[rows] · panel (+ bias) over one block, K in chunks (the panel [K][nv·16] row-major; bias
// [columns] or null).
void block_product(const float* a, int64_t lda, int64_t n, const float* panel, int64_t K, float* out, int64_t ldc,
                   const Block& b, bool accumulate, const float* bias) {
  const float* bias_at[kMaxVectors];
  for (int64_t v = 0; v < b.nv; ++v) bias_at[v] = bias != nullptr ? bias + b.column[v] : nullptr;
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t kc = std::min(kChunk, K - k0);
    const float* const* add = bias != nullptr && k0 == 0 ? bias_at : nullptr;
    row_blocks(n, [&](int64_t r, int64_t rows) {
      float* c[kMaxVectors];
      for (int64_t v = 0; v < b.nv; ++v) c[v] = out + r * ldc + b.column[v];
      tile_for(rows, b.nv)(a + r * lda + k0, lda, panel + k0 * b.nv * kLanes, kc, c, ldc, accumulate || k0 > 0,
                           add);
    });
  }
}

// ------------------------------------------------------------------------------------------------------
// The team: slots [0, P) spread over at::parallel_for's threads, the column blocks shared out among them. Each step
// every block is claimed once (a flag per block holds the step it waits for; a claim moves it on): a thread takes
// its own share in order, then what is left of the others' from their ends — its own blocks' panels are in its
// cache, and a thread that the machine slowed down does not hold up the step. Blocks finished are counted; the
// step ends for everyone when all are.

struct alignas(64) Flag {
  std::atomic<int64_t> step{0};
};

struct Team {
  Team(int64_t slots, int64_t blocks) : size(slots), count(blocks), claim(static_cast<size_t>(blocks)) {}
  int64_t size, count;
  std::vector<Flag> claim;
  alignas(64) std::atomic<int64_t> done{0};
};

struct Member {
  Team* team;
  int64_t own0, own1;  // this member's share of the blocks
  int64_t step = 0;

  // body(b) for blocks of this step, then wait for the rest of the team.
  template <typename F>
  void each_block(const F& body) {
    Team& t = *team;
    if (t.size == 1) {
      for (int64_t b = 0; b < t.count; ++b) body(b);
      ++step;
      return;
    }
    const auto take = [&](int64_t b) {
      int64_t expected = step;
      if (t.claim[b].step.load(std::memory_order_relaxed) != step ||
          !t.claim[b].step.compare_exchange_strong(expected, step + 1, std::memory_order_acq_rel)) {
        return;
      }
      body(b);
      t.done.fetch_add(1, std::memory_order_release);
    };
    for (int64_t b = own0; b < own1; ++b) take(b);
    for (int64_t b = t.count - 1; b >= own1; --b) take(b);
    for (int64_t b = own0 - 1; b >= 0; --b) take(b);
    ++step;
    const int64_t target = step * t.count;
    for (int64_t spins = 0; t.done.load(std::memory_order_acquire) < target; ++spins) {
      if (spins < 4096) {
        _mm_pause();
      } else {
        std::this_thread::yield();  // more threads than free cores: let the others run
      }
    }
  }
};

// Team size for `count` column blocks: the intra-op threads, one when already inside a parallel region (the
// caller's threads are busy) or when ATen's pool is not OpenMP (its tasks need not all run at once, which the
// step barrier needs).
int64_t team_size(int64_t count) {
#if AT_PARALLEL_OPENMP
  if (at::in_parallel_region()) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
#else
  (void)count;
  return 1;
#endif
}

// Vectors per block of consecutive units: the widest tile (most reuse of each broadcast row element) that still
// gives every thread of the team two blocks, so that the step's work is shared at small H (at H = 64 one block of
// 64 would leave the second thread idle) and a slowed thread's second block can be taken over.
int64_t block_vectors(int64_t H) {
  const int64_t P = team_size(H / kLanes);
  int64_t vectors = kMaxVectors;
  while (vectors > 1 && (H / kLanes + vectors - 1) / vectors < 2 * P) vectors /= 2;
  return vectors;
}

// body(member) on each part of the team; member.own0/own1 is its share of the blocks.
template <typename F>
void run_team(int64_t count, const F& body) {
  const int64_t P = team_size(count);
  Team team(P, count);
  const auto part = [&](int64_t s0, int64_t s1) {
    Member member{&team, s0 * count / P, s1 * count / P};
    body(member);
  };
  if (P == 1) {
    part(0, 1);
  } else {
    at::parallel_for(0, P, 1, part);
  }
}

// The (non-empty) steps in processing order: offset, rows, and the offset and count of the rows that continue
// from the previous step (the others start from the initial state).
struct Step {
  int64_t start, n, before, head;
};

std::vector<Step> steps(const lstm_loop::Layout& L) {
  std::vector<Step> out;
  for (int64_t k = 0; k < L.T; ++k) {
    const int64_t t = L.order[k], n = L.rows[t];
    if (n == 0) continue;
    const Step step{L.offset[t], n, out.empty() ? 0 : out.back().start,
                    out.empty() ? 0 : std::min(n, out.back().n)};
    out.push_back(step);
  }
  return out;
}

}  // namespace

bool applies(const lstm_loop::Layout& L, at::ScalarType dtype) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 && dtype == at::kFloat && !L.proj && L.H % kLanes == 0 && L.H > 0;
}

void forward(const lstm_loop::Layout& L, const at::Tensor& w_hh, const at::Tensor& bias, at::Tensor& gates,
             at::Tensor& h, at::Tensor& c, at::Tensor& y, at::Tensor& c_all) {
  const int64_t H = L.H, GH = L.G * L.H, B = L.B;
  const auto order = steps(L);
  const auto cols = blocks(H, L.lstm, block_vectors(H));
  const int64_t count = static_cast<int64_t>(cols.size()), panel_size = H * kMaxVectors * kLanes;
  const auto options = gates.options();
  auto panels = at::empty({count, panel_size}, options);
  auto states = at::empty({2, B, H}, options);  // h double-buffered: every block reads all of h_{t−1}
  states[0].copy_(h);
  states[1].copy_(h);
  const float* w = w_hh.const_data_ptr<float>();
  const float* bias_p = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  float* panel0 = panels.mutable_data_ptr<float>();
  float* state = states.mutable_data_ptr<float>();
  float* g = gates.mutable_data_ptr<float>();
  float* ys = y.mutable_data_ptr<float>();
  float* cs = L.lstm ? c.mutable_data_ptr<float>() : nullptr;
  float* call = L.lstm ? c_all.mutable_data_ptr<float>() : nullptr;

  run_team(count, [&](Member& member) {
    // The panels, packed as a step of their own (so all are ready before the first product):
    // panel[k][v·16 + u] = w_hh[column[v] + u][k] (gates ← h·W_hhᵀ), reading along the rows of w_hh.
    member.each_block([&](int64_t b) {
      const Block& blk = cols[b];
      float* panel = panel0 + b * panel_size;
      for (int64_t v = 0; v < blk.nv; ++v) {
        for (int64_t u = 0; u < kLanes; ++u) {
          const float* row = w + (blk.column[v] + u) * H;
          float* out = panel + v * kLanes + u;
          for (int64_t k = 0; k < H; ++k) out[k * blk.nv * kLanes] = row[k];
        }
      }
    });
    for (size_t s = 0; s < order.size(); ++s) {
      const Step& st = order[s];
      const float* h_prev = state + (s % 2) * B * H;
      float* h_next = state + ((s + 1) % 2) * B * H;
      float* gs = g + st.start * GH;
      member.each_block([&](int64_t b) {
        const Block& blk = cols[b];
        const int64_t u = blk.unit;
        block_product(h_prev, H, st.n, panel0 + b * panel_size, H, gs, GH, blk, true, bias_p);
        for (int64_t r = 0; r < st.n; ++r) {
          const int64_t row = st.start + r;
          if (L.lstm) {
            cell_forward_16(gs + r * GH + u, H, cs + r * H + u, call + row * H + u, ys + row * H + u,
                            h_next + r * H + u);
          } else {
            lstm_rows::f32_rnn_forward(L.mode, gs + r * GH + u, h_next + r * H + u, ys + row * H + u,
                                       blk.nv * kLanes);
          }
        }
      });
    }
  });
  // h_n: each row's state after its last step (the double buffer does not keep rows that have stopped).
  float* hn = h.mutable_data_ptr<float>();
  std::vector<int64_t> last(B, -1);
  for (const Step& st : order) {
    for (int64_t r = 0; r < st.n; ++r) last[r] = st.start + r;
  }
  for (int64_t r = 0; r < B; ++r) {
    if (last[r] >= 0) std::memcpy(hn + r * H, ys + last[r] * H, H * sizeof(float));
  }
}

void backward(const lstm_loop::Layout& L, const at::Tensor& w_hh, const at::Tensor& gates, const at::Tensor& c_all,
              const at::Tensor& c0, const at::Tensor& y, const at::Tensor& grad_y, at::Tensor& dh, at::Tensor& dc,
              at::Tensor& d_gates) {
  const int64_t H = L.H, GH = L.G * L.H;
  const auto order = steps(L);
  const auto cols = blocks(H, false, block_vectors(H));
  const int64_t count = static_cast<int64_t>(cols.size()), panel_size = GH * kMaxVectors * kLanes;
  auto panels = at::empty({count, panel_size}, gates.options());
  const float* w = w_hh.const_data_ptr<float>();
  float* panel0 = panels.mutable_data_ptr<float>();
  const float* g = gates.const_data_ptr<float>();
  const float* ys = y.const_data_ptr<float>();
  const float* gy = grad_y.const_data_ptr<float>();
  const float* call = L.lstm ? c_all.const_data_ptr<float>() : nullptr;
  const float* c0s = L.lstm ? c0.const_data_ptr<float>() : nullptr;
  float* dhs = dh.mutable_data_ptr<float>();
  float* dcs = L.lstm ? dc.mutable_data_ptr<float>() : nullptr;
  float* dg = d_gates.mutable_data_ptr<float>();
  const int64_t S = static_cast<int64_t>(order.size());

  // Step s's pointwise backward over a block's units: ∂L/∂h_t = dh (the recurrent part, or ∂L/∂h_n for rows that
  // end here) + grad_y; then ∂L/∂gates_t, and dc ← ∂L/∂c_{t−1}.
  const auto pointwise = [&](const Step& st, const Block& blk) {
    const int64_t u = blk.unit, width = blk.nv * kLanes;
    for (int64_t r = 0; r < st.n; ++r) {
      const int64_t row = st.start + r;
      float* d = dhs + r * H + u;
      const float* add = gy + row * H + u;
      for (int64_t j = 0; j < width; ++j) d[j] += add[j];
      if (L.lstm) {
        const float* c_prev = r < st.head ? call + (st.before + r) * H : c0s + r * H;
        for (int64_t j = 0; j < width; j += kLanes) {
          cell_backward_16(d + j, g + row * GH + u + j, H, c_prev + u + j, call + row * H + u + j,
                           dcs + r * H + u + j, dg + row * GH + u + j);
        }
      } else {
        lstm_rows::f32_rnn_backward(L.mode, d, ys + row * H + u, dg + row * GH + u, width);
      }
    }
  };

  run_team(count, [&](Member& member) {
    // The panels, packed as a step of their own: panel[κ][v·16 + u] = w_hh[κ][column[v] + u]
    // (∂L/∂h ← ∂L/∂gates·W_hh).
    member.each_block([&](int64_t b) {
      const Block& blk = cols[b];
      float* panel = panel0 + b * panel_size;
      for (int64_t k = 0; k < GH; ++k) {
        std::memcpy(panel + k * blk.nv * kLanes, w + k * H + blk.unit, blk.nv * kLanes * sizeof(float));
      }
    });
    // The walk from the last step. Before step s's pointwise work, dh's first rows get the recurrent part
    // ∂L/∂gates_{s+1}·W_hh (the rows of step s + 1 in processing order; in the reverse direction some of them are
    // rows that begin at s + 1, whose result is ∂L/∂h0 and stays). After step 0, the same product gives ∂L/∂h0.
    for (int64_t s = S - 1; s >= -1; --s) {
      member.each_block([&](int64_t b) {
        const Block& blk = cols[b];
        if (s + 1 < S) {
          const Step& next = order[s + 1];
          block_product(dg + next.start * GH, GH, next.n, panel0 + b * panel_size, GH, dhs, H, blk, false, nullptr);
        }
        if (s >= 0) pointwise(order[s], blk);
      });
    }
  });
}

#else  // not x86-64 GCC / clang: no fused path

bool applies(const lstm_loop::Layout&, at::ScalarType) { return false; }

void forward(const lstm_loop::Layout&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&,
             at::Tensor&, at::Tensor&) {
  TORCH_CHECK(false, "fastflow lstm: the fused CPU recurrence needs x86-64");
}

void backward(const lstm_loop::Layout&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&) {
  TORCH_CHECK(false, "fastflow lstm: the fused CPU recurrence needs x86-64");
}

#endif

}  // namespace fastflow::lstm_fused
