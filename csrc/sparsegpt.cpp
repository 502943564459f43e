// Fused SparseGPT OBS block loop for the CPU: one thread owns a tile of 16 rows of the block for
// all of the block's columns (rows are independent inside a block) and holds it transposed, so
// the per-column mask / error / update recurrence is a vector operation across the tile's rows
// and runs in L1. Arithmetic order per element is the reference's: q, err = (w - q) / d,
// w[j] -= err * u[i, j] (no FMA: built with -ffp-contract=off), so every row's result is the
// same as a row-by-row loop's. Tiles move in and out of W by 8x8 register transposes, and each
// tile prefetches the next one's rows while it computes (the block is strided in W, so the
// hardware prefetcher misses it). The tile loop is compiled twice (AVX2 and baseline x86-64) and
// picked at load time. Also here: the radix-select threshold of the unstructured block mask, and
// the flipped copy of H used by the cpu backend. "obs" names the block kernel; the op is
// SparseGPT (ssgr/ops/sparsegpt/cpu.py is the host loop).
#include <algorithm>
#include <cstring>
#include <vector>

#include "ssgr_cpu.h"

namespace ssgr {

namespace {

// Marks the n_prune smallest of s[0..g) in prune_out (1 = prune). Ties prune the lower index
// first (the order of a stable ascending sort).
inline void smallest_n(const float* s, int64_t g, int64_t n_prune, uint8_t* prune_out,
                       std::vector<int64_t>& order) {
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

// GNU vector extensions (vector_size types, their ?: select, __builtin_convertvector) need GCC
// >= 9 or clang >= 11; the two spell a constant shuffle differently. Other compilers stop here.
#if defined(__clang__)
#define SSGR_SHUFFLE2(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#define SSGR_SHUFFLE1(a, ...) __builtin_shufflevector(a, a, __VA_ARGS__)
#elif defined(__GNUC__)
#define SSGR_SHUFFLE2(a, b, ...) __builtin_shuffle(a, b, Vec8i{__VA_ARGS__})
#define SSGR_SHUFFLE1(a, ...) __builtin_shuffle(a, Vec8i{__VA_ARGS__})
#else
#error "csrc/sparsegpt.cpp needs GCC >= 9 or clang >= 11 (GNU vector extensions)"
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SSGR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SSGR_CLONES
#endif

// Rows per tile: the tile is held transposed (column-major, kLanes floats per column) so every
// step of the recurrence is one vector operation across the tile's rows.
constexpr int kLanes = 16;
// 8 floats / int32 (one AVX2 register, two SSE), unaligned and allowed to alias their scalars.
typedef float Vec8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t Vec8i __attribute__((vector_size(32), aligned(4), may_alias));
constexpr int kVecs = kLanes / 8;

inline Vec8& vec(float* p) { return *reinterpret_cast<Vec8*>(p); }
inline Vec8i& veci(int32_t* p) { return *reinterpret_cast<Vec8i*>(p); }
typedef uint8_t Vec8u8 __attribute__((vector_size(8)));

// In-place 8x8 transpose: x[k][j] becomes x[j][k] (unpack, shuffle, then swap 128-bit halves).
template <typename V>
inline void transpose8(V x[8]) {
  V t[8], s[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = SSGR_SHUFFLE2(x[k], x[k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[k + 1] = SSGR_SHUFFLE2(x[k], x[k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int k = 0; k < 8; k += 4) {
    s[k] = SSGR_SHUFFLE2(t[k], t[k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    s[k + 1] = SSGR_SHUFFLE2(t[k], t[k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    s[k + 2] = SSGR_SHUFFLE2(t[k + 1], t[k + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    s[k + 3] = SSGR_SHUFFLE2(t[k + 1], t[k + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int k = 0; k < 4; ++k) {
    x[k] = SSGR_SHUFFLE2(s[k], s[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    x[k + 4] = SSGR_SHUFFLE2(s[k], s[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// The rows of the next tile, prefetched a few cache lines per column of the current tile so
// their memory latency hides behind its arithmetic: at columns [0, 32) the input rows (w, then
// q_out where it is a different array), at [32, 64) the output rows (keep, dflip).
struct NextTile {
  int64_t nrows = 0, count = 0;  // nrows = 0: no next tile
  const float* w = nullptr;
  int64_t ldw = 0;
  const float* q = nullptr;  // nullptr where q_out is w
  int64_t ldq = 0;
  const uint8_t* keep = nullptr;
  int64_t ldk = 0;
  const float* dflip = nullptr;

  template <int Write>
  static void lines(const void* p, int64_t bytes) {
    const char* c = static_cast<const char*>(p);
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, Write, 3);
  }
  void prefetch(int64_t i) const {
    if (i >= 64) return;
    const int64_t l = (i % 32) / 2;
    if (l >= nrows) return;
    if (i < 32) {
      if (i % 2 == 0) lines<0>(w + l * ldw, count * 4);
      else if (q != nullptr) lines<0>(q + l * ldq, count * 4);
    } else if (i % 2 == 0) {
      lines<1>(keep + l * ldk, count);
    } else if (dflip != nullptr) {
      lines<1>(dflip + l * count, count * 4);
    }
  }
};

// smallest_n's rank rule for all lanes at once with the group size known at compile time (2:4,
// 4:8): branch-free, vectorised across lanes. wt / kt point at the group's first column; kt gets
// 1 = kept, 0 = pruned.
template <int G>
inline void nm_group_lanes(float* wt, const float* diag, int32_t n_prune, int32_t* kt) {
  for (int v = 0; v < kVecs; ++v) {
    Vec8 s[G];
    for (int j = 0; j < G; ++j) {
      const Vec8 x = vec(wt + j * kLanes + 8 * v);
      s[j] = (x * x) / (diag[j] * diag[j]);
    }
    for (int j = 0; j < G; ++j) {
      Vec8i rank = {};
      // a comparison is -1 where true: rank counts the lanes' smaller (or tied, lower) entries
      for (int k = 0; k < j; ++k) rank -= s[k] <= s[j];
      for (int k = j + 1; k < G; ++k) rank -= s[k] < s[j];
      veci(kt + j * kLanes + 8 * v) = rank >= n_prune ? Vec8i{} + 1 : Vec8i{};
    }
  }
}

// The block's recurrence for rows [0, nrows) (nrows <= kLanes) of a tile; lanes past nrows are
// zero padding and are not written back. wt [count * kLanes], kt [count * kLanes] (1 = kept),
// score and gp [m] are scratch.
SSGR_CLONES
void obs_tile(const float* w, int64_t ldw, int64_t nrows, const float* u, int64_t ldu,
              const float* diag, const uint8_t* prune, int64_t count, int64_t n_prune, int64_t m,
              uint8_t* keep, int64_t ldk, float* losses, float* q_out, int64_t ldq, float* dflip,
              float* wt, int32_t* kt, float* score, uint8_t* gp, std::vector<int64_t>& order,
              const NextTile& next) {
  const bool nm = n_prune > 0;
  const bool full = nrows == kLanes;
  const int64_t count8 = full ? count / 8 * 8 : 0;  // columns moved by 8x8 transposes
  if (!full) std::fill(wt, wt + count * kLanes, 0.0f);
  for (int g = 0; g < kVecs; ++g) {
    for (int64_t i = 0; i < count8; i += 8) {
      Vec8 x[8];
      for (int k = 0; k < 8; ++k) x[k] = vec(const_cast<float*>(w) + (8 * g + k) * ldw + i);
      transpose8(x);
      for (int k = 0; k < 8; ++k) vec(wt + (i + k) * kLanes + 8 * g) = x[k];
    }
  }
  for (int64_t l = 0; l < nrows; ++l)
    for (int64_t i = count8; i < count; ++i) wt[i * kLanes + l] = w[l * ldw + i];
  if (!nm) {
    for (int64_t i = 0; i < count; ++i)
      for (int l = 0; l < kLanes; ++l) kt[i * kLanes + l] = l < nrows ? !prune[l * count + i] : 1;
  }
  Vec8 loss[kVecs] = {};
  for (int64_t i = 0; i < count; ++i) {
    next.prefetch(i);
    float* wi = wt + i * kLanes;
    int32_t* ki = kt + i * kLanes;
    if (nm && i % m == 0) {
      const int64_t g = std::min(m, count - i);
      if (g == 4) {
        nm_group_lanes<4>(wi, diag + i, static_cast<int32_t>(n_prune), ki);
      } else if (g == 8) {
        nm_group_lanes<8>(wi, diag + i, static_cast<int32_t>(n_prune), ki);
      } else {
        for (int l = 0; l < kLanes; ++l) {
          for (int64_t j = 0; j < g; ++j) {
            const float d = diag[i + j];
            const float x = wt[(i + j) * kLanes + l];
            score[j] = (x * x) / (d * d);
          }
          smallest_n(score, g, n_prune, gp, order);
          for (int64_t j = 0; j < g; ++j) kt[(i + j) * kLanes + l] = gp[j] ? 0 : 1;
        }
      }
    }
    const float d = diag[i];
    const float dd = d * d;
    Vec8 ev[kVecs];
    for (int v = 0; v < kVecs; ++v) {
      const Vec8 wv = vec(wi + 8 * v);
      const Vec8 q = veci(ki + 8 * v) != 0 ? wv : Vec8{};
      const Vec8 diff = wv - q;
      loss[v] += (diff * diff) / dd;
      ev[v] = diff / d;
      vec(wi + 8 * v) = q;
    }
    const float* ui = u + i * ldu;
    for (int64_t j = i + 1; j < count; ++j) {
      const float uij = ui[j];
      for (int v = 0; v < kVecs; ++v) vec(wt + j * kLanes + 8 * v) -= ev[v] * uij;
    }
  }
  alignas(32) float lsum[kLanes];
  for (int v = 0; v < kVecs; ++v) vec(lsum + 8 * v) = loss[v];
  for (int g = 0; g < kVecs; ++g) {
    for (int64_t i = 0; i < count8; i += 8) {
      Vec8 q[8];
      Vec8i k8[8];
      for (int j = 0; j < 8; ++j) {
        q[j] = vec(wt + (i + j) * kLanes + 8 * g);
        k8[j] = veci(kt + (i + j) * kLanes + 8 * g);
      }
      transpose8(q);
      transpose8(k8);
      for (int l = 0; l < 8; ++l) {
        float* qr = q_out + (8 * g + l) * ldq + i;
        if (dflip != nullptr) {
          const Vec8 diff = vec(qr) - q[l];
          vec(dflip + (8 * g + l) * count + count - 8 - i) =
              SSGR_SHUFFLE1(diff, 7, 6, 5, 4, 3, 2, 1, 0);
        }
        vec(qr) = q[l];
        const Vec8u8 kb = __builtin_convertvector(k8[l], Vec8u8);
        std::memcpy(keep + (8 * g + l) * ldk + i, &kb, 8);
      }
    }
  }
  for (int64_t l = 0; l < nrows; ++l) {
    float* qr = q_out + l * ldq;
    for (int64_t i = count8; i < count; ++i) {
      if (dflip != nullptr) dflip[l * count + count - 1 - i] = qr[i] - wt[i * kLanes + l];
      qr[i] = wt[i * kLanes + l];
      keep[l * ldk + i] = static_cast<uint8_t>(kt[i * kLanes + l]);
    }
    losses[l] += lsum[l] / 2.0f;
  }
}

}  // namespace

void obs_block_f32(const float* w, int64_t ldw, const float* u, int64_t ldu,
                   const uint8_t* prune, int64_t rows, int64_t count, int64_t n_prune, int64_t m,
                   uint8_t* keep, int64_t ldk, float* losses, float* q_out, int64_t ldq,
                   float* dflip) {
  std::vector<float> diag(count);
  for (int64_t i = 0; i < count; ++i) diag[i] = u[i * ldu + i];
  const int64_t tiles = (rows + kLanes - 1) / kLanes;

#pragma omp parallel
  {
    std::vector<float> wt(count * kLanes);
    std::vector<int32_t> kt(count * kLanes);
    std::vector<float> score(n_prune > 0 ? m : 1);
    std::vector<uint8_t> gp(n_prune > 0 ? m : 1);
    std::vector<int64_t> order(n_prune > 0 ? m : 1);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r = t * kLanes;
      // the tile after this one (this thread's next one under the static schedule)
      const int64_t rn = r + kLanes;
      const NextTile next =
          rn < rows ? NextTile{std::min<int64_t>(kLanes, rows - rn), count, w + rn * ldw, ldw,
                               q_out == w ? nullptr : q_out + rn * ldq, ldq, keep + rn * ldk,
                               ldk, dflip ? dflip + rn * count : nullptr}
                    : NextTile{};
      obs_tile(w + r * ldw, ldw, std::min<int64_t>(kLanes, rows - r), u, ldu, diag.data(),
               prune ? prune + r * count : nullptr, count, n_prune, m, keep + r * ldk, ldk,
               losses + r, q_out + r * ldq, ldq, dflip ? dflip + r * count : nullptr, wt.data(),
               kt.data(), score.data(), gp.data(), order, next);
    }
  }
}

namespace {

constexpr int64_t kRadix = 1 << 16;

// Histogram of key(i) over [0, n) into hist[kRadix], parallel (per-thread counts merged);
// a negative key is not counted.
template <typename Key>
void histogram16(int64_t n, Key key, std::vector<int64_t>& hist) {
  std::fill(hist.begin(), hist.end(), 0);
#pragma omp parallel
  {
    std::vector<int64_t> local(kRadix, 0);
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = key(i);
      if (b >= 0) ++local[b];
    }
#pragma omp critical
    for (int64_t b = 0; b < kRadix; ++b) hist[b] += local[b];
  }
}

// The bucket holding the k-th smallest (0-based) and k's rank inside it.
int64_t find_bucket(const std::vector<int64_t>& hist, int64_t& k) {
  for (int64_t b = 0; b < kRadix; ++b) {
    if (k < hist[b]) return b;
    k -= hist[b];
  }
  return kRadix - 1;  // unreachable when k < the histogram's total
}

}  // namespace

void block_prune_mask_f32(const float* w, int64_t ldw, const float* u, int64_t ldu, int64_t rows,
                          int64_t count, int64_t k, uint8_t* prune) {
  const int64_t n = rows * count;
  std::vector<float> dd(count);
  for (int64_t i = 0; i < count; ++i) dd[i] = u[i * ldu + i] * u[i * ldu + i];
  // Scores as bit patterns: for non-negative floats (w^2 / d^2 >= 0, never -0) the unsigned bit
  // pattern orders exactly like the value, +Inf included.
  std::vector<uint32_t> bits(n);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * ldw;
    uint32_t* br = bits.data() + r * count;
    for (int64_t i = 0; i < count; ++i) {
      const float s = (wr[i] * wr[i]) / dd[i];
      std::memcpy(br + i, &s, sizeof(float));
    }
  }
  std::vector<int64_t> hist(kRadix);
  histogram16(n, [&](int64_t i) { return int64_t{bits[i] >> 16}; }, hist);
  const uint32_t hi = static_cast<uint32_t>(find_bucket(hist, k));
  histogram16(
      n, [&](int64_t i) { return (bits[i] >> 16) == hi ? int64_t{bits[i] & 0xFFFF} : int64_t{-1}; },
      hist);
  const uint32_t thresh = (hi << 16) | static_cast<uint32_t>(find_bucket(hist, k));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) prune[i] = bits[i] <= thresh;
}

namespace {
template <typename Out>
void flip2d(const float* src, int64_t n, Out* dst) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* s = src + (n - 1 - i) * n + (n - 1);
    Out* d = dst + i * n;
    for (int64_t j = 0; j < n; ++j) d[j] = static_cast<Out>(s[-j]);
  }
}
}  // namespace

void flip2d_f32(const float* src, int64_t n, float* dst) { flip2d(src, n, dst); }

void flip2d_f32_f64(const float* src, int64_t n, double* dst) { flip2d(src, n, dst); }

void narrow_f64_f32_inplace(void* buf, int64_t n) {
  // Float row i lands in bytes [4 i n, 4 (i + 1) n): inside double rows < i for i >= 1, so
  // only rows already narrowed are overwritten; row 0 overlaps itself. Every row is rounded
  // into a scratch row first and then copied into place with memcpy (bytes, no float stores
  // into double storage). Row 0 goes first, then rows [a, 2a) for a = 1, 2, 4, ...: they read
  // bytes >= 8 a n and write bytes [4 a n, 8 a n) (double rows < a, all narrowed), so within a
  // range no read meets a write and its rows run in parallel; the range's barrier orders it
  // before the next.
  unsigned char* bytes = static_cast<unsigned char*>(buf);
  const size_t row_bytes = static_cast<size_t>(n) * sizeof(float);
  auto narrow_row = [&](int64_t i, float* scratch) {
    const double* s = reinterpret_cast<const double*>(bytes + static_cast<size_t>(i) * n * 8);
    for (int64_t j = 0; j < n; ++j) scratch[j] = static_cast<float>(s[j]);
    std::memcpy(bytes + static_cast<size_t>(i) * row_bytes, scratch, row_bytes);
  };
  {
    std::vector<float> scratch(static_cast<size_t>(n));
    narrow_row(0, scratch.data());
  }
  for (int64_t a = 1; a < n; a *= 2) {
    const int64_t b = std::min(2 * a, n);
#pragma omp parallel
    {
      std::vector<float> scratch(static_cast<size_t>(n));
#pragma omp for schedule(static)
      for (int64_t i = a; i < b; ++i) narrow_row(i, scratch.data());
    }
  }
}

}  // namespace ssgr
