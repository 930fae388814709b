// Splits the output columns [0, N) of a kernel into chunks claimed from an atomic counter by the
// calling thread and by helpers scheduled on XLA's intra-op pool. The caller works too, so it never
// waits on a pool that has no free thread; it returns when every chunk is done.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace tokjax {

struct ColumnChunks {
  std::function<void(int64_t, int64_t)> run;  // run(begin, end) computes columns [begin, end)
  int64_t n, chunk, chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Work() {
    for (;;) {
      const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return;
      const int64_t begin = c * chunk;
      run(begin, std::min(begin + chunk, n));
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

inline void ParallelColumns(xla::ffi::ThreadPool& pool, int64_t n, int64_t chunk,
                            std::function<void(int64_t, int64_t)> run) {
  if (n <= 0) return;
  auto s = std::make_shared<ColumnChunks>();
  s->run = std::move(run);
  s->n = n;
  s->chunk = std::max<int64_t>(chunk, 1);
  s->chunks = (n + s->chunk - 1) / s->chunk;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), s->chunks - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([s] { s->Work(); });
  s->Work();
  while (s->done.load(std::memory_order_acquire) < s->chunks) std::this_thread::yield();
}

}  // namespace tokjax
