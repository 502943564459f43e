// pybind11 bindings of the CPU kernels as module ssgr._C. Tensors cross as raw addresses
// (integers from tensor.data_ptr()) plus shapes and row strides, every argument named; the only
// caller is ssgr/ops/_native.py, whose typed wrappers check device, dtype, shape and strides
// before they call. The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "ssgr_cpu.h"

namespace py = pybind11;
using py::arg;

namespace {
template <typename T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }
}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "ssgr CPU kernels (C++17, OpenMP); call them through ssgr.ops._native";
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
      "One fused SparseGPT OBS block (see csrc/ssgr_cpu.h); prune = 0 / dflip = 0 for none",
      arg("w"), arg("ldw"), arg("u"), arg("ldu"), arg("prune"), arg("rows"), arg("count"),
      arg("n_prune"), arg("m"), arg("keep"), arg("ldk"), arg("losses"), arg("q_out"),
      arg("ldq"), arg("dflip"));
  mod.def(
      "block_prune_mask_f32",
      [](std::uintptr_t w, int64_t ldw, std::uintptr_t u, int64_t ldu, int64_t rows,
         int64_t count, int64_t k, std::uintptr_t prune) {
        py::gil_scoped_release nogil;
        ssgr::block_prune_mask_f32(ptr<const float>(w), ldw, ptr<const float>(u), ldu, rows, count,
                                   k, ptr<uint8_t>(prune));
      },
      "Unstructured prune mask of one OBS block (see csrc/ssgr_cpu.h)", arg("w"), arg("ldw"),
      arg("u"), arg("ldu"), arg("rows"), arg("count"), arg("k"), arg("prune"));
  mod.def(
      "flip2d_f32",
      [](std::uintptr_t src, int64_t n, std::uintptr_t dst) {
        py::gil_scoped_release nogil;
        ssgr::flip2d_f32(ptr<const float>(src), n, ptr<float>(dst));
      },
      "dst = src reversed along both dims, n x n fp32 (see csrc/ssgr_cpu.h)", arg("src"),
      arg("n"), arg("dst"));
  mod.def(
      "flip2d_f32_f64",
      [](std::uintptr_t src, int64_t n, std::uintptr_t dst) {
        py::gil_scoped_release nogil;
        ssgr::flip2d_f32_f64(ptr<const float>(src), n, ptr<double>(dst));
      },
      "dst = src reversed along both dims, fp32 n x n in, fp64 out (see csrc/ssgr_cpu.h)",
      arg("src"), arg("n"), arg("dst"));
  mod.def(
      "narrow_f64_f32_inplace",
      [](std::uintptr_t buf, int64_t n) {
        py::gil_scoped_release nogil;
        ssgr::narrow_f64_f32_inplace(ptr<void>(buf), n);
      },
      "n x n fp64 at buf rounded to fp32 in place, packed at buf (see csrc/ssgr_cpu.h)",
      arg("buf"), arg("n"));
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
      "N:M keep mask (see csrc/ssgr_cpu.h)", arg("scores"), arg("is_double"), arg("rows"),
      arg("cols"), arg("n"), arg("m"), arg("keep"));
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
      "Per-row top-k keep mask (see csrc/ssgr_cpu.h)", arg("scores"), arg("is_double"),
      arg("rows"), arg("cols"), arg("n_prune"), arg("keep"));
}
