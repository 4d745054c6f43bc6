// The float32 row loops of lstm_rows.h, compiled once and cloned per instruction set (fastmath.h's FF_CLONES);
// the exported functions are plain calls of the clones' dispatcher.
#include "lstm_rows.h"

namespace fastflow::lstm_rows {

namespace {

FF_CLONES void cell_forward_f32(const float* g, int64_t stride, float* c, float* c_out, float* m, float* m2,
                                int64_t count) {
  cell_forward<float>(g, stride, c, c_out, m, m2, count);
}

FF_CLONES void cell_backward_f32(const float* dm, const float* g, int64_t stride, const float* c_prev,
                                 const float* c_new, float* dc, float* dg, float* m_out, int64_t count) {
  cell_backward<float>(dm, g, stride, c_prev, c_new, dc, dg, m_out, count);
}

FF_CLONES void rnn_forward_f32(int64_t mode, const float* pre, float* h, float* y, int64_t count) {
  mode == kTanh ? rnn_forward<float, kTanh>(pre, h, y, count) : rnn_forward<float, kReLU>(pre, h, y, count);
}

FF_CLONES void rnn_backward_f32(int64_t mode, const float* dh, const float* h, float* dpre, int64_t count) {
  mode == kTanh ? rnn_backward<float, kTanh>(dh, h, dpre, count) : rnn_backward<float, kReLU>(dh, h, dpre, count);
}

}  // namespace

void f32_cell_forward(const float* g, int64_t stride, float* c, float* c_out, float* m, float* m2, int64_t count) {
  cell_forward_f32(g, stride, c, c_out, m, m2, count);
}

void f32_cell_backward(const float* dm, const float* g, int64_t stride, const float* c_prev, const float* c_new,
                       float* dc, float* dg, float* m_out, int64_t count) {
  cell_backward_f32(dm, g, stride, c_prev, c_new, dc, dg, m_out, count);
}

void f32_rnn_forward(int64_t mode, const float* pre, float* h, float* y, int64_t count) {
  rnn_forward_f32(mode, pre, h, y, count);
}

void f32_rnn_backward(int64_t mode, const float* dh, const float* h, float* dpre, int64_t count) {
  rnn_backward_f32(mode, dh, h, dpre, count);
}

}  // namespace fastflow::lstm_rows
