// Declarations of the CPU (C++/OpenMP) kernels of ssgr. Tensors cross the boundary as raw
// pointers plus shapes and leading dimensions (row-major); the Python layer validates
// dtype, contiguity and shapes before calling. No torch headers are needed to build these.
#pragma once
#include <cstdint>

namespace ssgr {

// One block of SparseGPT's blocked OBS loop (IST-DASLab fasterprune / llm-compressor
// sparsify_weight semantics), parallel over rows.
//   w      [rows, count] fp32, row stride ldw: the block's current weights; overwritten with
//          the pruned and compensated weights Q.
//   u      [count, count] fp32, row stride ldu: the block's diagonal block of U = chol(H^-1)^T.
//   prune  [rows, count] uint8, row stride count, or nullptr. Unstructured mode (n_prune == 0):
//          1 marks a weight to prune (chosen for the whole block beforehand). N:M mode: output.
//   n_prune, m: N:M mode when n_prune > 0: at every column i with i % m == 0 the n_prune
//          weights of smallest w^2 / u_jj^2 among columns i..i+m-1 (already updated) are pruned;
//          ties prune the lower column first.
//   keep   [rows, count] uint8 out (1 = kept), row stride count.
//   err    [rows, count] fp32 out, row stride count: (w - q) / u_ii per column.
//   losses [rows] fp32 in/out: += sum_i (w - q)^2 / u_ii^2 / 2.
void obs_block_f32(float* w, int64_t ldw, const float* u, int64_t ldu, const uint8_t* prune,
                   int64_t rows, int64_t count, int64_t n_prune, int64_t m, uint8_t* keep,
                   float* err, float* losses);

// N:M keep mask: in every group of m consecutive columns of every row keep the n largest
// scores (ties keep the lower column). scores [rows, cols] (cols % m == 0), keep out uint8.
template <typename T>
void nm_mask(const T* scores, int64_t rows, int64_t cols, int64_t n, int64_t m, uint8_t* keep);

// Per-row top-k keep mask: prune the n_prune smallest scores of each row (ties prune the
// lower column first: the order of a stable ascending sort). rows=1 gives a per-layer mask.
template <typename T>
void topk_mask(const T* scores, int64_t rows, int64_t cols, int64_t n_prune, uint8_t* keep);

}  // namespace ssgr
