// The thread pool helpers of bert_jax's CPU kernels (onednn_matmul.cc, adamw.cc, attention.cc):
// work split over XLA's own intra-op pool (the FFI ThreadPool context) and the calling thread.
//
// Small calls (at most kSpinRows output rows: a batch-1 encode of a short text) give their
// helper piece to one thread of our own instead, which spins (yielding its core to any other
// runnable thread) for SpinMicros() after each piece, and the caller waits for that piece.
// XLA's pool threads park between the calls of a batch-1 encode and are woken for each piece
// (both busy only 0.81-0.89 of the time, the machine 6-10% idle); ONNX Runtime's pool spins
// instead (its batch-1 MiniLM 1.12-1.34x slower with allow_spinning off). With the spinner and
// the waiting caller, XLA runs a batch-1 encode inline on one thread: real batch-1 embed() calls
// 1.09x faster over 40 paired rounds (benchmarks/RESULTS.md run AB). Larger calls keep XLA's
// pool and do not wait (ParallelForAsync): there the caller's return to XLA's executor is worth
// more, and a spinner competing with XLA's parallel fusions cost 14-16% at batch 32 and 7% at
// batch 1 x 128 tokens.
#ifndef BERT_JAX_KERNELS_POOL_H_
#define BERT_JAX_KERNELS_POOL_H_

#include <immintrin.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace bert_jax_kernels {

namespace ffi = xla::ffi;

// Calls of at most this many output rows use the Spinner (above).
constexpr int64_t kSpinRows = 64;

// How long the Spinner spins after a piece before it sleeps; BertJaxSetSpinMicros changes it
// (0: no Spinner; small calls are split like larger ones).
inline std::atomic<int>& SpinMicros() {
  static std::atomic<int> micros{200};
  return micros;
}

// One helper thread that runs one piece at a time and spins between pieces (the file comment).
class Spinner {
 public:
  static Spinner& Get() {
    static Spinner* spinner = new Spinner();  // never destroyed: its thread outlives main
    return *spinner;
  }

  // Hands `piece` to the spinner thread; false (run it elsewhere) if it is busy or is the
  // calling thread.
  bool TrySchedule(std::function<void()> piece) {
    if (std::this_thread::get_id() == id_) return false;
    int idle = kIdle;
    if (!state_.compare_exchange_strong(idle, kFilling)) return false;
    piece_ = std::move(piece);
    state_.store(kReady);
    if (sleeping_.load()) {
      std::lock_guard<std::mutex> lock(mu_);
      wake_.notify_one();
    }
    return true;
  }

 private:
  enum : int { kIdle, kFilling, kReady, kRunning };

  Spinner() : thread_([this] { Loop(); }) {
    id_ = thread_.get_id();
    thread_.detach();
  }

  void Loop() {
    pthread_setname_np(pthread_self(), "bert_jax_spin");
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      const auto budget = std::chrono::microseconds(SpinMicros().load());
      for (int64_t spins = 1; state_.load(std::memory_order_acquire) != kReady; ++spins) {
        sched_yield();
        if (spins % 16 == 0 && std::chrono::steady_clock::now() - start > budget) {
          std::unique_lock<std::mutex> lock(mu_);
          sleeping_.store(true);
          wake_.wait(lock, [this] { return state_.load() == kReady; });
          sleeping_.store(false);
        }
      }
      std::function<void()> piece = std::move(piece_);
      piece_ = nullptr;
      state_.store(kRunning);
      piece();
      state_.store(kIdle);
    }
  }

  std::atomic<int> state_{kIdle};
  std::atomic<bool> sleeping_{false};
  std::function<void()> piece_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::thread::id id_;
  std::thread thread_;
};

// Whether a call of `rows` output rows is small: its first helper piece goes to the Spinner.
inline bool Small(int64_t rows) { return rows <= kSpinRows && SpinMicros().load() > 0; }

// Starts `work` on helper thread number t (1, 2, ...): the first one of a small call on the
// Spinner when it is free, every other on XLA's pool.
template <typename Work>
void StartHelper(ffi::ThreadPool& pool, int64_t t, bool small, Work work) {
  if (t == 1 && small && Spinner::Get().TrySchedule(work)) return;
  pool.Schedule(std::move(work));
}

// Runs body(i) for every i in [0, count) on `threads` threads: the calling one and helpers
// scheduled on XLA's pool, each taking the next index until none is left, with OpenMP (so
// oneDNN) limited to one thread meanwhile. A helper the busy pool starts late finds no index and
// returns, so the caller never waits on the pool, only on pieces already running. False when a
// body returned false.
template <typename Body>
bool ParallelFor(ffi::ThreadPool& pool, int64_t threads, int64_t count, Body body,
                 int64_t rows = std::numeric_limits<int64_t>::max()) {
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
  for (int64_t t = 1; t < std::min(threads, count); ++t) {
    StartHelper(pool, t, Small(rows), [work]() { work(); });
  }
  work();
  while (state->done.load() < count) _mm_pause();
  return !state->failed.load();
}

// ParallelFor that does not wait: the calling thread takes indices until none is left and
// returns a future that the last piece to finish completes (maybe a pool thread's, later). So
// the caller goes back to XLA's executor, free to run other ready ops, instead of spinning
// while a helper the busy pool started late finishes its piece. `body` is kept by value: it
// may outlive the call, so it must not refer to the caller's frame. A small call (at most
// kSpinRows output `rows`) waits after all, for the Spinner, and returns a completed future.
template <typename Body>
ffi::Future ParallelForAsync(ffi::ThreadPool& pool, int64_t threads, int64_t count, Body body,
                             int64_t rows = std::numeric_limits<int64_t>::max()) {
  struct State {
    State(int64_t count, Body body) : promise(count), body(std::move(body)) {}
    std::atomic<int64_t> next{0}, done{0};
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
      state->done.fetch_add(1);
    }
    omp_set_num_threads(saved);
  };
  const bool small = Small(rows);
  for (int64_t t = 1; t < std::min(threads, count); ++t) {
    StartHelper(pool, t, small, [work]() { work(); });
  }
  work();
  if (small) {
    while (state->done.load() < count) _mm_pause();
  }
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
