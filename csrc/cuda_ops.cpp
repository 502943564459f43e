// pybind11 / torch bindings of the CUDA kernels as module ssgr._cuda (built by setup.py's
// CUDAExtension only where torch has CUDA and nvcc is found; called from ssgr/ops/<op>/gpu.py).
// The kernels in csrc/*.cu are plain CUDA taking raw pointers; this file checks the tensors,
// picks the dtype code and launches on torch's current stream of the tensors' device (a
// CUDAGuard in every binding). Every tensor argument's device, dtype, shape and layout is checked,
// and a failed check names the argument and says what it got.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/extension.h>

#include <cstdint>
#include <sstream>
#include <string>

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

// "float32 [3, 4] strides [4, 1] on cuda:1": what an argument is, for the error messages.
std::string describe(const torch::Tensor& t) {
  std::ostringstream os;
  os << c10::toString(t.scalar_type()) << " " << t.sizes() << " strides " << t.strides() << " on "
     << t.device();
  return os.str();
}

// Fails with "<fn>: <name> must be <want>, got <what it is>" unless ok.
void expect(bool ok, const char* fn, const char* name, const char* want, const torch::Tensor& t) {
  TORCH_CHECK(ok, fn, ": ", name, " must be ", want, ", got ", describe(t));
}

bool is_score_dtype(const torch::Tensor& t) {
  const auto d = t.scalar_type();
  return d == torch::kFloat32 || d == torch::kFloat16 || d == torch::kBFloat16 ||
         d == torch::kFloat64;
}

// 0 = fp32, 1 = fp16, 2 = bf16, 3 = fp64 (the dtype codes of csrc/*.cu); the caller has checked
// the dtype is one of them.
int dtype_code(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return 0;
    case torch::kFloat16: return 1;
    case torch::kBFloat16: return 2;
    case torch::kFloat64: return 3;
    default: TORCH_CHECK(false, "ssgr._cuda: unsupported dtype ", t.scalar_type());
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
  expect(H.is_cuda() && H.scalar_type() == torch::kFloat32 && H.dim() == 2 &&
             H.size(0) == H.size(1) && H.is_contiguous(),
         "hessian", "H", "float32 [d, d] contiguous on a CUDA device", H);
  const auto xt = X.scalar_type();
  expect(X.device() == H.device() && X.dim() == 2 && X.size(1) == H.size(0) &&
             (xt == torch::kFloat32 || xt == torch::kFloat16 || xt == torch::kBFloat16),
         "hessian", "X", "float32/float16/bfloat16 [t, d] (d = H.size(0)) on H's device", X);
  TORCH_CHECK(splits >= 1, "hessian: splits must be >= 1, got ", splits);
  const c10::cuda::CUDAGuard guard(H.device());
  auto Xc = rows_unit_stride(X);
  const int64_t d = H.size(0), tile = ssgr_cuda::hessian_tile();
  const int64_t nt = (d + tile - 1) / tile, n_tiles = nt * (nt + 1) / 2;
  const int split = static_cast<int>(splits);
  torch::Tensor ws;
  if (split > 1) ws = torch::empty({split, n_tiles, tile, tile}, H.options());
  check(ssgr_cuda::hessian_accumulate(Xc.data_ptr(), dtype_code(Xc), Xc.size(0), d, Xc.stride(0),
                                      H.data_ptr<float>(),
                                      split > 1 ? ws.data_ptr<float>() : nullptr, split,
                                      c10::cuda::getCurrentCUDAStream().stream()),
        "hessian");
}

// The largest block (columns) the OBS kernel takes: its shared memory holds count^2 floats.
constexpr int64_t OBS_MAX_COUNT = 128;

// One fused OBS block in place on W1 [rows, count] (a float32 view with unit column stride).
void obs_block(torch::Tensor W1, torch::Tensor U, c10::optional<torch::Tensor> prune,
               int64_t n_prune, int64_t m, torch::Tensor keep, torch::Tensor err,
               torch::Tensor losses, int64_t rows_per_block) {
  const char* fn = "obs_block";
  expect(W1.is_cuda() && W1.scalar_type() == torch::kFloat32 && W1.dim() == 2 &&
             W1.size(1) <= OBS_MAX_COUNT && (W1.size(1) <= 1 || W1.stride(1) == 1),
         fn, "W1", "float32 [rows, count <= 128] with unit column stride on a CUDA device", W1);
  const auto dev = W1.device();
  const int64_t rows = W1.size(0), count = W1.size(1);
  expect(U.device() == dev && U.scalar_type() == torch::kFloat32 && U.dim() == 2 &&
             U.size(0) == count && U.size(1) == count && (count <= 1 || U.stride(1) == 1),
         fn, "U", "float32 [count, count] with unit column stride on W1's device", U);
  const auto same_shape = [&](const torch::Tensor& t) {
    return t.device() == dev && t.dim() == 2 && t.size(0) == rows && t.size(1) == count &&
           t.is_contiguous();
  };
  expect(same_shape(keep) && keep.scalar_type() == torch::kUInt8, fn, "keep",
         "uint8 [rows, count] contiguous on W1's device", keep);
  expect(same_shape(err) && err.scalar_type() == torch::kFloat32, fn, "err",
         "float32 [rows, count] contiguous on W1's device", err);
  expect(losses.device() == dev && losses.scalar_type() == torch::kFloat32 &&
             losses.dim() == 1 && losses.size(0) == rows && losses.is_contiguous(),
         fn, "losses", "float32 [rows] contiguous on W1's device", losses);
  const uint8_t* pp = nullptr;
  if (n_prune > 0) {
    TORCH_CHECK(m >= n_prune && m <= ssgr_cuda::obs_max_m(), fn, ": N:M needs n_prune <= m <= ",
                ssgr_cuda::obs_max_m(), ", got n_prune=", n_prune, ", m=", m);
    TORCH_CHECK(!prune.has_value(), fn, ": prune must be None for N:M (n_prune=", n_prune, ")");
  } else {
    TORCH_CHECK(n_prune == 0, fn, ": n_prune must be >= 0, got ", n_prune);
    TORCH_CHECK(prune.has_value(), fn, ": prune (uint8 [rows, count]) is required when ",
                "n_prune == 0");
    expect(same_shape(*prune) && prune->scalar_type() == torch::kUInt8, fn, "prune",
           "uint8 [rows, count] contiguous on W1's device", *prune);
    pp = prune->data_ptr<uint8_t>();
  }
  TORCH_CHECK(rows_per_block == 32 || rows_per_block == 64, fn,
              ": rows_per_block must be 32 or 64, got ", rows_per_block);
  const c10::cuda::CUDAGuard guard(dev);
  check(ssgr_cuda::obs_block(W1.data_ptr<float>(), W1.stride(0), U.data_ptr<float>(), U.stride(0),
                             pp, rows, static_cast<int>(count), static_cast<int>(n_prune),
                             static_cast<int>(m), keep.data_ptr<uint8_t>(),
                             err.data_ptr<float>(), losses.data_ptr<float>(),
                             static_cast<int>(rows_per_block),
                             c10::cuda::getCurrentCUDAStream().stream()),
        "obs_block");
}

void check_scores(const char* fn, const torch::Tensor& scores) {
  expect(scores.is_cuda() && scores.dim() == 2 && is_score_dtype(scores), fn, "scores",
         "float32/float16/bfloat16/float64 [rows, cols] on a CUDA device", scores);
}

torch::Tensor nm_mask(torch::Tensor scores, int64_t n, int64_t m) {
  check_scores("nm_mask", scores);
  TORCH_CHECK(m >= 1 && n >= 0 && n <= m, "nm_mask: needs 0 <= n <= m and m >= 1, got n=", n,
              ", m=", m);
  TORCH_CHECK(scores.size(1) % m == 0, "nm_mask: scores' columns (", scores.size(1),
              ") must be a multiple of m=", m);
  const c10::cuda::CUDAGuard guard(scores.device());
  auto s = rows_unit_stride(scores);
  auto keep = torch::empty(s.sizes(), s.options().dtype(torch::kUInt8));
  check(ssgr_cuda::nm_mask(s.data_ptr(), dtype_code(s), s.size(0), s.size(1), s.stride(0),
                           static_cast<int>(n), static_cast<int>(m), keep.data_ptr<uint8_t>(),
                           c10::cuda::getCurrentCUDAStream().stream()),
        "nm_mask");
  return keep.to(torch::kBool);
}

torch::Tensor topk_mask(torch::Tensor scores, int64_t n_prune) {
  check_scores("topk_mask", scores);
  TORCH_CHECK(n_prune >= 0 && n_prune <= scores.size(1),
              "topk_mask: needs 0 <= n_prune <= row length (", scores.size(1), "), got ",
              n_prune);
  const c10::cuda::CUDAGuard guard(scores.device());
  auto s = rows_unit_stride(scores);
  auto keep = torch::ones(s.sizes(), s.options().dtype(torch::kUInt8));
  if (n_prune > 0)
    check(ssgr_cuda::topk_mask(s.data_ptr(), dtype_code(s), s.size(0), s.size(1), s.stride(0),
                               n_prune, keep.data_ptr<uint8_t>(),
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
