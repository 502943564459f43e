// CUDA Hessian accumulation: H[d, d] += X^T X (fp32) for X[t, d] in bf16 / fp16 (tensor cores,
// WMMA 16x16x16 with fp32 accumulation) or fp32 (CUDA cores). Plain CUDA: no torch headers; the
// bindings are in cuda_ops.cpp.
//
// One block computes one 64x64 tile of the upper triangle (bi <= bj) over a range of tokens. The
// tile is added to H[bi, bj] and its transpose to H[bj, bi]; diagonal tiles are symmetrised first,
// so H stays exactly symmetric. With splits > 1 the partial tiles go to a workspace and a second
// kernel sums them in split order: deterministic, no atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

namespace ssgr_cuda {

namespace {

constexpr int TILE = 64;  // output tile
constexpr int BK = 32;    // tokens per step
constexpr int PAD = 8;

// bi, bj of upper tile number `tile` (row-major over bi <= bj) of an nt x nt block grid.
__device__ inline void upper_tile(int64_t tile, int nt, int& bi, int& bj) {
  int i = 0;
  int64_t rem = tile;
  while (rem >= nt - i) {
    rem -= nt - i;
    ++i;
  }
  bi = i;
  bj = i + static_cast<int>(rem);
}

// C (TILE x (TILE + 4) floats in shared memory) into H.
__device__ void store_tile(const float* C, int ldc, float* H, int bi, int bj, int64_t D) {
  const int64_t r0 = static_cast<int64_t>(bi) * TILE, c0 = static_cast<int64_t>(bj) * TILE;
  for (int idx = threadIdx.x; idx < TILE * TILE; idx += blockDim.x) {
    const int lr = idx / TILE, lc = idx % TILE;
    const int64_t r = r0 + lr, c = c0 + lc;
    if (r >= D || c >= D) continue;
    if (bi == bj) {
      const float v = lr <= lc ? C[lr * ldc + lc] : C[lc * ldc + lr];
      H[r * D + c] += v;
    } else {
      const float v = C[lr * ldc + lc];
      H[r * D + c] += v;
      H[c * D + r] += v;
    }
  }
}

// Stages X[t:t + BK, r0:r0 + TILE] into sa and X[t:t + BK, c0:c0 + TILE] into sb (shared, row
// stride ld; X's row stride is ldx), zero outside the tokens [.., t1) and the columns [0, D).
template <typename T>
__device__ inline void stage_tiles(const T* __restrict__ X, int64_t ldx, int64_t t, int64_t t1,
                                   int64_t r0, int64_t c0, int64_t D, T* sa, T* sb, int ld,
                                   T zero) {
  for (int idx = threadIdx.x; idx < BK * TILE; idx += blockDim.x) {
    const int k = idx / TILE, j = idx % TILE;
    const int64_t tt = t + k;
    const bool ok_t = tt < t1;
    sa[k * ld + j] = (ok_t && r0 + j < D) ? X[tt * ldx + r0 + j] : zero;
    sb[k * ld + j] = (ok_t && c0 + j < D) ? X[tt * ldx + c0 + j] : zero;
  }
}

// The finished tile C (shared, row stride TILE + 4): added into H when there is one split, else
// written to split s's slot of the workspace for reduce_kernel.
__device__ inline void finish_tile(const float* C, float* H, float* ws, int split, int s,
                                   int64_t n_tiles, int64_t tile, int bi, int bj, int64_t D) {
  if (split == 1) {
    store_tile(C, TILE + 4, H, bi, bj, D);
    return;
  }
  float* out = ws + (static_cast<int64_t>(s) * n_tiles + tile) * TILE * TILE;
  for (int idx = threadIdx.x; idx < TILE * TILE; idx += blockDim.x)
    out[idx] = C[(idx / TILE) * (TILE + 4) + idx % TILE];
}

template <typename T>
__device__ inline T from_float(float v);
template <>
__device__ inline __half from_float<__half>(float v) { return __float2half(v); }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// Tensor-core tile: 4 warps, each a 32x32 quarter of the 64x64 tile (2x2 WMMA fragments).
template <typename T>
__global__ void __launch_bounds__(128) xtx_wmma_kernel(const T* __restrict__ X, int64_t T_,
                                                       int64_t D, int64_t ldx, int64_t per_split,
                                                       int nt, int64_t n_tiles, float* H,
                                                       float* ws, int split) {
  using namespace nvcuda;
  __shared__ __align__(32) T sa[BK][TILE + PAD];
  __shared__ __align__(32) T sb[BK][TILE + PAD];
  __shared__ __align__(32) float sc[TILE][TILE + 4];
  const int64_t tile = blockIdx.x;
  const int s = blockIdx.y;
  int bi, bj;
  upper_tile(tile, nt, bi, bj);
  const int64_t r0 = static_cast<int64_t>(bi) * TILE, c0 = static_cast<int64_t>(bj) * TILE;
  const int64_t t0 = s * per_split;
  const int64_t t1 = min(t0 + per_split, T_);
  const int warp = threadIdx.x / 32;
  const int wr = (warp / 2) * 32, wc = (warp % 2) * 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  const T zero = from_float<T>(0.0f);
  for (int64_t t = t0; t < t1; t += BK) {
    stage_tiles(X, ldx, t, t1, r0, c0, D, &sa[0][0], &sb[0][0], TILE + PAD, zero);
    __syncthreads();
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb[2];
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &sa[kk][wr + 16 * i], TILE + PAD);
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &sb[kk][wc + 16 * j], TILE + PAD);
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&sc[wr + 16 * i][wc + 16 * j], acc[i][j], TILE + 4,
                              wmma::mem_row_major);
  __syncthreads();
  finish_tile(&sc[0][0], H, ws, split, s, n_tiles, tile, bi, bj, D);
}

// fp32 tile on CUDA cores: 256 threads, 4x4 outputs each, IEEE fp32 FMA accumulation.
__global__ void __launch_bounds__(256) xtx_f32_kernel(const float* __restrict__ X, int64_t T_,
                                                      int64_t D, int64_t ldx, int64_t per_split,
                                                      int nt, int64_t n_tiles, float* H,
                                                      float* ws, int split) {
  __shared__ float sa[BK][TILE];
  __shared__ float sb[BK][TILE];
  __shared__ float sc[TILE][TILE + 4];
  const int64_t tile = blockIdx.x;
  const int s = blockIdx.y;
  int bi, bj;
  upper_tile(tile, nt, bi, bj);
  const int64_t r0 = static_cast<int64_t>(bi) * TILE, c0 = static_cast<int64_t>(bj) * TILE;
  const int64_t t0 = s * per_split;
  const int64_t t1 = min(t0 + per_split, T_);
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  float acc[4][4] = {};
  for (int64_t t = t0; t < t1; t += BK) {
    stage_tiles(X, ldx, t, t1, r0, c0, D, &sa[0][0], &sb[0][0], TILE, 0.0f);
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < BK; ++k) {
      float a[4], b[4];
      for (int i = 0; i < 4; ++i) a[i] = sa[k][ty + 16 * i];
      for (int j = 0; j < 4; ++j) b[j] = sb[k][tx + 16 * j];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) sc[ty + 16 * i][tx + 16 * j] = acc[i][j];
  __syncthreads();
  finish_tile(&sc[0][0], H, ws, split, s, n_tiles, tile, bi, bj, D);
}

__global__ void __launch_bounds__(256) reduce_kernel(const float* __restrict__ ws, int split,
                                                     int nt, int64_t n_tiles, int64_t D,
                                                     float* H) {
  __shared__ float sc[TILE][TILE + 4];
  const int64_t tile = blockIdx.x;
  int bi, bj;
  upper_tile(tile, nt, bi, bj);
  for (int idx = threadIdx.x; idx < TILE * TILE; idx += blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < split; ++s)
      v += ws[(static_cast<int64_t>(s) * n_tiles + tile) * TILE * TILE + idx];
    sc[idx / TILE][idx % TILE] = v;
  }
  __syncthreads();
  store_tile(&sc[0][0], TILE + 4, H, bi, bj, D);
}

}  // namespace

int64_t hessian_tile() { return TILE; }

// dtype: 0 = fp32, 1 = fp16, 2 = bf16. ws: split * n_tiles * TILE * TILE floats when split > 1.
cudaError_t hessian_accumulate(const void* X, int dtype, int64_t tokens, int64_t d, int64_t ldx,
                               float* H, float* ws, int split, cudaStream_t stream) {
  if (tokens == 0 || d == 0) return cudaSuccess;
  const int nt = static_cast<int>((d + TILE - 1) / TILE);
  const int64_t n_tiles = static_cast<int64_t>(nt) * (nt + 1) / 2;
  const int64_t per_split = ((tokens + split - 1) / split + BK - 1) / BK * BK;
  const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(split));
  if (dtype == 0) {
    xtx_f32_kernel<<<grid, 256, 0, stream>>>(static_cast<const float*>(X), tokens, d, ldx,
                                             per_split, nt, n_tiles, H, ws, split);
  } else if (dtype == 1) {
    xtx_wmma_kernel<__half><<<grid, 128, 0, stream>>>(static_cast<const __half*>(X), tokens, d,
                                                      ldx, per_split, nt, n_tiles, H, ws, split);
  } else if (dtype == 2) {
    xtx_wmma_kernel<__nv_bfloat16><<<grid, 128, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(X), tokens, d, ldx, per_split, nt, n_tiles, H, ws, split);
  } else {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || split == 1) return err;
  reduce_kernel<<<static_cast<unsigned>(n_tiles), 256, 0, stream>>>(ws, split, nt, n_tiles, d, H);
  return cudaGetLastError();
}

}  // namespace ssgr_cuda
