// The pieces of the sm_90a TTT-MLP scan shared by the forward and the backward kernels: tile sizes,
// the warp split, the products of one mini-batch against the CTA's slice of the inner MLP, the
// cluster all-reduce of a row-sum, LayerNorm rows, and the inner step (forward of one mini-batch
// with its state update) used by the forward and by the backward's recomputation.
//
// One thread-block cluster of CS = 2 CTAs per (batch, head); CTA r owns the hidden columns
// [r FL, (r + 1) FL) of the inner MLP: W1[:, cols] ([D][FL]), b1[cols], W2[cols, :] ([FL][D]).
// Warp w of the 8: wr = w % 4 (token rows 16 wr..16 wr+15), wc = w / 4 (hidden columns FH wc.. of
// the CTA's FL). State-shaped tiles: W1 rows 16 wr, cols FH wc (w1s[NF][4]); W2 rows 16 w (w2s[ND][4]).
#pragma once

#include "common.cuh"

namespace tttgraph {
namespace sm90 {

constexpr int D = 64;
constexpr int F = 256;
constexpr int CS = 2;       // CTAs per cluster
constexpr int FL = F / CS;  // hidden columns per CTA
constexpr int M = 64;       // mini-batch
constexpr int WARPS = 8;
constexpr int THREADS = WARPS * 32;
constexpr int FH = FL / 2;  // hidden columns per warp in the token-row products
constexpr int NF = FH / 8;  // n-tiles over those columns
constexpr int ND = D / 8;   // n-tiles over D
constexpr int kTileMD = M * D * 2;    // bytes of a bf16 [M][D] tile
constexpr int kTileMF = M * FL * 2;   // bytes of a bf16 [M][FL] tile
constexpr int kXSlot = CS * M * D * 4;  // bytes of one exchange slot: [CS source ranks][M][D] fp32

// Index of (row, col) in an fp32 [M][D] tile; columns XOR-swizzled by 8 (row % 8) so the float2
// fragment stores of a half-warp hit distinct banks.
__device__ __forceinline__ int xidx(int row, int col) { return row * D + (col ^ ((row & 7) << 3)); }

// Shared-memory buffers of one inner step (forward of a mini-batch and its state update).
struct StepBufs {
  const bf16* k;    // [M][D] keys of the mini-batch
  const bf16* v;    // [M][D] values
  const float* eta; // [M]
  bf16* w1h;        // [D][FL] bf16 hi / lo of W1 (rewritten by the step)
  bf16* w1l;
  bf16* w2h;        // [FL][D] bf16 hi / lo of W2
  bf16* w2l;
  bf16* a;          // [M][FL] scratch: gelu(Z1)
  bf16* gz1;        // [M][FL] scratch: G_z1
  bf16* gz2;        // [M][D] scratch: G_z2
  float* x;         // exchange slots, [2][CS][M][D] fp32
  float* b1;        // [FL] fp32 state (updated in place)
  float* b2;        // [D] fp32 state, replicated in both CTAs
  const float* gamma;
  const float* beta;
  float* red1;      // [4][FL] scratch
  float* red2;      // [4][D] scratch
};

// acc[ND][4] (16 token rows x D) += X[16 rows, this warp's FH hidden cols] @ W2[those cols, :],
// X given as fp32 accumulators xs[NF][4]. SPLIT: X and W2 as bf16 hi + lo (3 products).
template <bool SPLIT>
__device__ __forceinline__ void rows_times_w2(float (&acc)[ND][4], const float (&xs)[NF][4], const bf16* w2h,
                                              const bf16* w2l, int wc, int lane) {
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
      ldsm_x4_t(b, addr_b_kn<D>(w2h, 16 * jj, k0, lane));
      mma_bf16(acc[2 * jj], ah, b[0], b[1]);
      mma_bf16(acc[2 * jj + 1], ah, b[2], b[3]);
      if (SPLIT) {
        mma_bf16(acc[2 * jj], al, b[0], b[1]);
        mma_bf16(acc[2 * jj + 1], al, b[2], b[3]);
        ldsm_x4_t(b, addr_b_kn<D>(w2l, 16 * jj, k0, lane));
        mma_bf16(acc[2 * jj], ah, b[0], b[1]);
        mma_bf16(acc[2 * jj + 1], ah, b[2], b[3]);
      }
    }
  }
}

// acc[j] += b1 of this warp's hidden columns (wc * FH + 8 j + 2 t, + 1) on every row.
__device__ __forceinline__ void add_b1(float (&acc)[NF][4], const float* b1, int wc, int lane) {
  const int t = lane & 3;
#pragma unroll
  for (int j = 0; j < NF; ++j) {
    const int c = wc * FH + 8 * j + 2 * t;
    const float c0 = b1[c], c1 = b1[c + 1];
    acc[j][0] += c0;
    acc[j][1] += c1;
    acc[j][2] += c0;
    acc[j][3] += c1;
  }
}

// acc[NF][4] (16 token rows x this warp's FH hidden cols) = X[16 rows, D] @ W1[:, cols] + b1, X a
// bf16 [M][D] tile. SPLIT: W1 as hi + lo (X is exact in bf16). ROLL: keep the k loop rolled (the
// backward kernel is larger than the instruction cache when everything is unrolled).
template <bool SPLIT, bool ROLL = false>
__device__ __forceinline__ void rows_times_w1(float (&acc)[NF][4], const bf16* xt, const bf16* w1h, const bf16* w1l,
                                              const float* b1, int wr, int wc, int lane) {
#pragma unroll
  for (int j = 0; j < NF; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll(ROLL ? 1 : D / 16)
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    ldsm_x4(a, addr_a<D>(xt, 16 * wr, 16 * kk, lane));
#pragma unroll
    for (int jj = 0; jj < NF / 2; ++jj) {
      const int n0 = wc * FH + 16 * jj;
      uint32_t b[4];
      ldsm_x4_t(b, addr_b_kn<FL>(w1h, n0, 16 * kk, lane));
      mma_bf16(acc[2 * jj], a, b[0], b[1]);
      mma_bf16(acc[2 * jj + 1], a, b[2], b[3]);
      if (SPLIT) {
        ldsm_x4_t(b, addr_b_kn<FL>(w1l, n0, 16 * kk, lane));
        mma_bf16(acc[2 * jj], a, b[0], b[1]);
        mma_bf16(acc[2 * jj + 1], a, b[2], b[3]);
      }
    }
  }
  add_b1(acc, b1, wc, lane);
}

// Twin pre-reduction of an [M, D] row-sum whose partials (one per warp: its FH hidden columns) are
// spread over the twin warps (wr, 0), (wr, 1): warp (wr, 1) stores its 16 rows at `stage` (rows
// 16 wr..), the pair syncs on named barrier 1 + wr, and warp (wr, 0) adds its own and stores the
// CTA's partial at row 16 wr - row0 of `local` (LOCAL) and hands each float2 to `push(i, o)` (i: its
// element offset in a row-0-based xidx tile), which sends it to the peer. All tiles fp32 [rows][D],
// xidx. (Compile-time flags: runtime null checks in this loop cost the backward 3%.)
template <bool LOCAL, typename Push>
__device__ __forceinline__ void twin_reduce_to(const float (&acc)[ND][4], float* stage, float* local, int row0, int wr,
                                               int wc, int lane, Push push) {
  const int g = lane >> 2, t = lane & 3;
  if (wc == 1) {
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      const int c = 8 * j + 2 * t;
      *reinterpret_cast<float2*>(stage + xidx(16 * wr + g, c)) = make_float2(acc[j][0], acc[j][1]);
      *reinterpret_cast<float2*>(stage + xidx(16 * wr + g + 8, c)) = make_float2(acc[j][2], acc[j][3]);
    }
  }
  named_barrier(1 + wr, 64);
  if (wc == 0) {
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      const int c = 8 * j + 2 * t;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = 16 * wr + g + 8 * half;
        float2 o = *reinterpret_cast<const float2*>(stage + xidx(r, c));
        o.x += acc[j][2 * half];
        o.y += acc[j][2 * half + 1];
        const int i = xidx(r - row0, c);
        if (LOCAL) *reinterpret_cast<float2*>(local + i) = o;
        push(i, o);
      }
    }
  }
}

// twin_reduce_to with plain stores into `remote` (REMOTE: a peer's distributed-shared-memory address,
// a store nobody waits for) or none.
template <bool LOCAL = true, bool REMOTE = true>
__device__ __forceinline__ void twin_reduce(const float (&acc)[ND][4], float* stage, float* local, float* remote,
                                            int row0, int wr, int wc, int lane) {
  twin_reduce_to<LOCAL>(acc, stage, local, row0, wr, wc, lane, [&](int i, float2 o) {
    if (REMOTE) *reinterpret_cast<float2*>(remote + i) = o;
  });
}

// First half of the all-reduce: the twins pre-reduce, then warp (wr, 0) stores the CTA's partial
// into exchange slot `xslot` ([CS source ranks][M][D]) of this CTA and of the peer.
__device__ __forceinline__ void push_row_sum(const float (&acc)[ND][4], float* xslot, int rank, int wr, int wc,
                                             int lane) {
  float* mine = xslot + rank * M * D;
  twin_reduce(acc, mine, mine, map_rank(mine, rank ^ 1), 0, wr, wc, lane);
}

// ---- row helpers over R rows per lane: R = 2 is an accumulator tile's 16 rows (the backward and the
// mma.sync step), R = 1 one token row per lane (the forward's split row work) ----------------------

// acc = s (a + b) + bias for R rows per lane of two fp32 [rows][D] tiles (xidx): the lane's rows
// ra + g (+ 8) of a and rb + g (+ 8) of b; R = 2 is an accumulator tile's 16 rows ([ND][4]), R = 1
// one row per lane ([ND][2]). Both CTAs add the same two partials (a + b == b + a exactly), so they
// hold bitwise-equal totals.
template <int R = 2>
__device__ __forceinline__ void read_sum2_n(float (&acc)[ND][2 * R], const float* a, int ra, const float* b, int rb,
                                          int lane, const float* bias, float s = 1.f) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int c = 8 * j + 2 * t;
#pragma unroll
    for (int half = 0; half < R; ++half) {
      const float2 x = *reinterpret_cast<const float2*>(a + xidx(ra + g + 8 * half, c));
      const float2 y = *reinterpret_cast<const float2*>(b + xidx(rb + g + 8 * half, c));
      acc[j][2 * half] = s * (x.x + y.x) + bias[c];
      acc[j][2 * half + 1] = s * (x.y + y.y) + bias[c + 1];
    }
  }
}

// Row-wise LayerNorm in place, (z - mean) * rstd, of R rows per lane in the accumulator layout
// (elements 2r, 2r + 1 of z[j] are row r of the lane: R = 2 is a [16, D] accumulator tile, R = 1 one
// row per lane); rstd[r] returned.
template <int R>
__device__ __forceinline__ void layer_norm_rows_n(float (&z)[ND][2 * R], float eps, float (&rstd)[R]) {
  float sum[R], var[R], mu[R];
#pragma unroll
  for (int r = 0; r < R; ++r) sum[r] = var[r] = 0.f;
#pragma unroll
  for (int j = 0; j < ND; ++j)
#pragma unroll
    for (int r = 0; r < R; ++r) sum[r] += z[j][2 * r] + z[j][2 * r + 1];
#pragma unroll
  for (int r = 0; r < R; ++r) mu[r] = quad_sum(sum[r]) * (1.f / D);
#pragma unroll
  for (int j = 0; j < ND; ++j)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      z[j][2 * r] -= mu[r];
      z[j][2 * r + 1] -= mu[r];
      var[r] += z[j][2 * r] * z[j][2 * r] + z[j][2 * r + 1] * z[j][2 * r + 1];
    }
#pragma unroll
  for (int r = 0; r < R; ++r) rstd[r] = rsqrtf(quad_sum(var[r]) * (1.f / D) + eps);
#pragma unroll
  for (int j = 0; j < ND; ++j)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      z[j][2 * r] *= rstd[r];
      z[j][2 * r + 1] *= rstd[r];
    }
}

// G_z2 = rstd P(G_xh) with G_xh = gamma eta (gamma Xh + beta - (V - K)), P(g) = g - mean(g) -
// Xh mean(g Xh), for R rows per lane (layout as layer_norm_rows_n): the lane's rows are row + 8 r;
// xh holds Xh and rstd the LayerNorm's scale of those rows. Rows >= n are zero.
template <int R>
__device__ __forceinline__ void grad_z2_rows_n(float (&gz)[ND][2 * R], const float (&xh)[ND][2 * R],
                                               const float (&rstd)[R], const bf16* k, const bf16* v, const float* eta,
                                               const float* gamma, const float* beta, int n, int row, int lane) {
  const int t = lane & 3;
  float e[R], m[R], x[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    e[r] = row + 8 * r < n ? eta[row + 8 * r] : 0.f;
    m[r] = x[r] = 0.f;
  }
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int c = 8 * j + 2 * t;
    const float ga = gamma[c], gb = gamma[c + 1], ba = beta[c], bb = beta[c + 1];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float2 kr = load_pair<D>(k, row + 8 * r, c), vr = load_pair<D>(v, row + 8 * r, c);
      gz[j][2 * r] = ga * e[r] * (ga * xh[j][2 * r] + ba - (vr.x - kr.x));
      gz[j][2 * r + 1] = gb * e[r] * (gb * xh[j][2 * r + 1] + bb - (vr.y - kr.y));
      m[r] += gz[j][2 * r] + gz[j][2 * r + 1];
      x[r] += gz[j][2 * r] * xh[j][2 * r] + gz[j][2 * r + 1] * xh[j][2 * r + 1];
    }
  }
  float sc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    m[r] = quad_sum(m[r]) * (1.f / D);
    x[r] = quad_sum(x[r]) * (1.f / D);
    sc[r] = row + 8 * r < n ? rstd[r] : 0.f;
  }
#pragma unroll
  for (int j = 0; j < ND; ++j)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      gz[j][2 * r] = sc[r] * (gz[j][2 * r] - m[r] - xh[j][2 * r] * x[r]);
      gz[j][2 * r + 1] = sc[r] * (gz[j][2 * r + 1] - m[r] - xh[j][2 * r + 1] * x[r]);
    }
}

// The R = 2 forms under their accumulator-tile names (rows 16 wr + g and + 8 of the lane).
__device__ __forceinline__ void read_sum2(float (&acc)[ND][4], const float* a, int ra, const float* b, int rb,
                                          int lane, const float* bias, float s = 1.f) {
  read_sum2_n<2>(acc, a, ra, b, rb, lane, bias, s);
}

// Second half (after the cluster barrier): acc = the two CTAs' partials in slot `xslot` + bias.
__device__ __forceinline__ void read_row_sum(float (&acc)[ND][4], const float* xslot, int wr, int lane,
                                             const float* bias, float s = 1.f) {
  read_sum2(acc, xslot, 16 * wr, xslot + M * D, 16 * wr, lane, bias, s);
}

// The whole all-reduce with its cluster barrier: acc holds the partial on entry, total + bias on return.
__device__ __forceinline__ void cluster_row_sum(float (&acc)[ND][4], float* xslot, int rank, int wr, int wc,
                                                int lane, const float* bias) {
  push_row_sum(acc, xslot, rank, wr, wc, lane);
  cluster_arrive();
  cluster_wait();
  read_row_sum(acc, xslot, wr, lane, bias);
}

// Row-wise LayerNorm of a [16, D] accumulator tile in place: (z - mean) * rstd; returns rstd of
// rows g and g + 8.
__device__ __forceinline__ float2 layer_norm_rows(float (&z)[ND][4], float eps) {
  float r[2];
  layer_norm_rows_n<2>(z, eps, r);
  return make_float2(r[0], r[1]);
}

// G_z2 of rows 16 wr + g and + 8 (grad_z2_rows_n); rows >= n are zero.
__device__ __forceinline__ void grad_z2_rows(float (&gz)[ND][4], const float (&xh)[ND][4], float2 rstd,
                                             const bf16* k, const bf16* v, const float* eta, const float* gamma,
                                             const float* beta, int n, int wr, int lane) {
  const float r[2] = {rstd.x, rstd.y};
  grad_z2_rows_n<2>(gz, xh, r, k, v, eta, gamma, beta, n, 16 * wr + (lane >> 2), lane);
}

// Column sums of a [16, 8n] accumulator tile over its 16 rows, written by lanes 0..3 to dst[8j + 2t + e].
template <int N>
__device__ __forceinline__ void store_col_sums(float* dst, const float (&acc)[N][4], int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float cs = col_sum(acc[j][e] + acc[j][e + 2]);
      if (g == 0) dst[8 * j + 2 * t + e] = cs;
    }
}

// ---- the state in registers <-> global memory ---------------------------------------------------

// w1s <- W1[:, f_base + cols], w2s <- W2[f_base + rows, :] of fp32 [D][F] / [F][D] matrices.
__device__ __forceinline__ void load_state(float (&w1s)[NF][4], float (&w2s)[ND][4], const float* w1, const float* w2,
                                           int f_base, int warp, int lane) {
  const int wr = warp & 3, wc = warp >> 2, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < NF; ++j) {
    const int f = f_base + wc * FH + 8 * j + 2 * t;
    const float2 lo = *reinterpret_cast<const float2*>(w1 + (16 * wr + g) * F + f);
    const float2 hi = *reinterpret_cast<const float2*>(w1 + (16 * wr + g + 8) * F + f);
    w1s[j][0] = lo.x, w1s[j][1] = lo.y, w1s[j][2] = hi.x, w1s[j][3] = hi.y;
  }
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int d = 8 * j + 2 * t;
    const float2 lo = *reinterpret_cast<const float2*>(w2 + (f_base + 16 * warp + g) * D + d);
    const float2 hi = *reinterpret_cast<const float2*>(w2 + (f_base + 16 * warp + g + 8) * D + d);
    w2s[j][0] = lo.x, w2s[j][1] = lo.y, w2s[j][2] = hi.x, w2s[j][3] = hi.y;
  }
}

__device__ __forceinline__ void store_state(float* w1, float* w2, const float (&w1s)[NF][4], const float (&w2s)[ND][4],
                                            int f_base, int warp, int lane) {
  const int wr = warp & 3, wc = warp >> 2, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < NF; ++j) {
    const int f = f_base + wc * FH + 8 * j + 2 * t;
    *reinterpret_cast<float2*>(w1 + (16 * wr + g) * F + f) = make_float2(w1s[j][0], w1s[j][1]);
    *reinterpret_cast<float2*>(w1 + (16 * wr + g + 8) * F + f) = make_float2(w1s[j][2], w1s[j][3]);
  }
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int d = 8 * j + 2 * t;
    *reinterpret_cast<float2*>(w2 + (f_base + 16 * warp + g) * D + d) = make_float2(w2s[j][0], w2s[j][1]);
    *reinterpret_cast<float2*>(w2 + (f_base + 16 * warp + g + 8) * D + d) = make_float2(w2s[j][2], w2s[j][3]);
  }
}

// The same, as bf16 (the backward's per-step state copies).
__device__ __forceinline__ void store_state_bf16(bf16* w1, bf16* w2, const float (&w1s)[NF][4],
                                                 const float (&w2s)[ND][4], int f_base, int warp, int lane) {
  const int wr = warp & 3, wc = warp >> 2, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < NF; ++j) {
    const int f = f_base + wc * FH + 8 * j + 2 * t;
    *reinterpret_cast<uint32_t*>(w1 + (16 * wr + g) * F + f) = pack_bf16(w1s[j][0], w1s[j][1]);
    *reinterpret_cast<uint32_t*>(w1 + (16 * wr + g + 8) * F + f) = pack_bf16(w1s[j][2], w1s[j][3]);
  }
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int d = 8 * j + 2 * t;
    *reinterpret_cast<uint32_t*>(w2 + (f_base + 16 * warp + g) * D + d) = pack_bf16(w2s[j][0], w2s[j][1]);
    *reinterpret_cast<uint32_t*>(w2 + (f_base + 16 * warp + g + 8) * D + d) = pack_bf16(w2s[j][2], w2s[j][3]);
  }
}

// The bf16 operand copies of the register state in shared memory (hi and, with SPLIT, lo).
template <bool SPLIT>
__device__ __forceinline__ void store_state_copies(const StepBufs& s, const float (&w1s)[NF][4],
                                                   const float (&w2s)[ND][4], int warp, int lane) {
  const int wr = warp & 3, wc = warp >> 2;
  if (SPLIT) {
    store_acc_split<FL>(s.w1h, s.w1l, w1s, 16 * wr, wc * FH, lane);
    store_acc_split<D>(s.w2h, s.w2l, w2s, 16 * warp, 0, lane);
  } else {
    store_acc_bf16<FL>(s.w1h, w1s, 16 * wr, wc * FH, lane);
    store_acc_bf16<D>(s.w2h, w2s, 16 * warp, 0, lane);
  }
}

// ---- one inner step ------------------------------------------------------------------------------

// Front of an inner step: Z1 = K W1 + b1 on this warp's hidden columns, A = gelu(Z1) into s.a,
// da = gelu'(Z1), and z2 = this warp's partial of A W2 (its FH hidden columns; all-reduced next).
template <bool SPLIT, bool FAST, bool ROLL = false>
__device__ __forceinline__ void step_front(float (&da)[NF][4], float (&z2)[ND][4], const StepBufs& s, int wr,
                                           int wc, int lane) {
  float za[NF][4];
  rows_times_w1<SPLIT, ROLL>(za, s.k, s.w1h, s.w1l, s.b1, wr, wc, lane);
#pragma unroll
  for (int j = 0; j < NF; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) gelu_d1<FAST>(za[j][e], za[j][e], da[j][e]);
  store_acc_bf16<FL>(s.a, za, 16 * wr, wc * FH, lane);
#pragma unroll
  for (int j = 0; j < ND; ++j) z2[j][0] = z2[j][1] = z2[j][2] = z2[j][3] = 0.f;
  rows_times_w2<SPLIT>(z2, za, s.w2h, s.w2l, wc, lane);
}

// Back of an inner step, from z2 = the all-reduced Z2 + b2 of the mini-batch: G_z2, G_z1 =
// (G_z2 W2^T) gelu'(Z1), then W2 -= A^T G_z2, W1 -= K^T G_z1, b1 -= sum G_z1, b2 -= sum G_z2 and
// the bf16 copies rewritten. n rows are real. The caller ends it with __syncthreads (the new copies
// and biases are then visible to every warp).
template <bool SPLIT, bool ROLL = false>
__device__ __forceinline__ void step_back(float (&w1s)[NF][4], float (&w2s)[ND][4], float (&z2)[ND][4],
                                          const float (&da)[NF][4], const StepBufs& s, int n, int tid, float eps) {
  const int lane = tid & 31, warp = tid >> 5, wr = warp & 3, wc = warp >> 2;
  const float2 rstd = layer_norm_rows(z2, eps);
  float gz[ND][4];
  grad_z2_rows(gz, z2, rstd, s.k, s.v, s.eta, s.gamma, s.beta, n, wr, lane);
  if (wc == 0) {  // the wc == 1 twin holds the same rows
    store_acc_bf16<D>(s.gz2, gz, 16 * wr, 0, lane);
    store_col_sums(s.red2 + wr * D, gz, lane);
  }

  // G_z1 = (G_z2 W2^T) * gelu'(Z1) on this warp's hidden columns.
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
  store_col_sums(s.red1 + wr * FL + wc * FH, gz1, lane);
  __syncthreads();  // A, G_z1, G_z2 and the column sums are in shared memory; the W copies are no longer read

  // The update: W2 -= A^T G_z2, W1 -= K^T G_z1, accumulated into the register state.
#pragma unroll(ROLL ? 1 : M / 16)
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
#pragma unroll(ROLL ? 1 : M / 16)
  for (int kk = 0; kk < M / 16; ++kk) {
    uint32_t a[4];
    ldsm_x4_t(a, addr_a_t<D>(s.k, 16 * wr, 16 * kk, lane));
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
  store_state_copies<SPLIT>(s, w1s, w2s, warp, lane);
}

// Forward of one mini-batch and its state update (step_front, the all-reduce of Z2 in exchange slot
// `slot`, step_back). Ends with __syncthreads: the new copies and biases are visible to every warp.
template <bool SPLIT, bool FAST, bool ROLL = false>
__device__ __forceinline__ void inner_step(float (&w1s)[NF][4], float (&w2s)[ND][4], const StepBufs& s, int n,
                                           int slot, int rank, int tid, float eps) {
  const int lane = tid & 31, warp = tid >> 5, wr = warp & 3, wc = warp >> 2;
  float da[NF][4], z2[ND][4];
  step_front<SPLIT, FAST, ROLL>(da, z2, s, wr, wc, lane);
  cluster_row_sum(z2, s.x + slot * (CS * M * D), rank, wr, wc, lane, s.b2);
  step_back<SPLIT, ROLL>(w1s, w2s, z2, da, s, n, tid, eps);
  __syncthreads();
}

}  // namespace sm90
}  // namespace tttgraph
