// Mask extraction on the CPU: N:M keep-top-n per group and per-row top-k, parallel over rows.
// Tie rules are fixed so results are deterministic and equal the reference's stable sorts.
#include <algorithm>
#include <cstdint>
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

// One row's mask: the n_prune smallest scores (ties: the lower column first) get 0. `order` is the
// caller's index buffer, sized here on first use. The comparator is a strict total order, so the
// pruned set is unique: any selection algorithm and index width give the same mask.
template <typename I, typename T>
void topk_row(const T* s, int64_t cols, int64_t n_prune, uint8_t* k, std::vector<I>& order) {
  for (int64_t j = 0; j < cols; ++j) k[j] = 1;
  if (n_prune <= 0) return;
  if (static_cast<int64_t>(order.size()) != cols) order.resize(cols);
  std::iota(order.begin(), order.end(), I{0});
  auto less = [&](I a, I b) { return s[a] < s[b] || (s[a] == s[b] && a < b); };
  if (n_prune < cols) std::nth_element(order.begin(), order.begin() + n_prune, order.end(), less);
  const int64_t np = std::min(n_prune, cols);
  for (int64_t j = 0; j < np; ++j) k[order[j]] = 0;
}

// Memory: one index buffer per thread that gets a row, allocated when it gets its first one (a
// per-layer mask is one row: one buffer, not one per OpenMP thread), of 4-byte indices while the
// row has fewer than 2^31 columns (int64 beyond).
template <typename I, typename T>
void topk_mask_idx(const T* scores, int64_t rows, int64_t cols, int64_t n_prune, uint8_t* keep) {
  if (rows == 1) {  // a per-layer mask: no thread team at all
    std::vector<I> order;
    topk_row(scores, cols, n_prune, keep, order);
    return;
  }
#pragma omp parallel
  {
    std::vector<I> order;  // empty until this thread gets a row
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) topk_row(scores + r * cols, cols, n_prune, keep + r * cols, order);
  }
}

template <typename T>
void topk_mask(const T* scores, int64_t rows, int64_t cols, int64_t n_prune, uint8_t* keep) {
  if (cols < (int64_t{1} << 31)) return topk_mask_idx<int32_t>(scores, rows, cols, n_prune, keep);
  topk_mask_idx<int64_t>(scores, rows, cols, n_prune, keep);
}

template void nm_mask<float>(const float*, int64_t, int64_t, int64_t, int64_t, uint8_t*);
template void nm_mask<double>(const double*, int64_t, int64_t, int64_t, int64_t, uint8_t*);
template void topk_mask<float>(const float*, int64_t, int64_t, int64_t, uint8_t*);
template void topk_mask<double>(const double*, int64_t, int64_t, int64_t, uint8_t*);

}  // namespace ssgr
