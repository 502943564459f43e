// Declarations of the CPU (C++/OpenMP) kernels of ssgr (csrc/sparsegpt.cpp, csrc/masks.cpp).
// Tensors cross the boundary as raw pointers plus shapes and leading dimensions (row-major);
// the typed wrappers of ssgr/ops/_native.py validate device, dtype, shapes and strides before
// calling. No torch headers are needed to build these; the vector code needs GCC >= 9 or
// clang >= 11 (see csrc/sparsegpt.cpp).
#pragma once
#include <cstdint>

namespace ssgr {

// One block of SparseGPT's blocked OBS loop (IST-DASLab fasterprune / llm-compressor
// sparsify_weight semantics), parallel over tiles of rows.
//   w      [rows, count] fp32, row stride ldw: the block's current weights (read only).
//   u      [count, count] fp32, row stride ldu: the block's diagonal block of U = chol(H^-1)^T.
//   prune  [rows, count] uint8, row stride count: unstructured mode (n_prune == 0), 1 marks a
//          weight to prune (chosen for the whole block beforehand); unused in N:M mode.
//   n_prune, m: N:M mode when n_prune > 0: at every column i with i % m == 0 the n_prune
//          weights of smallest w^2 / u_jj^2 among columns i..i+m-1 (already updated) are pruned;
//          ties prune the lower column first.
//   keep   [rows, count] uint8 (or bool) out, row stride ldk: 1 = kept.
//   losses [rows] fp32 in/out: += sum_i (w - q)^2 / u_ii^2 / 2.
//   q_out  [rows, count] fp32 out, row stride ldq: the pruned and compensated weights Q (may be
//          w itself).
//   dflip  [rows, count] fp32 out (contiguous), or nullptr: dflip[r, count - 1 - i] =
//          q_out[r, i] before the call - Q[r, i] (column-reversed; q_out holds the block's
//          original weights for the cpu backend's flipped trailing update).
void obs_block_f32(const float* w, int64_t ldw, const float* u, int64_t ldu,
                   const uint8_t* prune, int64_t rows, int64_t count, int64_t n_prune, int64_t m,
                   uint8_t* keep, int64_t ldk, float* losses, float* q_out, int64_t ldq,
                   float* dflip);

// Unstructured prune mask of one OBS block: with scores s = w^2 / u_ii^2 (fp32, in that order),
// prune[r, i] = 1 where s <= the k-th smallest score of the block (0-based; ties prune more:
// the rule of a sort-based threshold). Found by a two-pass radix select on the score bits.
//   w [rows, count] fp32 (row stride ldw), u [count, count] (row stride ldu; only its diagonal
//   is read), prune [rows, count] uint8 out (contiguous), 0 <= k < rows * count.
void block_prune_mask_f32(const float* w, int64_t ldw, const float* u, int64_t ldu, int64_t rows,
                          int64_t count, int64_t k, uint8_t* prune);

// dst[i, j] = src[n - 1 - i, n - 1 - j] for n x n fp32 matrices (contiguous, not overlapping):
// the cpu SparseGPT's flipped copy of H, parallel over rows.
void flip2d_f32(const float* src, int64_t n, float* dst);
// The same flip written as float64 (exact): the float64 Cholesky factor's copy of H.
void flip2d_f32_f64(const float* src, int64_t n, double* dst);

// An n x n fp64 matrix (contiguous, at buf) rounded to fp32 in place: afterwards the first
// 4 n^2 bytes of buf hold it as a contiguous n x n fp32 matrix (the rest is unspecified). The
// cpu SparseGPT's float64 Cholesky factor, narrowed without a second buffer.
void narrow_f64_f32_inplace(void* buf, int64_t n);

// N:M keep mask: in every group of m consecutive columns of every row keep the n largest
// scores (ties keep the lower column). scores [rows, cols] (cols % m == 0), keep out uint8.
template <typename T>
void nm_mask(const T* scores, int64_t rows, int64_t cols, int64_t n, int64_t m, uint8_t* keep);

// Per-row top-k keep mask: prune the n_prune smallest scores of each row (ties prune the
// lower column first: the order of a stable ascending sort). rows=1 gives a per-layer mask.
template <typename T>
void topk_mask(const T* scores, int64_t rows, int64_t cols, int64_t n_prune, uint8_t* keep);

}  // namespace ssgr
