// Fused SparseGPT OBS block loop for the CPU: one thread owns a row of the block for all of the
// block's columns (rows are independent inside a block), so the whole per-column mask / error /
// update recurrence runs in L1 with no temporaries. Arithmetic order per element is the
// reference's: q, err = (w - q) / d, w[j] -= err * u[i, j] (no FMA: built with -ffp-contract=off).
// The row loop is compiled twice (AVX2 and baseline x86-64) and picked at load time.
#include <algorithm>
#include <cstring>
#include <vector>

#include "ssgr_cpu.h"

namespace ssgr {

namespace {

// smallest_n's rank rule with the group size known at compile time (2:4, 4:8): fully unrolled
// and branch-free.
template <int G>
inline void smallest_n_fixed(const float* s, int64_t n_prune, uint8_t* prune_out) {
  for (int j = 0; j < G; ++j) {
    int rank = 0;
    for (int k = 0; k < G; ++k) rank += (s[k] < s[j]) | ((s[k] == s[j]) & (k < j));
    prune_out[j] = rank < n_prune;
  }
}

// Marks the n_prune smallest of s[0..g) in prune_out (1 = prune). Ties prune the lower index
// first (the order of a stable ascending sort).
inline void smallest_n(const float* s, int64_t g, int64_t n_prune, uint8_t* prune_out,
                       std::vector<int64_t>& order) {
  if (g == 4) return smallest_n_fixed<4>(s, n_prune, prune_out);
  if (g == 8) return smallest_n_fixed<8>(s, n_prune, prune_out);
  if (g <= 32) {
    for (int64_t j = 0; j < g; ++j) {
      int64_t rank = 0;
      for (int64_t k = 0; k < g; ++k) rank += (s[k] < s[j]) || (s[k] == s[j] && k < j);
      prune_out[j] = rank < n_prune;
    }
    return;
  }
  for (int64_t j = 0; j < g; ++j) order[j] = j;
  std::stable_sort(order.begin(), order.begin() + g,
                   [&](int64_t a, int64_t b) { return s[a] < s[b]; });
  for (int64_t j = 0; j < g; ++j) prune_out[j] = 0;
  for (int64_t j = 0; j < std::min(n_prune, g); ++j) prune_out[order[j]] = 1;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SSGR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SSGR_CLONES
#endif

SSGR_CLONES
void obs_row(float* wr, const float* u, int64_t ldu, const float* diag, const uint8_t* pr,
             int64_t count, int64_t n_prune, int64_t m, uint8_t* kr, float* er, float* loss_out,
             float* score, uint8_t* gp, std::vector<int64_t>& order) {
  const bool nm = n_prune > 0;
  float loss = 0.0f;
  for (int64_t i = 0; i < count; ++i) {
    if (nm && i % m == 0) {
      const int64_t g = std::min(m, count - i);
      for (int64_t j = 0; j < g; ++j) {
        const float d = diag[i + j];
        score[j] = (wr[i + j] * wr[i + j]) / (d * d);
      }
      smallest_n(score, g, n_prune, gp, order);
      for (int64_t j = 0; j < g; ++j) kr[i + j] = gp[j] ? 0 : 1;
    } else if (!nm) {
      kr[i] = pr[i] ? 0 : 1;
    }
    const float wi = wr[i];
    const float q = kr[i] ? wi : 0.0f;
    const float d = diag[i];
    const float diff = wi - q;
    loss += (diff * diff) / (d * d);
    const float e = diff / d;
    er[i] = e;
    if (e != 0.0f) {  // a kept weight has e == 0: its update is a no-op
      const float* ui = u + i * ldu;
      for (int64_t j = i + 1; j < count; ++j) wr[j] -= e * ui[j];
    }
    wr[i] = q;
  }
  *loss_out += loss / 2.0f;
}

}  // namespace

void obs_block_f32(float* w, int64_t ldw, const float* u, int64_t ldu, const uint8_t* prune,
                   int64_t rows, int64_t count, int64_t n_prune, int64_t m, uint8_t* keep,
                   float* err, float* losses) {
  std::vector<float> diag(count);
  for (int64_t i = 0; i < count; ++i) diag[i] = u[i * ldu + i];
  const int64_t g = n_prune > 0 ? m : 1;

#pragma omp parallel
  {
    std::vector<float> score(g);
    std::vector<uint8_t> gp(g);
    std::vector<int64_t> order(g);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      obs_row(w + r * ldw, u, ldu, diag.data(), prune ? prune + r * count : nullptr, count,
              n_prune, m, keep + r * count, err + r * count, losses + r, score.data(), gp.data(),
              order);
    }
  }
}

}  // namespace ssgr
