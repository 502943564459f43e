// pybind11 / torch bindings of the CUDA kernels as module ssgr._cuda (built by setup.py's
// CUDAExtension only where torch has CUDA and nvcc is found; called from ssgr/ops/<op>/gpu.py).
// The kernels in csrc/*.cu are plain CUDA taking raw pointers; this file checks the tensors,
// picks the dtype code and launches on torch's current stream. Every argument is named.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>

namespace ssgr_cuda {
int64_t hessian_tile();
cudaError_t hessian_accumulate(const void* X, int dtype, int64_t tokens, int64_t d, int64_t ldx,
                               float* H, float* ws, int split, cudaStream_t stream);
int64_t obs_max_m();
cudaError_t obs_block(float* W, int64_t ldw, const float* U, int64_t ldu, const uint8_t* prune,
                      int64_t rows, int count, int n_prune, int m, uint8_t* keep, float* err,
                      float* losses, int rows_per_block, cudaStream_t stream);
cudaError_t nm_mask(const void* s, int dtype, int64_t rows, int64_t cols, int64_t ld, int n, int m,
                    uint8_t* keep, cudaStream_t stream);
cudaError_t topk_mask(const void* s, int dtype, int64_t rows, int64_t L, int64_t ld,
                      int64_t n_prune, uint8_t* keep, cudaStream_t stream);
}  // namespace ssgr_cuda

namespace {

int dtype_code(const torch::Tensor& t, bool allow_double) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return 0;
    case torch::kFloat16: return 1;
    case torch::kBFloat16: return 2;
    case torch::kFloat64:
      TORCH_CHECK(allow_double, "float64 is not supported here; use float32");
      return 3;
    default: TORCH_CHECK(false, "unsupported dtype ", t.scalar_type());
  }
  return -1;
}

void check(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "ssgr._cuda ", what, ": ", cudaGetErrorString(e));
}

torch::Tensor rows_unit_stride(const torch::Tensor& t) {
  return t.stride(1) == 1 ? t : t.contiguous();
}

// H[d, d] += X^T X (fp32); splits > 1 use a workspace. Wanda's column norms come from
// HessianAccumulator (the diagonal of H), not from this kernel.
void hessian(torch::Tensor H, torch::Tensor X, int64_t splits) {
  TORCH_CHECK(H.is_cuda() && X.is_cuda(), "hessian: tensors must be on a CUDA device");
  TORCH_CHECK(H.scalar_type() == torch::kFloat32 && H.is_contiguous() && H.dim() == 2,
              "hessian: H must be a contiguous float32 [d, d]");
  TORCH_CHECK(X.dim() == 2 && X.size(1) == H.size(0), "hessian: X must be [t, d]");
  TORCH_CHECK(X.device() == H.device(), "hessian: H and X must be on one device");
  const c10::cuda::CUDAGuard guard(H.device());
  auto Xc = rows_unit_stride(X);
  const int64_t d = H.size(0), tile = ssgr_cuda::hessian_tile();
  const int64_t nt = (d + tile - 1) / tile, n_tiles = nt * (nt + 1) / 2;
  const int split = static_cast<int>(std::max<int64_t>(1, splits));
  torch::Tensor ws;
  if (split > 1) ws = torch::empty({split, n_tiles, tile, tile}, H.options());
  check(ssgr_cuda::hessian_accumulate(Xc.data_ptr(), dtype_code(Xc, false), Xc.size(0), d,
                                      Xc.stride(0), H.data_ptr<float>(),
                                      split > 1 ? ws.data_ptr<float>() : nullptr, split,
                                      c10::cuda::getCurrentCUDAStream().stream()),
        "hessian");
}

// One fused OBS block in place on W1 [rows, count] (a float32 view with unit column stride).
void obs_block(torch::Tensor W1, torch::Tensor U, c10::optional<torch::Tensor> prune,
               int64_t n_prune, int64_t m, torch::Tensor keep, torch::Tensor err,
               torch::Tensor losses, int64_t rows_per_block) {
  TORCH_CHECK(W1.is_cuda() && W1.scalar_type() == torch::kFloat32 && W1.stride(1) == 1,
              "obs_block: W1 must be a float32 CUDA view with unit column stride");
  TORCH_CHECK(U.scalar_type() == torch::kFloat32 && U.stride(1) == 1, "obs_block: U");
  TORCH_CHECK(keep.is_contiguous() && err.is_contiguous() && losses.is_contiguous(),
              "obs_block: outputs must be contiguous");
  const c10::cuda::CUDAGuard guard(W1.device());
  const uint8_t* pp = nullptr;
  if (prune.has_value()) {
    TORCH_CHECK(prune->is_contiguous() && prune->scalar_type() == torch::kUInt8,
                "obs_block: prune must be contiguous uint8");
    pp = prune->data_ptr<uint8_t>();
  }
  check(ssgr_cuda::obs_block(W1.data_ptr<float>(), W1.stride(0), U.data_ptr<float>(), U.stride(0),
                             pp, W1.size(0), static_cast<int>(W1.size(1)),
                             static_cast<int>(n_prune), static_cast<int>(m),
                             keep.data_ptr<uint8_t>(), err.data_ptr<float>(),
                             losses.data_ptr<float>(), static_cast<int>(rows_per_block),
                             c10::cuda::getCurrentCUDAStream().stream()),
        "obs_block");
}

torch::Tensor nm_mask(torch::Tensor scores, int64_t n, int64_t m) {
  TORCH_CHECK(scores.is_cuda() && scores.dim() == 2, "nm_mask: scores must be 2-D on CUDA");
  const c10::cuda::CUDAGuard guard(scores.device());
  auto s = rows_unit_stride(scores);
  auto keep = torch::empty(s.sizes(), s.options().dtype(torch::kUInt8));
  check(ssgr_cuda::nm_mask(s.data_ptr(), dtype_code(s, true), s.size(0), s.size(1), s.stride(0),
                           static_cast<int>(n), static_cast<int>(m), keep.data_ptr<uint8_t>(),
                           c10::cuda::getCurrentCUDAStream().stream()),
        "nm_mask");
  return keep.to(torch::kBool);
}

torch::Tensor topk_mask(torch::Tensor scores, int64_t n_prune) {
  TORCH_CHECK(scores.is_cuda() && scores.dim() == 2, "topk_mask: scores must be 2-D on CUDA");
  const c10::cuda::CUDAGuard guard(scores.device());
  auto s = rows_unit_stride(scores);
  auto keep = torch::ones(s.sizes(), s.options().dtype(torch::kUInt8));
  if (n_prune > 0)
    check(ssgr_cuda::topk_mask(s.data_ptr(), dtype_code(s, true), s.size(0), s.size(1),
                               s.stride(0), n_prune, keep.data_ptr<uint8_t>(),
                               c10::cuda::getCurrentCUDAStream().stream()),
          "topk_mask");
  return keep.to(torch::kBool);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  using py::arg;
  mod.doc() = "ssgr CUDA kernels (Hessian, fused OBS block, masks)";
  mod.def("hessian", &hessian, "H += X^T X (fp32)", arg("H"), arg("X"), arg("splits") = 1);
  mod.def("hessian_tile", &ssgr_cuda::hessian_tile, "output tile edge of the Hessian kernel");
  mod.def("obs_block", &obs_block, "one fused SparseGPT OBS block (in place)", arg("W1"),
          arg("U"), arg("prune"), arg("n_prune"), arg("m"), arg("keep"), arg("err"),
          arg("losses"), arg("rows_per_block"));
  mod.def("obs_max_m", &ssgr_cuda::obs_max_m, "largest N:M group size of the OBS kernel");
  mod.def("nm_mask", &nm_mask, "N:M keep mask", arg("scores"), arg("n"), arg("m"));
  mod.def("topk_mask", &topk_mask, "per-row top-k keep mask (n_prune smallest pruned)",
          arg("scores"), arg("n_prune"));
}
