// The sum of an AVX2 vector's 8 floats: the last step of the matmul kernels' AVX2 tiles.
#pragma once

#if defined(__AVX2__)
#include <immintrin.h>

namespace tokjax {

inline float Sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace tokjax
#endif
