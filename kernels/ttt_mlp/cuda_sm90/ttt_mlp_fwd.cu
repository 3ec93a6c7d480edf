// Forward of tttgraph::ttt_mlp on Hopper (sm_90a): the on-chip tensor-parallel scan.
//
// One thread-block cluster of CS = 2 CTAs per (batch, head). CTA r owns the columns
// [r F/2, (r+1) F/2) of the inner MLP's hidden layer: W1[:, cols], b1[cols], W2[cols, :]. The fp32
// state never leaves the chip: W1 and W2 live in the registers of the warps that update them
// (as mma accumulators, so the update W -= X^T G is one accumulate), b1/b2 in shared memory, and
// a bf16 hi/lo copy of W1 and W2 in shared memory feeds the tensor cores (rewritten once per step).
// Per mini-batch of M = 64 tokens the only couplings across the hidden layer are two row-sums,
// Z2 = sum_f gelu(Z1)_f W2_f (inner step) and Zq2 (output); each is all-reduced across the
// cluster through distributed shared memory, with one cluster barrier each.
//
// Shapes: q, k, v, out [B, H, T, D] bf16; eta [B, H, T] fp32; ln_w, ln_b [H, D]; w1 [H, D, F];
// b1 [H, F]; w2 [H, F, D]; b2 [H, D] (all fp32); checkpoints ck_w1 [B, H, C, D, F], ck_b1 [B, H, C, F],
// ck_w2 [B, H, C, F, D], ck_b2 [B, H, C, D] fp32: the state before every G-th mini-batch.
// Instantiated for D = 64, F = 256, M = 64 (CogVideoX-5B); README.md beside this file has the design.
#include <cuda_runtime.h>

#include "common.cuh"
#include "ttt_mlp.h"

namespace tttgraph {

namespace fwd {

constexpr int D = 64;
constexpr int F = 256;
constexpr int CS = 2;        // CTAs per cluster
constexpr int FL = F / CS;   // hidden columns per CTA
constexpr int M = 64;        // mini-batch
constexpr int WARPS = 8;     // warp w: token rows 16 (w % 4), hidden columns FL/2 (w / 4)
constexpr int THREADS = WARPS * 32;
constexpr int FH = FL / 2;   // hidden columns per warp in the token-row products
constexpr int NF = FH / 8;   // n-tiles over those columns
constexpr int ND = D / 8;    // n-tiles over D

// Shared memory, in bytes from the dynamic base. Tiles are bf16 [rows][cols], swizzled (swz).
constexpr int kTile = M * D * 2;                      // one bf16 [M, D] tile
constexpr int OFF_K = 0;                              // [2][M][D] double-buffered inputs
constexpr int OFF_Q = OFF_K + 2 * kTile;
constexpr int OFF_V = OFF_Q + 2 * kTile;
constexpr int OFF_ETA = OFF_V + 2 * kTile;            // [2][M] fp32
constexpr int OFF_W1H = OFF_ETA + 2 * M * 4;          // [D][FL] bf16 hi / lo of W1
constexpr int OFF_W1L = OFF_W1H + D * FL * 2;
constexpr int OFF_W2H = OFF_W1L + D * FL * 2;         // [FL][D] bf16 hi / lo of W2
constexpr int OFF_W2L = OFF_W2H + FL * D * 2;
constexpr int OFF_A = OFF_W2L + FL * D * 2;           // [M][FL] gelu(Z1), bf16
constexpr int OFF_GZ1 = OFF_A + M * FL * 2;           // [M][FL] G_z1, bf16
constexpr int OFF_GZ2 = OFF_GZ1 + M * FL * 2;         // [M][D] G_z2, bf16
constexpr int OFF_X = OFF_GZ2 + kTile;                // [2 slots][CS source ranks][M][D] fp32 partials
constexpr int OFF_B1 = OFF_X + 2 * CS * M * D * 4;    // [FL] fp32
constexpr int OFF_B2 = OFF_B1 + FL * 4;               // [D] fp32
constexpr int OFF_GAMMA = OFF_B2 + D * 4;
constexpr int OFF_BETA = OFF_GAMMA + D * 4;
constexpr int OFF_RED1 = OFF_BETA + D * 4;            // [4][FL] fp32 column sums of G_z1 per row block
constexpr int OFF_RED2 = OFF_RED1 + 4 * FL * 4;       // [4][D] fp32 column sums of G_z2
constexpr int SMEM = OFF_RED2 + 4 * D * 4;
static_assert(SMEM <= 227 * 1024, "shared memory over the sm_90 per-block limit");

// Index of (row, col) in an fp32 [M][D] exchange tile; columns XOR-swizzled by 8 (row % 8) so the
// float2 fragment stores of a half-warp hit distinct banks.
__device__ __forceinline__ int xidx(int row, int col) { return row * D + (col ^ ((row & 7) << 3)); }

struct Smem {
  bf16 *k, *q, *v, *w1h, *w1l, *w2h, *w2l, *a, *gz1, *gz2;
  float *eta, *x, *b1, *b2, *gamma, *beta, *red1, *red2;
  __device__ explicit Smem(char* base)
      : k(reinterpret_cast<bf16*>(base + OFF_K)), q(reinterpret_cast<bf16*>(base + OFF_Q)),
        v(reinterpret_cast<bf16*>(base + OFF_V)), w1h(reinterpret_cast<bf16*>(base + OFF_W1H)),
        w1l(reinterpret_cast<bf16*>(base + OFF_W1L)), w2h(reinterpret_cast<bf16*>(base + OFF_W2H)),
        w2l(reinterpret_cast<bf16*>(base + OFF_W2L)), a(reinterpret_cast<bf16*>(base + OFF_A)),
        gz1(reinterpret_cast<bf16*>(base + OFF_GZ1)), gz2(reinterpret_cast<bf16*>(base + OFF_GZ2)),
        eta(reinterpret_cast<float*>(base + OFF_ETA)), x(reinterpret_cast<float*>(base + OFF_X)),
        b1(reinterpret_cast<float*>(base + OFF_B1)), b2(reinterpret_cast<float*>(base + OFF_B2)),
        gamma(reinterpret_cast<float*>(base + OFF_GAMMA)), beta(reinterpret_cast<float*>(base + OFF_BETA)),
        red1(reinterpret_cast<float*>(base + OFF_RED1)), red2(reinterpret_cast<float*>(base + OFF_RED2)) {}
};

// Prefetch the K, Q, V tiles and eta of the mini-batch starting at token t0 into buffer `buf`.
__device__ __forceinline__ void load_tiles(const FwdParams& p, const Smem& s, size_t bh, int t0, int buf, int tid) {
  const size_t base = (bh * p.T + t0) * D;
  constexpr int CHUNKS = M * D / 8;  // 16-byte chunks per tile
#pragma unroll
  for (int i = tid; i < CHUNKS; i += THREADS) {
    int row = i / (D / 8), col = (i % (D / 8)) * 8;
    bool valid = t0 + row < p.T;
    size_t g = valid ? base + row * D + col : 0;
    int o = buf * M * D + swz<D>(row, col);
    cp_async16(s.k + o, p.k + g, valid);
    cp_async16(s.q + o, p.q + g, valid);
    cp_async16(s.v + o, p.v + g, valid);
  }
  if (tid < M) {
    bool valid = t0 + tid < p.T;
    const float* src = p.eta + bh * p.T + (valid ? t0 + tid : 0);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(s.eta + buf * M + tid)),
                 "l"(src), "r"(valid ? 4 : 0));
  }
  cp_async_commit();
}

// acc[ND][4] (16 token rows x D) += X[16 rows, this warp's FH hidden cols] @ W2[those cols, :],
// with X given as fp32 accumulators xs[NF][4]. SPLIT: X and W2 as bf16 hi + lo (3 products).
template <bool SPLIT>
__device__ __forceinline__ void rows_times_w2(float (&acc)[ND][4], const float (&xs)[NF][4], const Smem& s, int wc,
                                              int lane) {
#pragma unroll
  for (int kk = 0; kk < NF / 2; ++kk) {
    uint32_t ah[4], al[4];
    if (SPLIT) {
      acc_to_a_split(xs, kk, ah, al);
    } else {
      acc_to_a(xs, kk, ah);
    }
    const int k0 = wc * FH + 16 * kk;
#pragma unroll
    for (int jj = 0; jj < ND / 2; ++jj) {
      uint32_t b[4];
      ldsm_x4_t(b, addr_b_kn<D>(s.w2h, 16 * jj, k0, lane));
      mma_bf16(acc[2 * jj], ah, b[0], b[1]);
      mma_bf16(acc[2 * jj + 1], ah, b[2], b[3]);
      if (SPLIT) {
        mma_bf16(acc[2 * jj], al, b[0], b[1]);
        mma_bf16(acc[2 * jj + 1], al, b[2], b[3]);
        uint32_t bl[4];
        ldsm_x4_t(bl, addr_b_kn<D>(s.w2l, 16 * jj, k0, lane));
        mma_bf16(acc[2 * jj], ah, bl[0], bl[1]);
        mma_bf16(acc[2 * jj + 1], ah, bl[2], bl[3]);
      }
    }
  }
}

// acc[NF][4] (16 token rows x this warp's FH hidden cols) = X[16 rows, D] @ W1[:, cols] + b1, X read
// from a bf16 [M][D] tile. SPLIT: W1 as hi + lo (X exact in bf16).
template <bool SPLIT>
__device__ __forceinline__ void rows_times_w1(float (&acc)[NF][4], const bf16* xt, const Smem& s, int wr, int wc,
                                              int lane) {
#pragma unroll
  for (int j = 0; j < NF; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    ldsm_x4(a, addr_a<D>(xt, 16 * wr, 16 * kk, lane));
#pragma unroll
    for (int jj = 0; jj < NF / 2; ++jj) {
      const int n0 = wc * FH + 16 * jj;
      uint32_t b[4];
      ldsm_x4_t(b, addr_b_kn<FL>(s.w1h, n0, 16 * kk, lane));
      mma_bf16(acc[2 * jj], a, b[0], b[1]);
      mma_bf16(acc[2 * jj + 1], a, b[2], b[3]);
      if (SPLIT) {
        ldsm_x4_t(b, addr_b_kn<FL>(s.w1l, n0, 16 * kk, lane));
        mma_bf16(acc[2 * jj], a, b[0], b[1]);
        mma_bf16(acc[2 * jj + 1], a, b[2], b[3]);
      }
    }
  }
  const int t = lane & 3;
#pragma unroll
  for (int j = 0; j < NF; ++j) {
    const int c = wc * FH + 8 * j + 2 * t;
    const float b0 = s.b1[c], b1 = s.b1[c + 1];
    acc[j][0] += b0;
    acc[j][1] += b1;
    acc[j][2] += b0;
    acc[j][3] += b1;
  }
}

// All-reduce of the [M, D] row-sum across the warps and CTAs that hold partials of it: on entry
// acc is this warp's partial (its FH hidden columns), on return the total plus the bias.
// The twin warps (wr, 0) and (wr, 1) first add their partials in shared memory; warp (wr, 0) then
// pushes the CTA's partial into slot `slot`, row block wr, of both CTAs (a remote store is cheaper
// than a remote load: nothing waits for it); after the cluster barrier each warp adds the two CTAs'
// partials in rank order, so both CTAs get bitwise-equal totals.
__device__ __forceinline__ void cluster_row_sum(float (&acc)[ND][4], const Smem& s, int slot, int rank, int wr,
                                                int wc, int lane, const float* bias) {
  const int g = lane >> 2, t = lane & 3;
  float* mine = s.x + (slot * CS + rank) * M * D;
  if (wc == 1) {
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      const int c = 8 * j + 2 * t;
      *reinterpret_cast<float2*>(mine + xidx(16 * wr + g, c)) = make_float2(acc[j][0], acc[j][1]);
      *reinterpret_cast<float2*>(mine + xidx(16 * wr + g + 8, c)) = make_float2(acc[j][2], acc[j][3]);
    }
  }
  named_barrier(1 + wr, 64);
  if (wc == 0) {
    float* peer = map_rank(mine, rank ^ 1);
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      const int c = 8 * j + 2 * t;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int i = xidx(16 * wr + g + 8 * half, c);
        float2 o = *reinterpret_cast<const float2*>(mine + i);
        o.x += acc[j][2 * half];
        o.y += acc[j][2 * half + 1];
        *reinterpret_cast<float2*>(mine + i) = o;
        *reinterpret_cast<float2*>(peer + i) = o;
      }
    }
  }
  cluster_arrive();
  cluster_wait();
  const float* p0 = s.x + (slot * CS + 0) * M * D;
  const float* p1 = s.x + (slot * CS + 1) * M * D;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int c = 8 * j + 2 * t;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = xidx(16 * wr + g + 8 * half, c);
      const float2 a = *reinterpret_cast<const float2*>(p0 + i);
      const float2 b = *reinterpret_cast<const float2*>(p1 + i);
      acc[j][2 * half] = (a.x + b.x) + bias[c];
      acc[j][2 * half + 1] = (a.y + b.y) + bias[c + 1];
    }
  }
}

// Row-wise LayerNorm of a [16, D] accumulator tile in place: (z - mean) * rstd; returns rstd of
// rows g and g + 8.
__device__ __forceinline__ float2 layer_norm_rows(float (&z)[ND][4], float eps) {
  float s0 = 0.f, s1 = 0.f;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    s0 += z[j][0] + z[j][1];
    s1 += z[j][2] + z[j][3];
  }
  const float mu0 = quad_sum(s0) * (1.f / D), mu1 = quad_sum(s1) * (1.f / D);
  float v0 = 0.f, v1 = 0.f;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    z[j][0] -= mu0;
    z[j][1] -= mu0;
    z[j][2] -= mu1;
    z[j][3] -= mu1;
    v0 += z[j][0] * z[j][0] + z[j][1] * z[j][1];
    v1 += z[j][2] * z[j][2] + z[j][3] * z[j][3];
  }
  const float r0 = rsqrtf(quad_sum(v0) * (1.f / D) + eps), r1 = rsqrtf(quad_sum(v1) * (1.f / D) + eps);
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    z[j][0] *= r0;
    z[j][1] *= r0;
    z[j][2] *= r1;
    z[j][3] *= r1;
  }
  return make_float2(r0, r1);
}

template <bool SPLIT, bool FAST_INNER, bool FAST_OUT>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(THREADS, 1) ttt_mlp_fwd_kernel(const FwdParams p) {
  extern __shared__ __align__(128) char smem_raw[];
  const Smem s(smem_raw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wr = warp & 3, wc = warp >> 2;
  const int g = lane >> 2, t = lane & 3;
  const int rank = static_cast<int>(cluster_rank());
  const size_t bh = blockIdx.y;
  const int h = static_cast<int>(bh % p.H);
  const int f_base = rank * FL;  // first hidden column of this CTA

  // State in registers: w1s = W1[16 wr + (g, g+8), f_base + FH wc + 8j + 2t (+1)] (D rows x FL cols,
  // tiles of the W1 update); w2s = W2[f_base + 16 warp + (g, g+8), 8j + 2t (+1)] (FL rows x D).
  float w1s[NF][4], w2s[ND][4];
  {
    const float* w1 = p.w1 + static_cast<size_t>(h) * D * F;
    const float* w2 = p.w2 + static_cast<size_t>(h) * F * D;
#pragma unroll
    for (int j = 0; j < NF; ++j) {
      const int f = f_base + wc * FH + 8 * j + 2 * t;
      float2 lo = *reinterpret_cast<const float2*>(w1 + (16 * wr + g) * F + f);
      float2 hi = *reinterpret_cast<const float2*>(w1 + (16 * wr + g + 8) * F + f);
      w1s[j][0] = lo.x, w1s[j][1] = lo.y, w1s[j][2] = hi.x, w1s[j][3] = hi.y;
    }
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      const int d = 8 * j + 2 * t;
      float2 lo = *reinterpret_cast<const float2*>(w2 + (f_base + 16 * warp + g) * D + d);
      float2 hi = *reinterpret_cast<const float2*>(w2 + (f_base + 16 * warp + g + 8) * D + d);
      w2s[j][0] = lo.x, w2s[j][1] = lo.y, w2s[j][2] = hi.x, w2s[j][3] = hi.y;
    }
    for (int i = tid; i < FL; i += THREADS) s.b1[i] = p.b1[static_cast<size_t>(h) * F + f_base + i];
    for (int i = tid; i < D; i += THREADS) {
      s.b2[i] = p.b2[h * D + i];
      s.gamma[i] = p.ln_w[h * D + i];
      s.beta[i] = p.ln_b[h * D + i];
    }
  }
  store_acc_split<FL>(s.w1h, s.w1l, w1s, 16 * wr, wc * FH, lane);
  store_acc_split<D>(s.w2h, s.w2l, w2s, 16 * warp, 0, lane);

  const int n_mb = (p.T + M - 1) / M;
  load_tiles(p, s, bh, 0, 0, tid);
  // Every CTA of the cluster is running before anyone touches a peer's shared memory.
  cluster_sync();

  for (int step = 0; step < n_mb; ++step) {
    const int buf = step & 1;
    const int t0 = step * M;
    const int n = min(M, p.T - t0);
    cp_async_wait<0>();
    __syncthreads();
    if (step + 1 < n_mb) load_tiles(p, s, bh, t0 + M, buf ^ 1, tid);
    const bf16* sk = s.k + buf * M * D;
    const bf16* sq = s.q + buf * M * D;
    const bf16* sv = s.v + buf * M * D;
    const float* seta = s.eta + buf * M;

    if (p.save && step % p.G == 0) {  // checkpoint: the state before this mini-batch
      const size_t c = bh * p.n_ck + step / p.G;
      float* cw1 = p.ck_w1 + c * D * F;
      float* cw2 = p.ck_w2 + c * F * D;
#pragma unroll
      for (int j = 0; j < NF; ++j) {
        const int f = f_base + wc * FH + 8 * j + 2 * t;
        *reinterpret_cast<float2*>(cw1 + (16 * wr + g) * F + f) = make_float2(w1s[j][0], w1s[j][1]);
        *reinterpret_cast<float2*>(cw1 + (16 * wr + g + 8) * F + f) = make_float2(w1s[j][2], w1s[j][3]);
      }
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        const int d = 8 * j + 2 * t;
        *reinterpret_cast<float2*>(cw2 + (f_base + 16 * warp + g) * D + d) = make_float2(w2s[j][0], w2s[j][1]);
        *reinterpret_cast<float2*>(cw2 + (f_base + 16 * warp + g + 8) * D + d) = make_float2(w2s[j][2], w2s[j][3]);
      }
      for (int i = tid; i < FL; i += THREADS) p.ck_b1[c * F + f_base + i] = s.b1[i];
      if (rank == 0)
        for (int i = tid; i < D; i += THREADS) p.ck_b2[c * D + i] = s.b2[i];
    }

    // ---- inner step: Z1 = K W1 + b1, A = gelu(Z1), Z2 = A W2 + b2 ----
    float za[NF][4], da[NF][4];
    rows_times_w1<SPLIT>(za, sk, s, wr, wc, lane);
#pragma unroll
    for (int j = 0; j < NF; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) gelu_d1<FAST_INNER>(za[j][e], za[j][e], da[j][e]);
    store_acc_bf16<FL>(s.a, za, 16 * wr, wc * FH, lane);
    float z2[ND][4];
#pragma unroll
    for (int j = 0; j < ND; ++j) z2[j][0] = z2[j][1] = z2[j][2] = z2[j][3] = 0.f;
    rows_times_w2<SPLIT>(z2, za, s, wc, lane);
    // Without the output's exchange (slot 1) between two inner steps, alternate their slots so a
    // CTA never overwrites a partial its peer has yet to read.
    cluster_row_sum(z2, s, p.with_out ? 0 : (step & 1), rank, wr, wc, lane, s.b2);


    // ---- G_z2 = rstd P(G_xh), G_xh = gamma eta (gamma Xh + beta - (V - K)); rows past T zeroed ----
    const float2 rstd = layer_norm_rows(z2, p.eps);  // z2 := Xh
    float gz[ND][4];
    {
      const int r0 = 16 * wr + g;
      const float e0 = r0 < n ? seta[r0] : 0.f, e1 = r0 + 8 < n ? seta[r0 + 8] : 0.f;
      float m0 = 0.f, m1 = 0.f, x0 = 0.f, x1 = 0.f;
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        const int c = 8 * j + 2 * t;
        const float ga = s.gamma[c], gb = s.gamma[c + 1], ba = s.beta[c], bb = s.beta[c + 1];
        const float2 k0 = load_pair<D>(sk, r0, c), v0 = load_pair<D>(sv, r0, c);
        const float2 k1 = load_pair<D>(sk, r0 + 8, c), v1 = load_pair<D>(sv, r0 + 8, c);
        gz[j][0] = ga * e0 * (ga * z2[j][0] + ba - (v0.x - k0.x));
        gz[j][1] = gb * e0 * (gb * z2[j][1] + bb - (v0.y - k0.y));
        gz[j][2] = ga * e1 * (ga * z2[j][2] + ba - (v1.x - k1.x));
        gz[j][3] = gb * e1 * (gb * z2[j][3] + bb - (v1.y - k1.y));
        m0 += gz[j][0] + gz[j][1];
        m1 += gz[j][2] + gz[j][3];
        x0 += gz[j][0] * z2[j][0] + gz[j][1] * z2[j][1];
        x1 += gz[j][2] * z2[j][2] + gz[j][3] * z2[j][3];
      }
      m0 = quad_sum(m0) * (1.f / D), m1 = quad_sum(m1) * (1.f / D);
      x0 = quad_sum(x0) * (1.f / D), x1 = quad_sum(x1) * (1.f / D);
      const float s0 = r0 < n ? rstd.x : 0.f, s1 = r0 + 8 < n ? rstd.y : 0.f;
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        gz[j][0] = s0 * (gz[j][0] - m0 - z2[j][0] * x0);
        gz[j][1] = s0 * (gz[j][1] - m0 - z2[j][1] * x0);
        gz[j][2] = s1 * (gz[j][2] - m1 - z2[j][2] * x1);
        gz[j][3] = s1 * (gz[j][3] - m1 - z2[j][3] * x1);
      }
    }
    if (wc == 0) {  // the wc == 1 twin warp holds the same rows
      store_acc_bf16<D>(s.gz2, gz, 16 * wr, 0, lane);
#pragma unroll
      for (int j = 0; j < ND; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float cs = col_sum(gz[j][e] + gz[j][e + 2]);
          if (g == 0) s.red2[wr * D + 8 * j + 2 * t + e] = cs;
        }
    }

    // ---- G_z1 = (G_z2 W2^T) * gelu'(Z1) on this warp's hidden columns ----
    float gz1[NF][4];
#pragma unroll
    for (int j = 0; j < NF; ++j) gz1[j][0] = gz1[j][1] = gz1[j][2] = gz1[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < ND / 2; ++kk) {
      uint32_t ah[4], al[4];
      if (SPLIT) {
        acc_to_a_split(gz, kk, ah, al);
      } else {
        acc_to_a(gz, kk, ah);
      }
#pragma unroll
      for (int jj = 0; jj < NF / 2; ++jj) {
        const int n0 = wc * FH + 16 * jj;
        uint32_t b[4];
        ldsm_x4(b, addr_b_nk<D>(s.w2h, n0, 16 * kk, lane));
        mma_bf16(gz1[2 * jj], ah, b[0], b[1]);
        mma_bf16(gz1[2 * jj + 1], ah, b[2], b[3]);
        if (SPLIT) {
          mma_bf16(gz1[2 * jj], al, b[0], b[1]);
          mma_bf16(gz1[2 * jj + 1], al, b[2], b[3]);
          ldsm_x4(b, addr_b_nk<D>(s.w2l, n0, 16 * kk, lane));
          mma_bf16(gz1[2 * jj], ah, b[0], b[1]);
          mma_bf16(gz1[2 * jj + 1], ah, b[2], b[3]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < NF; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) gz1[j][e] *= da[j][e];
    store_acc_bf16<FL>(s.gz1, gz1, 16 * wr, wc * FH, lane);
#pragma unroll
    for (int j = 0; j < NF; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float cs = col_sum(gz1[j][e] + gz1[j][e + 2]);
        if (g == 0) s.red1[wr * FL + wc * FH + 8 * j + 2 * t + e] = cs;
      }
    __syncthreads();  // A, G_z1, G_z2 and the column sums are in shared memory; W copies no longer read

    // ---- the update: W2 -= A^T G_z2, W1 -= K^T G_z1 (accumulated into the register state) ----
#pragma unroll
    for (int kk = 0; kk < M / 16; ++kk) {
      uint32_t a[4];
      ldsm_x4_t(a, addr_a_t<FL>(s.a, 16 * warp, 16 * kk, lane));
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = neg_bf16x2(a[i]);
#pragma unroll
      for (int jj = 0; jj < ND / 2; ++jj) {
        uint32_t b[4];
        ldsm_x4_t(b, addr_b_kn<D>(s.gz2, 16 * jj, 16 * kk, lane));
        mma_bf16(w2s[2 * jj], a, b[0], b[1]);
        mma_bf16(w2s[2 * jj + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int kk = 0; kk < M / 16; ++kk) {
      uint32_t a[4];
      ldsm_x4_t(a, addr_a_t<D>(sk, 16 * wr, 16 * kk, lane));
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = neg_bf16x2(a[i]);
#pragma unroll
      for (int jj = 0; jj < NF / 2; ++jj) {
        uint32_t b[4];
        ldsm_x4_t(b, addr_b_kn<FL>(s.gz1, wc * FH + 16 * jj, 16 * kk, lane));
        mma_bf16(w1s[2 * jj], a, b[0], b[1]);
        mma_bf16(w1s[2 * jj + 1], a, b[2], b[3]);
      }
    }
    if (tid < FL) {
      s.b1[tid] -= (s.red1[tid] + s.red1[FL + tid]) + (s.red1[2 * FL + tid] + s.red1[3 * FL + tid]);
    } else if (tid < FL + D) {
      const int i = tid - FL;
      s.b2[i] -= (s.red2[i] + s.red2[D + i]) + (s.red2[2 * D + i] + s.red2[3 * D + i]);
    }
    if (SPLIT) {
      store_acc_split<FL>(s.w1h, s.w1l, w1s, 16 * wr, wc * FH, lane);
      store_acc_split<D>(s.w2h, s.w2l, w2s, 16 * warp, 0, lane);
    } else {
      store_acc_bf16<FL>(s.w1h, w1s, 16 * wr, wc * FH, lane);
      store_acc_bf16<D>(s.w2h, w2s, 16 * warp, 0, lane);
    }
    __syncthreads();  // the new W copies and biases are visible

    // ---- output: out = Q + gamma LN(gelu(Q W1' + b1') W2' + b2') + beta ----
    if (p.with_out) {
      float zq[NF][4];
      rows_times_w1<false>(zq, sq, s, wr, wc, lane);
#pragma unroll
      for (int j = 0; j < NF; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) zq[j][e] = gelu<FAST_OUT>(zq[j][e]);
      float o[ND][4];
#pragma unroll
      for (int j = 0; j < ND; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
      rows_times_w2<false>(o, zq, s, wc, lane);
      cluster_row_sum(o, s, 1, rank, wr, wc, lane, s.b2);
      layer_norm_rows(o, p.eps);
      if (rank == 0 && wc == 0) {
        bf16* out = p.out + (bh * p.T + t0) * D;
        const int r0 = 16 * wr + g;
#pragma unroll
        for (int j = 0; j < ND; ++j) {
          const int c = 8 * j + 2 * t;
          const float ga = s.gamma[c], gb = s.gamma[c + 1], ba = s.beta[c], bb = s.beta[c + 1];
          if (r0 < n) {
            const float2 q0 = load_pair<D>(sq, r0, c);
            *reinterpret_cast<uint32_t*>(out + r0 * D + c) =
                pack_bf16(q0.x + ga * o[j][0] + ba, q0.y + gb * o[j][1] + bb);
          }
          if (r0 + 8 < n) {
            const float2 q1 = load_pair<D>(sq, r0 + 8, c);
            *reinterpret_cast<uint32_t*>(out + (r0 + 8) * D + c) =
                pack_bf16(q1.x + ga * o[j][2] + ba, q1.y + gb * o[j][3] + bb);
          }
        }
      }
    }
  }
  // No CTA may exit while its peer can still read its shared memory.
  cluster_sync();
}

}  // namespace fwd
}  // namespace tttgraph

// Launch on `stream`; returns the cudaError_t of the launch. batch_heads = B * H clusters.
// variant: bit 0 split-bf16 state-update products, bit 1 tanh.approx in the output's GELU, bit 2
// tanh.approx in the inner step's GELU (see ttt_mlp.h).
extern "C" int tttgraph_ttt_mlp_fwd_sm90(const tttgraph::FwdParams* params, int batch_heads, int variant,
                                          cudaStream_t stream) {
  using namespace tttgraph::fwd;
  void (*kernel)(const tttgraph::FwdParams) = nullptr;
  switch (variant) {
    case 0: kernel = ttt_mlp_fwd_kernel<false, false, false>; break;
    case 1: kernel = ttt_mlp_fwd_kernel<true, false, false>; break;
    case 3: kernel = ttt_mlp_fwd_kernel<true, false, true>; break;
    case 7: kernel = ttt_mlp_fwd_kernel<true, true, true>; break;
    case 6: kernel = ttt_mlp_fwd_kernel<false, true, true>; break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
  if (err != cudaSuccess) return static_cast<int>(err);
  kernel<<<dim3(CS, batch_heads), THREADS, SMEM, stream>>>(*params);
  return static_cast<int>(cudaGetLastError());
}
