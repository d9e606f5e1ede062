// XLA FFI custom calls: a matmul through oneDNN, for bert_jax.onednn.
//
// C[..., M, N] = op(A) . op(B) over equal leading (batch) dims, op = transpose of the last two
// dims or not (an attribute each; a transposed operand is read through its strides, never
// copied). Operands f32 / bf16 (-> f32) or s8 / u8 x s8 (-> s32, the
// avx512_vnni / AMX int8 kernels XLA:CPU does not use). One oneDNN primitive per (shapes, types,
// transposes), created on first use and kept; creating one takes milliseconds, running one
// microseconds of overhead. oneDNN picks its kernel (brgemm on AVX-512) at primitive creation.
// Every execution brings its own scratchpad (user scratchpad mode): two threads running one
// primitive at once on the library's shared scratchpad gave wrong products.
//
// Packed int8 weights: oneDNN's brgemm kernels copy a plain [K, N] operand into their blocked
// layout on every call; `BertJaxOnednnPack` does that once and `BertJaxOnednnMatmulPacked` reads
// the result. The layout is the one oneDNN picks for u8 activations x s8 weights -> s32 at
// (K, N) (on avx512_core_vnni the same for every M from 16 to 4096; the product 3-40% faster
// than from plain weights, most at small M), followed by 128 x each column's sum: activations
// go in as u8 = s8 + 128, VNNI's own operand types, and the column offset takes the 128 back
// out exactly. (The s8 x s8 layout folds a compensation into the weights instead: slower, and
// a run of its columns is not a packed matrix, which the few-row split below needs.) It depends
// on the CPU's ISA: made and read in one process, never stored.
//
// Threads: the work is split over XLA's own intra-op thread pool (the FFI ThreadPool context)
// and the calling thread, each piece on a single-threaded primitive, not over an OpenMP team of
// oneDNN's. An OpenMP team beside XLA's pool fought it for the two cores: between two custom
// calls an XLA op of microseconds cost ~100 us, and BERT-base batch-1 int8 classification ran
// 51 ms instead of 38 (benchmarks/RESULTS.md run X). Batched products with at least one batch
// entry per thread split over the batch; smaller ones use oneDNN's own threads. The f32 / int8
// product handler is asynchronous (it returns an ffi::Future): the calling thread goes back to
// XLA's executor once no piece is left to start, rather than spinning while a helper the busy
// pool started late finishes its piece (~110 ms of a BERT-base training step, run Y). Calls of
// at most 64 output rows (batch-1 inference) are the exception: their helper is the spinning
// thread of pool.h, and the caller waits for it.
//
// Dynamically quantized product: `BertJaxOnednnQuantizedMatmul` takes the f32 activations, not
// their int8 values, and returns the rescaled f32 product plus bias: per row it quantizes
// (absmax / 127.5, round half to even, saturate) with the very f32 operations XLA runs for
// qwix.quantize (so the integers are XLA's), multiplies against the packed s8 weights, and
// rescales (row scale, then column scale and bias in one fused multiply-add: XLA:CPU's
// order and contraction).
// In XLA those steps are separate passes over [M, N] and [M, K], and XLA recomputes the GELU
// that feeds an FFN output's quantization in each of them. Here the rows go in blocks, one
// pool thread each (oneDNN single-threaded inside), so a block's int32 products are
// rescaled while they are still in cache: BERT-base int8 classification 1.13x over running
// the three steps over all rows one after another, 1.15x over XLA's passes. With few rows
// (up to 128 a thread: batch-1 BERT) the threads split the columns instead, each reading its
// share of the weights rather than all of them: batch-1 classification 39.6-41.6 -> 33.4-34.4
// ms with the u8 layout, whose batch-32 classification also ran 1.1x faster than the s8 one.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

using bert_jax_kernels::Completed;
using bert_jax_kernels::ParallelFor;
using bert_jax_kernels::ParallelForAsync;
using bert_jax_kernels::PoolThreads;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

bool ToDnnl(ffi::DataType type, memory::data_type* out) {
  switch (type) {
    case ffi::DataType::F32: *out = memory::data_type::f32; return true;
    case ffi::DataType::BF16: *out = memory::data_type::bf16; return true;
    case ffi::DataType::S8: *out = memory::data_type::s8; return true;
    case ffi::DataType::U8: *out = memory::data_type::u8; return true;
    case ffi::DataType::S32: *out = memory::data_type::s32; return true;
    default: return false;
  }
}

// (batch, m, k, n, a type, b type, c type, transpose a, transpose b, b packed, one thread,
// row stride of plain b and c: n, or the whole matrix's N for a run of its columns)
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int, int, int, bool, bool, bool, bool,
                       int64_t>;

// A primitive and the scratchpad one execution needs: every call brings its own (user
// scratchpad mode), so threads can run one primitive at once.
struct Cached {
  dnnl::matmul primitive;
  memory::desc scratchpad;
};

// The cached primitive for `key`; primitives are immutable and safe to execute concurrently.
Cached Primitive(const Key& key, const memory::desc& a, const memory::desc& b,
                 const memory::desc& c) {
  static std::mutex mu;
  static std::map<Key, Cached> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end()) {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::matmul::primitive_desc pd(Engine(), a, b, c, attr);
    it = cache.emplace(key, Cached{dnnl::matmul(pd), pd.scratchpad_desc()}).first;
  }
  return it->second;
}

// A primitive with its memory objects, bound to one thread: each call only points them at its
// buffers. Creating the four memory objects and a stream on every call cost ~2.5 us, about a
// tenth of a product piece at batch-1 shapes ([40, 384] x [384, 192]: 33 us on one thread);
// the batch-1 MiniLM encode at 16 / 40 / 128 tokens ran 1.09 / 1.01-1.02 / 1.05x faster
// without it (benchmarks/RESULTS.md run AA). The key fixes every descriptor (the cache above
// relies on that too), so only the data handles change. Re-pointing a memory object writes
// zeros into its padding, if its layout has any (packed int8 weights of a width that is not a
// whole number of blocks): such an operand gets a fresh memory object per call instead, as
// before, so its buffer, an input of the custom call, is only read.
struct Bound {
  Cached cached;
  memory a, b, c, scratchpad;
  bool b_padded;
};

bool Padded(const memory::desc& md) { return md.get_padded_dims() != md.get_dims(); }

// Runs the cached primitive for `key` on the three buffers; a oneDNN error becomes an FFI one.
ffi::Error Execute(const Key& key, const memory::desc& a_md, void* a, const memory::desc& b_md,
                   void* b, const memory::desc& c_md, void* c) {
  try {
    thread_local std::vector<uint8_t> scratch;
    thread_local dnnl::stream stream(Engine());
    thread_local std::map<Key, Bound> bound;
    auto it = bound.find(key);
    if (it == bound.end()) {
      Cached cached = Primitive(key, a_md, b_md, c_md);
      it = bound.emplace(key, Bound{cached, memory(a_md, Engine(), a), memory(b_md, Engine(), b),
                                    memory(c_md, Engine(), c),
                                    memory(cached.scratchpad, Engine(), nullptr),
                                    Padded(b_md)}).first;
    }
    Bound& p = it->second;
    scratch.resize(p.cached.scratchpad.get_size());
    p.a.set_data_handle(a);
    if (!p.b_padded) p.b.set_data_handle(b);
    p.c.set_data_handle(c);
    p.scratchpad.set_data_handle(scratch.data());
    const memory b_mem = p.b_padded ? memory(b_md, Engine(), b) : p.b;
    p.cached.primitive.execute(stream, {{DNNL_ARG_SRC, p.a}, {DNNL_ARG_WEIGHTS, b_mem},
                                        {DNNL_ARG_DST, p.c}, {DNNL_ARG_SCRATCHPAD, p.scratchpad}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Future Matmul(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> c,
                   bool transpose_a, bool transpose_b, ffi::ThreadPool pool) {
  auto a_dims = a.dimensions(), b_dims = b.dimensions(), c_dims = c->dimensions();
  const size_t rank = a_dims.size();
  if (rank < 2 || b_dims.size() != rank || c_dims.size() != rank) {
    return Completed(ffi::Error::InvalidArgument(
        "bert_jax onednn matmul takes operands of one rank >= 2"));
  }
  int64_t batch = 1;  // Leading dims, equal in a, b and c, folded into one.
  for (size_t i = 0; i + 2 < rank; ++i) {
    if (a_dims[i] != b_dims[i] || a_dims[i] != c_dims[i]) {
      return Completed(ffi::Error::InvalidArgument("bert_jax onednn matmul: batch dims differ"));
    }
    batch *= a_dims[i];
  }
  const int64_t a0 = a_dims[rank - 2], a1 = a_dims[rank - 1];
  const int64_t b0 = b_dims[rank - 2], b1 = b_dims[rank - 1];
  const int64_t m = transpose_a ? a1 : a0, k = transpose_a ? a0 : a1;
  const int64_t k_b = transpose_b ? b1 : b0, n = transpose_b ? b0 : b1;
  if (k != k_b || c_dims[rank - 2] != m || c_dims[rank - 1] != n) {
    return Completed(
        ffi::Error::InvalidArgument("bert_jax onednn matmul: operand shapes do not agree"));
  }
  memory::data_type a_type, b_type, c_type;
  if (!ToDnnl(a.element_type(), &a_type) || !ToDnnl(b.element_type(), &b_type) ||
      !ToDnnl(c->element_type(), &c_type)) {
    return Completed(ffi::Error::InvalidArgument(
        "bert_jax onednn matmul takes f32/bf16 -> f32 or s8/u8 x s8 -> s32"));
  }
  // Row-major [entries, rows, cols]; a transposed operand is its stored [cols, rows] read
  // column-wise. `entries` of the batch from `first` on, columns [c0, c0 + cols) of b and c
  // (read and written in place through the strides), on one thread or oneDNN's. Everything by
  // value: pieces may run after the handler returned (the buffers live until the future is).
  char* const a_data = static_cast<char*>(a.untyped_data());
  char* const b_data = static_cast<char*>(b.untyped_data());
  char* const c_data = static_cast<char*>(c->untyped_data());
  const size_t a_bytes = ffi::ByteWidth(a.element_type());
  const size_t b_bytes = ffi::ByteWidth(b.element_type());
  const size_t c_bytes = ffi::ByteWidth(c->element_type());
  auto product = [=](int64_t first, int64_t entries, int64_t c0, int64_t cols, bool one_thread) {
    const memory::desc a_md({entries, m, k}, a_type,
                            transpose_a ? memory::dims{m * k, 1, m} : memory::dims{m * k, k, 1});
    const memory::desc b_md({entries, k, cols}, b_type,
                            transpose_b ? memory::dims{k * n, 1, k} : memory::dims{k * n, n, 1});
    const memory::desc c_md({entries, m, cols}, c_type, memory::dims{m * n, n, 1});
    const Key key{entries, m, k, cols, static_cast<int>(a_type), static_cast<int>(b_type),
                  static_cast<int>(c_type), transpose_a, transpose_b, false, one_thread, n};
    return Execute(key, a_md, a_data + first * m * k * a_bytes, b_md,
                   b_data + (first * k * n + (transpose_b ? c0 * k : c0)) * b_bytes, c_md,
                   c_data + (first * m * n + c0) * c_bytes);
  };
  const int64_t threads = PoolThreads(pool);
  // Column runs of whole 64-column blocks, one per thread, where the batch is too small to split.
  constexpr int64_t kColumns = 64;
  const int64_t column_blocks = n / kColumns;
  if (threads > 1 && batch >= threads) {
    // One contiguous slice of the batch per thread.
    return ParallelForAsync(pool, threads, threads, [=](int64_t part) {
      const int64_t first = batch * part / threads, last = batch * (part + 1) / threads;
      return product(first, last - first, 0, n, true);
    }, batch * m);
  }
  if (threads > 1 && column_blocks >= threads) {
    return ParallelForAsync(pool, threads, threads, [=](int64_t part) {
      const int64_t b0 = column_blocks * part / threads, b1 = column_blocks * (part + 1) / threads;
      const int64_t c0 = b0 * kColumns, c1 = part + 1 == threads ? n : b1 * kColumns;
      return product(0, batch, c0, c1 - c0, true);
    }, batch * m);
  }
  // Not split (one pool thread): a plain f32 operand wider than kWidest columns goes in column
  // runs of kWidest. Whole, oneDNN gives the product to its brgemm kernel, which with a plain
  // 3072-column operand (rows 12 KiB apart) ran at half speed on a Xeon: BERT-base's FFN-in
  // forward and weight gradient [1024, 768] x [768, 3072] 63-77 GFLOP/s on one thread, every
  // other BERT shape 104-150; as runs (a strided output, its gemm kernel) 124-148 (RESULTS.md
  // run Z). Two or more threads never take this path: the split above already cuts runs.
  constexpr int64_t kWidest = 1536;
  if (n > kWidest && !transpose_b && b_type == memory::data_type::f32) {
    for (int64_t c0 = 0; c0 < n; c0 += kWidest) {
      ffi::Error error = product(0, batch, c0, std::min(kWidest, n - c0), false);
      if (error.failure()) return Completed(std::move(error));
    }
    return Completed(ffi::Error::Success());
  }
  return Completed(product(0, batch, 0, n, false));
}

// The oneDNN layout of s8 [K, N] weights against u8 activations (the layout the primitive picks
// with format `any`, asked at a reference M; identical across M where measured, and the
// primitive at any M is created with exactly this descriptor, so it is correct regardless).
memory::desc WeightsDesc(int64_t k, int64_t n) {
  constexpr int64_t kReferenceM = 128;
  const memory::desc a({kReferenceM, k}, memory::data_type::u8, memory::format_tag::ab);
  const memory::desc b({k, n}, memory::data_type::s8, memory::format_tag::any);
  const memory::desc c({kReferenceM, n}, memory::data_type::s32, memory::format_tag::ab);
  return dnnl::matmul::primitive_desc(Engine(), a, b, c).weights_desc();
}

// Packed s8 [K, N] weights: oneDNN's blocked layout for u8 activations, then at `offsets_at`
// N int32 column offsets, 128 x each column's sum. The activations go in as u8 = s8 + 128 (the
// VNNI instruction's own operand types), so sum (a + 128) w - offset = sum a w exactly; unlike
// the s8 x s8 layout, this one holds no compensation, so where its outermost dimension is the
// column block, every run of whole column blocks is itself a packed [K, run] matrix.
struct Packed {
  memory::desc weights;
  size_t offsets_at = 0;     // bytes of the blocked weights, rounded up to 64
  int64_t column_block = 0;  // columns of a block when runs of blocks are matrices, else 0
  size_t block_bytes = 0;    // bytes of one column block
  size_t bytes() const { return offsets_at + weights.get_dims()[1] * sizeof(int32_t); }
};

// The layout for (k, n), made once.
const Packed& PackedLayout(int64_t k, int64_t n) {
  static std::mutex mu;
  static std::map<std::pair<int64_t, int64_t>, Packed> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find({k, n});
  if (it != cache.end()) return it->second;
  Packed p;
  p.weights = WeightsDesc(k, n);
  p.offsets_at = (p.weights.get_size() + 63) / 64 * 64;
  if (p.weights.get_format_kind() == memory::format_kind::blocked) {
    // Column blocks are outermost when a block's stride times the blocks is the whole size, and
    // a one-block matrix has exactly the same strides and inner blocks.
    int64_t block = 1;
    auto idxs = p.weights.get_inner_idxs();
    auto blks = p.weights.get_inner_blks();
    for (size_t i = 0; i < idxs.size(); ++i) {
      if (idxs[i] == 1) block *= blks[i];
    }
    const int64_t stride = p.weights.get_strides()[1];
    if (n % block == 0 && static_cast<size_t>(stride * (n / block)) == p.weights.get_size()) {
      const memory::desc one = WeightsDesc(k, block);
      if (one.get_strides() == p.weights.get_strides() && one.get_inner_blks() == blks &&
          one.get_inner_idxs() == idxs && one.get_size() == static_cast<size_t>(stride)) {
        p.column_block = block;
        p.block_bytes = stride;
      }
    }
  }
  return cache.emplace(std::make_pair(k, n), p).first->second;
}

ffi::Error Pack(ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out) {
  auto dims = b.dimensions();
  if (dims.size() != 2 || b.element_type() != ffi::DataType::S8 ||
      out->element_type() != ffi::DataType::U8) {
    return ffi::Error::InvalidArgument("bert_jax onednn pack takes s8 [K, N] -> u8 bytes");
  }
  const int64_t k = dims[0], n = dims[1];
  try {
    const Packed& packed = PackedLayout(k, n);
    if (out->size_bytes() != packed.bytes()) {
      return ffi::Error::InvalidArgument("bert_jax onednn pack: output size is not the layout's");
    }
    const memory::desc plain({k, n}, memory::data_type::s8, memory::format_tag::ab);
    memory src(plain, Engine(), b.untyped_data());
    memory dst(packed.weights, Engine(), out->untyped_data());
    dnnl::stream stream(Engine());
    dnnl::reorder(src, dst).execute(stream, src, dst);
    stream.wait();
    const int8_t* w = static_cast<const int8_t*>(b.untyped_data());
    int32_t* offsets =
        reinterpret_cast<int32_t*>(static_cast<char*>(out->untyped_data()) + packed.offsets_at);
    std::fill(offsets, offsets + n, 0);
    for (int64_t r = 0; r < k; ++r) {
      for (int64_t c = 0; c < n; ++c) offsets[c] += 128 * w[r * n + c];
    }
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

// The layout of s8 [k, n] weights into *out, or an error naming `what` when oneDNN has none or
// `packed` is not that layout's size.
ffi::Error PackedFor(int64_t k, int64_t n, const ffi::AnyBuffer& packed, const std::string& what,
                     const Packed** out) {
  try {
    *out = &PackedLayout(k, n);
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  if (packed.size_bytes() != (*out)->bytes()) {
    return ffi::Error::InvalidArgument(
        "bert_jax onednn " + what + ": the weights were not packed for this K and N");
  }
  return ffi::Error::Success();
}

const int32_t* ColumnOffsets(const ffi::AnyBuffer& packed, const Packed& layout) {
  return reinterpret_cast<const int32_t*>(static_cast<const char*>(packed.untyped_data()) +
                                          layout.offsets_at);
}

// C = A [M, K] s8 . B (packed by Pack from s8 [K, N]) -> s32 [M, N].
ffi::Error MatmulPacked(ffi::AnyBuffer a, ffi::AnyBuffer packed, ffi::Result<ffi::AnyBuffer> c) {
  auto a_dims = a.dimensions(), c_dims = c->dimensions();
  if (a_dims.size() != 2 || c_dims.size() != 2 || a_dims[0] != c_dims[0] ||
      a.element_type() != ffi::DataType::S8 || c->element_type() != ffi::DataType::S32) {
    return ffi::Error::InvalidArgument(
        "bert_jax onednn packed matmul takes s8 [M, K] and packed weights -> s32 [M, N]");
  }
  const int64_t m = a_dims[0], k = a_dims[1], n = c_dims[1];
  const Packed* layout;
  ffi::Error packed_error = PackedFor(k, n, packed, "packed matmul", &layout);
  if (packed_error.failure()) return packed_error;
  std::vector<uint8_t> a_u8(m * k);
  const int8_t* as = static_cast<const int8_t*>(a.untyped_data());
  for (int64_t i = 0; i < m * k; ++i) a_u8[i] = static_cast<uint8_t>(as[i] + 128);
  const memory::desc a_md({m, k}, memory::data_type::u8, memory::format_tag::ab);
  const memory::desc c_md({m, n}, memory::data_type::s32, memory::format_tag::ab);
  const Key key{1, m, k, n, static_cast<int>(memory::data_type::u8),
                static_cast<int>(memory::data_type::s8), static_cast<int>(memory::data_type::s32),
                false, false, true, false, n};
  int32_t* cs = static_cast<int32_t*>(c->untyped_data());
  ffi::Error err = Execute(key, a_md, a_u8.data(), layout->weights, packed.untyped_data(), c_md,
                           cs);
  if (err.failure()) return err;
  const int32_t* offsets = ColumnOffsets(packed, *layout);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t col = 0; col < n; ++col) cs[r * n + col] -= offsets[col];
  }
  return ffi::Error::Success();
}


// What XLA computes for qwix.quantize(x, int8, channelwise_axes=(0,)) of one row: the scale
// absmax * f32(1 / 127.5), 1 where it is below sqrt(tiny f32), and the values x * (1 / scale)
// rounded half to even and saturated to int8; written here as u8, that value + 128.
constexpr float kInvQmax = 1.0f / 127.5f;
constexpr float kTinySqrt = 1.0842021724855044e-19f;

float RowScale(float absmax) {
  float scale = absmax * kInvQmax;
  return scale < kTinySqrt ? 1.0f : scale;
}

// x * (1 / scale) rounded half to even and saturated to int8, as XLA converts, + 128.
void QuantizeTail(const float* x, int64_t k, float inv, uint8_t* q) {
  for (int64_t i = 0; i < k; ++i) {
    float v = std::nearbyint(x[i] * inv);  // the default rounding mode: half to even
    v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
    q[i] = static_cast<uint8_t>(static_cast<int>(v) + 128);
  }
}

float QuantizeRow(const float* x, int64_t k, uint8_t* q) {
  float absmax = 0.0f;
  for (int64_t i = 0; i < k; ++i) absmax = std::fmax(absmax, std::fabs(x[i]));
  const float scale = RowScale(absmax);
  QuantizeTail(x, k, 1.0f / scale, q);
  return scale;
}

// The same with AVX2: cvtps rounds half to even (MXCSR's default) and the two packs saturate
// to int8, which is XLA's convert of the rounded value; flipping the top bit adds 128.
__attribute__((target("avx2,fma"))) float QuantizeRowAvx2(const float* x, int64_t k,
                                                          uint8_t* q) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    m1 = _mm256_max_ps(m1, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i + 8)));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  float absmax = 0.0f;
  for (float lane : lanes) absmax = lane > absmax ? lane : absmax;
  for (; i < k; ++i) absmax = std::fabs(x[i]) > absmax ? std::fabs(x[i]) : absmax;
  const float scale = RowScale(absmax);
  const float inv = 1.0f / scale;
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i top_bit = _mm256_set1_epi8(static_cast<char>(0x80));
  for (i = 0; i + 32 <= k; i += 32) {
    const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
    const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vinv));
    const __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), vinv));
    const __m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), vinv));
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i),
                        _mm256_xor_si256(_mm256_permutevar8x32_epi32(packed, order), top_bit));
  }
  QuantizeTail(x + i, k - i, inv, q + i);
  return scale;
}

// One output row: ((acc - offset) * row scale) * column scale + bias, the last two as one fused
// multiply-add, as XLA:CPU contracts them (acc - offset is XLA's int32 product). Compiled
// twice: with FMA instructions where the CPU has them (so the loop vectorizes), else through
// libm's fma (the same values).
__attribute__((always_inline)) inline void RescaleRowBody(const int32_t* acc,
                                                         const int32_t* offset, float row_scale,
                                                         const float* col_scale,
                                                         const float* bias, int64_t n,
                                                         float* out) {
  for (int64_t c = 0; c < n; ++c) {
    out[c] = std::fma(static_cast<float>(acc[c] - offset[c]) * row_scale, col_scale[c], bias[c]);
  }
}

__attribute__((target("avx2,fma"))) void RescaleRowFma(const int32_t* acc, const int32_t* offset,
                                                      float row_scale, const float* col_scale,
                                                      const float* bias, int64_t n, float* out) {
  RescaleRowBody(acc, offset, row_scale, col_scale, bias, n, out);
}

void RescaleRow(const int32_t* acc, const int32_t* offset, float row_scale,
                const float* col_scale, const float* bias, int64_t n, float* out) {
  RescaleRowBody(acc, offset, row_scale, col_scale, bias, n, out);
}

// y [M, N] f32 = rescale(quantize(x [M, K] f32) . B (packed s8 [K, N])) + bias: see the top.
ffi::Error QuantizedMatmul(ffi::Buffer<ffi::F32> x, ffi::AnyBuffer packed,
                           ffi::Buffer<ffi::F32> col_scale, ffi::Buffer<ffi::F32> bias,
                           ffi::Result<ffi::Buffer<ffi::F32>> y, ffi::ThreadPool pool) {
  auto x_dims = x.dimensions(), y_dims = y->dimensions();
  if (x_dims.size() != 2 || y_dims.size() != 2 || x_dims[0] != y_dims[0]) {
    return ffi::Error::InvalidArgument(
        "bert_jax onednn quantized matmul takes f32 [M, K] -> f32 [M, N]");
  }
  const int64_t m = x_dims[0], k = x_dims[1], n = y_dims[1];
  if (col_scale.element_count() != static_cast<size_t>(n) ||
      bias.element_count() != static_cast<size_t>(n)) {
    return ffi::Error::InvalidArgument(
        "bert_jax onednn quantized matmul: column scales and bias need N values each");
  }
  const Packed* layout;
  ffi::Error packed_error = PackedFor(k, n, packed, "quantized matmul", &layout);
  if (packed_error.failure()) return packed_error;
  const float* xs = x.typed_data();
  const float* cs = col_scale.typed_data();
  const float* b = bias.typed_data();
  const int32_t* offsets = ColumnOffsets(packed, *layout);
  const uint8_t* weights = static_cast<const uint8_t*>(packed.untyped_data());
  float* ys = y->typed_data();
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  auto quantize = [&](int64_t r0, int64_t rows, uint8_t* q, float* row_scale) {
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = xs + (r0 + r) * k;
      row_scale[r] = avx2 ? QuantizeRowAvx2(xr, k, q + r * k) : QuantizeRow(xr, k, q + r * k);
    }
  };
  // The int8 product of `rows` quantized rows (from r0) with the columns [c0, c0 + cols),
  // rescaled into y. One thread: oneDNN runs single-threaded inside ParallelFor.
  auto product = [&](int64_t r0, int64_t rows, const uint8_t* q, const float* row_scale,
                     int64_t c0, int64_t cols, const memory::desc& b_md, const uint8_t* b_data) {
    thread_local std::vector<int32_t> acc;
    acc.resize(rows * cols);
    const memory::desc a_md({rows, k}, memory::data_type::u8, memory::format_tag::ab);
    const memory::desc c_md({rows, cols}, memory::data_type::s32, memory::format_tag::ab);
    const Key key{1, rows, k, cols, static_cast<int>(memory::data_type::u8),
                  static_cast<int>(memory::data_type::s8),
                  static_cast<int>(memory::data_type::s32), false, false, true, true, cols};
    if (Execute(key, a_md, const_cast<uint8_t*>(q), b_md, const_cast<uint8_t*>(b_data), c_md,
                acc.data()).failure()) {
      return false;
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* out = ys + (r0 + r) * n + c0;
      const int32_t* a = acc.data() + r * cols;
      if (avx2) {
        RescaleRowFma(a, offsets + c0, row_scale[r], cs + c0, b + c0, cols, out);
      } else {
        RescaleRow(a, offsets + c0, row_scale[r], cs + c0, b + c0, cols, out);
      }
    }
    return true;
  };
  const int64_t threads = PoolThreads(pool);
  const int64_t per_thread = (m + threads - 1) / threads;
  constexpr int64_t kColumnRows = 128;  // rows per thread up to which columns are split
  const int64_t blocks_of_columns = layout->column_block ? n / layout->column_block : 0;
  if (threads > 1 && per_thread <= kColumnRows && blocks_of_columns >= threads) {
    // Few rows (batch 1): every thread would read all the weights for a few dozen rows, so the
    // threads split the columns instead, after quantizing the rows together.
    std::vector<uint8_t> q(m * k);
    std::vector<float> row_scale(m);
    ParallelFor(pool, threads, threads, [&](int64_t part) {
      const int64_t r0 = m * part / threads, r1 = m * (part + 1) / threads;
      quantize(r0, r1 - r0, q.data() + r0 * k, row_scale.data() + r0);
      return true;
    }, m);
    const bool ok = ParallelFor(pool, threads, threads, [&](int64_t part) {
      const int64_t b0 = blocks_of_columns * part / threads;
      const int64_t b1 = blocks_of_columns * (part + 1) / threads;
      const int64_t c0 = b0 * layout->column_block, cols = (b1 - b0) * layout->column_block;
      const Packed& run = PackedLayout(k, cols);  // the same blocked layout, checked below
      if (run.weights.get_strides() != layout->weights.get_strides()) return false;
      return product(0, m, q.data(), row_scale.data(), c0, cols, run.weights,
                     weights + b0 * layout->block_bytes);
    }, m);
    if (!ok) return ffi::Error::Internal("oneDNN failed in a quantized matmul column block");
    return ffi::Error::Success();
  }
  // Row blocks whose int32 products stay in cache: each thread quantizes a block, multiplies it
  // (oneDNN single-threaded) and rescales it. At most 2^18 int32 products a block, and at least
  // one block per thread.
  const int64_t rows = std::max<int64_t>(
      16, std::min<int64_t>({256, (1 << 18) / n, per_thread}) / 16 * 16);
  const int64_t blocks = (m + rows - 1) / rows;
  const bool ok = ParallelFor(pool, threads, blocks, [&](int64_t blk) {
    thread_local std::vector<uint8_t> q;
    thread_local std::vector<float> row_scale;
    q.resize(rows * k);
    row_scale.resize(rows);
    const int64_t r0 = blk * rows, mb = std::min(rows, m - r0);
    quantize(r0, mb, q.data(), row_scale.data());
    return product(r0, mb, q.data(), row_scale.data(), 0, n, layout->weights, weights);
  });
  if (!ok) return ffi::Error::Internal("oneDNN failed in a quantized matmul block");
  return ffi::Error::Success();
}

// c [M, P * n] f32 = a [M, K] . w, f32 or bf16 operands (one type), the weights as P dense
// column panels w [P, K, n] (panel p holds columns [p n, (p + 1) n) of the [K, P n] matrix),
// each panel's product written in place into its columns of c, one panel a thread. With a
// plain [K, N] operand each thread reads a run of its columns, rows N apart, and oneDNN's f32
// gemm ran slower on that than on a dense panel at few rows (one thread, 12 weights in turn so they come from L3, best of 5 runs:
// [40, 384] x [384, 384] 114 -> 96 us, x [384, 1536] 614 -> 470, [40, 1536] x [1536, 384] 390
// -> 339; at 128 and 1,280 rows within 5% either way; benchmarks/RESULTS.md run AB).
//
// `rows` (int32 [1], or zero-size for all M) says how many leading rows of a matter: the product
// runs on those only and the rows after them are written as zeros. A batch of one sequence
// passes the position after its last real token (inference.skipping_padding): the length
// bucket's padding rows then cost no product, and their zeros stay finite through the model.
ffi::Future PanelMatmul(ffi::AnyBuffer a, ffi::AnyBuffer w, ffi::Buffer<ffi::S32> rows,
                        ffi::Result<ffi::Buffer<ffi::F32>> c, ffi::ThreadPool pool) {
  auto a_dims = a.dimensions(), w_dims = w.dimensions(), c_dims = c->dimensions();
  const ffi::DataType type = a.element_type();
  if (a_dims.size() != 2 || w_dims.size() != 3 || c_dims.size() != 2 || a_dims[1] != w_dims[1] ||
      c_dims[0] != a_dims[0] || c_dims[1] != w_dims[0] * w_dims[2] || rows.element_count() > 1 ||
      w.element_type() != type || (type != ffi::DataType::F32 && type != ffi::DataType::BF16)) {
    return Completed(ffi::Error::InvalidArgument(
        "bert_jax onednn panel matmul takes a [M, K] and w [P, K, n] both f32 or both bf16, "
        "int32 rows [1] or [0] -> f32 c [M, P n]"));
  }
  const int64_t k = a_dims[1], panels = w_dims[0], n = w_dims[2];
  const int64_t big_n = panels * n;
  const int64_t m = rows.element_count() == 0
                        ? a_dims[0]
                        : std::clamp<int64_t>(rows.typed_data()[0], 0, a_dims[0]);
  const size_t element = type == ffi::DataType::F32 ? 4 : 2;
  uint8_t* const a_data = static_cast<uint8_t*>(a.untyped_data());
  uint8_t* const w_data = static_cast<uint8_t*>(w.untyped_data());
  float* const c_data = c->typed_data();
  std::fill(c_data + m * big_n, c_data + a_dims[0] * big_n, 0.f);
  if (m == 0) return Completed(ffi::Error::Success());
  memory::data_type dt;
  ToDnnl(type, &dt);
  constexpr auto f32 = memory::data_type::f32;
  const memory::desc a_md({1, m, k}, dt, memory::dims{m * k, k, 1});
  const memory::desc b_md({1, k, n}, dt, memory::dims{k * n, n, 1});
  const memory::desc c_md({1, m, n}, f32, memory::dims{m * big_n, big_n, 1});
  const Key key{1, m, k, n, static_cast<int>(dt), static_cast<int>(dt), static_cast<int>(f32),
                false, false, true, true, big_n};
  return ParallelForAsync(pool, std::min(PoolThreads(pool), panels), panels, [=](int64_t p) {
    return Execute(key, a_md, a_data, b_md, w_data + p * k * n * element, c_md, c_data + p * n);
  }, m);
}

}  // namespace

// The spinning helper's spin after each piece, in microseconds (0: none; kernels/pool.h).
extern "C" void BertJaxSetSpinMicros(int micros) {
  bert_jax_kernels::SpinMicros().store(micros);
}

// Bytes of the packed layout of s8 [k, n] weights, or -1 where oneDNN has no such matmul.
extern "C" int64_t BertJaxOnednnPackedBytes(int64_t k, int64_t n) {
  try {
    return static_cast<int64_t>(PackedLayout(k, n).bytes());
  } catch (const dnnl::error&) {
    return -1;
  }
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(BertJaxOnednnPack, Pack,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // b, s8 [K, N]
                                  .Ret<ffi::AnyBuffer>());  // u8 bytes

XLA_FFI_DEFINE_HANDLER_SYMBOL(BertJaxOnednnMatmulPacked, MatmulPacked,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // a, s8 [M, K]
                                  .Arg<ffi::AnyBuffer>()  // packed b
                                  .Ret<ffi::AnyBuffer>());  // c, s32 [M, N]

XLA_FFI_DEFINE_HANDLER_SYMBOL(BertJaxOnednnMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // a
                                  .Arg<ffi::AnyBuffer>()  // b
                                  .Ret<ffi::AnyBuffer>()  // c
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b")
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(BertJaxOnednnPanelMatmul, PanelMatmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // a, f32 or bf16 [M, K]
                                  .Arg<ffi::AnyBuffer>()  // w, a's type [P, K, n]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // rows, int32 [1] or [0]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c, f32 [M, P n]
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(BertJaxOnednnQuantizedMatmul, QuantizedMatmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x, f32 [M, K]
                                  .Arg<ffi::AnyBuffer>()  // packed b (s8 [K, N])
                                  .Arg<ffi::Buffer<ffi::F32>>()  // column scales [N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias [N]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y, f32 [M, N]
                                  .Ctx<ffi::ThreadPool>());
