// XLA FFI custom calls: attention's softmax and dropout for training, forward and backward, one
// pass over the scores each way, for bert_jax.onednn.attention_core (AVX-512).
//
// Forward, per row of scores s [B, N, L, M] (the additive mask bias [B or 1, 1, L or 1, M]):
//   y = softmax(s + bias), p = keep ? y / (1 - rate) : 0  -> p (f32 or bf16, rounded to
//   nearest even), and the row's (max, 1 / sum) for the backward.
// Backward, per row, from the cotangent dp of p:
//   g = keep ? dp / (1 - rate) : 0, ds = y * (g - sum(g * y))   (y recomputed from s and stats)
// keep is layers.dropout's mask to the bit: the same counter hash of the key words and the
// element's index [b, n, l, m] (layers.counter_bits), kept where the hash >= drop_below.
//
// Why: XLA:CPU runs this as five passes over [B, N, L, M] (the exponentials written in f32 and
// read back, the dropped cotangent written in f32 and read back), ~40 bytes an element; here
// 6 forward (s in, p out) and 10 backward (s and dp in, ds out), the dropout hash in registers.
//
// Threads: the B N L rows are split into one contiguous range per thread (the calling one and
// helpers on XLA's pool).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "exp.h"
#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using bert_jax_kernels::Completed;
using bert_jax_kernels::ExpNonPositive;
using bert_jax_kernels::ParallelForAsync;
using bert_jax_kernels::PoolThreads;

constexpr int64_t kLanes = 16;
constexpr uint32_t kGolden = 0x9E3779B9u;

inline uint32_t Mix(uint32_t x) {  // layers._mix32 (Wellons' lowbias32)
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  return x ^ (x >> 16);
}

__attribute__((target("avx512f"))) inline __m512i MixV(__m512i x) {
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7FEB352D));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(static_cast<int>(0x846CA68Bu)));
  return _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
}

// 16 floats stored as f32, or as bf16 rounded to nearest even (XLA's convert; no NaNs here).
// The bf16 halves are narrowed in registers and stored whole (a masked narrowing store,
// vpmovdw to memory, is microcoded on AMD: it made the kernels 2x slower); a tail goes through
// a small buffer.
__attribute__((target("avx512f"))) inline void Store(float* out, __m512 v, __mmask16 mask) {
  _mm512_mask_storeu_ps(out, mask, v);
}
__attribute__((target("avx512f"))) inline void Store(uint16_t* out, __m512 v, __mmask16 mask) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  const __m256i halves = _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
  if (mask == 0xffff) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), halves);
  } else {
    alignas(32) uint16_t tail[kLanes];
    _mm256_store_si256(reinterpret_cast<__m256i*>(tail), halves);
    for (int i = 0; i < kLanes && ((mask >> i) & 1); ++i) out[i] = tail[i];
  }
}

// What every row needs: the shapes, the hash of the key, the dropout constants.
struct Rows {
  int64_t b, n, l, m, bias_b, bias_l;
  uint32_t key_hash, drop_below;
  float keep_scale;
  bool dropout;

  const float* BiasRow(const float* bias, int64_t row) const {
    const int64_t bi = row / (n * l), li = row % l;
    return bias + ((bias_b == 1 ? 0 : bi) * bias_l + (bias_l == 1 ? 0 : li)) * m;
  }
  uint32_t RowHash(int64_t row) const {  // the hash up to the last index (b, n, l)
    const uint32_t bi = static_cast<uint32_t>(row / (n * l));
    const uint32_t ni = static_cast<uint32_t>((row / l) % n), li = static_cast<uint32_t>(row % l);
    uint32_t h = Mix(key_hash ^ (bi * kGolden + 1u));
    h = Mix(h ^ (ni * kGolden + 2u));
    return Mix(h ^ (li * kGolden + 3u));
  }
};

// Lanes j0..j0+15 of a row: kept (hash of the column index >= drop_below) or not.
__attribute__((target("avx512f"))) inline __mmask16 Keep(const Rows& r, uint32_t row_hash,
                                                        int64_t j0) {
  if (!r.dropout) return 0xffff;
  const __m512i j = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(j0)),
                                     _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                                       13, 14, 15));
  const __m512i idx = _mm512_add_epi32(_mm512_mullo_epi32(j, _mm512_set1_epi32(
                                           static_cast<int>(kGolden))), _mm512_set1_epi32(4));
  const __m512i h = MixV(_mm512_xor_si512(_mm512_set1_epi32(static_cast<int>(row_hash)), idx));
  return _mm512_cmpge_epu32_mask(h, _mm512_set1_epi32(static_cast<int>(r.drop_below)));
}

inline __mmask16 Tail(int64_t j0, int64_t m) {
  return j0 + kLanes <= m ? static_cast<__mmask16>(0xffff)
                          : static_cast<__mmask16>((1u << (m - j0)) - 1);
}

// Forward rows [first, last): p and (max, 1 / sum); e: scratch of m floats.
template <typename Out>
__attribute__((target("avx512f"))) void ForwardRows(const Rows& r, const float* s,
                                                    const float* bias, Out* p, float* stats,
                                                    int64_t first, int64_t last, float* e) {
  const int64_t m = r.m;
  for (int64_t row = first; row < last; ++row) {
    const float* sr = s + row * m;
    const float* br = r.BiasRow(bias, row);
    __m512 top = _mm512_set1_ps(-3.0e38f);
    for (int64_t j0 = 0; j0 < m; j0 += kLanes) {
      const __mmask16 t = Tail(j0, m);
      const __m512 x = _mm512_add_ps(_mm512_maskz_loadu_ps(t, sr + j0),
                                     _mm512_maskz_loadu_ps(t, br + j0));
      top = _mm512_mask_max_ps(top, t, top, x);
    }
    const float row_max = _mm512_reduce_max_ps(top);
    const __m512 top_v = _mm512_set1_ps(row_max);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j0 = 0; j0 < m; j0 += kLanes) {
      const __mmask16 t = Tail(j0, m);
      const __m512 x = _mm512_add_ps(_mm512_maskz_loadu_ps(t, sr + j0),
                                     _mm512_maskz_loadu_ps(t, br + j0));
      const __m512 ex = _mm512_maskz_mov_ps(t, ExpNonPositive(_mm512_sub_ps(x, top_v)));
      _mm512_mask_storeu_ps(e + j0, t, ex);
      sum = _mm512_add_ps(sum, ex);
    }
    const float inv = 1.0f / _mm512_reduce_add_ps(sum);
    const __m512 scale = _mm512_set1_ps(inv);
    const __m512 keep_scale = _mm512_set1_ps(r.keep_scale);
    const uint32_t row_hash = r.RowHash(row);
    Out* pr = p + row * m;
    for (int64_t j0 = 0; j0 < m; j0 += kLanes) {
      const __mmask16 t = Tail(j0, m);
      __m512 y = _mm512_mul_ps(_mm512_maskz_loadu_ps(t, e + j0), scale);
      if (r.dropout) y = _mm512_maskz_mul_ps(Keep(r, row_hash, j0), y, keep_scale);
      Store(pr + j0, y, t);
    }
    stats[2 * row] = row_max;
    stats[2 * row + 1] = inv;
  }
}

// Lanes j0.. of a row: y (the softmax) and g (dp, dropped and scaled as the forward dropped).
__attribute__((target("avx512f"))) inline void YAndG(const Rows& r, const float* sr,
                                                     const float* br, const float* dr,
                                                     uint32_t row_hash, __m512 top_v,
                                                     __m512 scale, __m512 keep_scale,
                                                     int64_t j0, __mmask16 t, __m512* y,
                                                     __m512* g) {
  const __m512 x = _mm512_add_ps(_mm512_maskz_loadu_ps(t, sr + j0),
                                 _mm512_maskz_loadu_ps(t, br + j0));
  *y = _mm512_maskz_mul_ps(t, ExpNonPositive(_mm512_sub_ps(x, top_v)), scale);
  *g = _mm512_maskz_loadu_ps(t, dr + j0);
  if (r.dropout) *g = _mm512_maskz_mul_ps(Keep(r, row_hash, j0), *g, keep_scale);
}

// Backward rows [first, last): ds from dp. y and g are recomputed in the second pass rather
// than kept from the first (the row's s and dp are still in L1; keeping y and g in scratch
// measured no faster).
template <typename Out>
__attribute__((target("avx512f"))) void BackwardRows(const Rows& r, const float* s,
                                                     const float* bias, const float* stats,
                                                     const float* dp, Out* ds, int64_t first,
                                                     int64_t last) {
  const int64_t m = r.m;
  const __m512 keep_scale = _mm512_set1_ps(r.keep_scale);
  for (int64_t row = first; row < last; ++row) {
    const float* sr = s + row * m;
    const float* br = r.BiasRow(bias, row);
    const float* dr = dp + row * m;
    const __m512 top_v = _mm512_set1_ps(stats[2 * row]);
    const __m512 scale = _mm512_set1_ps(stats[2 * row + 1]);
    const uint32_t row_hash = r.RowHash(row);
    __m512 dot = _mm512_setzero_ps();
    for (int64_t j0 = 0; j0 < m; j0 += kLanes) {
      __m512 y, g;
      YAndG(r, sr, br, dr, row_hash, top_v, scale, keep_scale, j0, Tail(j0, m), &y, &g);
      dot = _mm512_fmadd_ps(g, y, dot);
    }
    const __m512 dot_v = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
    Out* out = ds + row * m;
    for (int64_t j0 = 0; j0 < m; j0 += kLanes) {
      const __mmask16 t = Tail(j0, m);
      __m512 y, g;
      YAndG(r, sr, br, dr, row_hash, top_v, scale, keep_scale, j0, t, &y, &g);
      Store(out + j0, _mm512_mul_ps(y, _mm512_sub_ps(g, dot_v)), t);
    }
  }
}

uint32_t KeyHash(const uint32_t* words, size_t count) {  // counter_bits' hash of the key
  uint32_t h = Mix(words[0] ^ kGolden);
  for (size_t i = 1; i < count; ++i) h = Mix(h ^ words[i]);
  return h;
}

// Checks the shapes and fills `rows` (shapes, key hash, dropout constants); an error message,
// or "" when they fit.
const char* Prepare(ffi::Span<const int64_t> sd, ffi::Span<const int64_t> bd,
                    const ffi::Buffer<ffi::U32>& key, int64_t drop_below, float keep_scale,
                    Rows* rows) {
  if (sd.size() != 4 || bd.size() != 4 || bd[1] != 1 || (bd[0] != 1 && bd[0] != sd[0]) ||
      (bd[2] != 1 && bd[2] != sd[2]) || bd[3] != sd[3] || sd[3] < 1 ||
      key.element_count() < 1 || !__builtin_cpu_supports("avx512f")) {
    return "bert_jax softmax_dropout takes scores [B, N, L, M], a bias [B or 1, 1, L or 1, M] "
           "and at least one key word, on a CPU with AVX-512";
  }
  rows->b = sd[0];
  rows->n = sd[1];
  rows->l = sd[2];
  rows->m = sd[3];
  rows->bias_b = bd[0];
  rows->bias_l = bd[2];
  rows->key_hash = KeyHash(key.typed_data(), key.element_count());
  rows->drop_below = static_cast<uint32_t>(drop_below);
  rows->dropout = drop_below > 0;
  rows->keep_scale = keep_scale;
  return "";
}

template <typename Body>
ffi::Future OverRows(ffi::ThreadPool& pool, int64_t total, Body body) {
  const int64_t threads = std::min<int64_t>(PoolThreads(pool), total);
  return ParallelForAsync(pool, threads, threads, [=](int64_t part) {
    body(total * part / threads, total * (part + 1) / threads);
    return ffi::Error::Success();
  }, total);
}

ffi::Future Forward(ffi::Buffer<ffi::F32> s, ffi::Buffer<ffi::F32> bias,
                    ffi::Buffer<ffi::U32> key, ffi::Result<ffi::AnyBuffer> p,
                    ffi::ResultBuffer<ffi::F32> stats, int64_t drop_below, float keep_scale,
                    ffi::ThreadPool pool) {
  Rows r{};
  const char* bad = Prepare(s.dimensions(), bias.dimensions(), key, drop_below, keep_scale, &r);
  const bool bf16 = p->element_type() == ffi::DataType::BF16;
  if (*bad || (!bf16 && p->element_type() != ffi::DataType::F32) ||
      p->element_count() != s.element_count() || stats->element_count() != 2 * r.b * r.n * r.l) {
    return Completed(ffi::Error::InvalidArgument(
        *bad ? bad : "bert_jax softmax_dropout writes f32 or bf16 p shaped as the scores"));
  }
  const float *sp = s.typed_data(), *bp = bias.typed_data();
  float* st = stats->typed_data();
  void* out = p->untyped_data();
  return OverRows(pool, r.b * r.n * r.l, [=](int64_t first, int64_t last) {
    thread_local std::vector<float> e;
    e.resize(r.m + kLanes);
    if (bf16) {
      ForwardRows(r, sp, bp, static_cast<uint16_t*>(out), st, first, last, e.data());
    } else {
      ForwardRows(r, sp, bp, static_cast<float*>(out), st, first, last, e.data());
    }
  });
}

ffi::Future Backward(ffi::Buffer<ffi::F32> s, ffi::Buffer<ffi::F32> bias,
                     ffi::Buffer<ffi::F32> stats, ffi::Buffer<ffi::F32> dp,
                     ffi::Buffer<ffi::U32> key, ffi::Result<ffi::AnyBuffer> ds,
                     int64_t drop_below, float keep_scale, ffi::ThreadPool pool) {
  Rows r{};
  const char* bad = Prepare(s.dimensions(), bias.dimensions(), key, drop_below, keep_scale, &r);
  const bool bf16 = ds->element_type() == ffi::DataType::BF16;
  if (*bad || (!bf16 && ds->element_type() != ffi::DataType::F32) ||
      ds->element_count() != s.element_count() || dp.element_count() != s.element_count() ||
      stats.element_count() != 2 * r.b * r.n * r.l) {
    return Completed(ffi::Error::InvalidArgument(
        *bad ? bad : "bert_jax softmax_dropout_grad takes dp and writes ds shaped as the scores"));
  }
  const float *sp = s.typed_data(), *bp = bias.typed_data(), *st = stats.typed_data();
  const float* dpp = dp.typed_data();
  void* out = ds->untyped_data();
  return OverRows(pool, r.b * r.n * r.l, [=](int64_t first, int64_t last) {
    if (bf16) {
      BackwardRows(r, sp, bp, st, dpp, static_cast<uint16_t*>(out), first, last);
    } else {
      BackwardRows(r, sp, bp, st, dpp, static_cast<float*>(out), first, last);
    }
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BertJaxSoftmaxDropout, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scores [B, N, L, M]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias [B or 1, 1, L or 1, M]
                                  .Arg<ffi::Buffer<ffi::U32>>()  // the dropout key's words
                                  .Ret<ffi::AnyBuffer>()         // p, f32 or bf16
                                  .Ret<ffi::Buffer<ffi::F32>>()  // (max, 1 / sum) a row
                                  .Attr<int64_t>("drop_below")   // 0: no dropout
                                  .Attr<float>("keep_scale")
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(BertJaxSoftmaxDropoutGrad, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scores
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // the forward's row stats
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dp
                                  .Arg<ffi::Buffer<ffi::U32>>()  // the dropout key's words
                                  .Ret<ffi::AnyBuffer>()         // ds, f32 or bf16
                                  .Attr<int64_t>("drop_below")
                                  .Attr<float>("keep_scale")
                                  .Ctx<ffi::ThreadPool>());
