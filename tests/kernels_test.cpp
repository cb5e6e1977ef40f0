// Every SIMD kernel against the scalar reference, on random inputs over many shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/kernels.h"
#include "test_util.h"

namespace llmq {
namespace {

using test::kU;
using test::randn;

class KernelsTest : public ::testing::TestWithParam<const CpuKernels*> {
 protected:
  const CpuKernels& k() { return *GetParam(); }
  const CpuKernels& ref() { return cpu_kernels_ref(); }
};

// Odd sizes exercise every tail path (vector of 8/16, bf16 pair blocks of 16/32, row blocks of 4).
const int64_t kSizes[] = {1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 257, 1000, 2048};

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> r(v.size());
  for (size_t i = 0; i < v.size(); i++) r[i] = f32_to_bf16(v[i]);
  return r;
}
std::vector<uint16_t> to_f16(const std::vector<float>& v) {
  std::vector<uint16_t> r(v.size());
  for (size_t i = 0; i < v.size(); i++) r[i] = f32_to_f16(v[i]);
  return r;
}

// Both kernels compute sum_k w_k x_k in f32 in different orders. Each is within
// K*u*sum|w_k x_k| of the exact sum (the standard bound for recursive summation with
// fused or unfused products), so they differ by at most 2*K*u*sum|w_k x_k|.
template <class W, class Gemv, class Cvt>
void check_gemv(Gemv simd, Gemv refk, const std::vector<W>& w, Cvt cvt, int64_t M, int64_t K, uint64_t seed) {
  for (int n = 1; n <= kGemvMaxBatch; n++) {
    auto x = randn((size_t)(n * K), seed + n);
    const int64_t ldy = M + 3;
    std::vector<float> y(n * ldy, NAN), yr(n * ldy, NAN);
    // A sub-range of rows, as threads use; the rest of y must stay untouched.
    const int64_t m0 = M > 5 ? 1 : 0, m1 = M;
    simd(w.data(), x.data(), y.data(), K, n, ldy, m0, m1);
    refk(w.data(), x.data(), yr.data(), K, n, ldy, m0, m1);
    for (int i = 0; i < n; i++)
      for (int64_t m = 0; m < ldy; m++) {
        float a = y[i * ldy + m], b = yr[i * ldy + m];
        if (m < m0 || m >= m1) {
          ASSERT_TRUE(std::isnan(a)) << "wrote outside [m0, m1) at " << m;
          continue;
        }
        double mag = 0;
        for (int64_t kk = 0; kk < K; kk++) mag += std::fabs((double)cvt(w[m * K + kk]) * x[i * K + kk]);
        ASSERT_LE(std::fabs((double)a - b), 2 * K * kU * mag + 1e-30) << "M=" << M << " K=" << K << " n=" << n << " m=" << m;
      }
  }
}

TEST_P(KernelsTest, GemvAllDtypes) {
  uint64_t seed = 1;
  for (int64_t M : {1, 3, 4, 5, 9, 33}) {
    for (int64_t K : kSizes) {
      auto wf = randn((size_t)(M * K), seed++);
      check_gemv<float>(k().gemv_f32, ref().gemv_f32, wf, [](float v) { return v; }, M, K, seed);
      check_gemv<uint16_t>(k().gemv_bf16, ref().gemv_bf16, to_bf16(wf), bf16_to_f32, M, K, seed);
      check_gemv<uint16_t>(k().gemv_f16, ref().gemv_f16, to_f16(wf), f16_to_f32, M, K, seed);
      std::vector<uint8_t> w8(M * K);  // every E4M3 code but the NaNs, subnormals included
      for (size_t i = 0; i < w8.size(); i++) w8[i] = (uint8_t)((i * 37 + seed) % 255), w8[i] += (w8[i] & 0x7f) == 0x7f;
      check_gemv<uint8_t>(k().gemv_e4m3, ref().gemv_e4m3, w8, e4m3_to_f32, M, K, seed);
    }
  }
}

// bf16 x bf16 prefill product (AVX512_BF16 CPUs) against the scalar reference: products of
// two bf16 values (8 significant bits each) are exact in f32, so only the order of the f32
// sums differs: at most 2*K*u*sum|w x| apart, as for the GEMVs. Rows [1, M) only; M past
// the 8- and 4-row tiles, n past 1, 2 and 3 panels of 16 tokens, K odd and even.
TEST_P(KernelsTest, GemmBf16) {
  if (!k().gemm_bf16) GTEST_SKIP() << k().isa << ": no bf16 dot products";
  uint64_t seed = 7;
  for (int64_t M : {1, 3, 5, 9, 13, 33})
    for (int64_t K : {1, 2, 7, 31, 32, 33, 65, 100, 257})
      for (int64_t n : {1, 3, 16, 17, 35, 49, 70}) {
        auto w = to_bf16(randn((size_t)(M * K), seed++));
        const auto xf = randn((size_t)(n * K), seed++);
        std::vector<uint16_t> xp((size_t)gemm_bf16_packed_size(n, K), 0xffff);
        gemm_bf16_pack_x(xf.data(), n, K, xp.data(), 0, (n + 15) / 16);
        const int64_t ldy = M + 2, m0 = M > 1 ? 1 : 0;
        std::vector<float> y(n * ldy, NAN), yr(n * ldy, NAN);
        k().gemm_bf16(w.data(), xp.data(), y.data(), K, n, ldy, m0, M);
        gemm_bf16_ref(w.data(), xp.data(), yr.data(), K, n, ldy, m0, M);
        for (int64_t i = 0; i < n; i++)
          for (int64_t m = 0; m < ldy; m++) {
            const float a = y[i * ldy + m], b = yr[i * ldy + m];
            if (m < m0 || m >= M) {
              ASSERT_TRUE(std::isnan(a)) << "wrote outside [m0, m1) at " << m;
              continue;
            }
            double mag = 0;
            for (int64_t kk = 0; kk < K; kk++)
              mag += std::fabs((double)bf16_to_f32(w[m * K + kk]) * bf16_to_f32(f32_to_bf16(xf[i * K + kk])));
            ASSERT_LE(std::fabs((double)a - b), 2 * K * kU * mag + 1e-30) << "M=" << M << " K=" << K << " n=" << n;
          }
      }
}

// Training's row-major bf16 product (AVX512_BF16) against the scalar reference, the same
// bound as above (exact products, f32 sums in another order: the kernel also splits k into
// blocks of 256 pairs, adding each block's alpha*sum to C). Rows [1, M) of C only, with and
// without accumulation into C; K past one k block (600 > 512), n past the 18-panel column
// block (300 > 288); B packed over more of k than the product uses (b_kp2) in some cases.
TEST_P(KernelsTest, GemmBf16Rows) {
  if (!k().gemm_bf16_rows) GTEST_SKIP() << k().isa << ": no bf16 dot products";
  uint64_t seed = 11;
  for (int64_t M : {1, 3, 5, 9, 13, 33})
    for (int64_t K : {2, 8, 34, 64, 258, 600})
      for (int64_t n : {1, 5, 16, 17, 35, 49, 300})
        for (bool acc : {false, true}) {
          const int64_t lda = K + 2, ldc = n + 3, m0 = M > 1 ? 1 : 0;
          auto a = to_bf16(randn((size_t)(M * lda), seed++));
          // Every third case B is packed over KB = K + 6 columns (random, so using them shows).
          const int64_t KB = (M + K + n) % 3 == 0 ? K + 6 : K;
          const auto bfull = randn((size_t)(n * KB), seed++);
          std::vector<uint16_t> bp((size_t)gemm_bf16_packed_size(n, KB), 0xffff);
          gemm_bf16_pack_x(bfull.data(), n, KB, bp.data(), 0, (n + 15) / 16);
          std::vector<float> bf((size_t)(n * K));
          for (int64_t j = 0; j < n; j++)
            for (int64_t kk = 0; kk < K; kk++) bf[j * K + kk] = bfull[j * KB + kk];
          const auto c0 = randn((size_t)(M * ldc), seed++);
          std::vector<float> c = c0, cr = c0;
          const float alpha = 0.75f;
          // A row-major, or (every other case) in the panel layout as a transposed A packs.
          const bool panels = (M + K + n) % 2 == 1;
          std::vector<uint16_t> apan((size_t)gemm_bf16_packed_size(M, K));
          for (int64_t i = 0; i < M; i++)
            for (int64_t kk = 0; kk < K; kk++) apan[gemm_bf16_packed_index(i, kk, K)] = a[i * lda + kk];
          GemmBf16Args g{panels ? apan.data() : a.data(), lda, bp.data(), K / 2, c.data(), ldc, n, alpha, acc, panels, KB / 2};
          k().gemm_bf16_rows(g, m0, M);
          g.C = cr.data();
          gemm_bf16_rows_ref(g, m0, M);
          for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < ldc; j++) {
              if (i < m0 || j >= n) {
                ASSERT_EQ(c[i * ldc + j], c0[i * ldc + j]) << "wrote outside rows [m0, M), columns [0, n)";
                continue;
              }
              double mag = 0;
              for (int64_t kk = 0; kk < K; kk++)
                mag += std::fabs((double)bf16_to_f32(a[i * lda + kk]) * bf16_to_f32(f32_to_bf16(bf[j * K + kk])));
              // alpha*sum (+ c): the sums' bound scaled by alpha, plus one rounding of the result each.
              const double tol = alpha * 2 * K * kU * mag + 4 * kU * (std::fabs(c0[i * ldc + j]) + alpha * mag) + 1e-30;
              ASSERT_LE(std::fabs((double)c[i * ldc + j] - cr[i * ldc + j]), tol)
                  << "M=" << M << " K=" << K << " n=" << n << " acc=" << acc;
            }
        }
}

// The training packers give the reference's bytes (round to nearest even; randn values are
// never denormal, where vcvtne2ps2bf16 would flush): rows, panels, transposed panels, with
// odd k, partial panels and a row stride past the used columns.
TEST_P(KernelsTest, PackBf16MatchesReference) {
  if (!k().pack_bf16_rows) GTEST_SKIP() << k().isa << ": no bf16 dot products";
  for (int64_t n : {1, 15, 16, 17, 40})
    for (int64_t kk : {1, 2, 31, 33, 64, 77}) {
      const int64_t ld = std::max(n, kk) + 5, Kp = (kk + 1) / 2 * 2, panels = (n + 15) / 16;
      const auto S = randn((size_t)(ld * std::max(n, kk)), (uint64_t)(n * 100 + kk));
      std::vector<uint16_t> a((size_t)(n * Kp), 0xffff), b = a;
      k().pack_bf16_rows(S.data(), ld, n, kk, a.data());
      pack_bf16_rows_ref(S.data(), ld, n, kk, b.data());
      ASSERT_EQ(a, b) << "rows n=" << n << " k=" << kk;
      a.assign((size_t)gemm_bf16_packed_size(n, kk), 0xffff), b = a;
      k().pack_bf16_panels(S.data(), ld, n, kk, a.data(), 0, panels);
      pack_bf16_panels_ref(S.data(), ld, n, kk, b.data(), 0, panels);
      ASSERT_EQ(a, b) << "panels n=" << n << " k=" << kk;
      a.assign(a.size(), 0xffff), b = a;
      k().pack_bf16_panels_t(S.data(), ld, n, kk, a.data(), 0, panels);
      pack_bf16_panels_t_ref(S.data(), ld, n, kk, b.data(), 0, panels);
      ASSERT_EQ(a, b) << "transposed panels n=" << n << " k=" << kk;
      if (panels > 1) {  // a range not starting at panel 0 (each thread packs one), panel 0 untouched
        a.assign(a.size(), 0xffff), b = a;
        k().pack_bf16_panels_t(S.data(), ld, n, kk, a.data(), 1, panels);
        pack_bf16_panels_t_ref(S.data(), ld, n, kk, b.data(), 1, panels);
        ASSERT_EQ(a, b) << "transposed panels [1, " << panels << ") n=" << n << " k=" << kk;
        a.assign(a.size(), 0xffff), b = a;
        k().pack_bf16_panels(S.data(), ld, n, kk, a.data(), 1, panels);
        pack_bf16_panels_ref(S.data(), ld, n, kk, b.data(), 1, panels);
        ASSERT_EQ(a, b) << "panels [1, " << panels << ") n=" << n << " k=" << kk;
      }
      // The reference against gemm_bf16_pack_x, the prefill's packer (same layout).
      std::vector<float> X((size_t)(n * kk));
      for (int64_t j = 0; j < n; j++)
        for (int64_t c = 0; c < kk; c++) X[j * kk + c] = S[j * ld + c];
      a.assign(a.size(), 0xffff);
      gemm_bf16_pack_x(X.data(), n, kk, a.data(), 0, panels);
      pack_bf16_panels_ref(S.data(), ld, n, kk, b.data(), 0, panels);
      ASSERT_EQ(a, b);
    }
}

// The loss kernels against the scalar reference (std::exp, double sums). The vector exp is
// within ~2 ulp (vec_exp.inc) and each lane sums at most 64 positive terms in f32 before the
// block goes to double (<= 64u relative), so the sum is within ~67u relative; log turns that
// into an absolute error of lse, plus the rounding of max: |lse - ref| <= 70u + u*|max|. Each
// softmax_scaled element: exp's 2 ulp, one rounding of x - lse (u*|x - lse| absolute in the
// argument, the same relative in the result) and the scaling: 4u + u*|x - lse| relative.
// swiglu's backward against the reference: exp within ~2 ulp moves sig by as much relative,
// and each output is a product of ~4 rounded factors: 8u relative of each output's size.
TEST_P(KernelsTest, SwigluBackward) {
  uint64_t seed = 31;
  for (int64_t n : kSizes) {
    const auto d = randn((size_t)n, seed++), g = randn((size_t)n, seed++, 3.f), u = randn((size_t)n, seed++);
    std::vector<float> dg(n), du(n), dgr(n), dur(n);
    k().swiglu_backward(d.data(), g.data(), u.data(), dg.data(), du.data(), n);
    ref().swiglu_backward(d.data(), g.data(), u.data(), dgr.data(), dur.data(), n);
    for (int64_t i = 0; i < n; i++) {
      ASSERT_NEAR(du[i], dur[i], 8 * kU * std::fabs(dur[i]) + 1e-30) << n << " " << i;
      // dg's factor 1 + g(1 - sig) can cancel (g near -1.28): bound by its terms' sizes.
      const float sig = 1.f / (1.f + std::exp(-g[i]));
      const double mag = std::fabs(d[i] * u[i]) * sig * (1 + std::fabs(g[i]) * (1 - sig));
      ASSERT_NEAR(dg[i], dgr[i], 8 * kU * mag + 1e-30) << n << " " << i;
    }
  }
}

// AdamW against the scalar reference. The vector form may fuse a multiply and an add (one
// rounding fewer), so each moment is within 2u of its size (two rounded terms, each at most
// the sum's size as both are >= 0 for v; for m bound by |b1 m| + |(1-b1) g|). p's update
// term step*m/(sqrt(v)/bc2 + eps) is a chain of ~6 roundings on top of the moments' 2u:
// 8u of the term, plus 2u of |p*decay|.
TEST_P(KernelsTest, AdamW) {
  uint64_t seed = 41;
  for (int64_t n : kSizes) {
    const auto g = randn((size_t)n, seed++), p0 = randn((size_t)n, seed++), m0 = randn((size_t)n, seed++, 0.1f);
    auto v0 = randn((size_t)n, seed++, 0.01f);
    for (auto& x : v0) x = x * x;
    const AdamWStep st{0.99f, 0.9f, 0.95f, 3e-3f, 0.3f, 1e-8f};
    auto p = p0, m = m0, v = v0, pr = p0, mr = m0, vr = v0;
    k().adamw(p.data(), m.data(), v.data(), g.data(), n, st);
    ref().adamw(pr.data(), mr.data(), vr.data(), g.data(), n, st);
    for (int64_t i = 0; i < n; i++) {
      const double mmag = std::fabs(st.b1 * m0[i]) + std::fabs((1 - st.b1) * g[i]);
      ASSERT_NEAR(m[i], mr[i], 2 * kU * mmag + 1e-30) << n << " " << i;
      ASSERT_NEAR(v[i], vr[i], 2 * kU * vr[i] + 1e-30) << n << " " << i;
      const double term = st.step_size * mmag / (std::sqrt(vr[i]) / st.sqrt_bc2 + st.eps);
      ASSERT_NEAR(p[i], pr[i], 8 * kU * term + 2 * kU * std::fabs(p0[i] * st.decay) + 1e-30) << n << " " << i;
    }
  }
}

TEST_P(KernelsTest, LossKernels) {
  uint64_t seed = 21;
  for (int64_t n : kSizes) {
    auto x = randn((size_t)n, seed++, 3.f);
    const double a = k().logsumexp(x.data(), n), b = ref().logsumexp(x.data(), n);
    float mx = x[0];
    for (float v : x) mx = std::max(mx, v);
    ASSERT_NEAR(a, b, 70 * kU + kU * std::fabs(mx)) << "n=" << n;
    auto y = x, yr = x;
    k().softmax_scaled(y.data(), n, (float)b, 0.37f);
    ref().softmax_scaled(yr.data(), n, (float)b, 0.37f);
    for (int64_t i = 0; i < n; i++)
      ASSERT_NEAR(y[i], yr[i], (4 * kU + kU * std::fabs(x[i] - b)) * yr[i] + 1e-38) << "n=" << n << " i=" << i;
  }
}

// The packed activation layout, element by element as kernels.h defines it: every element
// rounded to bf16 at its place, the padding (tokens past n, the column past an odd K) zero.
TEST(GemmBf16Pack, Layout) {
  for (int64_t n : {1, 16, 21})
    for (int64_t K : {1, 6, 9}) {
      const auto x = randn((size_t)(n * K), (uint64_t)(n * 31 + K));
      const int64_t Kp = (K + 1) / 2 * 2, panels = (n + 15) / 16;
      std::vector<uint16_t> xp((size_t)gemm_bf16_packed_size(n, K), 0xffff);
      ASSERT_EQ((int64_t)xp.size(), panels * 16 * Kp);
      gemm_bf16_pack_x(x.data(), n, K, xp.data(), 0, panels);
      for (int64_t t = 0; t < panels * 16; t++)
        for (int64_t kk = 0; kk < Kp; kk++) {
          const uint16_t want = t < n && kk < K ? f32_to_bf16(x[t * K + kk]) : 0;
          ASSERT_EQ(xp[((t / 16) * (Kp / 2) + kk / 2) * 32 + (t % 16) * 2 + kk % 2], want) << t << "," << kk;
        }
    }
}

// Conversions are exact: every bf16/f16 value has exactly one f32 value.
TEST_P(KernelsTest, ConversionsExact) {
  std::vector<uint16_t> all(65536 + 37);
  for (size_t i = 0; i < all.size(); i++) all[i] = (uint16_t)(i * 40503u);  // every value, odd length
  std::vector<float> a(all.size()), b(all.size());
  for (auto cvt : {std::pair{k().cvt_bf16_f32, ref().cvt_bf16_f32}, std::pair{k().cvt_f16_f32, ref().cvt_f16_f32}}) {
    cvt.first(all.data(), a.data(), (int64_t)all.size());
    cvt.second(all.data(), b.data(), (int64_t)all.size());
    for (size_t i = 0; i < all.size(); i++)
      ASSERT_TRUE(f32_bits(a[i]) == f32_bits(b[i]) || (std::isnan(a[i]) && std::isnan(b[i]))) << i;
  }
}

TEST_P(KernelsTest, DotAxpy) {
  for (int64_t n : kSizes) {
    auto a = randn(n, 10 + n), b = randn(n, 20 + n);
    double mag = 0;
    for (int64_t i = 0; i < n; i++) mag += std::fabs((double)a[i] * b[i]);
    EXPECT_LE(std::fabs(k().dot(a.data(), b.data(), n) - ref().dot(a.data(), b.data(), n)), 2 * n * kU * mag + 1e-30);
    // axpy is elementwise: one fused or two rounded operations, within 2u relative of |a x| + |y|.
    auto y1 = b, y2 = b;
    k().axpy(0.37f, a.data(), y1.data(), n);
    ref().axpy(0.37f, a.data(), y2.data(), n);
    for (int64_t i = 0; i < n; i++) EXPECT_LE(std::fabs(y1[i] - y2[i]), 2 * kU * (std::fabs(0.37f * a[i]) + std::fabs(b[i])));
  }
}

TEST_P(KernelsTest, RmsNorm) {
  for (int64_t n : kSizes) {
    auto x = randn(n, 30 + n, 3.f), w = randn(n, 40 + n);
    std::vector<float> o1(n), o2(n);
    k().rmsnorm(x.data(), w.data(), o1.data(), n, 1e-5f);
    ref().rmsnorm(x.data(), w.data(), o2.data(), n, 1e-5f);
    // The sum of squares differs by up to 2n*u relative (summation order); 1/sqrt halves
    // that, and the two products add 2u each: bound (n + 5)*u relative to |x w| / rms.
    for (int64_t i = 0; i < n; i++) EXPECT_LE(std::fabs(o1[i] - o2[i]), (n + 5) * kU * std::fabs(o2[i]) + 1e-30) << n;
  }
}

TEST_P(KernelsTest, SoftmaxAndSwiglu) {
  for (int64_t n : kSizes) {
    auto x = randn(n, 50 + n, 4.f), up = randn(n, 60 + n);
    auto s1 = x, s2 = x;
    k().softmax(s1.data(), n);
    ref().softmax(s2.data(), n);
    // The vector exp is within 2 ulp of libm's; the normalising sum adds n*u: bound
    // (n + 8)*u relative per element.
    for (int64_t i = 0; i < n; i++) EXPECT_LE(std::fabs(s1[i] - s2[i]), (n + 8) * kU * s2[i] + 1e-30) << n;
    std::vector<float> g1(n), g2(n);
    k().swiglu(x.data(), up.data(), g1.data(), n);
    ref().swiglu(x.data(), up.data(), g2.data(), n);
    // exp within 2 ulp, then 1+e, a division and two products: 8u relative.
    for (int64_t i = 0; i < n; i++) EXPECT_LE(std::fabs(g1[i] - g2[i]), 8 * kU * std::fabs(g2[i]) + 1e-30) << n;
  }
  // Extremes: exp clamps must give 0 and 1 probabilities, not NaN.
  std::vector<float> e = {-1e30f, 0.f, 1e30f, -80.f, 85.f};
  k().softmax(e.data(), (int64_t)e.size());
  for (float v : e) EXPECT_FALSE(std::isnan(v));
  EXPECT_NEAR(e[2], 1.f, 1e-6);
}

// Attention of a GQA group against float64 sums: head sizes on and off the vector width,
// key counts around the 8/16-key blocks, 1-8 query heads (register blocks of 1/2/4/8),
// a score stride past n whose gap must stay untouched.
TEST_P(KernelsTest, AttentionScoresAccum) {
  for (int64_t hd : {7, 16, 24, 32, 48, 64, 128}) {
    for (int nq : {1, 3, 4, 8}) {
      for (int64_t n : {1, 5, 15, 16, 17, 33, 160}) {
        const uint64_t seed = (uint64_t)(hd * 1000 + nq * 100 + n);
        auto q = randn((size_t)(nq * hd), seed), K = randn((size_t)(n * hd), seed + 1), Vv = randn((size_t)(n * hd), seed + 2);
        const int64_t lds = n + 3;
        const float scale = 0.125f;
        std::vector<float> s((size_t)(nq * lds), NAN);
        k().attn_scores(q.data(), nq, K.data(), n, hd, scale, s.data(), lds);
        for (int h = 0; h < nq; h++)
          for (int64_t t = 0; t < lds; t++) {
            const float got = s[h * lds + t];
            if (t >= n) {
              ASSERT_TRUE(std::isnan(got)) << "wrote past n at " << t;
              continue;
            }
            double exact = 0, mag = 0;
            for (int64_t d = 0; d < hd; d++) {
              exact += (double)q[h * hd + d] * K[t * hd + d];
              mag += std::fabs((double)q[h * hd + d] * K[t * hd + d]);
            }
            // Any order of hd products summed in f32 is within (hd-1)*u*sum|q k| of the exact
            // sum (fused or not: +u per product); the scale adds u relative: (hd+1)*u.
            ASSERT_LE(std::fabs(got - scale * exact), (hd + 1) * kU * scale * mag + 1e-30)
                << "hd=" << hd << " nq=" << nq << " n=" << n << " h=" << h << " t=" << t;
          }
        // Probabilities in the score buffer's layout; out starts non-zero (it accumulates).
        std::vector<float> p((size_t)(nq * lds), NAN), out = randn((size_t)(nq * hd), seed + 3);
        for (int h = 0; h < nq; h++)
          for (int64_t t = 0; t < n; t++) p[h * lds + t] = std::fabs(randn(1, seed + 7 * t + h)[0]) / (float)n;
        const auto out0 = out;
        k().attn_accum(p.data(), nq, lds, Vv.data(), n, hd, out.data());
        for (int h = 0; h < nq; h++)
          for (int64_t d = 0; d < hd; d++) {
            double exact = out0[h * hd + d], mag = std::fabs(exact);
            for (int64_t t = 0; t < n; t++) {
              exact += (double)p[h * lds + t] * Vv[t * hd + d];
              mag += std::fabs((double)p[h * lds + t] * Vv[t * hd + d]);
            }
            // n multiply-adds onto the initial value, in order: within (n+1)*u of the magnitudes.
            ASSERT_LE(std::fabs(out[h * hd + d] - exact), (n + 1) * kU * mag + 1e-30)
                << "hd=" << hd << " nq=" << nq << " n=" << n << " h=" << h << " d=" << d;
          }
      }
    }
  }
}

TEST_P(KernelsTest, Rope) {
  for (int hd : {2, 4, 6, 16, 30, 64, 128}) {
    for (int heads : {1, 3, 8}) {
      auto x = randn((size_t)heads * hd, hd * 100 + heads), ang = randn(hd / 2, hd, 3.f);
      std::vector<float> c(hd / 2), s(hd / 2);
      for (int j = 0; j < hd / 2; j++) c[j] = std::cos(ang[j]), s[j] = std::sin(ang[j]);
      auto x1 = x, x2 = x;
      k().rope(x1.data(), c.data(), s.data(), heads, hd);
      ref().rope(x2.data(), c.data(), s.data(), heads, hd);
      // a*c - b*s: two products and a difference, possibly fused: 3u of |a c| + |b s|.
      for (size_t i = 0; i < x.size(); i++) {
        int j = (int)(i % hd) % (hd / 2);
        size_t h0 = i / hd * hd;
        double mag = std::fabs(x[h0 + j] * c[j]) + std::fabs(x[h0 + j + hd / 2] * s[j]) + std::fabs(x[h0 + j] * s[j]) +
                     std::fabs(x[h0 + j + hd / 2] * c[j]);
        EXPECT_LE(std::fabs(x1[i] - x2[i]), 3 * kU * mag + 1e-30);
      }
    }
  }
}

// The activation quantization before every quantized matmul must give the scalar table's
// bytes exactly (the matmul tests compare against the scalar path end to end): random
// blocks at several magnitudes (subnormal to 1e30), exact ties (amax 127 makes d = 1, so
// x = k + 0.5 must round to even), zeros, NaN and infinities, per-block and fixed scales.
TEST_P(KernelsTest, QuantBlocksI8MatchesScalarBitForBit) {
  const int64_t nb = 40;
  std::vector<float> x = randn(nb * 32, 77);
  const float mags[] = {1e-40f, 1e-3f, 1.f, 300.f, 1e30f};
  for (int64_t b = 0; b < nb; b++)
    for (int k = 0; k < 32; k++) x[b * 32 + k] *= mags[b % 5];
  for (int k = 0; k < 32; k++) x[5 * 32 + k] = 0.f;                                   // block 5: zeros
  for (int k = 0; k < 32; k++) x[6 * 32 + k] = k == 0 ? 127.f : (float)(k - 16) + 0.5f;  // ties
  x[7 * 32 + 3] = NAN;                                                                // NaN skipped by amax
  x[8 * 32 + 9] = INFINITY;                                                           // d = inf: all 0
  x[9 * 32 + 0] = -INFINITY, x[9 * 32 + 1] = NAN;
  for (float fixed : {-1.f, 0.f, 2.5f, 127.f}) {
    std::vector<int8_t> q1(nb * 32, 99), q2(nb * 32, 99);
    std::vector<float> d1(nb), d2(nb);
    std::vector<int32_t> s1(nb), s2(nb);
    k().quant_blocks_i8(x.data(), nb, fixed, q1.data(), d1.data(), s1.data());
    ref().quant_blocks_i8(x.data(), nb, fixed, q2.data(), d2.data(), s2.data());
    ASSERT_EQ(0, std::memcmp(q1.data(), q2.data(), q1.size())) << "fixed " << fixed;
    ASSERT_EQ(0, std::memcmp(d1.data(), d2.data(), d1.size() * 4)) << "fixed " << fixed;
    ASSERT_EQ(s1, s2) << "fixed " << fixed;
    // The scalar reference itself: ties to even, |x - d q| <= d/2 (plus the rounding of x/d
    // and d). Not for the subnormal blocks (b % 5 == 0): 1/d overflows there and every code
    // saturates, an absolute error below 1e-39 that no activation meets.
    if (fixed < 0) {
      EXPECT_EQ(q2[6 * 32 + 1], -14);  // -14.5
      EXPECT_EQ(q2[6 * 32 + 2], -14);  // -13.5
      EXPECT_EQ(q2[6 * 32 + 17], 2);   // 1.5
      for (int k = 0; k < 32; k++) EXPECT_EQ(q2[8 * 32 + k], 0);
      for (int64_t b : {1, 2, 3, 4, 11, 12, 13, 14})
        for (int k = 0; k < 32; k++) {
          const double xv = x[b * 32 + k], dq = (double)d2[b] * q2[b * 32 + k];
          EXPECT_LE(std::fabs(xv - dq), d2[b] * (0.5 + 4 * kU * 127) + 1e-45) << b << " " << k;
        }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, KernelsTest, ::testing::ValuesIn(cpu_kernels_supported()),
                         [](const auto& info) { return std::string(info.param->isa); });

TEST(Dtype, Bf16AndF16Rounding) {
  // Round to nearest even at the halfway point, and the special values.
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f808000)), 0x3f80);  // tie, even stays
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f818000)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f808001)), 0x3f81);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_EQ(f32_to_f16(65504.f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.f), 0x7c00);  // rounds to inf
  EXPECT_EQ(f32_to_f16(1.f), 0x3c00);
  EXPECT_EQ(f32_to_f16(5.960464477539063e-08f), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(2.98e-08f), 0x0000);               // below half of it: zero
  EXPECT_EQ(f16_to_f32(0x0001), 5.960464477539063e-08f);
  // Round trip of every finite f16 through f32 is exact.
  for (uint32_t h = 0; h < 65536; h++) {
    if (((h >> 10) & 0x1f) == 0x1f) continue;
    ASSERT_EQ(f32_to_f16(f16_to_f32((uint16_t)h)), h) << h;
  }
  // f32 -> f16 agrees with the compiler's own _Float16 conversion (an independent
  // implementation of IEEE round-to-nearest-even) over a wide range of magnitudes.
  auto v = randn(200000, 7, 1.f);
  for (size_t i = 0; i < v.size(); i++) {
    float f = std::ldexp(v[i], (int)(i % 60) - 40);
    _Float16 h = (_Float16)f;
    uint16_t bits;
    std::memcpy(&bits, &h, 2);
    ASSERT_EQ(f32_to_f16(f), bits) << f;
  }
}

}  // namespace
}  // namespace llmq
