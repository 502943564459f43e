// pybind11 bindings of the CPU kernels as module ssgr._C. Pointers are passed as integers
// (tensor.data_ptr()); the GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <omp.h>

#include "ssgr_cpu.h"

namespace py = pybind11;

namespace {
template <typename T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }
}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "ssgr CPU kernels (C++17, OpenMP)";
  mod.def("num_threads", []() { return omp_get_max_threads(); }, "OpenMP thread count");
  mod.def(
      "obs_block_f32",
      [](std::uintptr_t w, int64_t ldw, std::uintptr_t u, int64_t ldu, std::uintptr_t prune,
         int64_t rows, int64_t count, int64_t n_prune, int64_t m, std::uintptr_t keep,
         int64_t ldk, std::uintptr_t losses, std::uintptr_t q_out, int64_t ldq,
         std::uintptr_t dflip) {
        py::gil_scoped_release nogil;
        ssgr::obs_block_f32(ptr<const float>(w), ldw, ptr<const float>(u), ldu,
                            ptr<const uint8_t>(prune), rows, count, n_prune, m,
                            ptr<uint8_t>(keep), ldk, ptr<float>(losses), ptr<float>(q_out), ldq,
                            ptr<float>(dflip));
      },
      "One fused SparseGPT OBS block (see csrc/ssgr_cpu.h)");
  mod.def(
      "block_prune_mask_f32",
      [](std::uintptr_t w, int64_t ldw, std::uintptr_t u, int64_t ldu, int64_t rows,
         int64_t count, int64_t k, std::uintptr_t prune) {
        py::gil_scoped_release nogil;
        ssgr::block_prune_mask_f32(ptr<const float>(w), ldw, ptr<const float>(u), ldu, rows, count,
                                   k, ptr<uint8_t>(prune));
      },
      "Unstructured prune mask of one OBS block (see csrc/ssgr_cpu.h)");
  mod.def(
      "flip2d_f32",
      [](std::uintptr_t src, int64_t n, std::uintptr_t dst) {
        py::gil_scoped_release nogil;
        ssgr::flip2d_f32(ptr<const float>(src), n, ptr<float>(dst));
      },
      "dst = src reversed along both dims, n x n fp32 (see csrc/ssgr_cpu.h)");
  mod.def(
      "nm_mask",
      [](std::uintptr_t scores, bool is_double, int64_t rows, int64_t cols, int64_t n, int64_t m,
         std::uintptr_t keep) {
        py::gil_scoped_release nogil;
        if (is_double)
          ssgr::nm_mask(ptr<const double>(scores), rows, cols, n, m, ptr<uint8_t>(keep));
        else
          ssgr::nm_mask(ptr<const float>(scores), rows, cols, n, m, ptr<uint8_t>(keep));
      },
      "N:M keep mask (see csrc/ssgr_cpu.h)");
  mod.def(
      "topk_mask",
      [](std::uintptr_t scores, bool is_double, int64_t rows, int64_t cols, int64_t n_prune,
         std::uintptr_t keep) {
        py::gil_scoped_release nogil;
        if (is_double)
          ssgr::topk_mask(ptr<const double>(scores), rows, cols, n_prune, ptr<uint8_t>(keep));
        else
          ssgr::topk_mask(ptr<const float>(scores), rows, cols, n_prune, ptr<uint8_t>(keep));
      },
      "Per-row top-k keep mask (see csrc/ssgr_cpu.h)");
}
