// CUDA mask kernels: N:M keep mask, per-row unstructured top-k. Plain CUDA (cub is
// header-only): no torch headers; bindings in cuda_ops.cpp.
//
// * nm_mask: one thread per group of m; keep the n largest (ties keep the lower column).
// * topk_mask: one block per row; radix select of the n_prune-th smallest order-preserving key
//   (one bit per pass over the row, which stays in L1/L2), then the mask with ties pruned in index
//   order (a block-wide prefix scan over each chunk). Per layer is one row of r * c (one block:
//   correct but not spread over the device).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

namespace ssgr_cuda {

namespace {

// A score as compared: fp32 and fp64 as they are, fp16 / bf16 widened to fp32.
__device__ inline float score(float v) { return v; }
__device__ inline double score(double v) { return v; }
__device__ inline float score(__half v) { return __half2float(v); }
__device__ inline float score(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__global__ void nm_mask_kernel(const T* __restrict__ s, int64_t ld, int64_t groups_per_row,
                               int64_t n_groups, int n, int m, uint8_t* __restrict__ keep) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= n_groups) return;
  const int64_t row = q / groups_per_row, c0 = (q % groups_per_row) * m;
  const T* g = s + row * ld + c0;
  uint8_t* k = keep + row * groups_per_row * m + c0;
  for (int j = 0; j < m; ++j) {
    const auto sj = score(g[j]);
    int rank = 0;
    for (int i = 0; i < m; ++i) {
      const auto si = score(g[i]);
      rank += (si > sj) || (si == sj && i < j);
    }
    k[j] = rank < n ? 1 : 0;
  }
}

// Order-preserving unsigned keys; -0.0 is mapped to +0.0 first (they tie, as in torch.sort).
__device__ inline uint32_t key_of(float x) {
  uint32_t b = __float_as_uint(x);
  if ((b & 0x7fffffffu) == 0) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ inline uint64_t key_of(double x) {
  uint64_t b = static_cast<uint64_t>(__double_as_longlong(x));
  if ((b & 0x7fffffffffffffffull) == 0) b = 0;
  return (b & 0x8000000000000000ull) ? ~b : (b | 0x8000000000000000ull);
}

template <typename T>
struct KeyOf {
  using K = uint32_t;
};
template <>
struct KeyOf<double> {
  using K = uint64_t;
};

constexpr int TOPK_THREADS = 256;

template <typename T>
__global__ void __launch_bounds__(TOPK_THREADS)
    topk_row_kernel(const T* __restrict__ s, int64_t L, int64_t ld, int64_t n_prune,
                    uint8_t* __restrict__ keep) {
  using K = typename KeyOf<T>::K;
  using Reduce = cub::BlockReduce<long long, TOPK_THREADS>;
  using Scan = cub::BlockScan<int, TOPK_THREADS>;
  __shared__ typename Reduce::TempStorage red;
  __shared__ typename Scan::TempStorage scan;
  __shared__ long long total;
  const T* x = s + static_cast<int64_t>(blockIdx.x) * ld;
  uint8_t* out = keep + static_cast<int64_t>(blockIdx.x) * L;
  constexpr int NB = sizeof(K) * 8;
  auto count_below = [&](K cand) -> long long {
    long long c = 0;
    for (int64_t i = threadIdx.x; i < L; i += TOPK_THREADS)
      c += key_of(score(x[i])) < cand;
    const long long sum = Reduce(red).Sum(c);
    if (threadIdx.x == 0) total = sum;
    __syncthreads();
    const long long r = total;
    __syncthreads();
    return r;
  };
  // thr = the n_prune-th smallest key: the largest t with #{key < t} < n_prune
  K thr = 0;
  for (int bit = NB - 1; bit >= 0; --bit) {
    const K cand = thr | (K(1) << bit);
    if (count_below(cand) < n_prune) thr = cand;
  }
  const long long quota = n_prune - count_below(thr);
  long long seen = 0;
  for (int64_t base = 0; base < L; base += TOPK_THREADS) {
    const int64_t i = base + threadIdx.x;
    const bool in = i < L;
    const K k = in ? key_of(score(x[i])) : K(0);
    const int tie = (in && k == thr) ? 1 : 0;
    int incl, block_ties;
    Scan(scan).InclusiveSum(tie, incl, block_ties);
    if (in) {
      const bool pruned = k < thr || (tie && seen + incl <= quota);
      out[i] = pruned ? 0 : 1;
    }
    seen += block_ties;
    __syncthreads();
  }
}

inline unsigned blocks_for(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

}  // namespace

// dtype: 0 = fp32, 1 = fp16, 2 = bf16, 3 = fp64 (scores). Rows have unit column stride.
cudaError_t nm_mask(const void* s, int dtype, int64_t rows, int64_t cols, int64_t ld, int n, int m,
                    uint8_t* keep, cudaStream_t stream) {
  const int64_t gpr = cols / m, n_groups = rows * gpr;
  if (n_groups == 0) return cudaSuccess;
  const unsigned b = blocks_for(n_groups, 256);
  switch (dtype) {
    case 0:
      nm_mask_kernel<float><<<b, 256, 0, stream>>>(
          static_cast<const float*>(s), ld, gpr, n_groups, n, m, keep);
      break;
    case 1:
      nm_mask_kernel<__half><<<b, 256, 0, stream>>>(
          static_cast<const __half*>(s), ld, gpr, n_groups, n, m, keep);
      break;
    case 2:
      nm_mask_kernel<__nv_bfloat16><<<b, 256, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(s), ld, gpr, n_groups, n, m, keep);
      break;
    case 3:
      nm_mask_kernel<double><<<b, 256, 0, stream>>>(
          static_cast<const double*>(s), ld, gpr, n_groups, n, m, keep);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t topk_mask(const void* s, int dtype, int64_t rows, int64_t L, int64_t ld,
                      int64_t n_prune, uint8_t* keep, cudaStream_t stream) {
  if (rows == 0 || L == 0) return cudaSuccess;
  const unsigned b = static_cast<unsigned>(rows);
  switch (dtype) {
    case 0:
      topk_row_kernel<float><<<b, TOPK_THREADS, 0, stream>>>(
          static_cast<const float*>(s), L, ld, n_prune, keep);
      break;
    case 1:
      topk_row_kernel<__half><<<b, TOPK_THREADS, 0, stream>>>(
          static_cast<const __half*>(s), L, ld, n_prune, keep);
      break;
    case 2:
      topk_row_kernel<__nv_bfloat16><<<b, TOPK_THREADS, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(s), L, ld, n_prune, keep);
      break;
    case 3:
      topk_row_kernel<double><<<b, TOPK_THREADS, 0, stream>>>(
          static_cast<const double*>(s), L, ld, n_prune, keep);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace ssgr_cuda
