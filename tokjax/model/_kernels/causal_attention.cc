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

// The register blocking below is sized for AVX-512 and AVX2 (measured on both). When the AVX-512 blocking
// (16-float vectors, 6 rows) was built for an AVX2 EPYC, GCC split and spilled the vectors and the kernel ran
// 3-8x slower than XLA's query blocks; on CPUs with neither (e.g. NEON, unmeasured) tokjax keeps XLA's path, as it
// does wherever this returns 0 (model/_ffi.py).
extern "C" int TokjaxTunedBuild() {
#if defined(__AVX512F__) || defined(__AVX2__)
  return 1;
#else
  return 0;
#endif
}

namespace {

// AVX-512: vectors of 16 floats and tiles of 6 query rows (6 x 4 score accumulators of the 32 registers).
// Elsewhere vectors of 8 floats (AVX2's width) and 3 rows: 12 accumulators and 4 keys fill AVX2's 16.
#if defined(__AVX512F__)
#define TOKJAX_VEC_BYTES 64
constexpr int kRows = 6;
#else
#define TOKJAX_VEC_BYTES 32
constexpr int kRows = 3;
#endif
typedef float vf __attribute__((vector_size(TOKJAX_VEC_BYTES)));
typedef int32_t vi __attribute__((vector_size(TOKJAX_VEC_BYTES)));
constexpr int kLanes = TOKJAX_VEC_BYTES / 4;
constexpr int kKeyBlock = 4 * kLanes;  // keys per score block: 4 vectors (divides the caller's padding to 64)

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

// Products of rows q[0..MR) with keys [0, np) (np a multiple of 64; kt transposed [D, Tp]), times scale, into
// s[r * Tp + j]: the scores in the forward, and also do . v (scale 1) in the backward.
template <int MR>
inline void Scores(const Problem& p, const float* const* q, const float* kt, int64_t np, float* s,
                   float scale) {
  for (int64_t j = 0; j < np; j += kKeyBlock) {
    vf acc[MR][4];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c] = vf{};
    for (int64_t d = 0; d < p.D; ++d) {
      const float* kr = kt + d * p.Tp + j;
      const vf k0 = Load(kr), k1 = Load(kr + kLanes), k2 = Load(kr + 2 * kLanes), k3 = Load(kr + 3 * kLanes);
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

// Values over every column of D, 64 at a time, then the 16-48 left.
template <int MR>
inline void ValuesAll(const Problem& p, const float* s, const float* v, int64_t n, const float* inv,
                      float* const* o) {
  int64_t c0 = 0;
  for (; c0 + 4 * kLanes <= p.D; c0 += 4 * kLanes) Values<MR, 4>(p, s, v, n, c0, inv, o);
  switch ((p.D - c0) / kLanes) {
    case 3: Values<MR, 3>(p, s, v, n, c0, inv, o); break;
    case 2: Values<MR, 2>(p, s, v, n, c0, inv, o); break;
    case 1: Values<MR, 1>(p, s, v, n, c0, inv, o); break;
    default: break;
  }
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
  Scores<MR>(p, q, p.kt + (b * p.KV + g) * p.D * p.Tp, np, s, 1.f / std::sqrt(static_cast<float>(p.D)));
  float inv[MR];
  for (int r = 0; r < MR; ++r) inv[r] = Softmax(s + r * p.Tp, t0 + r, np);
  ValuesAll<MR>(p, s, p.v + (b * p.T * p.KV + g) * p.D, n, inv, o);
}


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


// ------------------------------------------------------------------------------------------ backward
// Given do = dL/do, with p[t, s] the softmax weights above (recomputed here, never stored) and c = 1 / sqrt(D):
//   dp[t, s] = do[t] . v[s],   ds[t, s] = p[t, s] (dp[t, s] - sum_s' p[t, s'] dp[t, s']),
//   dq[t] = c sum_{s <= t} ds[t, s] k[s],   dk[s] = c sum_{t >= s} ds[t, s] q[t],   dv[s] = sum_{t >= s} p[t, s] do[t]
// per tile of MR query rows of one head: five products of the tile with the keys it sees, where XLA's
// differentiated query blocks store the [T, T] weights per layer and run at ~60 GFLOP/s. One work item owns the
// rows [r0, r1) of every query head of one key head of one batch row, so it alone writes those dq rows and its own
// partial dk, dv [T, D] (chunk c of the [C, B, T, KV, D] outputs; the caller sums the C chunks).

struct Grads {
  Problem p;         // q, kt (keys [B, KV, D, Tp]), v unused, o unused, sizes
  const float* k;    // [B, T, KV, D]
  const float* vt;   // [B, KV, D, Tp]: values transposed, zero-padded
  const float* dout; // [B, T, H, D]
  float* dq;         // [B, T, H, D]
  float* dk;         // [C, B, T, KV, D]
  float* dv;         // [C, B, T, KV, D]
  int64_t C;
};

// acc[j, c0 .. c0 + 16 DV) += sum_r w[r * Tp + j] x[r][c0 ..] for keys j < n (rows of acc `stride` apart).
template <int MR, int DV>
inline void Accumulate(const float* w, int64_t Tp, const float* const* x, int64_t n, int64_t c0, float* acc,
                       int64_t stride) {
  vf xr[MR][DV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < DV; ++c) xr[r][c] = Load(x[r] + c0 + c * kLanes);
  for (int64_t j = 0; j < n; ++j) {
    float* a = acc + j * stride + c0;
    vf av[DV];
    for (int c = 0; c < DV; ++c) av[c] = Load(a + c * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const vf wv = Splat(w[r * Tp + j]);
      for (int c = 0; c < DV; ++c) av[c] += wv * xr[r][c];
    }
    for (int c = 0; c < DV; ++c) Store(a + c * kLanes, av[c]);
  }
}

template <int MR>
inline void AccumulateAll(const float* w, int64_t Tp, const float* const* x, int64_t n, int64_t D, float* acc,
                          int64_t stride) {
  int64_t c0 = 0;
  for (; c0 + 4 * kLanes <= D; c0 += 4 * kLanes) Accumulate<MR, 4>(w, Tp, x, n, c0, acc, stride);
  switch ((D - c0) / kLanes) {
    case 3: Accumulate<MR, 3>(w, Tp, x, n, c0, acc, stride); break;
    case 2: Accumulate<MR, 2>(w, Tp, x, n, c0, acc, stride); break;
    case 1: Accumulate<MR, 1>(w, Tp, x, n, c0, acc, stride); break;
    default: break;
  }
}

template <int MR>
void GradTile(const Grads& gr, int64_t b, int64_t h, int64_t t0, float* s, float* ds, float* dk, float* dv) {
  const Problem& p = gr.p;
  const int64_t g = h / (p.H / p.KV);
  const int64_t n = t0 + MR;
  const int64_t np = (n + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
  const float c = 1.f / std::sqrt(static_cast<float>(p.D));
  const float* q[MR];
  const float* d[MR];
  float* dq[MR];
  for (int r = 0; r < MR; ++r) {
    const int64_t row = ((b * p.T + t0 + r) * p.H + h) * p.D;
    q[r] = p.q + row;
    d[r] = gr.dout + row;
    dq[r] = gr.dq + row;
  }
  Scores<MR>(p, q, p.kt + (b * p.KV + g) * p.D * p.Tp, np, s, c);
  Scores<MR>(p, d, gr.vt + (b * p.KV + g) * p.D * p.Tp, np, ds, 1.f);
  float ones[MR];
  for (int r = 0; r < MR; ++r) {
    float* pr = s + r * p.Tp;
    float* dr = ds + r * p.Tp;
    const vf inv = Splat(Softmax(pr, t0 + r, np));
    vf dot = vf{};
    for (int64_t j = 0; j < np; j += kLanes) {
      const vf w = Load(pr + j) * inv;
      Store(pr + j, w);
      dot += w * Load(dr + j);
    }
    const vf delta = Splat(HorizontalSum(dot));
    for (int64_t j = 0; j < np; j += kLanes) Store(dr + j, Load(pr + j) * (Load(dr + j) - delta) * c);
    ones[r] = 1.f;
  }
  ValuesAll<MR>(p, ds, gr.k + (b * p.T * p.KV + g) * p.D, n, ones, dq);
  AccumulateAll<MR>(s, p.Tp, d, n, p.D, dv, p.KV * p.D);
  AccumulateAll<MR>(ds, p.Tp, q, n, p.D, dk, p.KV * p.D);
}

// First query row of chunk c of C: the chunks' work (rows x keys seen) is about equal.
inline int64_t ChunkStart(int64_t c, int64_t C, int64_t T) {
  if (c >= C) return T;
  return std::min<int64_t>(T, static_cast<int64_t>(std::lround(T * std::sqrt(static_cast<double>(c) / C))));
}

void GradItem(const Grads& gr, int64_t item, std::vector<float>& scratch) {
  const Problem& p = gr.p;
  const int64_t ch = item / (p.B * p.KV), b = (item / p.KV) % p.B, g = item % p.KV;
  const int64_t r0 = ChunkStart(ch, gr.C, p.T), r1 = ChunkStart(ch + 1, gr.C, p.T);
  const int64_t off = ((ch * p.B + b) * p.T * p.KV + g) * p.D;
  float* dk = gr.dk + off;
  float* dv = gr.dv + off;
  for (int64_t j = 0; j < p.T; ++j) {
    std::memset(dk + j * p.KV * p.D, 0, p.D * sizeof(float));
    std::memset(dv + j * p.KV * p.D, 0, p.D * sizeof(float));
  }
  if (scratch.size() < static_cast<size_t>(2 * kRows * p.Tp)) scratch.resize(2 * kRows * p.Tp);
  float* s = scratch.data();
  float* ds = s + kRows * p.Tp;
  const int64_t G = p.H / p.KV;
  for (int64_t h = g * G; h < (g + 1) * G; ++h) {
    for (int64_t t0 = r0; t0 < r1; t0 += kRows) {
      switch (std::min<int64_t>(kRows, r1 - t0)) {
        case 6: GradTile<6>(gr, b, h, t0, s, ds, dk, dv); break;
        case 5: GradTile<5>(gr, b, h, t0, s, ds, dk, dv); break;
        case 4: GradTile<4>(gr, b, h, t0, s, ds, dk, dv); break;
        case 3: GradTile<3>(gr, b, h, t0, s, ds, dk, dv); break;
        case 2: GradTile<2>(gr, b, h, t0, s, ds, dk, dv); break;
        case 1: GradTile<1>(gr, b, h, t0, s, ds, dk, dv); break;
        default: break;
      }
    }
  }
}

ffi::Error GradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> kt,
                    ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> vt, ffi::Buffer<ffi::F32> dout,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv) {
  const auto qd = q.dimensions(), ktd = kt.dimensions(), kd = k.dimensions(), vtd = vt.dimensions(),
             od = dout.dimensions(), dkd = dk->dimensions(), dvd = dv->dimensions();
  const char* shapes =
      "causal_attention_grad: expected q, dout [B, T, H, D], kt, vt [B, KV, D, Tp], k [B, T, KV, D] and dk, dv "
      "[C, B, T, KV, D] with H % KV == 0, D % 16 == 0, Tp >= T, Tp % 64 == 0 and C >= 1";
  if (qd.size() != 4 || ktd.size() != 4 || kd.size() != 4 || vtd.size() != 4 || od.size() != 4 ||
      dkd.size() != 5 || dvd.size() != 5)
    return ffi::Error::InvalidArgument(shapes);
  Grads gr{Problem{q.typed_data(), kt.typed_data(), nullptr, nullptr, qd[0], qd[1], ktd[3], qd[2], ktd[1], qd[3]},
           k.typed_data(), vt.typed_data(), dout.typed_data(), dq->typed_data(), dk->typed_data(),
           dv->typed_data(), dkd[0]};
  const Problem& p = gr.p;
  bool ok = ktd[0] == p.B && ktd[2] == p.D && p.Tp % kKeyBlock == 0 && p.Tp >= p.T && p.KV > 0 &&
            p.H % p.KV == 0 && p.D % kLanes == 0 && gr.C >= 1;
  for (int i = 0; i < 4; ++i) ok = ok && vtd[i] == ktd[i] && od[i] == qd[i];
  const int64_t kshape[4] = {p.B, p.T, p.KV, p.D};
  for (int i = 0; i < 4; ++i) ok = ok && kd[i] == kshape[i] && dkd[i + 1] == kshape[i] && dvd[i + 1] == kshape[i];
  ok = ok && dvd[0] == gr.C;
  if (!ok) return ffi::Error::InvalidArgument(shapes);
  tokjax::ParallelColumns(pool, gr.C * p.B * p.KV, 1, [&gr](int64_t begin, int64_t end) {
    thread_local std::vector<float> scratch;
    for (int64_t i = begin; i < end; ++i) GradItem(gr, i, scratch);
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(TokjaxCausalAttentionGrad, GradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
