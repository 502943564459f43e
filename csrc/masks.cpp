// Mask extraction on the CPU: N:M keep-top-n per group and per-row top-k, parallel over rows.
// Tie rules are fixed so results are deterministic and equal the reference's stable sorts.
#include <algorithm>
#include <numeric>
#include <vector>

#include "ssgr_cpu.h"

namespace ssgr {

// Rank in a stable descending order (ties keep the lower column) and keep the n first; the group
// size known at compile time (2:4, 4:8) makes the loops unrolled and branch-free.
template <int M, typename T>
void nm_mask_fixed(const T* scores, int64_t rows, int64_t cols, int64_t n, uint8_t* keep) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < cols; g += M) {
      const T* s = scores + r * cols + g;
      uint8_t* k = keep + r * cols + g;
      for (int j = 0; j < M; ++j) {
        int rank = 0;
        for (int q = 0; q < M; ++q) rank += (s[q] > s[j]) | ((s[q] == s[j]) & (q < j));
        k[j] = rank < n;
      }
    }
  }
}

template <typename T>
void nm_mask(const T* scores, int64_t rows, int64_t cols, int64_t n, int64_t m, uint8_t* keep) {
  if (m == 4) return nm_mask_fixed<4>(scores, rows, cols, n, keep);
  if (m == 8) return nm_mask_fixed<8>(scores, rows, cols, n, keep);
  const int64_t groups = cols / m;
#pragma omp parallel
  {
    std::vector<int64_t> order(m);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        const T* s = scores + r * cols + g * m;
        uint8_t* k = keep + r * cols + g * m;
        if (m <= 32) {
          // rank in a stable descending order: keep the n first
          for (int64_t j = 0; j < m; ++j) {
            int64_t rank = 0;
            for (int64_t q = 0; q < m; ++q) rank += (s[q] > s[j]) || (s[q] == s[j] && q < j);
            k[j] = rank < n;
          }
          continue;
        }
        std::iota(order.begin(), order.end(), int64_t{0});
        // largest first; ties keep the lower column (stable descending order)
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t a, int64_t b) { return s[a] > s[b]; });
        for (int64_t j = 0; j < m; ++j) k[j] = 0;
        for (int64_t j = 0; j < n; ++j) k[order[j]] = 1;
      }
    }
  }
}

template <typename T>
void topk_mask(const T* scores, int64_t rows, int64_t cols, int64_t n_prune, uint8_t* keep) {
#pragma omp parallel
  {
    std::vector<int64_t> order(cols);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* s = scores + r * cols;
      uint8_t* k = keep + r * cols;
      for (int64_t j = 0; j < cols; ++j) k[j] = 1;
      if (n_prune <= 0) continue;
      std::iota(order.begin(), order.end(), int64_t{0});
      auto less = [&](int64_t a, int64_t b) { return s[a] < s[b] || (s[a] == s[b] && a < b); };
      if (n_prune < cols) std::nth_element(order.begin(), order.begin() + n_prune, order.end(), less);
      const int64_t np = std::min(n_prune, cols);
      for (int64_t j = 0; j < np; ++j) k[order[j]] = 0;
    }
  }
}

template void nm_mask<float>(const float*, int64_t, int64_t, int64_t, int64_t, uint8_t*);
template void nm_mask<double>(const double*, int64_t, int64_t, int64_t, int64_t, uint8_t*);
template void topk_mask<float>(const float*, int64_t, int64_t, int64_t, uint8_t*);
template void topk_mask<double>(const double*, int64_t, int64_t, int64_t, uint8_t*);

}  // namespace ssgr
