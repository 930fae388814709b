// Weight-only int8 matmul for XLA on CPU: y[m, n] = sum_k x[m, k] q[n, k] scale[n, k / bs], with
// scale [N, nb] (bs = K / nb: per-block scales as GGUF's Q8_0 with bs = 32, per-channel with nb = 1).
//
// Why a custom call: XLA's CPU backend does not fuse an int8 -> f32 convert into a dot; it
// materialises the converted matrix, so int8 weights decode ~6x *slower* than f32 (measured in
// benchmarks/int8_matvec.py). Decode is bound by streaming weights, so this kernel reads each int8
// weight row once, widens it in registers and multiplies it into every activation row at once.
// The output columns run in parallel chunks on XLA's intra-op pool (column_pool.h).
#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"
#include "avx2_sum.h"
#include "column_pool.h"

namespace ffi = xla::ffi;

// Register-blocked for AVX-512 (tiles of up to 4 rows x 4 weight rows) and AVX2 + FMA (up to 3 x 4); elsewhere
// the plain loops below are slower than XLA, so tokjax uses this kernel only where it returns 1 (model/_ffi.py).
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
  const int8_t* q;
  const float* scale;
  float* y;
  int64_t M, K, N;
  int64_t nb, bs;  // scale blocks per row and their length (bs = K / nb; a multiple of 16 unless nb == 1)
};

#if defined(__AVX512F__)
constexpr int kMaxRows = 4;
template <int MT, int NB>
inline void Tile(const Problem& p, int64_t m0, int64_t n0) {
  __m512 acc[MT][NB];
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t vec_end = p.K & ~int64_t{15};
  for (int64_t b = 0; b < p.nb; ++b) {
    __m512 sv[NB];
    for (int j = 0; j < NB; ++j) sv[j] = _mm512_set1_ps(p.scale[(n0 + j) * p.nb + b]);
    const int64_t end = std::min(vec_end, (b + 1) * p.bs);
    for (int64_t k = b * p.bs; k < end; k += 16) {
      __m512 w[NB];
      for (int j = 0; j < NB; ++j) {
        // The next weight rows of this chunk: decode is bandwidth bound, keep loads in flight.
        _mm_prefetch(reinterpret_cast<const char*>(p.q + (n0 + NB + j) * p.K + k), _MM_HINT_T0);
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p.q + (n0 + j) * p.K + k));
        w[j] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw)), sv[j]);
      }
      for (int i = 0; i < MT; ++i) {
        const __m512 xv = _mm512_loadu_ps(p.x + (m0 + i) * p.K + k);
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(xv, w[j], acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MT; ++i) {
    for (int j = 0; j < NB; ++j) {
      float r = _mm512_reduce_add_ps(acc[i][j]);
      const float* xr = p.x + (m0 + i) * p.K;
      const int8_t* qr = p.q + (n0 + j) * p.K;
      for (int64_t kk = vec_end; kk < p.K; ++kk)
        r += xr[kk] * static_cast<float>(qr[kk]) * p.scale[(n0 + j) * p.nb + kk / p.bs];
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
  for (int64_t b = 0; b < p.nb; ++b) {
    __m256 sv[NB];
    for (int j = 0; j < NB; ++j) sv[j] = _mm256_set1_ps(p.scale[(n0 + j) * p.nb + b]);
    const int64_t end = std::min(vec_end, (b + 1) * p.bs);
    for (int64_t k = b * p.bs; k < end; k += 8) {
      __m256 w[NB];
      for (int j = 0; j < NB; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(p.q + (n0 + NB + j) * p.K + k), _MM_HINT_T0);
        const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p.q + (n0 + j) * p.K + k));
        w[j] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw)), sv[j]);
      }
      for (int i = 0; i < MT; ++i) {
        const __m256 xv = _mm256_loadu_ps(p.x + (m0 + i) * p.K + k);
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_fmadd_ps(xv, w[j], acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MT; ++i) {
    for (int j = 0; j < NB; ++j) {
      float r = tokjax::Sum8(acc[i][j]);
      const float* xr = p.x + (m0 + i) * p.K;
      const int8_t* qr = p.q + (n0 + j) * p.K;
      for (int64_t kk = vec_end; kk < p.K; ++kk)
        r += xr[kk] * static_cast<float>(qr[kk]) * p.scale[(n0 + j) * p.nb + kk / p.bs];
      p.y[(m0 + i) * p.N + n0 + j] = r;
    }
  }
}
#else
constexpr int kMaxRows = 4;
template <int MT, int NB>
inline void Tile(const Problem& p, int64_t m0, int64_t n0) {
  for (int i = 0; i < MT; ++i) {
    const float* xr = p.x + (m0 + i) * p.K;
    for (int j = 0; j < NB; ++j) {
      const int8_t* qr = p.q + (n0 + j) * p.K;
      float r = 0.f;
      for (int64_t k = 0; k < p.K; ++k) r += xr[k] * static_cast<float>(qr[k]) * p.scale[(n0 + j) * p.nb + k / p.bs];
      p.y[(m0 + i) * p.N + n0 + j] = r;
    }
  }
}
#endif

// Up to kMaxRows activation rows share each widened weight register; 4 weight rows per step keep (AVX-512)
// 16 accumulators plus 4 weights in the 32 vector registers (AVX2: 12 + 4 of 16, the scales from L1).
template <int NB>
inline void Columns(const Problem& p, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + kMaxRows <= p.M; m0 += kMaxRows) Tile<kMaxRows, NB>(p, m0, n0);
  switch (p.M - m0) {
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

ffi::Error Int8MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> q,
                          ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto qd = q.dimensions();
  const auto sd = scale.dimensions();
  if (xd.size() != 2 || qd.size() != 2 || sd.size() != 2)
    return ffi::Error::InvalidArgument("int8_matmul: expected x [M, K], q [N, K], scale [N, nb]");
  const int64_t M = xd[0], K = xd[1], N = qd[0], nb = sd[1];
  if (qd[1] != K || sd[0] != N || nb < 1 || K % nb != 0 || (nb > 1 && (K / nb) % 16 != 0))
    return ffi::Error::InvalidArgument("int8_matmul: x [M, K], q [N, K] and scale [N, nb] disagree (K / nb must be "
                                       "a multiple of 16 when nb > 1)");
  const Problem p{x.typed_data(), q.typed_data(), scale.typed_data(), y->typed_data(), M, K, N, nb, K / nb};
  // ~64 KiB of int8 weights per chunk: enough work to amortise a claim, fine enough to balance.
  const int64_t chunk = (65536 / (K > 0 ? K : 1)) & ~int64_t{3};
  tokjax::ParallelColumns(pool, N, chunk < 4 ? 4 : chunk, [&p](int64_t begin, int64_t end) { Chunk(p, begin, end); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TokjaxInt8Matmul, Int8MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
