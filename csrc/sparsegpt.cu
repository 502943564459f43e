// CUDA fused SparseGPT OBS block. Plain CUDA: no torch headers; bindings in cuda_ops.cpp.
//
// One thread block owns BR rows of one block of `count` (<= 128) columns and holds the block's
// U[count, count] (upper Cholesky factor of the damped H^-1, diagonal block) and its rows of W in
// shared memory; one thread owns one row (rows are independent inside a block), as the CPU kernel
// csrc/sparsegpt.cpp. Per column i: N:M selection every m columns (the n_prune smallest w^2 / U_jj^2 of
// the already-updated weights; ties prune the lower column) or the given unstructured prune mask,
// q, err = (w - q) / U_ii, loss += (w - q)^2 / U_ii^2, w[j] -= err * U[i, j] for j > i.
// Arithmetic uses the _rn intrinsics, so no FMA contraction and IEEE division even under
// --use_fast_math: each element rounds like the reference. Writes the pruned block over W, the
// keep mask, Err[rows, count] and adds loss / 2 per row. The trailing update is a GEMM (caller).
#include <cuda_runtime.h>

#include <cstdint>

namespace ssgr_cuda {

namespace {

constexpr int MAX_M = 32;

template <int BR>
__global__ void __launch_bounds__(BR) obs_block_kernel(float* __restrict__ W, int64_t ldw,
                                                       const float* __restrict__ U, int64_t ldu,
                                                       const uint8_t* __restrict__ prune,
                                                       int64_t rows, int count, int n_prune,
                                                       int m, uint8_t* __restrict__ keep,
                                                       float* __restrict__ err,
                                                       float* __restrict__ losses) {
  extern __shared__ float smem[];
  float* su = smem;                  // [count][count]
  float* sw = smem + count * count;  // [count][BR]: column-major tile, conflict-free per thread
  const int tid = threadIdx.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * BR + tid;
  const bool live = row < rows;
  for (int idx = tid; idx < count * count; idx += BR)
    su[idx] = U[static_cast<int64_t>(idx / count) * ldu + idx % count];
  if (live)
    for (int j = 0; j < count; ++j) sw[j * BR + tid] = W[row * ldw + j];
  __syncthreads();
  if (!live) return;
  const bool nm = n_prune > 0;
  uint8_t* kr = keep + row * count;
  float* er = err + row * count;
  const uint8_t* pr = nm ? nullptr : prune + row * count;
  float loss = 0.0f;
  uint8_t gkeep[MAX_M];
  for (int i = 0; i < count; ++i) {
    if (nm && i % m == 0) {
      const int g = min(m, count - i);
      float sc[MAX_M];
      for (int j = 0; j < g; ++j) {
        const float wj = sw[(i + j) * BR + tid];
        const float dj = su[(i + j) * count + i + j];
        sc[j] = __fdiv_rn(__fmul_rn(wj, wj), __fmul_rn(dj, dj));
      }
      for (int j = 0; j < g; ++j) {
        int rank = 0;
        for (int k = 0; k < g; ++k) rank += (sc[k] < sc[j]) || (sc[k] == sc[j] && k < j);
        gkeep[j] = rank < n_prune ? 0 : 1;
      }
    }
    const bool kept = nm ? gkeep[i % m] != 0 : pr[i] == 0;
    const float wi = sw[i * BR + tid];
    const float q = kept ? wi : 0.0f;
    const float d = su[i * count + i];
    const float diff = __fsub_rn(wi, q);
    loss = __fadd_rn(loss, __fdiv_rn(__fmul_rn(diff, diff), __fmul_rn(d, d)));
    const float e = __fdiv_rn(diff, d);
    er[i] = e;
    kr[i] = kept ? 1 : 0;
    if (e != 0.0f) {
      const float* ui = su + i * count;
      for (int j = i + 1; j < count; ++j)
        sw[j * BR + tid] = __fsub_rn(sw[j * BR + tid], __fmul_rn(e, ui[j]));
    }
    sw[i * BR + tid] = q;
  }
  for (int j = 0; j < count; ++j) W[row * ldw + j] = sw[j * BR + tid];
  losses[row] = __fadd_rn(losses[row], loss / 2.0f);
}

template <int BR>
cudaError_t launch(float* W, int64_t ldw, const float* U, int64_t ldu, const uint8_t* prune,
                   int64_t rows, int count, int n_prune, int m, uint8_t* keep, float* err,
                   float* losses, cudaStream_t stream) {
  const size_t bytes = (static_cast<size_t>(count) * count + static_cast<size_t>(count) * BR) *
                       sizeof(float);
  cudaError_t e = cudaFuncSetAttribute(obs_block_kernel<BR>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes));
  if (e != cudaSuccess) return e;
  const unsigned blocks = static_cast<unsigned>((rows + BR - 1) / BR);
  obs_block_kernel<BR><<<blocks, BR, bytes, stream>>>(W, ldw, U, ldu, prune, rows, count,
                                                       n_prune, m, keep, err, losses);
  return cudaGetLastError();
}

}  // namespace

int64_t obs_max_m() { return MAX_M; }

// W: [rows, count] (row stride ldw), U: [count, count] (row stride ldu), prune: [rows, count]
// uint8 or null for N:M; keep, err: [rows, count] contiguous; losses: [rows]. count <= 128
// (shared memory: count^2 + count * BR floats). rows_per_block: 32 or 64.
cudaError_t obs_block(float* W, int64_t ldw, const float* U, int64_t ldu, const uint8_t* prune,
                      int64_t rows, int count, int n_prune, int m, uint8_t* keep, float* err,
                      float* losses, int rows_per_block, cudaStream_t stream) {
  if (rows == 0 || count == 0) return cudaSuccess;
  if (count > 128 || (n_prune > 0 && (m <= 0 || m > MAX_M))) return cudaErrorInvalidValue;
  if (rows_per_block == 32)
    return launch<32>(W, ldw, U, ldu, prune, rows, count, n_prune, m, keep, err, losses, stream);
  return launch<64>(W, ldw, U, ldu, prune, rows, count, n_prune, m, keep, err, losses, stream);
}

}  // namespace ssgr_cuda
