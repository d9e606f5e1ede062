// XLA FFI custom call: one AdamW step of one parameter array in a single pass, for
// bert_jax.fused_adamw.
//
// What optax's chain(clip_by_global_norm(max_norm), adamw(...)) followed by
// optax.apply_updates computes, element by element, with the f32 roundings XLA:CPU gives it
// (jaxlib 0.10.2): its simplifier turns (mu / bc1) / d into mu / (bc1 * d), and LLVM contracts
// each multiply feeding an add into one FMA, as written here (bit for bit equal to optax on XLA
// in tests/test_fused_adamw.py; without a clipping select in front XLA contracts the second
// moment the other way, so bert_jax.fused_adamw runs only for a chain that clips):
//   g  = clip ? (g / norm) * max_norm : g
//   mu = fma(1 - b1, g, b1 * mu)            nu = fma(b2, nu, (1 - b2) * (g * g))
//   u  = mu / (bc1 * (sqrt(nu / bc2) + eps))   [u = fma(weight_decay, p, u) where decayed]
//   p  = fma(step_size, u, p)               (step_size = -learning rate)
// The scalars that change every step (clip, norm, bc1 = 1 - b1^t, bc2 = 1 - b2^t, step_size)
// come in as a small f32 array computed by JAX as optax computes them; the constants are
// attributes. The FMAs are explicit (the library is built with -ffp-contract=off).
//
// Why: XLA:CPU does no multi-output fusion, so optax's update is three loops over the
// parameters (new mu, new nu, new parameters, each recomputing what it needs), 11 arrays read
// or written per element; here 7 (g, mu, nu, p in; mu, nu, p out, in place through
// input/output aliases). BERT-base's 110M parameters: benchmarks/RESULTS.md run Y.
#include <cmath>
#include <cstdint>

#include "pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using bert_jax_kernels::Completed;
using bert_jax_kernels::ParallelForAsync;
using bert_jax_kernels::PoolThreads;

// The per-step scalars, in the order bert_jax.fused_adamw stacks them.
struct Step {
  bool clip;
  float norm, bc1, bc2, step_size;
};

// The constants (attributes).
struct Constants {
  float b1, one_minus_b1, b2, one_minus_b2, eps, weight_decay, max_norm;
  bool decay;
};

// The loop for one combination of (this step clips, weight decay), so it has no branches and
// vectorizes (a branch per element, or the compiler's fear of aliasing, kept it scalar: 200 ms
// for BERT-base's update instead of 89). Each output is its input or a disjoint buffer (XLA's
// aliases) and element i is read before it is written: no iteration depends on another (ivdep).
template <bool kClip, bool kDecay>
__attribute__((always_inline)) inline void Loop(const float* g, const float* mu_in,
                                                const float* nu_in, const float* p_in, float* mu,
                                                float* nu, float* p, int64_t n, const Step& s,
                                                const Constants& c) {
  const float norm = s.norm, max_norm = c.max_norm, bc1 = s.bc1, bc2 = s.bc2;
  const float step_size = s.step_size, b1 = c.b1, one_minus_b1 = c.one_minus_b1, b2 = c.b2;
  const float one_minus_b2 = c.one_minus_b2, eps = c.eps, weight_decay = c.weight_decay;
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i];
    if (kClip) gi = (gi / norm) * max_norm;
    const float m = std::fma(one_minus_b1, gi, b1 * mu_in[i]);
    const float v = std::fma(b2, nu_in[i], one_minus_b2 * (gi * gi));
    float u = m / (bc1 * (std::sqrt(v / bc2) + eps));
    if (kDecay) u = std::fma(weight_decay, p_in[i], u);
    p[i] = std::fma(step_size, u, p_in[i]);
    mu[i] = m;
    nu[i] = v;
  }
}

__attribute__((always_inline)) inline void UpdateBody(const float* g, const float* mu_in,
                                                      const float* nu_in, const float* p_in,
                                                      float* mu, float* nu, float* p, int64_t n,
                                                      const Step& s, const Constants& c) {
  if (s.clip && c.decay) return Loop<true, true>(g, mu_in, nu_in, p_in, mu, nu, p, n, s, c);
  if (s.clip) return Loop<true, false>(g, mu_in, nu_in, p_in, mu, nu, p, n, s, c);
  if (c.decay) return Loop<false, true>(g, mu_in, nu_in, p_in, mu, nu, p, n, s, c);
  return Loop<false, false>(g, mu_in, nu_in, p_in, mu, nu, p, n, s, c);
}

// Compiled for AVX-512, AVX2 and the baseline; chosen once by what this CPU has.
__attribute__((target("avx512f,fma"))) void UpdateAvx512(const float* g, const float* mu_in,
                                                         const float* nu_in, const float* p_in,
                                                         float* mu, float* nu, float* p,
                                                         int64_t n, const Step& s,
                                                         const Constants& c) {
  UpdateBody(g, mu_in, nu_in, p_in, mu, nu, p, n, s, c);
}

__attribute__((target("avx2,fma"))) void UpdateAvx2(const float* g, const float* mu_in,
                                                    const float* nu_in, const float* p_in,
                                                    float* mu, float* nu, float* p, int64_t n,
                                                    const Step& s, const Constants& c) {
  UpdateBody(g, mu_in, nu_in, p_in, mu, nu, p, n, s, c);
}

void UpdateBaseline(const float* g, const float* mu_in, const float* nu_in, const float* p_in,
                    float* mu, float* nu, float* p, int64_t n, const Step& s,
                    const Constants& c) {
  UpdateBody(g, mu_in, nu_in, p_in, mu, nu, p, n, s, c);
}

using UpdateFn = void (*)(const float*, const float*, const float*, const float*, float*,
                          float*, float*, int64_t, const Step&, const Constants&);

UpdateFn Update() {
  static const bool fma = __builtin_cpu_supports("fma");
  static const UpdateFn fn = fma && __builtin_cpu_supports("avx512f") ? UpdateAvx512
                             : fma && __builtin_cpu_supports("avx2")  ? UpdateAvx2
                                                                      : UpdateBaseline;
  return fn;
}

ffi::Future AdamW(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> mu, ffi::Buffer<ffi::F32> nu,
                  ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> scalars,
                  ffi::Result<ffi::Buffer<ffi::F32>> mu_out,
                  ffi::Result<ffi::Buffer<ffi::F32>> nu_out,
                  ffi::Result<ffi::Buffer<ffi::F32>> p_out, float b1, float one_minus_b1,
                  float b2, float one_minus_b2, float eps, float weight_decay, float max_norm,
                  ffi::ThreadPool pool) {
  const size_t n = g.element_count();
  if (mu.element_count() != n || nu.element_count() != n || p.element_count() != n ||
      mu_out->element_count() != n || nu_out->element_count() != n ||
      p_out->element_count() != n) {
    return Completed(ffi::Error::InvalidArgument(
        "bert_jax adamw: the gradient, moments and parameter differ in size"));
  }
  if (scalars.element_count() != 5) {
    return Completed(ffi::Error::InvalidArgument(
        "bert_jax adamw takes 5 scalars: clip, norm, bc1, bc2, step_size"));
  }
  const float* st = scalars.typed_data();
  const Step step{st[0] != 0.0f, st[1], st[2], st[3], st[4]};
  const Constants constants{b1,  one_minus_b1, b2,       one_minus_b2,
                            eps, weight_decay, max_norm, weight_decay != 0.0f};
  const float *gs = g.typed_data(), *ms = mu.typed_data(), *vs = nu.typed_data(),
              *ps = p.typed_data();
  float *mo = mu_out->typed_data(), *vo = nu_out->typed_data(), *po = p_out->typed_data();
  constexpr int64_t kChunk = 1 << 16;  // elements a piece: 256 KiB of each of the 7 arrays
  const int64_t pieces = (static_cast<int64_t>(n) + kChunk - 1) / kChunk;
  if (pieces <= 1) {
    Update()(gs, ms, vs, ps, mo, vo, po, n, step, constants);
    return Completed(ffi::Error::Success());
  }
  return ParallelForAsync(pool, PoolThreads(pool), pieces, [=](int64_t piece) {
    const int64_t first = piece * kChunk;
    const int64_t count = std::min<int64_t>(kChunk, static_cast<int64_t>(n) - first);
    Update()(gs + first, ms + first, vs + first, ps + first, mo + first, vo + first, po + first,
             count, step, constants);
    return ffi::Error::Success();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BertJaxAdamW, AdamW,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // gradient
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mu
                                  .Arg<ffi::Buffer<ffi::F32>>()  // nu
                                  .Arg<ffi::Buffer<ffi::F32>>()  // parameter
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scalars [5]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // new mu (aliases mu)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // new nu (aliases nu)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // new parameter (aliases it)
                                  .Attr<float>("b1")
                                  .Attr<float>("one_minus_b1")  // 1 - b1 rounded once, as optax
                                  .Attr<float>("b2")
                                  .Attr<float>("one_minus_b2")
                                  .Attr<float>("eps")
                                  .Attr<float>("weight_decay")
                                  .Attr<float>("max_norm")
                                  .Ctx<ffi::ThreadPool>());
