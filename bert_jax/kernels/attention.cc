// XLA FFI custom call: attention's core for inference, softmax(scale * q k^T + bias) v, for
// bert_jax.onednn.attention (AVX-512, head size a multiple of 16; the caller checks both).
//
// q [B, L, N, H], v [B, M, N, H] and the context [B, L, N, H] are read and written where they
// are, through their strides; k comes as k^T [B, N, H, M] (one XLA transpose: copied here per
// head with scalar loads, it made batch-32 calls slower than XLA's path). Per (batch entry,
// head), four query rows at a time the scores go through registers (4 x 16 accumulators), get
// the scale and the additive bias [B, 1, 1 or L, M], a softmax (exp as 2^n e^r, a degree-6
// polynomial, relative error ~1e-7), and the context is accumulated in registers (4 rows x H)
// and written in place.
//
// Why: XLA runs this core as ~8 ops a layer (a transpose per operand, the scale, the mask, a
// softmax in several fusions, two products, the transpose back); MiniLM embeddings at batch 32
// ran 1.07-1.26x faster with this kernel (40-128 tokens; attention.FUSED_MIN_ROWS gates smaller
// calls, where the model measured no gain, except those of at most 64 rows, which the spinning
// helper serves), and the same core as three oneDNN primitives was no faster in the model
// (benchmarks/RESULTS.md runs AA, AB).
//
// Threads: the (batch entry, head) pairs are split into one contiguous range per thread (the
// calling one and helpers on XLA's pool, or pool.h's spinning thread for at most 64 rows).
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

constexpr int64_t kRows = 4;     // query rows a pass
constexpr int64_t kLanes = 16;   // floats a register

// The context of kRows rows (s: their probabilities times their row sum, rows mp apart) for
// head columns [h0, h0 + 16 * NH): acc[r][c] += s[r][j] * v[j][c], then times inv[r].
template <int NH>
__attribute__((target("avx512f"))) void Context(const float* s, int64_t mp, const float* v,
                                                int64_t m, int64_t stride, int64_t h0,
                                                const float* inv, float* ctx, int64_t rows) {
  __m512 acc[kRows][NH];
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < NH; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < m; ++j) {
    const float* vj = v + j * stride + h0;
    __m512 vv[NH];
    for (int c = 0; c < NH; ++c) vv[c] = _mm512_loadu_ps(vj + c * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const __m512 p = _mm512_set1_ps(s[r * mp + j]);
      for (int c = 0; c < NH; ++c) acc[r][c] = _mm512_fmadd_ps(p, vv[c], acc[r][c]);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 scale = _mm512_set1_ps(inv[r]);
    for (int c = 0; c < NH; ++c) {
      _mm512_storeu_ps(ctx + r * stride + h0 + c * kLanes, _mm512_mul_ps(acc[r][c], scale));
    }
  }
}

// One (batch entry, head): q, v and ctx rows `stride` floats apart, kt its [h, m] k^T; `bias`
// its [rows, m] bias (bias_rows 1: one row for every query); s scratch of kRows * mp floats.
__attribute__((target("avx512f"))) void Head(const float* q, const float* kt, const float* v,
                                             const float* bias, int64_t bias_rows, float* ctx,
                                             int64_t l, int64_t m, int64_t h, int64_t stride,
                                             float scale, float* s) {
  const int64_t mp = (m + kLanes - 1) / kLanes * kLanes;
  const __mmask16 tail = static_cast<__mmask16>((1u << (m - (mp - kLanes))) - 1);
  const __m512 scale_v = _mm512_set1_ps(scale);
  const __m512 lowest = _mm512_set1_ps(-3.0e38f);
  for (int64_t i0 = 0; i0 < l; i0 += kRows) {
    const int64_t rows = std::min(kRows, l - i0);
    const float* qr[kRows];
    const float* br[kRows];
    for (int64_t r = 0; r < kRows; ++r) {
      const int64_t i = i0 + std::min(r, rows - 1);  // past the end: the last row again
      qr[r] = q + i * stride;
      br[r] = bias + (bias_rows == 1 ? 0 : i * m);
    }
    // Scores, with the scale and the bias; padded columns -3e38 (they take no probability).
    for (int64_t j0 = 0; j0 < mp; j0 += kLanes) {
      __m512 acc[kRows];
      for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
      const __mmask16 mask = j0 + kLanes <= m ? static_cast<__mmask16>(0xffff) : tail;
      for (int64_t d = 0; d < h; ++d) {
        const __m512 kv = _mm512_maskz_loadu_ps(mask, kt + d * m + j0);
        for (int r = 0; r < kRows; ++r) {
          acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(qr[r][d]), kv, acc[r]);
        }
      }
      for (int r = 0; r < kRows; ++r) {
        const __m512 b = _mm512_mask_loadu_ps(lowest, mask, br[r] + j0);
        _mm512_storeu_ps(s + r * mp + j0, _mm512_fmadd_ps(acc[r], scale_v, b));
      }
    }
    // Softmax numerators and sums; the context divides by the sums at the end.
    float inv[kRows];
    for (int r = 0; r < kRows; ++r) {
      float* sr = s + r * mp;
      __m512 top = lowest;
      for (int64_t j0 = 0; j0 < mp; j0 += kLanes) {
        top = _mm512_max_ps(top, _mm512_loadu_ps(sr + j0));
      }
      const __m512 top_v = _mm512_set1_ps(_mm512_reduce_max_ps(top));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j0 = 0; j0 < mp; j0 += kLanes) {
        const __mmask16 mask = j0 + kLanes <= m ? static_cast<__mmask16>(0xffff) : tail;
        const __m512 e = _mm512_maskz_mov_ps(
            mask, ExpNonPositive(_mm512_sub_ps(_mm512_loadu_ps(sr + j0), top_v)));
        _mm512_storeu_ps(sr + j0, e);
        sum = _mm512_add_ps(sum, e);
      }
      inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    float* out = ctx + i0 * stride;
    for (int64_t h0 = 0; h0 < h; h0 += 4 * kLanes) {
      switch (std::min<int64_t>(4, (h - h0) / kLanes)) {
        case 1: Context<1>(s, mp, v, m, stride, h0, inv, out, rows); break;
        case 2: Context<2>(s, mp, v, m, stride, h0, inv, out, rows); break;
        case 3: Context<3>(s, mp, v, m, stride, h0, inv, out, rows); break;
        default: Context<4>(s, mp, v, m, stride, h0, inv, out, rows); break;
      }
    }
  }
}

ffi::Future Attention(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> kt,
                      ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> bias,
                      ffi::ResultBuffer<ffi::F32> ctx, float scale, ffi::ThreadPool pool) {
  auto qd = q.dimensions(), kd = kt.dimensions(), vd = v.dimensions(), bd = bias.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || bd.size() != 4 ||
      kd[0] != qd[0] || kd[1] != qd[2] || kd[2] != qd[3] ||
      vd[0] != qd[0] || vd[1] != kd[3] || vd[2] != qd[2] || vd[3] != qd[3] ||
      bd[0] != qd[0] || bd[1] != 1 || (bd[2] != 1 && bd[2] != qd[1]) || bd[3] != kd[3] ||
      qd[3] % kLanes != 0 || kd[3] < 1 || !__builtin_cpu_supports("avx512f")) {
    return Completed(ffi::Error::InvalidArgument(
        "bert_jax attention takes q [B, L, N, H], k^T [B, N, H, M], v [B, M, N, H] (H a "
        "multiple of 16, M >= 1) and a bias [B, 1, 1 or L, M], on a CPU with AVX-512"));
  }
  const int64_t b = qd[0], l = qd[1], n = qd[2], h = qd[3], m = kd[3], bias_rows = bd[2];
  const float* qp = q.typed_data();
  const float* ktp = kt.typed_data();
  const float* vp = v.typed_data();
  const float* bp = bias.typed_data();
  float* cp = ctx->typed_data();
  const int64_t units = b * n;
  const int64_t threads = std::min<int64_t>(PoolThreads(pool), units);
  return ParallelForAsync(pool, threads, threads, [=](int64_t part) {
    thread_local std::vector<float> s;
    s.resize(kRows * ((m + kLanes - 1) / kLanes * kLanes));
    for (int64_t u = units * part / threads; u < units * (part + 1) / threads; ++u) {
      const int64_t bi = u / n, head = u % n;
      Head(qp + bi * l * n * h + head * h, ktp + u * h * m, vp + bi * m * n * h + head * h,
           bp + bi * bias_rows * m, bias_rows, cp + bi * l * n * h + head * h, l, m, h, n * h,
           scale, s.data());
    }
    return ffi::Error::Success();
  }, b * l);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BertJaxAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q [B, L, N, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k^T [B, N, H, M]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v [B, M, N, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias [B, 1, 1 or L, M]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // context [B, L, N, H]
                                  .Attr<float>("scale")
                                  .Ctx<ffi::ThreadPool>());
