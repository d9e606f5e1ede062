// The thread pool helpers of bert_jax's CPU kernels (onednn_matmul.cc, adamw.cc): work split
// over XLA's own intra-op pool (the FFI ThreadPool context) and the calling thread.
#ifndef BERT_JAX_KERNELS_POOL_H_
#define BERT_JAX_KERNELS_POOL_H_

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace bert_jax_kernels {

namespace ffi = xla::ffi;

// Runs body(i) for every i in [0, count) on `threads` threads: the calling one and helpers
// scheduled on XLA's pool, each taking the next index until none is left, with OpenMP (so
// oneDNN) limited to one thread meanwhile. A helper the busy pool starts late finds no index and
// returns, so the caller never waits on the pool, only on pieces already running. False when a
// body returned false.
template <typename Body>
bool ParallelFor(ffi::ThreadPool& pool, int64_t threads, int64_t count, Body body) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::atomic<bool> failed{false};
  };
  auto state = std::make_shared<State>();
  // `body` may refer to the caller's frame: it only runs for claimed indices, all of which
  // finish before the caller returns.
  auto work = [state, count, body]() {
    int64_t i = state->next.fetch_add(1);
    if (i >= count) return;
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    for (; i < count; i = state->next.fetch_add(1)) {
      if (!body(i)) state->failed = true;
      state->done.fetch_add(1);
    }
    omp_set_num_threads(saved);
  };
  for (int64_t t = 1; t < std::min(threads, count); ++t) pool.Schedule([work]() { work(); });
  work();
  while (state->done.load() < count) _mm_pause();
  return !state->failed.load();
}

// ParallelFor that does not wait: the calling thread takes indices until none is left and
// returns a future that the last piece to finish completes (maybe a pool thread's, later). So
// the caller goes back to XLA's executor, free to run other ready ops, instead of spinning
// while a helper the busy pool started late finishes its piece. `body` is kept by value: it
// may outlive the call, so it must not refer to the caller's frame.
template <typename Body>
ffi::Future ParallelForAsync(ffi::ThreadPool& pool, int64_t threads, int64_t count, Body body) {
  struct State {
    State(int64_t count, Body body) : promise(count), body(std::move(body)) {}
    std::atomic<int64_t> next{0};
    ffi::CountDownPromise promise;
    Body body;
  };
  auto state = std::make_shared<State>(count, std::move(body));
  ffi::Future future(state->promise);
  auto work = [state, count]() {
    int64_t i = state->next.fetch_add(1);
    if (i >= count) return;
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    for (; i < count; i = state->next.fetch_add(1)) {
      ffi::Error error = state->body(i);
      state->promise.CountDown(error);
    }
    omp_set_num_threads(saved);
  };
  for (int64_t t = 1; t < std::min(threads, count); ++t) pool.Schedule([work]() { work(); });
  work();
  return future;
}

// XLA's intra-op threads (at least one).
inline int64_t PoolThreads(const ffi::ThreadPool& pool) {
  return std::max<int64_t>(1, pool.num_threads());
}

// A future already completed with `error` (or success).
inline ffi::Future Completed(ffi::Error error) {
  ffi::Promise promise;
  ffi::Future future(promise);
  if (error.failure()) {
    promise.SetError(std::move(error));
  } else {
    promise.SetAvailable();
  }
  return future;
}

}  // namespace bert_jax_kernels

#endif  // BERT_JAX_KERNELS_POOL_H_
