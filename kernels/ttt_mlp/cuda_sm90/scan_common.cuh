// The pieces of the sm_90a TTT-MLP scan shared by the forward and the backward kernels: tile sizes,
// the warp split, the bias and twin reductions of a row-sum, its cluster all-reduce, LayerNorm and
// G_z2 rows, column sums, and the state's moves between registers and global memory. (The
// products are wgmma, wgmma.cuh; the backward's recomputation is the forward's scan.)
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
constexpr int kStateTile = FL * D;  // bf16 elements of one CTA's W1 (or W2) tile of a stored state
// The output's backward (ttt_mlp_bwd_out.cu) hands the reverse pass, per (b, h) and mini-batch:
// bf16 [M][64] tiles (swz<64>) Aq by hidden chunk (F / 64 of them), dZq1 by hidden chunk, dZq2;
// and fp32 sums db1 [F], db2 [D], dgamma [D], dbeta [D].
constexpr int kObTile = M * 64;
constexpr int kObTiles = 2 * (F / 64) + 1;
constexpr int kObFloats = F + 3 * D;

// Index of (row, col) in an fp32 [M][D] tile; columns XOR-swizzled by 8 (row % 8) so the float2
// fragment stores of a half-warp hit distinct banks.
__device__ __forceinline__ int xidx(int row, int col) { return row * D + (col ^ ((row & 7) << 3)); }

// A typed pointer `off` bytes into shared memory.
template <typename T>
__device__ __forceinline__ T* at(char* base, int off) {
  return reinterpret_cast<T*>(base + off);
}

// The dynamic shared memory's base rounded up to 1024 bytes: wgmma's 128B-swizzle atoms need
// 1024-byte-aligned tiles (each kernel's launch asks for its SMEM + 1024 bytes).
__device__ __forceinline__ char* align_1024(char* sm_raw) {
  return sm_raw + ((1024 - (smem_u32(sm_raw) & 1023)) & 1023);
}

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

// ---- row helpers over R rows per lane: R = 2 is an accumulator tile's 16 rows (the backward), R = 1
// one token row per lane (the forward's split row work and the backward's G_z2) ---------------------

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

// Row-wise LayerNorm of a [16, D] accumulator tile in place: (z - mean) * rstd; returns rstd of
// rows g and g + 8.
__device__ __forceinline__ float2 layer_norm_rows(float (&z)[ND][4], float eps) {
  float r[2];
  layer_norm_rows_n<2>(z, eps, r);
  return make_float2(r[0], r[1]);
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

// The two warpgroups' partial row sums of one [M][D] accumulator tile (the output workers and the
// output's backward: each warpgroup summed over its half of the hidden layer): warpgroup 1 stages its
// partial (rows 16 wr + g and + 8 of the lane) in an fp32 [M][D] tile (xidx) ...
__device__ __forceinline__ void stage_rows(float* stage, const float (&acc)[ND][4], int wr, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int jn = 0; jn < ND; ++jn) {
    const int c = 8 * jn + 2 * t, r = 16 * wr + g;
    *reinterpret_cast<float2*>(stage + xidx(r, c)) = make_float2(acc[jn][0], acc[jn][1]);
    *reinterpret_cast<float2*>(stage + xidx(r + 8, c)) = make_float2(acc[jn][2], acc[jn][3]);
  }
}
// ... and warpgroup 0, after a CTA barrier, adds it and the bias: acc += staged + bias.
__device__ __forceinline__ void add_staged_rows(float (&acc)[ND][4], const float* stage, const float* bias, int wr,
                                                int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int jn = 0; jn < ND; ++jn) {
    const int c = 8 * jn + 2 * t, r = 16 * wr + g;
    const float2 u0 = *reinterpret_cast<const float2*>(stage + xidx(r, c));
    const float2 u1 = *reinterpret_cast<const float2*>(stage + xidx(r + 8, c));
    acc[jn][0] += u0.x + bias[c];
    acc[jn][1] += u0.y + bias[c + 1];
    acc[jn][2] += u1.x + bias[c];
    acc[jn][3] += u1.y + bias[c + 1];
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

}  // namespace sm90
}  // namespace tttgraph
