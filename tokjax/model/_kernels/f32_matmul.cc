// Small-M float32 matmul for XLA on CPU (decode steps: M = batch rows <= 16), weights output-major:
//   y[m, n] = sum_k x[m, k] w[n, k]
//
// Why a custom call: a decode step is bound by streaming every weight once, and XLA CPU's matmul
// streams weights at 12-15 GB/s for 2-32 activation rows against 22-25 GB/s for one row, so a
// batch-8 step costs ~2x a batch-1 step (README, decoding vs transformers). This kernel reads each
// weight row once, contiguously, for up to 6 activation rows held in registers (further groups of
// rows re-read the same 4 weight rows from L1). Output-major weights matter: an inputs-first
// [K, N] kernel (tried) reads each row of a column chunk from another page and streamed no faster
// than XLA. Column chunks run in parallel on XLA's intra-op pool (column_pool.h).
#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"
#include "avx2_sum.h"
#include "column_pool.h"

namespace ffi = xla::ffi;

// Register-blocked for AVX-512 (tiles of up to 6 rows x 4 weight rows) and AVX2 + FMA (up to 3 x 4: 12 of
// its 16 registers); elsewhere the plain loops below are slower than XLA, so tokjax uses this kernel only
// where it returns 1 (model/_ffi.py).
extern "C" int TokjaxTunedBuild() {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  return 1;
#else
  return 0;
#endif
}

namespace {

struct Problem {
  const float* x;
  const float* w;
  float* y;
  int64_t M, K, N;
};

#if defined(__AVX512F__)
constexpr int kMaxRows = 6;
template <int MT, int NB>
inline void Tile(const Problem& p, int64_t m0, int64_t n0) {
  __m512 acc[MT][NB];
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t vec_end = p.K & ~int64_t{15};
  for (int64_t k = 0; k < vec_end; k += 16) {
    __m512 w[NB];
    for (int j = 0; j < NB; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(p.w + (n0 + NB + j) * p.K + k), _MM_HINT_T0);
      w[j] = _mm512_loadu_ps(p.w + (n0 + j) * p.K + k);
    }
    for (int i = 0; i < MT; ++i) {
      const __m512 xv = _mm512_loadu_ps(p.x + (m0 + i) * p.K + k);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(xv, w[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MT; ++i) {
    for (int j = 0; j < NB; ++j) {
      float r = _mm512_reduce_add_ps(acc[i][j]);
      const float* xr = p.x + (m0 + i) * p.K;
      const float* wr = p.w + (n0 + j) * p.K;
      for (int64_t kk = vec_end; kk < p.K; ++kk) r += xr[kk] * wr[kk];
      p.y[(m0 + i) * p.N + n0 + j] = r;
    }
  }
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kMaxRows = 3;

template <int MT, int NB>
inline void Tile(const Problem& p, int64_t m0, int64_t n0) {
  __m256 acc[MT][NB];
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_ps();
  const int64_t vec_end = p.K & ~int64_t{7};
  for (int64_t k = 0; k < vec_end; k += 8) {
    __m256 w[NB];
    for (int j = 0; j < NB; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(p.w + (n0 + NB + j) * p.K + k), _MM_HINT_T0);
      w[j] = _mm256_loadu_ps(p.w + (n0 + j) * p.K + k);
    }
    for (int i = 0; i < MT; ++i) {
      const __m256 xv = _mm256_loadu_ps(p.x + (m0 + i) * p.K + k);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_fmadd_ps(xv, w[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MT; ++i) {
    for (int j = 0; j < NB; ++j) {
      float r = tokjax::Sum8(acc[i][j]);
      const float* xr = p.x + (m0 + i) * p.K;
      const float* wr = p.w + (n0 + j) * p.K;
      for (int64_t kk = vec_end; kk < p.K; ++kk) r += xr[kk] * wr[kk];
      p.y[(m0 + i) * p.N + n0 + j] = r;
    }
  }
}
#else
constexpr int kMaxRows = 6;
template <int MT, int NB>
inline void Tile(const Problem& p, int64_t m0, int64_t n0) {
  for (int i = 0; i < MT; ++i) {
    const float* xr = p.x + (m0 + i) * p.K;
    for (int j = 0; j < NB; ++j) {
      const float* wr = p.w + (n0 + j) * p.K;
      float r = 0.f;
      for (int64_t k = 0; k < p.K; ++k) r += xr[k] * wr[k];
      p.y[(m0 + i) * p.N + n0 + j] = r;
    }
  }
}
#endif

// Up to kMaxRows activation rows share each loaded weight vector; 4 weight rows per step: with AVX-512 24
// accumulators plus 4 weights and one activation in the 32 vector registers (AVX2: 12 + 4 of 16).
template <int NB>
inline void Columns(const Problem& p, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + kMaxRows <= p.M; m0 += kMaxRows) Tile<kMaxRows, NB>(p, m0, n0);
  switch (p.M - m0) {
    case 5: Tile<5, NB>(p, m0, n0); break;
    case 4: Tile<4, NB>(p, m0, n0); break;
    case 3: Tile<3, NB>(p, m0, n0); break;
    case 2: Tile<2, NB>(p, m0, n0); break;
    case 1: Tile<1, NB>(p, m0, n0); break;
    default: break;
  }
}

void Chunk(const Problem& p, int64_t begin, int64_t end) {
  int64_t n = begin;
  for (; n + 4 <= end; n += 4) Columns<4>(p, n);
  for (; n < end; ++n) Columns<1>(p, n);
}

ffi::Error Run(ffi::ThreadPool& pool, const Problem& p) {
  if (p.M == 0) return ffi::Error::Success();
  // ~128 KiB of weights per chunk: enough work to amortise a claim, fine enough to balance two or more threads.
  const int64_t chunk = std::max<int64_t>((32768 / std::max<int64_t>(p.K, 1)) & ~int64_t{3}, 4);
  tokjax::ParallelColumns(pool, p.N, chunk, [&p](int64_t begin, int64_t end) { Chunk(p, begin, end); });
  return ffi::Error::Success();
}

ffi::Error Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                  ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || wd[1] != xd[1])
    return ffi::Error::InvalidArgument("f32_matmul: expected x [M, K] and w [N, K]");
  return Run(pool, Problem{x.typed_data(), w.typed_data(), y->typed_data(), xd[0], xd[1], wd[0]});
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TokjaxF32Matmul, Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
