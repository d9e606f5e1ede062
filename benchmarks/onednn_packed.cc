// Packed vs plain int8 weights in oneDNN matmul (benchmarks/RESULTS.md, "Kernels packed once").
//   inc=$(.venv/bin/python -c "from bert_jax import onednn; print(*onednn.find_onednn())")
//   set -- $inc; g++ -O2 -std=c++17 -I$1 benchmarks/onednn_packed.cc -L$2 -ldnnl -Wl,-rpath,$2 -o /tmp/pp
//   /tmp/pp   # ms and GOP/s per shape, plain / packed / the M=128 layout at this M
#include <chrono>
#include <cstdio>
#include <vector>
#include <cstdint>
#include "oneapi/dnnl/dnnl.hpp"
using namespace dnnl;
int main() {
  engine eng(engine::kind::cpu, 0); stream s(eng);
  for (int64_t M : {16, 64, 128, 4096}) for (auto [K, N] : std::vector<std::pair<int64_t,int64_t>>{{768, 768}, {768, 3072}, {3072, 768}}) {
    memory::desc a_md({M, K}, memory::data_type::s8, memory::format_tag::ab);
    memory::desc b_plain({K, N}, memory::data_type::s8, memory::format_tag::ab);
    memory::desc b_any({K, N}, memory::data_type::s8, memory::format_tag::any);
    memory::desc c_md({M, N}, memory::data_type::s32, memory::format_tag::ab);
    matmul::primitive_desc pd_plain(eng, a_md, b_plain, c_md), pd_any(eng, a_md, b_any, c_md);
    std::vector<int8_t> A(M * K, 3), B(K * N, 5); std::vector<int32_t> C(M * N);
    memory a(a_md, eng, A.data()), b(b_plain, eng, B.data()), c(c_md, eng, C.data());
    memory bp(pd_any.weights_desc(), eng);
    reorder(b, bp).execute(s, b, bp); s.wait();
    matmul mp(pd_plain), ma(pd_any);
    auto run = [&](matmul& m, memory& w) {
      for (int i = 0; i < 3; ++i) { m.execute(s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, c}}); } s.wait();
      int reps = M >= 4096 ? 20 : 400;
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; ++i) m.execute(s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, c}});
      s.wait();
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
    };
    double tp = run(mp, b), ta = run(ma, bp), tp2 = run(mp, b), ta2 = run(ma, bp);
    double t1 = std::min(tp, tp2), t2 = std::min(ta, ta2);
    // The layout chosen at M=128, used at this M.
    memory::desc a128({128, K}, memory::data_type::s8, memory::format_tag::ab);
    memory::desc c128({128, N}, memory::data_type::s32, memory::format_tag::ab);
    matmul::primitive_desc pd128(eng, a128, b_any, c128);
    bool same = pd128.weights_desc() == pd_any.weights_desc();
    matmul::primitive_desc pd_fixed(eng, a_md, pd128.weights_desc(), c_md);
    memory bf(pd128.weights_desc(), eng); reorder(b, bf).execute(s, b, bf); s.wait();
    matmul mf(pd_fixed);
    double tf = std::min(run(mf, bf), run(mf, bf));
    printf("   same layout as M=128: %d; M=128 layout here: %.3f ms (%.0f GOP/s) %s; size %zu vs plain %zu\n", (int)same, tf * 1e3, 2.0 * M * K * N / tf / 1e9, pd_fixed.impl_info_str(), pd128.weights_desc().get_size(), b_plain.get_size());
    printf("M=%4ld K=%4ld N=%4ld plain %.3f ms (%.0f GOP/s) packed %.3f ms (%.0f GOP/s) %s | %s\n", M, K, N, t1 * 1e3, 2.0 * M * K * N / t1 / 1e9, t2 * 1e3, 2.0 * M * K * N / t2 / 1e9, pd_plain.impl_info_str(), pd_any.impl_info_str());
  }
}
