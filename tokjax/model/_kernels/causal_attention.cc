// Causal self-attention for XLA on CPU (prefill and cache-free scoring), float32:
//   o[b, t, h] = sum_{s <= t} softmax_s(q[b, t, h] . k[b, s, h / G] / sqrt(D)) v[b, s, h / G]
//
// Why a custom call: XLA CPU runs the pure-JAX query-block attention at ~58 GFLOP/s, because
// the [rows, keys] scores go through memory between the score matmul, the softmax passes and the
// value matmul (timed alone, a 4096-token SmolLM2 prefill's attention took 10.9 s of 11.3 s).
// Here one tile of MR query rows of one head keeps its scores in a per-thread row buffer that
// stays in L1/L2: scores (MR x 64 keys per register block, keys transposed [D, Tp] so 16 keys sit
// in one vector), then an exact softmax per row (max, exp, sum), then the value product with the
// MR x 64 output block in registers. Keys past a row's position are never read into its sum.
// Written with GCC vector extensions, so -march=native picks AVX-512, AVX2 or NEON.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "column_pool.h"

namespace ffi = xla::ffi;

namespace {

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int kLanes = 16;
constexpr int kKeyBlock = 64;  // keys per score block: 4 vectors

inline vf Load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf Splat(float x) { return vf{} + x; }

// exp(x) for x <= 0 (scores minus their row maximum): Cody-Waite reduction x = n ln2 + r and a
// degree-6 polynomial for exp(r) (the Cephes expf coefficients), relative error ~1e-7. Below -87
// the result is clamped to ~1e-38 (it only ever multiplies a value that is then summed).
inline vf Exp(vf x) {
  x = x < Splat(-87.f) ? Splat(-87.f) : x;
  const vf n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest
  const vf r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  vf p = Splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vf y = p * (r * r) + r + 1.f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

inline float HorizontalMax(vf v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = std::max(m, v[i]);
  return m;
}
inline float HorizontalSum(vf v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

struct Problem {
  const float* q;   // [B, T, H, D]
  const float* kt;  // [B, KV, D, Tp]: keys transposed, zero-padded to Tp (a multiple of 64)
  const float* v;   // [B, T, KV, D]
  float* o;         // [B, T, H, D]
  int64_t B, T, Tp, H, KV, D;
};

// Scores of rows t0..t0+MR-1 against keys [0, np) (np a multiple of 64), scaled, into s[r * Tp + j].
template <int MR>
inline void Scores(const Problem& p, const float* const* q, const float* kt, int64_t np, float* s) {
  const float scale = 1.f / std::sqrt(static_cast<float>(p.D));
  for (int64_t j = 0; j < np; j += kKeyBlock) {
    vf acc[MR][4];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c] = vf{};
    for (int64_t d = 0; d < p.D; ++d) {
      const float* kr = kt + d * p.Tp + j;
      const vf k0 = Load(kr), k1 = Load(kr + 16), k2 = Load(kr + 32), k3 = Load(kr + 48);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const vf qv = Splat(q[r][d]);
        acc[r][0] += qv * k0;
        acc[r][1] += qv * k1;
        acc[r][2] += qv * k2;
        acc[r][3] += qv * k3;
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < 4; ++c) Store(s + r * p.Tp + j + c * kLanes, acc[r][c] * scale);
  }
}

// Row r of the tile (position t) becomes its softmax weights over keys [0, t], zero beyond, up to np;
// returns 1 / (sum of its unnormalised weights).
inline float Softmax(float* row, int64_t t, int64_t np) {
  const float neg = -std::numeric_limits<float>::infinity();
  for (int64_t j = t + 1; j < np; ++j) row[j] = neg;
  vf m = Splat(neg);
  for (int64_t j = 0; j < np; j += kLanes) {
    const vf x = Load(row + j);
    m = x > m ? x : m;
  }
  const vf mx = Splat(HorizontalMax(m));
  vf sum = vf{};
  for (int64_t j = 0; j < np; j += kLanes) {
    const vf e = Exp(Load(row + j) - mx);
    Store(row + j, e);
    sum += e;
  }
  float total = HorizontalSum(sum);
  for (int64_t j = t + 1; j < np; ++j) {  // the clamped exp of a masked key is ~1e-38, not 0
    total -= row[j];
    row[j] = 0.f;
  }
  return 1.f / total;
}

// o[rows] = weights [MR, n] x v[keys 0..n-1, columns c0..c0 + 16 DV) / row sums.
template <int MR, int DV>
inline void Values(const Problem& p, const float* s, const float* v, int64_t n, int64_t c0,
                   const float* inv, float* const* o) {
  vf acc[MR][DV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < DV; ++c) acc[r][c] = vf{};
  const int64_t stride = p.KV * p.D;
  for (int64_t j = 0; j < n; ++j) {
    const float* vr = v + j * stride + c0;
    vf vv[DV];
    for (int c = 0; c < DV; ++c) vv[c] = Load(vr + c * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const vf w = Splat(s[r * p.Tp + j]);
      for (int c = 0; c < DV; ++c) acc[r][c] += w * vv[c];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < DV; ++c) Store(o[r] + c0 + c * kLanes, acc[r][c] * inv[r]);
}

template <int MR>
void Tile(const Problem& p, int64_t b, int64_t h, int64_t t0, std::vector<float>& scratch) {
  const int64_t g = h / (p.H / p.KV);
  const int64_t n = t0 + MR;  // keys the tile's last row sees
  const int64_t np = (n + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
  if (scratch.size() < static_cast<size_t>(MR * p.Tp)) scratch.resize(MR * p.Tp);
  float* s = scratch.data();
  const float* q[MR];
  float* o[MR];
  for (int r = 0; r < MR; ++r) {
    q[r] = p.q + ((b * p.T + t0 + r) * p.H + h) * p.D;
    o[r] = p.o + ((b * p.T + t0 + r) * p.H + h) * p.D;
  }
  Scores<MR>(p, q, p.kt + (b * p.KV + g) * p.D * p.Tp, np, s);
  float inv[MR];
  for (int r = 0; r < MR; ++r) inv[r] = Softmax(s + r * p.Tp, t0 + r, np);
  const float* v = p.v + (b * p.T * p.KV + g) * p.D;
  int64_t c0 = 0;
  for (; c0 + 4 * kLanes <= p.D; c0 += 4 * kLanes) Values<MR, 4>(p, s, v, n, c0, inv, o);
  switch ((p.D - c0) / kLanes) {
    case 3: Values<MR, 3>(p, s, v, n, c0, inv, o); break;
    case 2: Values<MR, 2>(p, s, v, n, c0, inv, o); break;
    case 1: Values<MR, 1>(p, s, v, n, c0, inv, o); break;
    default: break;
  }
}

constexpr int kRows = 6;  // 6 rows x 4 vectors: 24 accumulators of the 32 vector registers

void Item(const Problem& p, int64_t tile, int64_t bh, std::vector<float>& scratch) {
  const int64_t b = bh / p.H, h = bh % p.H, t0 = tile * kRows;
  switch (std::min<int64_t>(kRows, p.T - t0)) {
    case 6: Tile<6>(p, b, h, t0, scratch); break;
    case 5: Tile<5>(p, b, h, t0, scratch); break;
    case 4: Tile<4>(p, b, h, t0, scratch); break;
    case 3: Tile<3>(p, b, h, t0, scratch); break;
    case 2: Tile<2>(p, b, h, t0, scratch); break;
    case 1: Tile<1>(p, b, h, t0, scratch); break;
    default: break;
  }
}

ffi::Error Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> kt,
                ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> o) {
  const auto qd = q.dimensions(), kd = kt.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return ffi::Error::InvalidArgument("causal_attention: expected 4-D q, kt, v");
  const Problem p{q.typed_data(), kt.typed_data(), v.typed_data(), o->typed_data(),
                  qd[0], qd[1], kd[3], qd[2], kd[1], qd[3]};
  if (kd[0] != p.B || kd[2] != p.D || p.Tp % kKeyBlock != 0 || p.Tp < p.T || vd[0] != p.B || vd[1] != p.T ||
      vd[2] != p.KV || vd[3] != p.D || p.KV == 0 || p.H % p.KV != 0 || p.D % kLanes != 0)
    return ffi::Error::InvalidArgument(
        "causal_attention: expected q [B, T, H, D], kt [B, KV, D, Tp], v [B, T, KV, D] with H % KV == 0, "
        "D % 16 == 0, Tp >= T and Tp % 64 == 0");
  const int64_t tiles = (p.T + kRows - 1) / kRows, heads = p.B * p.H;
  // Item i = (tile, head) with the last (most keys) tiles first, so the cheap ones balance the end.
  tokjax::ParallelColumns(pool, tiles * heads, 4, [&p, tiles, heads](int64_t begin, int64_t end) {
    thread_local std::vector<float> scratch;
    for (int64_t i = begin; i < end; ++i) Item(p, tiles - 1 - i / heads, i % heads, scratch);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TokjaxCausalAttention, Impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
