// One XLA FFI custom call: a 2-D matmul through oneDNN, for bert_jax.onednn.
//
// C[..., M, N] = op(A) . op(B) over equal leading (batch) dims, op = transpose of the last two
// dims or not (an attribute each; a transposed operand is read through its strides, never
// copied). Operands f32 / bf16 (-> f32) or s8 / u8 x s8 (-> s32, the
// avx512_vnni / AMX int8 kernels XLA:CPU does not use). One oneDNN primitive per (shapes, types,
// transposes), created on first use and kept; creating one takes milliseconds, running one
// microseconds of overhead. oneDNN picks its kernel (brgemm on AVX-512) at primitive creation.
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

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

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int, int, int, bool, bool>;

// The cached primitive for `key`; primitives are immutable and safe to execute concurrently.
dnnl::matmul Primitive(const Key& key, const memory::desc& a, const memory::desc& b,
                       const memory::desc& c) {
  static std::mutex mu;
  static std::map<Key, dnnl::matmul> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end()) {
    dnnl::matmul::primitive_desc pd(Engine(), a, b, c);
    it = cache.emplace(key, dnnl::matmul(pd)).first;
  }
  return it->second;
}

ffi::Error Matmul(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> c,
                  bool transpose_a, bool transpose_b) {
  auto a_dims = a.dimensions(), b_dims = b.dimensions(), c_dims = c->dimensions();
  const size_t rank = a_dims.size();
  if (rank < 2 || b_dims.size() != rank || c_dims.size() != rank) {
    return ffi::Error::InvalidArgument(
        "bert_jax onednn matmul takes operands of one rank >= 2");
  }
  int64_t batch = 1;  // Leading dims, equal in a, b and c, folded into one.
  for (size_t i = 0; i + 2 < rank; ++i) {
    if (a_dims[i] != b_dims[i] || a_dims[i] != c_dims[i]) {
      return ffi::Error::InvalidArgument("bert_jax onednn matmul: batch dims differ");
    }
    batch *= a_dims[i];
  }
  const int64_t a0 = a_dims[rank - 2], a1 = a_dims[rank - 1];
  const int64_t b0 = b_dims[rank - 2], b1 = b_dims[rank - 1];
  const int64_t m = transpose_a ? a1 : a0, k = transpose_a ? a0 : a1;
  const int64_t k_b = transpose_b ? b1 : b0, n = transpose_b ? b0 : b1;
  if (k != k_b || c_dims[rank - 2] != m || c_dims[rank - 1] != n) {
    return ffi::Error::InvalidArgument("bert_jax onednn matmul: operand shapes do not agree");
  }
  memory::data_type a_type, b_type, c_type;
  if (!ToDnnl(a.element_type(), &a_type) || !ToDnnl(b.element_type(), &b_type) ||
      !ToDnnl(c->element_type(), &c_type)) {
    return ffi::Error::InvalidArgument(
        "bert_jax onednn matmul takes f32/bf16 -> f32 or s8/u8 x s8 -> s32");
  }
  // Row-major [batch, rows, cols]; a transposed operand is its stored [cols, rows] read
  // column-wise.
  const memory::desc a_md({batch, m, k}, a_type,
                          transpose_a ? memory::dims{m * k, 1, m} : memory::dims{m * k, k, 1});
  const memory::desc b_md({batch, k, n}, b_type,
                          transpose_b ? memory::dims{k * n, 1, k} : memory::dims{k * n, n, 1});
  const memory::desc c_md({batch, m, n}, c_type, memory::dims{m * n, n, 1});
  const Key key{batch, m, k, n, static_cast<int>(a_type), static_cast<int>(b_type),
                static_cast<int>(c_type), transpose_a, transpose_b};
  try {
    dnnl::matmul primitive = Primitive(key, a_md, b_md, c_md);
    dnnl::stream stream(Engine());
    memory a_mem(a_md, Engine(), a.untyped_data());
    memory b_mem(b_md, Engine(), b.untyped_data());
    memory c_mem(c_md, Engine(), c->untyped_data());
    primitive.execute(stream, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem},
                               {DNNL_ARG_DST, c_mem}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BertJaxOnednnMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // a
                                  .Arg<ffi::AnyBuffer>()  // b
                                  .Ret<ffi::AnyBuffer>()  // c
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b"));
